//! shared_info and per-vCPU time (`xen/xen.h`).
//!
//! shared_info is a vmm-owned page the guest places with
//! `XENMEM_add_to_physmap`. From the moment it is mapped it carries the
//! wallclock (`wc_*`, version protocol) and, for vCPUs whose vcpu_info is
//! still inside it, `vcpu_info.time`. The time fields are kept current by KVM
//! itself: its pvclock (`MSR_KVM_SYSTEM_TIME_NEW`) has exactly Xen's
//! `vcpu_time_info` layout, so each vCPU's MSR points at its vcpu_info.time.

use std::sync::atomic::Ordering;

use xen_abi::shared_info::SharedInfoLayout;
use xen_abi::GuestWidth;

use super::{request, Domain};

/// Writes the wallclock (time of system_time 0) into shared_info at `gfn`.
pub fn write_wallclock(d: &Domain, gfn: u64, width: GuestWidth) {
    let l = SharedInfoLayout::for_width(width);
    let base = gfn << 12;
    let secs = d.boot_wallclock_ns / 1_000_000_000;
    let nsec = (d.boot_wallclock_ns % 1_000_000_000) as u32;
    let pm = d.physmap();
    let (Ok(version), Ok(sec), Ok(ns), Ok(hi)) = (
        pm.atomic_u32(base + l.wc_version as u64),
        pm.atomic_u32(base + l.wc_sec as u64),
        pm.atomic_u32(base + l.wc_nsec as u64),
        pm.atomic_u32(base + l.wc_sec_hi as u64),
    ) else {
        tracing::error!(gfn, "shared_info is not mapped where the physmap says");
        return;
    };
    // Odd version while updating, as the guest's reader expects.
    version.fetch_add(1, Ordering::SeqCst);
    sec.store(secs as u32, Ordering::SeqCst);
    ns.store(nsec, Ordering::SeqCst);
    hi.store((secs >> 32) as u32, Ordering::SeqCst);
    version.fetch_add(1, Ordering::SeqCst);
}

/// Where vCPU `vcpu`'s time area is now (its vcpu_info.time), if anywhere.
pub fn time_area_gpa(d: &Domain, vcpu: u32) -> Option<u64> {
    let width = d.state().width.unwrap_or(GuestWidth::Bits64);
    d.vcpu_info_gpa(vcpu).map(|gpa| gpa + SharedInfoLayout::for_width(width).vcpu_time as u64)
}

/// Asks every vCPU to re-point its time area (shared_info moved or appeared).
pub fn refresh_time_areas(d: &Domain) {
    for v in &d.vcpus {
        v.request(request::UPDATE_TIME_AREA);
    }
}
