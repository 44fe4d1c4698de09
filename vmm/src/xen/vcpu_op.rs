//! `HYPERVISOR_vcpu_op` (`xen/vcpu.h`).

use std::sync::atomic::Ordering;

use xen_abi::errno::XenErrno;
use xen_abi::hypercall;
use xen_abi::shared_info::VCPU_INFO_SIZE;
use xen_abi::vcpu::*;
use xen_abi::{GuestWidth, PAGE_SHIFT, PAGE_SIZE};

use super::hypercall::{HcResult, HypercallCtx};
use super::timer::Periodic;
use super::{request, VcpuShared};

/// Xen's `STIME_DELTA_MAX`.
const STIME_DELTA_MAX: u64 = i64::MAX as u64;
/// Xen's `MILLISECS(1)`: the shortest period.
const MIN_PERIOD_NS: u64 = 1_000_000;

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
        VCPUOP_IS_UP => Ok(i64::from(target.online.load(Ordering::SeqCst))),
        VCPUOP_INITIALISE => {
            let c: VcpuHvmContext = ctx.read_obj(arg)?;
            check_hvm_context(&c).map_err(|why| {
                tracing::warn!(vcpu = vcpuid, why, "VCPUOP_initialise: bad context");
                XenErrno::EINVAL
            })?;
            let mut b = target.bringup.lock().unwrap_or_else(|e| e.into_inner());
            if b.initialised {
                return Err(XenErrno::EEXIST);
            }
            b.initialised = true;
            b.context = Some(c);
            Ok(0)
        }
        VCPUOP_UP => {
            let mut b = target.bringup.lock().unwrap_or_else(|e| e.into_inner());
            if !b.initialised {
                return Err(XenErrno::EINVAL);
            }
            b.down = false;
            let start = b.context.is_some();
            drop(b);
            if start {
                target.request(request::START);
            } else {
                target.wake_up();
            }
            Ok(0)
        }
        VCPUOP_DOWN => {
            target.bringup.lock().unwrap_or_else(|e| e.into_inner()).down = true;
            target.request(request::DOWN);
            Ok(0)
        }
        VCPUOP_SET_PERIODIC_TIMER => {
            let t: VcpuSetPeriodicTimer = ctx.read_obj(arg)?;
            if t.period_ns < MIN_PERIOD_NS || t.period_ns > STIME_DELTA_MAX {
                return Err(XenErrno::EINVAL);
            }
            let next = ctx.domain.system_time() + t.period_ns;
            ctx.domain.update_timers(vcpuid, |tm| tm.periodic = Some(Periodic { period: t.period_ns, next }));
            Ok(0)
        }
        VCPUOP_STOP_PERIODIC_TIMER => {
            ctx.domain.update_timers(vcpuid, |tm| tm.periodic = None);
            Ok(0)
        }
        VCPUOP_SET_SINGLESHOT_TIMER => {
            // Only on the calling vCPU, as in Xen.
            if vcpuid != ctx.vcpu {
                return Err(XenErrno::EINVAL);
            }
            let t: VcpuSetSingleshotTimer = ctx.read_obj(arg)?;
            let (at, flags) = (t.timeout_abs_ns, t.flags);
            if flags & VCPU_SSHOTTMR_FUTURE != 0 && at < ctx.domain.system_time() {
                return Err(XenErrno::ETIME);
            }
            ctx.domain.update_timers(vcpuid, |tm| tm.singleshot = Some(at));
            Ok(0)
        }
        VCPUOP_STOP_SINGLESHOT_TIMER => {
            if vcpuid != ctx.vcpu {
                return Err(XenErrno::EINVAL);
            }
            ctx.domain.update_timers(vcpuid, |tm| tm.singleshot = None);
            Ok(0)
        }
        VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
            let a: VcpuRegisterMemoryArea = ctx.read_obj(arg)?;
            let size = match ctx.domain.width() {
                GuestWidth::Bits64 => core::mem::size_of::<VcpuRunstateInfo64>(),
                GuestWidth::Bits32 => core::mem::size_of::<VcpuRunstateInfo32>(),
            };
            let area = if a.addr == 0 { None } else { Some(area_gpa(ctx, a.addr, size)?) };
            let mut rs = target.runstate.lock().unwrap_or_else(|e| e.into_inner());
            rs.area = area;
            // Written at once, as Xen does; read from its own vCPU it says "running".
            let mut shown = *rs;
            if target.id == ctx.vcpu {
                shown.state = RUNSTATE_RUNNING;
            }
            ctx.domain.write_runstate(&shown);
            Ok(0)
        }
        VCPUOP_GET_RUNSTATE_INFO => {
            let rs = *target.runstate.lock().unwrap_or_else(|e| e.into_inner());
            match ctx.width {
                GuestWidth::Bits64 => {
                    ctx.write_obj(arg, &VcpuRunstateInfo64 { state: rs.state, pad: 0, state_entry_time: rs.entry, time: rs.time })?
                }
                GuestWidth::Bits32 => {
                    let split = |v: u64| [v as u32, (v >> 32) as u32];
                    ctx.write_obj(
                        arg,
                        &VcpuRunstateInfo32 { state: rs.state, state_entry_time: split(rs.entry), time: rs.time.map(split) },
                    )?
                }
            }
            Ok(0)
        }
        VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA => {
            let a: VcpuRegisterMemoryArea = ctx.read_obj(arg)?;
            let area = if a.addr == 0 { None } else { Some(area_gpa(ctx, a.addr, 32)?) };
            *target.time_area.lock().unwrap_or_else(|e| e.into_inner()) = area;
            ctx.domain.copy_time_area(target.id);
            Ok(0)
        }
        other => ctx.unknown(hypercall::VCPU_OP, u64::from(other)),
    }
}

