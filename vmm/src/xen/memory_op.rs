//! `HYPERVISOR_memory_op` (`xen/memory.h`): the memory map, reservations and
//! placing shared_info and grant-table frames in the guest's physmap.

use xen_abi::errno::XenErrno;
use xen_abi::memory::*;
use xen_abi::{hypercall, GuestWidth, PAGE_SHIFT, PAGE_SIZE};
use zerocopy::IntoBytes;

use super::hypercall::{HcResult, HypercallCtx};
use super::shared_info;
use crate::memory::OverlayPage;

/// Guest frames at or above this are refused for overlays (1 TiB).
const MAX_OVERLAY_GFN: u64 = 1 << (40 - PAGE_SHIFT);
/// The local/IO APIC window: overlays there would shadow the interrupt controllers.
const APIC_WINDOW: std::ops::Range<u64> = 0xfec00..0xff000;
/// Size of one e820 entry in `XENMEM_memory_map`'s buffer.
const E820_ENTRY_SIZE: usize = size_of::<E820Entry>();

/// Handles `HYPERVISOR_memory_op(cmd, arg)`.
pub fn memory_op(ctx: &HypercallCtx<'_>, cmd: u64, arg: u64) -> HcResult {
    let op = (cmd & MEMOP_CMD_MASK) as u32;
    let start_extent = cmd >> 6;
    let layout = &ctx.domain.info.layout;
    match op {
        XENMEM_MAXIMUM_RAM_PAGE => Ok(layout.max_ram_pfn() as i64),
        XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION => {
            let domid: u16 = ctx.read_obj(arg)?;
            ctx.check_self(domid)?;
            Ok((layout.total() >> PAGE_SHIFT) as i64)
        }
        XENMEM_MEMORY_MAP => memory_map(ctx, arg),
        XENMEM_SET_MEMORY_MAP => set_memory_map(ctx, arg),
        XENMEM_ADD_TO_PHYSMAP => {
            if start_extent != 0 {
                return Err(XenErrno::EINVAL);
            }
            add_to_physmap(ctx, arg)
        }
        other => ctx.unknown(hypercall::MEMORY_OP, u64::from(other)),
    }
}

/// `XENMEM_memory_map`: copies out as much of the e820 as fits.
fn memory_map(ctx: &HypercallCtx<'_>, arg: u64) -> HcResult {
    let (nr, buffer) = match ctx.width {
        GuestWidth::Bits64 => {
            let m: XenMemoryMap64 = ctx.read_obj(arg)?;
            (m.nr_entries, m.buffer)
        }
        GuestWidth::Bits32 => {
            let m: XenMemoryMap32 = ctx.read_obj(arg)?;
            (m.nr_entries, u64::from(m.buffer))
        }
    };
    let e820 = ctx.domain.state().e820.clone();
    if e820.is_empty() {
        return Err(XenErrno::ENOSYS);
    }
    let n = (nr as usize).min(e820.len());
    ctx.write_bytes(buffer, e820[..n].as_bytes())?;
    match ctx.width {
        GuestWidth::Bits64 => ctx.write_obj(arg, &XenMemoryMap64 { nr_entries: n as u32, _pad: 0, buffer })?,
        GuestWidth::Bits32 => ctx.write_obj(arg, &XenMemoryMap32 { nr_entries: n as u32, buffer: buffer as u32 })?,
    }
    Ok(0)
}

/// `XENMEM_set_memory_map` on the caller itself: replaces what `XENMEM_memory_map` returns.
fn set_memory_map(ctx: &HypercallCtx<'_>, arg: u64) -> HcResult {
    let (domid, nr, buffer) = match ctx.width {
        GuestWidth::Bits64 => {
            let m: XenForeignMemoryMap64 = ctx.read_obj(arg)?;
            (m.domid, m.map.nr_entries, m.map.buffer)
        }
        GuestWidth::Bits32 => {
            let m: XenForeignMemoryMap32 = ctx.read_obj(arg)?;
            (m.domid, m.map.nr_entries, u64::from(m.map.buffer))
        }
    };
    ctx.check_self(domid)?;
    if nr > E820MAX {
        return Err(XenErrno::EINVAL);
    }
    let mut raw = vec![0u8; nr as usize * E820_ENTRY_SIZE];
    ctx.read_bytes(buffer, &mut raw)?;
    let entries: Vec<E820Entry> =
        raw.chunks_exact(E820_ENTRY_SIZE).map(|c| zerocopy::FromBytes::read_from_bytes(c).expect("exact chunk")).collect();
    ctx.domain.state().e820 = entries;
    Ok(0)
}

