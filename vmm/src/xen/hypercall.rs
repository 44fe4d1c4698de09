//! The hypercall dispatcher: `(vcpu, mode, nr, args) -> result`, the same for
//! every transport (the trapped hypercall page today, KVM's Xen intercept
//! where the kernel has it).

use tracing::trace;
use xen_abi::errno::XenErrno;
use xen_abi::hypercall as nr;
use xen_abi::GuestWidth;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::Domain;
use crate::guest_access::{GuestAccess, PagingState};

/// One hypercall as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hypercall {
    /// Call number (`__HYPERVISOR_*`).
    pub nr: u32,
    /// Arguments, already truncated to 32 bits for 32-bit callers.
    pub args: [u64; 6],
}

/// A handler's answer: a non-negative value, or an errno for the guest.
pub type HcResult = Result<i64, XenErrno>;

/// What a handler may use: the domain, the calling vCPU and its view of memory.
pub struct HypercallCtx<'a> {
    /// The domain.
    pub domain: &'a Domain,
    /// Calling vCPU.
    pub vcpu: u32,
    /// The caller's paging registers, for guest-virtual pointers.
    pub paging: PagingState,
    /// The calling convention: 32-bit (compat) or 64-bit layouts.
    pub width: GuestWidth,
}

impl HypercallCtx<'_> {
    fn with_access<R>(&self, f: impl FnOnce(&GuestAccess<'_>) -> Result<R, crate::guest_access::Fault>) -> Result<R, XenErrno> {
        let pm = self.domain.physmap();
        f(&GuestAccess::new(&pm, self.paging)).map_err(|fault| {
            trace!(vcpu = self.vcpu, %fault, "bad guest pointer");
            XenErrno::EFAULT
        })
    }

    /// Reads a struct from a guest pointer (`-EFAULT` if it is bad).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gva: u64) -> Result<T, XenErrno> {
        self.with_access(|a| a.read_obj(gva))
    }

    /// Writes a struct to a guest pointer (`-EFAULT` if it is bad).
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gva: u64, v: &T) -> Result<(), XenErrno> {
        self.with_access(|a| a.write_obj(gva, v))
    }

    /// Reads bytes from a guest pointer.
    pub fn read_bytes(&self, gva: u64, buf: &mut [u8]) -> Result<(), XenErrno> {
        self.with_access(|a| a.read(gva, buf))
    }

    /// Writes bytes to a guest pointer.
    pub fn write_bytes(&self, gva: u64, buf: &[u8]) -> Result<(), XenErrno> {
        self.with_access(|a| a.write(gva, buf))
    }

    /// Checks a `domid_t` argument names the caller (itself or `DOMID_SELF`).
    pub fn check_self(&self, domid: u16) -> Result<(), XenErrno> {
        if domid == xen_abi::DOMID_SELF || domid == self.domain.info.domid {
            Ok(())
        } else {
            Err(XenErrno::ESRCH)
        }
    }

    /// Reports an unimplemented sub-op once and returns `-ENOSYS`.
    pub fn unknown(&self, hypercall: u32, subop: u64) -> HcResult {
        self.domain.log_unknown(hypercall, subop, "hypercall sub-operation");
        Err(XenErrno::ENOSYS)
    }
}

