//! `HYPERVISOR_xen_version` (`xen/version.h`), as Xen answers an unprivileged HVM/PVH guest.

use xen_abi::errno::XenErrno;
use xen_abi::features::*;
use xen_abi::version::*;
use xen_abi::{hypercall, GuestWidth, PAGE_SIZE};

use super::hypercall::{HcResult, HypercallCtx};

/// `XENVER_extraversion`.
pub const EXTRAVERSION: &str = ".0-xenkvm";
/// `XENVER_capabilities`: the guest types this "hypervisor" runs.
pub const CAPABILITIES: &str = "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64";
/// What Xen returns in place of denied strings.
pub const DENIED: &str = "<denied>";

/// The feature bits Xen gives an HVM/PVH domU in submap 0.
pub fn features_submap0() -> u32 {
    (1 << XENFEAT_MEMORY_OP_VNODE_SUPPORTED)
        | (1 << XENFEAT_WRITABLE_PAGE_TABLES)
        | (1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP)
        | (1 << XENFEAT_HVM_SAFE_PVCLOCK)
        | (1 << XENFEAT_HVM_CALLBACK_VECTOR)
        | (1 << XENFEAT_NOT_DIRECT_MAPPED)
}

fn string_field<const N: usize>(s: &str) -> [u8; N] {
    let mut b = [0u8; N];
    let n = s.len().min(N - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b
}

/// Handles `HYPERVISOR_xen_version(cmd, arg)`.
pub fn xen_version(ctx: &HypercallCtx<'_>, cmd: u32, arg: u64) -> HcResult {
    let d = &ctx.domain.info;
    match cmd {
        XENVER_VERSION => Ok(i64::from(d.xen_version.packed())),
        XENVER_EXTRAVERSION => ctx.write_obj(arg, &string_field::<XEN_EXTRAVERSION_LEN>(EXTRAVERSION)).map(|_| 0),
        XENVER_COMPILE_INFO => {
            let info = XenCompileInfo {
                compiler: string_field(concat!("rustc (xenkvm ", env!("CARGO_PKG_VERSION"), ")")),
                compile_by: string_field("xenkvm"),
                compile_domain: string_field("xenkvm"),
                compile_date: string_field(env!("CARGO_PKG_VERSION")),
            };
            ctx.write_obj(arg, &info).map(|_| 0)
        }
        XENVER_CAPABILITIES => ctx.write_obj(arg, &string_field::<XEN_CAPABILITIES_INFO_LEN>(CAPABILITIES)).map(|_| 0),
        XENVER_CHANGESET => {
            let cs = concat!("xenkvm ", env!("CARGO_PKG_VERSION"));
            ctx.write_obj(arg, &string_field::<XEN_CHANGESET_INFO_LEN>(cs)).map(|_| 0)
        }
        XENVER_PLATFORM_PARAMETERS => {
            // virt_start is 0 for HVM guests; the struct is one xen_ulong_t wide.
            match ctx.width {
                GuestWidth::Bits64 => ctx.write_obj(arg, &0u64),
                GuestWidth::Bits32 => ctx.write_obj(arg, &0u32),
            }
            .map(|_| 0)
        }
        XENVER_GET_FEATURES => {
            let mut fi: XenFeatureInfo = ctx.read_obj(arg)?;
            fi.submap = match fi.submap_idx {
                0 => features_submap0(),
                _ => return Err(XenErrno::EINVAL),
            };
            ctx.write_obj(arg, &fi).map(|_| 0)
        }
        XENVER_PAGESIZE => {
            if arg != 0 {
                return Err(XenErrno::EINVAL);
            }
            Ok(PAGE_SIZE as i64)
        }
        XENVER_GUEST_HANDLE => ctx.write_obj(arg, &d.handle).map(|_| 0),
        XENVER_COMMANDLINE => ctx.write_obj(arg, &string_field::<XEN_COMMANDLINE_LEN>(DENIED)).map(|_| 0),
        XENVER_BUILD_ID => Err(XenErrno::EPERM),
        other => ctx.unknown(hypercall::XEN_VERSION, u64::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::XEN_VERSION;

    #[test]
    fn test_every_subop() {
        let Some((d, _)) = test_domain() else { return };
        let w = GuestWidth::Bits64;
        let buf = 0x10_0000u64;
        let pm = || d.physmap();
        assert_eq!(call(&d, w, XEN_VERSION, &[0, 0]), 0x4_0013);
        assert_eq!(call(&d, w, XEN_VERSION, &[1, buf]), 0);
        let mut s = [0u8; 16];
        pm().read(buf, &mut s).unwrap();
        assert_eq!(&s[..10], b".0-xenkvm\0");
        assert_eq!(call(&d, w, XEN_VERSION, &[3, buf]), 0);
        let mut caps = [0u8; 1024];
        pm().read(buf, &mut caps).unwrap();
        assert!(caps.starts_with(CAPABILITIES.as_bytes()));
        assert_eq!(call(&d, w, XEN_VERSION, &[2, buf]), 0);
        assert_eq!(call(&d, w, XEN_VERSION, &[4, buf]), 0);
        pm().write(buf, &[0xff; 8]).unwrap();
        assert_eq!(call(&d, w, XEN_VERSION, &[5, buf]), 0);
        assert_eq!(pm().read_u64(buf).unwrap(), 0);
        pm().write(buf, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(call(&d, w, XEN_VERSION, &[6, buf]), 0);
        assert_eq!(pm().read_u32(buf + 4).unwrap(), features_submap0());
        pm().write(buf, &1u32.to_le_bytes()).unwrap();
        assert_eq!(call(&d, w, XEN_VERSION, &[6, buf]), -22, "submap 1 does not exist");
        assert_eq!(call(&d, w, XEN_VERSION, &[7, 0]), 4096);
        assert_eq!(call(&d, w, XEN_VERSION, &[7, buf]), -22);
        assert_eq!(call(&d, w, XEN_VERSION, &[8, buf]), 0);
        let mut h = [0u8; 16];
        pm().read(buf, &mut h).unwrap();
        assert_eq!(h, [0xab; 16]);
        assert_eq!(call(&d, w, XEN_VERSION, &[9, buf]), 0);
        assert_eq!(call(&d, w, XEN_VERSION, &[10, buf]), -1);
        assert_eq!(call(&d, w, XEN_VERSION, &[99, buf]), -38);
    }

    #[test]
    fn test_platform_parameters_is_four_bytes_for_32bit_callers() {
        let Some((d, _)) = test_domain() else { return };
        let buf = 0x10_0000u64;
        d.physmap().write(buf, &[0xff; 8]).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits32, XEN_VERSION, &[5, buf]), 0);
        assert_eq!(d.physmap().read_u64(buf).unwrap(), 0xffff_ffff_0000_0000);
    }
}