/// `XENMEM_add_to_physmap` for `XENMAPSPACE_shared_info` and `XENMAPSPACE_grant_table`.
fn add_to_physmap(ctx: &HypercallCtx<'_>, arg: u64) -> HcResult {
    let (domid, space, idx, gpfn) = match ctx.width {
        GuestWidth::Bits64 => {
            let x: XenAddToPhysmap64 = ctx.read_obj(arg)?;
            (x.domid, x.space, x.idx, x.gpfn)
        }
        GuestWidth::Bits32 => {
            let x: XenAddToPhysmap32 = ctx.read_obj(arg)?;
            (x.domid, x.space, u64::from(x.idx), u64::from(x.gpfn))
        }
    };
    ctx.check_self(domid)?;
    if gpfn >= MAX_OVERLAY_GFN || APIC_WINDOW.contains(&gpfn) {
        return Err(XenErrno::EINVAL);
    }
    let d = ctx.domain;
    let page = match space {
        XENMAPSPACE_SHARED_INFO => {
            if idx != 0 {
                return Err(XenErrno::EINVAL);
            }
            OverlayPage { backing: d.shared_info_page.clone(), offset: 0 }
        }
        XENMAPSPACE_GRANT_TABLE => {
            // Status frames exist only in grant table v2; v1 is the only version.
            if idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 || idx >= u64::from(d.info.gnttab_max_frames) {
                return Err(XenErrno::EINVAL);
            }
            OverlayPage { backing: d.grant_frames.clone(), offset: idx as usize * PAGE_SIZE }
        }
        other => return ctx.unknown(hypercall::MEMORY_OP, 0x100 | u64::from(other)),
    };

    let mut st = d.state();
    if st.width.is_none() {
        st.width = Some(ctx.width);
    }
    let width = st.width.expect("latched above");
    // Whatever sat at `gpfn` is displaced; the mapped page leaves its old place.
    let old_gfn = match space {
        XENMAPSPACE_SHARED_INFO => st.shared_info_gfn,
        _ => st.grant_frame_gfns.get(&idx).copied(),
    };
    let displaced_shared_info = space != XENMAPSPACE_SHARED_INFO && st.shared_info_gfn == Some(gpfn);
    if displaced_shared_info {
        st.shared_info_gfn = None;
    }
    st.grant_frame_gfns.retain(|_, g| *g != gpfn);
    match space {
        XENMAPSPACE_SHARED_INFO => st.shared_info_gfn = Some(gpfn),
        _ => {
            st.grant_frame_gfns.insert(idx, gpfn);
            d.gnttab_grow(idx as u32 + 1);
        }
    }
    d.update_physmap(|pm| {
        if let Some(old) = old_gfn.filter(|&g| g != gpfn) {
            pm.remove_overlay(old);
        }
        pm.set_overlay(gpfn, page);
    })
    .map_err(|e| {
        tracing::error!(error = %e, gpfn, "updating KVM memslots failed");
        XenErrno::ENOMEM
    })?;
    drop(st);
    if space == XENMAPSPACE_SHARED_INFO {
        shared_info::write_wallclock(d, gpfn, width);
    }
    if space == XENMAPSPACE_SHARED_INFO || displaced_shared_info {
        shared_info::refresh_time_areas(d);
    }
    tracing::debug!(space, idx, gpfn, "add_to_physmap");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::MEMORY_OP;
    use zerocopy::FromBytes;

    #[test]
    fn test_memory_map_truncates_to_buffer_and_reports_count() {
        let Some((d, _)) = test_domain() else { return };
        let (arg, buf) = (0x10_0000u64, 0x10_1000u64);
        let m = XenMemoryMap32 { nr_entries: 1, buffer: buf as u32 };
        d.physmap().write(arg, m.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits32, MEMORY_OP, &[9, arg]), 0);
        assert_eq!(d.physmap().read_u32(arg).unwrap(), 1);
        let mut e = [0u8; 20];
        d.physmap().read(buf, &mut e).unwrap();
        let e = E820Entry::read_from_bytes(&e).unwrap();
        assert_eq!(({ e.addr }, { e.kind }), (0, E820_RAM));
        // 64-bit layout, room for all.
        let m = XenMemoryMap64 { nr_entries: 16, _pad: 0, buffer: buf };
        d.physmap().write(arg, m.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[9, arg]), 0);
        assert_eq!(d.physmap().read_u32(arg).unwrap(), 2);
        // A buffer outside RAM.
        let m = XenMemoryMap64 { nr_entries: 16, _pad: 0, buffer: 0xe000_0000 };
        d.physmap().write(arg, m.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[9, arg]), -14);
    }

    #[test]
    fn test_set_memory_map_replaces_the_map_and_checks_count_and_domain() {
        let Some((d, _)) = test_domain() else { return };
        let (arg, buf) = (0x10_0000u64, 0x10_1000u64);
        let entry = E820Entry { addr: 0x1000, size: 0x2000, kind: E820_RAM };
        d.physmap().write(buf, entry.as_bytes()).unwrap();
        let fm =
            XenForeignMemoryMap64 { domid: xen_abi::DOMID_SELF, _pad: [0; 6], map: XenMemoryMap64 { nr_entries: 1, _pad: 0, buffer: buf } };
        d.physmap().write(arg, fm.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[13, arg]), 0);
        assert_eq!(d.state().e820, vec![entry]);
        let fm = XenForeignMemoryMap64 { domid: 9, ..fm };
        d.physmap().write(arg, fm.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[13, arg]), -3);
        let fm = XenForeignMemoryMap64 { domid: 5, map: XenMemoryMap64 { nr_entries: E820MAX + 1, _pad: 0, buffer: buf }, ..fm };
        d.physmap().write(arg, fm.as_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[13, arg]), -22);
    }

    #[test]
    fn test_reservations_and_max_ram_page() {
        let Some((d, _)) = test_domain() else { return };
        d.physmap().write(0x10_0000, &xen_abi::DOMID_SELF.to_le_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[3, 0x10_0000]), 32 << 8);
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[4, 0x10_0000]), 32 << 8);
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[2, 0]), 32 << 8);
        d.physmap().write(0x10_0000, &77u16.to_le_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, MEMORY_OP, &[3, 0x10_0000]), -3);
    }

    #[test]
    fn test_shared_info_and_grant_frames_map_remap_and_refuse() {
        let Some((d, _)) = test_domain() else { return };
        let arg = 0x10_0000u64;
        let map = |space: u32, idx: u64, gpfn: u64| {
            let x = XenAddToPhysmap64 { domid: xen_abi::DOMID_SELF, size: 0, space, idx, gpfn };
            d.physmap().write(arg, x.as_bytes()).unwrap();
            call(&d, GuestWidth::Bits64, MEMORY_OP, &[7, arg])
        };
        d.physmap().write(0x50_0000, &[0x11; 8]).unwrap();
        assert_eq!(map(XENMAPSPACE_SHARED_INFO, 0, 0x500), 0);
        // The wallclock is valid at once: even version, plausible seconds.
        let l = xen_abi::shared_info::SharedInfoLayout::for_width(GuestWidth::Bits64);
        let v = d.physmap().read_u32(0x50_0000 + l.wc_version as u64).unwrap();
        assert!(v > 0 && v % 2 == 0);
        assert!(d.physmap().read_u32(0x50_0000 + l.wc_sec as u64).unwrap() > 1_600_000_000);
        // Remap: the page moves with its contents; RAM reappears under the old frame.
        assert_eq!(map(XENMAPSPACE_SHARED_INFO, 0, 0x600), 0);
        assert_eq!(d.physmap().read_u64(0x50_0000).unwrap(), 0x1111_1111_1111_1111);
        assert_eq!(d.physmap().read_u32(0x60_0000 + l.wc_version as u64).unwrap(), v + 2);
        assert_eq!(map(XENMAPSPACE_SHARED_INFO, 1, 0x600), -22);
        // Grant frames: within max_frames, v1 only.
        assert_eq!(map(XENMAPSPACE_GRANT_TABLE, 3, 0x700), 0);
        assert_eq!(map(XENMAPSPACE_GRANT_TABLE, 4, 0x701), -22);
        assert_eq!(map(XENMAPSPACE_GRANT_TABLE, XENMAPIDX_GRANT_TABLE_STATUS, 0x701), -22);
        assert_eq!(d.state().grant_frame_gfns.get(&3), Some(&0x700));
        assert_eq!(map(XENMAPSPACE_GRANT_TABLE, 3, 0x702), 0);
        assert!(d.physmap().overlay(0x700).is_none());
        // Bad frames and unsupported spaces.
        assert_eq!(map(XENMAPSPACE_SHARED_INFO, 0, 0xfee00), -22);
        assert_eq!(map(XENMAPSPACE_SHARED_INFO, 0, 1 << 40), -22);
        assert_eq!(map(XENMAPSPACE_GMFN_FOREIGN, 0, 0x800), -38);
    }
}
