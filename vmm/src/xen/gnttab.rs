//! Grant tables, v1 (`xen/grant_table.h`): the guest's side of the table.
//!
//! The table's frames are a vmm-owned memfd of `gnttab_max_frames` pages
//! ([`Domain::grant_frames`]) that backends map; the guest places them with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)` (see `memory_op.rs`).
//! Checking and holding grants on the backend side is the job of the
//! `xenkvm-grant` library.

use xen_abi::errno::XenErrno;
use xen_abi::grant_table::*;
use xen_abi::{hypercall, GuestWidth, DOMID_SELF};

use super::hypercall::{HcResult, HypercallCtx};
use super::Domain;

/// Grant-table state of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GnttabState {
    /// Frames in use (grown by `setup_table` and by mapping a frame).
    pub nr_frames: u32,
    /// Always 1: version 2 is not offered.
    pub version: u32,
}

impl Default for GnttabState {
    fn default() -> GnttabState {
        // Xen starts a domain with one frame.
        GnttabState { nr_frames: 1, version: 1 }
    }
}

impl Domain {
    /// Grows the table to at least `frames` frames (bounded by `gnttab_max_frames`).
    pub fn gnttab_grow(&self, frames: u32) {
        let mut g = self.gnttab.lock().unwrap_or_else(|e| e.into_inner());
        g.nr_frames = g.nr_frames.max(frames.min(self.info.gnttab_max_frames));
    }
}

/// A `dom` argument: the caller itself, else the status Xen gives.
fn dom_status(ctx: &HypercallCtx<'_>, dom: u16) -> i16 {
    if dom == DOMID_SELF || dom == ctx.domain.info.domid {
        GNTST_OKAY
    } else if dom == 0 {
        GNTST_PERMISSION_DENIED
    } else {
        GNTST_BAD_DOMAIN
    }
}

/// Handles `HYPERVISOR_grant_table_op(cmd, uop, count)`.
pub fn grant_table_op(ctx: &HypercallCtx<'_>, cmd: u32, uop: u64, count: u32) -> HcResult {
    let d = ctx.domain;
    // Xen takes exactly one query_size or setup_table op per call (a
    // negative count is refused for every op), so nothing here loops over a
    // guest-chosen count.
    if (count as i32) < 0 || (matches!(cmd, GNTTABOP_QUERY_SIZE | GNTTABOP_SETUP_TABLE) && count != 1) {
        return Err(XenErrno::EINVAL);
    }
    match cmd {
        GNTTABOP_QUERY_SIZE => {
            let mut q: GnttabQuerySize = ctx.read_obj(uop)?;
            q.status = dom_status(ctx, q.dom);
            if q.status == GNTST_OKAY {
                q.nr_frames = d.gnttab.lock().unwrap_or_else(|e| e.into_inner()).nr_frames;
                q.max_nr_frames = d.info.gnttab_max_frames;
            }
            ctx.write_obj(uop, &q).map(|_| 0)
        }
        GNTTABOP_SETUP_TABLE => setup_table(ctx, uop).map(|_| 0),
        GNTTABOP_SET_VERSION => {
            let mut v: GnttabSetVersion = ctx.read_obj(uop)?;
            let r = match v.version {
                1 => Ok(0),
                2 => {
                    d.log_unknown(hypercall::GRANT_TABLE_OP, 0x200, "grant table version 2 (only v1 is offered)");
                    Err(XenErrno::ENOSYS)
                }
                _ => Err(XenErrno::EINVAL),
            };
            // The version in force is written back in every case, as in Xen.
            v.version = d.gnttab.lock().unwrap_or_else(|e| e.into_inner()).version;
            ctx.write_obj(uop, &v)?;
            r
        }
        GNTTABOP_GET_VERSION => {
            let mut v: GnttabGetVersion = ctx.read_obj(uop)?;
            ctx.check_self(v.dom)?;
            v.version = d.gnttab.lock().unwrap_or_else(|e| e.into_inner()).version;
            ctx.write_obj(uop, &v).map(|_| 0)
        }
        other => ctx.unknown(hypercall::GRANT_TABLE_OP, u64::from(other)),
    }
}

