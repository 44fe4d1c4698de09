//! `HYPERVISOR_vcpu_op` (`xen/vcpu.h`).

use std::sync::atomic::Ordering;

use xen_abi::errno::XenErrno;
use xen_abi::hypercall;
use xen_abi::shared_info::VCPU_INFO_SIZE;
use xen_abi::vcpu::{VcpuRegisterVcpuInfo, VCPUOP_REGISTER_VCPU_INFO};
use xen_abi::{GuestWidth, PAGE_SHIFT, PAGE_SIZE};

use super::hypercall::{HcResult, HypercallCtx};
use super::request;

/// Handles `HYPERVISOR_vcpu_op(cmd, vcpuid, arg)`.
pub fn vcpu_op(ctx: &HypercallCtx<'_>, cmd: u32, vcpuid: u32, arg: u64) -> HcResult {
    let Some(target) = ctx.domain.vcpus.get(vcpuid as usize) else {
        return Err(XenErrno::ENOENT);
    };
    match cmd {
        VCPUOP_REGISTER_VCPU_INFO => {
            let r: VcpuRegisterVcpuInfo = ctx.read_obj(arg)?;
            register_vcpu_info(ctx, target, r)
        }
        other => ctx.unknown(hypercall::VCPU_OP, u64::from(other)),
    }
}

/// `VCPUOP_register_vcpu_info`: move a vCPU's vcpu_info into guest RAM.
fn register_vcpu_info(ctx: &HypercallCtx<'_>, target: &super::VcpuShared, r: VcpuRegisterVcpuInfo) -> HcResult {
    let d = ctx.domain;
    // Only on yourself or on a vCPU that is down, as in Xen.
    if target.id != ctx.vcpu && target.online.load(Ordering::SeqCst) {
        return Err(XenErrno::EINVAL);
    }
    if r.offset as usize > PAGE_SIZE - VCPU_INFO_SIZE || r.offset % 8 != 0 || r.mfn >= (1 << (52 - PAGE_SHIFT)) {
        return Err(XenErrno::EINVAL);
    }
    let gpa = (r.mfn << PAGE_SHIFT) + u64::from(r.offset);
    {
        let pm = d.physmap();
        if !pm.is_ram(gpa, VCPU_INFO_SIZE as u64) || pm.overlay(r.mfn).is_some() {
            return Err(XenErrno::EINVAL);
        }
    }
    let width = d.state().width.unwrap_or(ctx.width);
    let sel = xen_abi::shared_info::SharedInfoLayout::for_width(width).vcpu_pending_sel as u64;
    // Carry the current contents over, then mark everything pending so no event is lost.
    let old = d.vcpu_info_gpa(target.id);
    {
        let pm = d.physmap();
        let mut info = [0u8; VCPU_INFO_SIZE];
        if let Some(old) = old {
            pm.read(old, &mut info).map_err(|_| XenErrno::EFAULT)?;
        }
        pm.write(gpa, &info).map_err(|_| XenErrno::EFAULT)?;
        match width {
            GuestWidth::Bits64 => pm.atomic_u64(gpa + sel).map(|a| a.store(u64::MAX, Ordering::SeqCst)),
            GuestWidth::Bits32 => pm.atomic_u32(gpa + sel).map(|a| a.store(u32::MAX, Ordering::SeqCst)),
        }
        .map_err(|_| XenErrno::EFAULT)?;
        pm.atomic_u8(gpa).map_err(|_| XenErrno::EFAULT)?.store(1, Ordering::SeqCst);
    }
    *target.registered_vcpu_info.lock().unwrap_or_else(|e| e.into_inner()) = Some(gpa);
    target.request(request::UPDATE_TIME_AREA);
    tracing::debug!(vcpu = target.id, gpa = format_args!("{gpa:#x}"), "vcpu_info registered");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::VCPU_OP;
    use zerocopy::IntoBytes;

    fn reg(d: &crate::xen::Domain, vcpu: u64, mfn: u64, offset: u32) -> i64 {
        let r = VcpuRegisterVcpuInfo { mfn, offset, rsvd: 0 };
        d.physmap().write(0x10_0000, r.as_bytes()).unwrap();
        call(d, GuestWidth::Bits64, VCPU_OP, &[10, vcpu, 0x10_0000])
    }

    #[test]
    fn test_register_copies_contents_and_marks_pending() {
        let Some((d, _)) = test_domain() else { return };
        d.state().shared_info_gfn = None;
        d.physmap().write(0x40_0000, &[0u8; 64]).unwrap();
        *d.vcpus[0].registered_vcpu_info.lock().unwrap() = Some(0x40_0000);
        d.physmap().write(0x40_0000 + 32, &[7u8; 8]).unwrap(); // time area content
        assert_eq!(reg(&d, 0, 0x41, 0x40), 0);
        assert_eq!(*d.vcpus[0].registered_vcpu_info.lock().unwrap(), Some(0x41_040));
        let mut b = [0u8; 64];
        d.physmap().read(0x41_040, &mut b).unwrap();
        assert_eq!(b[0], 1, "upcall pending");
        assert_eq!(&b[8..16], &[0xff; 8], "every selector bit set");
        assert_eq!(&b[32..40], &[7u8; 8], "contents carried over");
    }

    #[test]
    fn test_register_refusals() {
        let Some((d, _)) = test_domain() else { return };
        assert_eq!(reg(&d, 0, 0x41, 4096 - 32), -22, "crosses the page");
        assert_eq!(reg(&d, 0, 0x41, 4), -22, "misaligned");
        assert_eq!(reg(&d, 0, 0xe0000, 0), -22, "not RAM");
        assert_eq!(reg(&d, 2, 0x41, 0), -2, "no such vCPU");
        d.vcpus[1].online.store(true, Ordering::SeqCst);
        assert_eq!(reg(&d, 1, 0x41, 0), -22, "another running vCPU");
        assert_eq!(call(&d, GuestWidth::Bits64, VCPU_OP, &[10, 0, 0xe000_0000]), -14);
        assert_eq!(call(&d, GuestWidth::Bits64, VCPU_OP, &[99, 0, 0]), -38);
    }
}