/// The guest-physical address of a registered area: translated once, with
/// the caller's page tables, and required to be RAM within one page.
fn area_gpa(ctx: &HypercallCtx<'_>, gva: u64, size: usize) -> Result<u64, XenErrno> {
    if (gva & 0xfff) as usize + size > PAGE_SIZE || !gva.is_multiple_of(4) {
        return Err(XenErrno::EINVAL);
    }
    let pm = ctx.domain.physmap();
    let gpa = crate::guest_access::GuestAccess::new(&pm, ctx.paging).translate(gva, true).map_err(|_| XenErrno::EFAULT)?;
    if !pm.is_ram(gpa, size as u64) {
        return Err(XenErrno::EFAULT);
    }
    Ok(gpa)
}

/// Xen's checks of a `vcpu_hvm_context` before it is loaded.
pub fn check_hvm_context(c: &VcpuHvmContext) -> Result<(), &'static str> {
    use zerocopy::FromBytes;
    const CR0_PE: u64 = 1;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    match c.mode {
        VCPU_HVM_MODE_64B => {
            let r = VcpuHvmX86_64::read_from_prefix(&c.regs).map_err(|_| "short context")?.0;
            if r.cr0 & (CR0_PE | CR0_PG) != (CR0_PE | CR0_PG) || r.cr4 & CR4_PAE == 0 || r.efer & EFER_LME == 0 {
                return Err("64-bit mode needs CR0.PE|PG, CR4.PAE and EFER.LME");
            }
            let canonical = (r.rip as i64) << 16 >> 16 == r.rip as i64;
            if !canonical {
                return Err("rip is not canonical");
            }
            Ok(())
        }
        VCPU_HVM_MODE_32B => {
            let r = VcpuHvmX86_32::read_from_prefix(&c.regs).map_err(|_| "short context")?.0;
            if u64::from(r.cr0) & CR0_PE == 0 {
                return Err("32-bit mode needs CR0.PE");
            }
            let present = |ar: u16| ar & (1 << 7) != 0;
            let code = |ar: u16| ar & (1 << 4) != 0 && ar & (1 << 3) != 0;
            if !present(r.cs_ar) || !code(r.cs_ar) {
                return Err("cs must be a present code segment");
            }
            if !present(r.ss_ar) || !present(r.tr_ar) {
                return Err("ss and tr must be present");
            }
            for (limit, ar) in [(r.cs_limit, r.cs_ar), (r.ds_limit, r.ds_ar), (r.ss_limit, r.ss_ar), (r.es_limit, r.es_ar)] {
                if present(ar) && ar & (1 << 11) != 0 && limit & 0xfff != 0xfff {
                    return Err("a page-granular segment limit must end in 0xfff");
                }
            }
            Ok(())
        }
        _ => Err("unknown mode"),
    }
}

impl super::Domain {
    /// Copies vCPU `vcpu`'s `vcpu_info.time` into its secondary time area.
    /// KVM rewrites the source only while that vCPU enters the guest, so a
    /// copy made from the vCPU's own thread is never torn; an odd version
    /// (an update in progress) is skipped all the same.
    pub fn copy_time_area(&self, vcpu: u32) {
        let Some(v) = self.vcpus.get(vcpu as usize) else { return };
        let Some(dst) = *v.time_area.lock().unwrap_or_else(|e| e.into_inner()) else { return };
        let Some(src) = super::shared_info::time_area_gpa(self, vcpu) else { return };
        let pm = self.physmap();
        let mut t = [0u8; 32];
        if pm.read(src, &mut t).is_ok() && t[0] & 1 == 0 {
            let _ = pm.write(dst, &t);
        }
    }
}

/// `VCPUOP_register_vcpu_info`: move a vCPU's vcpu_info into guest RAM.
fn register_vcpu_info(ctx: &HypercallCtx<'_>, target: &VcpuShared, r: VcpuRegisterVcpuInfo) -> HcResult {
    let d = ctx.domain;
    // Only on yourself or on a vCPU that is down, as in Xen.
    if target.id != ctx.vcpu && target.online.load(Ordering::SeqCst) {
        return Err(XenErrno::EINVAL);
    }
    if r.offset as usize > PAGE_SIZE - VCPU_INFO_SIZE || !r.offset.is_multiple_of(8) || r.mfn >= (1 << (52 - PAGE_SHIFT)) {
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
    // Xen's arch_evtchn_inject: whatever was pending is delivered at the new place.
    super::upcall::inject(d, target.id);
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