/// `GNTTABOP_setup_table`: grow the table and list its frames. Translated
/// guests get the guest frame where each table frame is mapped, or
/// `INVALID_GFN` where it is not (yet).
fn setup_table(ctx: &HypercallCtx<'_>, uop: u64) -> Result<(), XenErrno> {
    let d = ctx.domain;
    let (dom, nr, list) = match ctx.width {
        GuestWidth::Bits64 => {
            let s: GnttabSetupTable64 = ctx.read_obj(uop)?;
            (s.dom, s.nr_frames, s.frame_list)
        }
        GuestWidth::Bits32 => {
            let s: GnttabSetupTable32 = ctx.read_obj(uop)?;
            (s.dom, s.nr_frames, u64::from(s.frame_list))
        }
    };
    let status_at = uop + 8;
    let mut status = dom_status(ctx, dom);
    if status == GNTST_OKAY && nr > d.info.gnttab_max_frames {
        status = GNTST_GENERAL_ERROR;
    }
    if status == GNTST_OKAY {
        d.gnttab_grow(nr);
        let gfns = d.state().grant_frame_gfns.clone();
        let word = ctx.width.word_bytes() as u64;
        for f in 0..u64::from(nr) {
            let gfn = gfns.get(&f).copied().unwrap_or(u64::MAX);
            match ctx.width {
                GuestWidth::Bits64 => ctx.write_obj(list + f * word, &gfn)?,
                GuestWidth::Bits32 => ctx.write_obj(list + f * word, &(gfn as u32))?,
            }
        }
    }
    ctx.write_obj(status_at, &status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::GRANT_TABLE_OP;
    use zerocopy::{FromBytes, IntoBytes};

    const ARG: u64 = 0x10_0000;

    fn op<T: IntoBytes + FromBytes + zerocopy::Immutable>(d: &Domain, w: GuestWidth, cmd: u32, v: &T) -> (i64, T) {
        d.physmap().write(ARG, v.as_bytes()).unwrap();
        let r = call(d, w, GRANT_TABLE_OP, &[u64::from(cmd), ARG, 1]);
        let mut out = T::new_zeroed();
        d.physmap().read(ARG, out.as_mut_bytes()).unwrap();
        (r, out)
    }

    #[test]
    fn test_query_setup_and_versions() {
        let Some((d, _)) = test_domain() else { return };
        let w = GuestWidth::Bits64;
        let (r, q) = op(&d, w, GNTTABOP_QUERY_SIZE, &GnttabQuerySize { dom: DOMID_SELF, ..Default::default() });
        assert_eq!((r, q.status, q.nr_frames, q.max_nr_frames), (0, 0, 1, 4));
        let (_, q) = op(&d, w, GNTTABOP_QUERY_SIZE, &GnttabQuerySize { dom: 9, ..Default::default() });
        assert_eq!(q.status, GNTST_BAD_DOMAIN);
        d.state().grant_frame_gfns.insert(1, 0x700);
        let list = 0x11_0000;
        let (r, s) =
            op(&d, w, GNTTABOP_SETUP_TABLE, &GnttabSetupTable64 { dom: DOMID_SELF, nr_frames: 2, frame_list: list, ..Default::default() });
        assert_eq!((r, s.status), (0, GNTST_OKAY));
        assert_eq!(d.physmap().read_u64(list).unwrap(), u64::MAX, "frame 0 not mapped");
        assert_eq!(d.physmap().read_u64(list + 8).unwrap(), 0x700);
        let (_, q) = op(&d, w, GNTTABOP_QUERY_SIZE, &GnttabQuerySize { dom: DOMID_SELF, ..Default::default() });
        assert_eq!(q.nr_frames, 2, "setup_table grew the table");
        let (_, s) =
            op(&d, w, GNTTABOP_SETUP_TABLE, &GnttabSetupTable64 { dom: DOMID_SELF, nr_frames: 5, frame_list: list, ..Default::default() });
        assert_eq!(s.status, GNTST_GENERAL_ERROR, "beyond max_frames");
        let (r, _) = op(
            &d,
            w,
            GNTTABOP_SETUP_TABLE,
            &GnttabSetupTable64 { dom: DOMID_SELF, nr_frames: 1, frame_list: 0xe000_0000, ..Default::default() },
        );
        assert_eq!(r, -14, "bad frame list");
        // 32-bit layout: 16-byte struct, 4-byte frames.
        let (r, s) = op(
            &d,
            GuestWidth::Bits32,
            GNTTABOP_SETUP_TABLE,
            &GnttabSetupTable32 { dom: DOMID_SELF, nr_frames: 2, frame_list: list as u32, ..Default::default() },
        );
        assert_eq!((r, s.status), (0, 0));
        assert_eq!(d.physmap().read_u32(list + 4).unwrap(), 0x700);
        let (r, v) = op(&d, w, GNTTABOP_SET_VERSION, &GnttabSetVersion { version: 1 });
        assert_eq!((r, v.version), (0, 1));
        let (r, v) = op(&d, w, GNTTABOP_SET_VERSION, &GnttabSetVersion { version: 2 });
        assert_eq!((r, v.version), (-38, 1), "v2 refused, v1 stays");
        assert_eq!(op(&d, w, GNTTABOP_SET_VERSION, &GnttabSetVersion { version: 3 }).0, -22);
        let (r, v) = op(&d, w, GNTTABOP_GET_VERSION, &GnttabGetVersion { dom: DOMID_SELF, ..Default::default() });
        assert_eq!((r, v.version), (0, 1));
        assert_eq!(op(&d, w, 77, &[0u8; 8]).0, -38);
    }

    #[test]
    fn test_query_and_setup_take_exactly_one_op() {
        let Some((d, _)) = test_domain() else { return };
        let w = GuestWidth::Bits64;
        d.physmap().write(ARG, GnttabQuerySize { dom: DOMID_SELF, ..Default::default() }.as_bytes()).unwrap();
        for (cmd, count) in [
            (GNTTABOP_QUERY_SIZE, 0),
            (GNTTABOP_QUERY_SIZE, 2),
            (GNTTABOP_SETUP_TABLE, 0x7fff_ffff),
            (GNTTABOP_GET_VERSION, u64::from(u32::MAX)),
        ] {
            assert_eq!(call(&d, w, GRANT_TABLE_OP, &[u64::from(cmd), ARG, count]), -22, "cmd {cmd} count {count}");
        }
        let q: GnttabQuerySize = zerocopy::FromBytes::read_from_bytes(&{
            let mut b = [0u8; 16];
            d.physmap().read(ARG, &mut b).unwrap();
            b
        })
        .unwrap();
        assert_eq!(q.nr_frames, 0, "a refused op writes nothing back");
    }
}
