//! `HYPERVISOR_hvm_op` (`xen/hvm/hvm_op.h`): HVM parameters.

use xen_abi::errno::XenErrno;
use xen_abi::hvm::{param, XenHvmEvtchnUpcallVector, XenHvmParam, HVMOP_GET_PARAM, HVMOP_SET_EVTCHN_UPCALL_VECTOR, HVMOP_SET_PARAM};
use xen_abi::hypercall;

use super::hypercall::{HcResult, HypercallCtx};
use super::upcall::{self, Callback};

/// Parameters a guest may set on itself (Xen's `hvm_allow_set_param`).
fn guest_may_write(index: u32) -> bool {
    use param::*;
    matches!(
        index,
        CALLBACK_IRQ
            | VM86_TSS
            | VM86_TSS_SIZED
            | ACPI_IOPORTS_LOCATION
            | VM_GENERATION_ID_ADDR
            | STORE_EVTCHN
            | CONSOLE_EVTCHN
            | X87_FIP_WIDTH
    )
}

/// Parameters a guest may read about itself (Xen's `hvm_allow_get_param`):
/// those it may set, plus the toolstack's ring pages and altp2m.
fn guest_may_read(index: u32) -> bool {
    use param::*;
    guest_may_write(index) || matches!(index, STORE_PFN | CONSOLE_PFN | ALTP2M)
}

/// Handles `HYPERVISOR_hvm_op(op, arg)`.
pub fn hvm_op(ctx: &HypercallCtx<'_>, op: u64, arg: u64) -> HcResult {
    match op as u32 {
        HVMOP_SET_PARAM | HVMOP_GET_PARAM => {
            let mut p: XenHvmParam = ctx.read_obj(arg)?;
            if p.index >= param::HVM_NR_PARAMS {
                return Err(XenErrno::EINVAL);
            }
            ctx.check_self(p.domid)?;
            let i = p.index as usize;
            if op as u32 == HVMOP_GET_PARAM {
                if !guest_may_read(p.index) {
                    return Err(XenErrno::EPERM);
                }
                p.value = ctx.domain.state().params[i];
                ctx.write_obj(arg, &p)?;
                return Ok(0);
            }
            if !guest_may_write(p.index) {
                return Err(XenErrno::EPERM);
            }
            if p.index == param::CALLBACK_IRQ {
                let cb = Callback::parse(p.value).map_err(|why| {
                    tracing::warn!(value = format_args!("{:#x}", p.value), why, "refused HVM_PARAM_CALLBACK_IRQ");
                    XenErrno::EINVAL
                })?;
                let mut st = ctx.domain.state();
                st.params[i] = p.value;
                // Like Xen's hvm_latch_shinfo_size(): the guest's mode now fixes the layout.
                st.width.get_or_insert(ctx.width);
                drop(st);
                tracing::info!(callback = ?cb, "guest set its event-channel callback");
                upcall::set_callback(ctx.domain, cb);
                return Ok(0);
            }
            ctx.domain.state().params[i] = p.value;
            Ok(0)
        }
        HVMOP_SET_EVTCHN_UPCALL_VECTOR => {
            let u: XenHvmEvtchnUpcallVector = ctx.read_obj(arg)?;
            let v = ctx.domain.vcpus.get(u.vcpu as usize).ok_or(XenErrno::ENOENT)?;
            if u.vector < 0x10 {
                return Err(XenErrno::EINVAL);
            }
            *v.upcall_vector.lock().unwrap_or_else(|e| e.into_inner()) = Some(u.vector);
            tracing::debug!(vcpu = u.vcpu, vector = u.vector, "per-vCPU upcall vector set");
            if ctx.domain.upcall_pending(u.vcpu) {
                upcall::inject(ctx.domain, u.vcpu);
            }
            Ok(0)
        }
        other => ctx.unknown(hypercall::HVM_OP, u64::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SpecialPage;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::HVM_OP;
    use xen_abi::GuestWidth;
    use zerocopy::{FromBytes, IntoBytes};

    fn param_call(d: &crate::xen::Domain, op: u32, domid: u16, index: u32, value: u64) -> (i64, u64) {
        let p = XenHvmParam { domid, _pad: 0, index, value };
        d.physmap().write(0x10_0000, p.as_bytes()).unwrap();
        let r = call(d, GuestWidth::Bits32, HVM_OP, &[u64::from(op), 0x10_0000]);
        let mut b = [0u8; 16];
        d.physmap().read(0x10_0000, &mut b).unwrap();
        (r, XenHvmParam::read_from_bytes(&b).unwrap().value)
    }

    #[test]
    fn test_store_and_console_params_and_callback_roundtrip() {
        let Some((d, _)) = test_domain() else { return };
        let me = xen_abi::DOMID_SELF;
        let store = d.info.layout.special_gfn(SpecialPage::Xenstore);
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, me, param::STORE_PFN, 0), (0, store));
        let console = d.info.layout.special_gfn(SpecialPage::Console);
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, 5, param::CONSOLE_PFN, 0), (0, console));
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, me, param::STORE_EVTCHN, 0), (0, 1));
        let cb = (2u64 << 56) | 0xf3;
        assert_eq!(param_call(&d, HVMOP_SET_PARAM, me, param::CALLBACK_IRQ, cb).0, 0);
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, me, param::CALLBACK_IRQ, 0), (0, cb));
        assert_eq!(d.state().width, Some(GuestWidth::Bits32), "callback latches the layout");
    }

    #[test]
    fn test_refusals_match_xen() {
        let Some((d, _)) = test_domain() else { return };
        let me = xen_abi::DOMID_SELF;
        assert_eq!(param_call(&d, HVMOP_SET_PARAM, me, param::STORE_PFN, 1).0, -1, "STORE_PFN is read-only");
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, me, param::IOREQ_PFN, 0).0, -1);
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, me, param::HVM_NR_PARAMS, 0).0, -22);
        assert_eq!(param_call(&d, HVMOP_GET_PARAM, 3, param::STORE_PFN, 0).0, -3);
        assert_eq!(call(&d, GuestWidth::Bits32, HVM_OP, &[0, 0xe000_0000]), -14);
        assert_eq!(call(&d, GuestWidth::Bits32, HVM_OP, &[99, 0x10_0000]), -38);
    }
}