/// Runs one hypercall and returns the value for the guest's `rax`.
pub fn dispatch(ctx: &HypercallCtx<'_>, call: Hypercall) -> i64 {
    let a = call.args;
    let r = match call.nr {
        nr::XEN_VERSION => super::xen_version::xen_version(ctx, a[0] as u32, a[1]),
        nr::MEMORY_OP => super::memory_op::memory_op(ctx, a[0], a[1]),
        nr::HVM_OP => super::hvm_op::hvm_op(ctx, a[0], a[1]),
        nr::SCHED_OP => super::sched_op::sched_op(ctx, a[0] as u32, a[1]),
        nr::CONSOLE_IO => super::console_io::console_io(ctx, a[0] as u32, a[1] as u32, a[2]),
        nr::VCPU_OP => super::vcpu_op::vcpu_op(ctx, a[0] as u32, a[1] as u32, a[2]),
        nr::EVENT_CHANNEL_OP => super::evtchn::event_channel_op(ctx, a[0] as u32, a[1]),
        nr::GRANT_TABLE_OP => super::gnttab::grant_table_op(ctx, a[0] as u32, a[1], a[2] as u32),
        nr::SET_TIMER_OP => {
            // 32-bit guests pass the 64-bit timeout in two registers, low half first.
            let timeout = match ctx.width {
                GuestWidth::Bits64 => a[0],
                GuestWidth::Bits32 => (a[1] << 32) | a[0],
            };
            super::timer::set_timer_op(ctx.domain, ctx.vcpu, timeout)
        }
        other => {
            ctx.domain.log_unknown(other, u64::MAX, "hypercall");
            Err(XenErrno::ENOSYS)
        }
    };
    let ret = r.unwrap_or_else(XenErrno::to_ret);
    trace!(vcpu = ctx.vcpu, nr = call.nr, args = ?call.args, ret, "hypercall");
    ret
}

#[cfg(test)]
pub(crate) mod tests {
    //! A domain with real guest memory (a KVM VM when /dev/kvm is there) for handler tests.
    use super::*;
    use crate::layout::MemoryLayout;
    use crate::memory::{Backing, Physmap, RamRegion};
    use crate::platform::console_log::ConsoleLog;
    use crate::xen::{DomainInfo, XenVersion};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A 32 MiB, 2-vCPU domain on a real KVM VM (these tests need /dev/kvm).
    pub(crate) fn test_domain() -> Option<(Domain, Captured)> {
        let (_kvm, vm) = crate::kvm::create_vm(None, xen_abi::cpuid::XEN_HYPERCALL_MSR)
            .expect("handler tests need /dev/kvm with the capabilities xenkvm uses");
        let layout = MemoryLayout::new(32);
        let ram = Backing::new_memfd("ram", layout.low_end as usize).unwrap();
        let pm = Physmap::new(vec![RamRegion { gpa: 0, backing: ram }]);
        let cap = Captured::default();
        let info = DomainInfo {
            domid: 5,
            name: "t".into(),
            handle: [0xab; 16],
            xen_version: XenVersion::DEFAULT,
            layout,
            vcpus: 2,
            gnttab_max_frames: 4,
        };
        let d = Domain::new(info, Arc::new(vm), pm, Arc::new(ConsoleLog::new(Box::new(cap.clone())))).unwrap();
        Some((d, cap))
    }

    pub(crate) fn ctx(d: &Domain, width: GuestWidth) -> HypercallCtx<'_> {
        // Paging off: guest-virtual == guest-physical.
        HypercallCtx { domain: d, vcpu: 0, paging: PagingState::default(), width }
    }

    pub(crate) fn call(d: &Domain, width: GuestWidth, nr: u32, args: &[u64]) -> i64 {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        dispatch(&ctx(d, width), Hypercall { nr, args: a })
    }

    #[test]
    fn test_unknown_hypercall_is_enosys_and_logged_once() {
        let Some((d, _)) = test_domain() else { return };
        assert_eq!(call(&d, GuestWidth::Bits64, 63, &[]), -38);
        assert_eq!(call(&d, GuestWidth::Bits64, 63, &[]), -38);
        assert!(d.state().logged_unknown.contains(&(63, u64::MAX)));
    }

    #[test]
    fn test_bad_pointer_is_efault_not_a_panic() {
        let Some((d, _)) = test_domain() else { return };
        // get_features into the hole above RAM and into the top of the address space.
        for p in [0xe000_0000u64, u64::MAX - 2, 0xffff_fffc] {
            assert_eq!(call(&d, GuestWidth::Bits64, nr::XEN_VERSION, &[6, p]), -14, "ptr {p:#x}");
        }
    }
}
