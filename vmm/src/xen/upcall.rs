//! Upcall delivery: how a pending event reaches the guest
//! (`HVM_PARAM_CALLBACK_IRQ`, `HVMOP_set_evtchn_upcall_vector`).
//!
//! A vCPU with its own upcall vector gets it as a fixed MSI to its APIC; else
//! the domain-wide callback applies: a vector (to whichever vCPU has the
//! event) or a GSI through the IOAPIC (vCPU 0 only, level-triggered, held
//! while vCPU 0's `evtchn_upcall_pending` is set), as Xen's
//! `hvm_assert_evtchn_irq` does. Like Xen for HVM guests, injection does not
//! look at `evtchn_upcall_mask`: the guest masks with its interrupt flag.

use xen_abi::hvm::callback;

use super::Domain;

/// Where the IRQs go: KVM in the vmm, a recorder in tests.
pub trait IrqSink: Send + Sync {
    /// Sends `vector` to vCPU `vcpu`'s local APIC.
    fn vector(&self, vcpu: u32, vector: u8);
    /// Sets the level of an IOAPIC input.
    fn set_gsi(&self, gsi: u32, level: bool);
}

/// The domain-wide callback (`HVM_PARAM_CALLBACK_IRQ`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Callback {
    /// None set: events are only seen by polling.
    #[default]
    None,
    /// An IOAPIC input.
    Gsi(u32),
    /// An APIC vector.
    Vector(u8),
}

/// IOAPIC inputs a GSI callback may use.
pub const MAX_GSI: u32 = crate::platform::ioapic::NUM_PINS as u32;

impl Callback {
    /// Decodes a `HVM_PARAM_CALLBACK_IRQ` value; other types are refused.
    pub fn parse(value: u64) -> Result<Callback, String> {
        if value == 0 {
            return Ok(Callback::None);
        }
        match (value >> callback::TYPE_SHIFT) as u8 {
            callback::GSI => {
                let gsi = value as u32;
                if gsi == 0 || gsi >= MAX_GSI || value & 0x00ff_ffff_0000_0000 != 0 {
                    return Err(format!("GSI {gsi} is not an IOAPIC input (1..{MAX_GSI})"));
                }
                Ok(Callback::Gsi(gsi))
            }
            callback::VECTOR => {
                let vector = value as u8;
                if vector < 0x10 {
                    return Err(format!("vector {vector:#x} is reserved for exceptions"));
                }
                Ok(Callback::Vector(vector))
            }
            callback::PCI_INTX => Err("PCI INTx callbacks need the Xen platform PCI device, which xenkvm does not emulate".into()),
            callback::PPI => Err("PPI callbacks exist only on Arm".into()),
            t => Err(format!("unknown callback type {t}")),
        }
    }
}

thread_local! {
    /// The vCPU whose thread this is, if any.
    static ON_VCPU: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as vCPU `id`'s thread.
pub fn set_current_vcpu(id: u32) {
    ON_VCPU.with(|c| c.set(Some(id)));
}

/// Whether the calling thread is vCPU `id`'s thread.
pub fn on_vcpu(id: u32) -> bool {
    ON_VCPU.with(|c| c.get()) == Some(id)
}

/// Injects the upcall for `vcpu` (its upcall pending bit just went 0 → 1).
pub fn inject(d: &Domain, vcpu: u32) {
    let Some(sink) = d.irq.get() else { return };
    let own = d.vcpus.get(vcpu as usize).and_then(|v| *v.upcall_vector.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(vector) = own {
        sink.vector(vcpu, vector);
        return;
    }
    match *d.callback.lock().unwrap_or_else(|e| e.into_inner()) {
        Callback::Vector(vector) => sink.vector(vcpu, vector),
        Callback::Gsi(gsi) if vcpu == 0 => sink.set_gsi(gsi, true),
        _ => {}
    }
}

/// Brings a GSI callback's line in line with vCPU 0's `evtchn_upcall_pending`
/// (called when the guest EOIs, so the line drops once the guest cleared it).
///
/// On this host's KVM (PVM) the EOI is completed at injection and reported
/// at the vCPU's next exit, which a host interrupt can force before the
/// handler cleared the flag: the line is then still high and the guest gets
/// one more upcall that finds nothing. Lowering it while the flag is set
/// would lose an event raised between a handler's clear and its EOI, so the
/// level follows the flag, as Xen's does.
pub fn refresh_gsi(d: &Domain) {
    let cb = *d.callback.lock().unwrap_or_else(|e| e.into_inner());
    if let (Callback::Gsi(gsi), Some(sink)) = (cb, d.irq.get()) {
        sink.set_gsi(gsi, d.upcall_pending(0));
    }
}

/// Installs a new domain-wide callback, lowering an old GSI line.
pub fn set_callback(d: &Domain, cb: Callback) {
    let old = std::mem::replace(&mut *d.callback.lock().unwrap_or_else(|e| e.into_inner()), cb);
    if let (Callback::Gsi(gsi), Some(sink)) = (old, d.irq.get()) {
        if old != cb {
            sink.set_gsi(gsi, false);
        }
    }
    // An event already pending is delivered through the new route.
    if cb != Callback::None {
        for v in 0..d.vcpus.len() as u32 {
            if d.upcall_pending(v) {
                inject(d, v);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what would be injected.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<(&'static str, u32, u32)>>);

    impl IrqSink for Recorder {
        fn vector(&self, vcpu: u32, vector: u8) {
            self.0.lock().unwrap().push(("vector", vcpu, u32::from(vector)));
        }
        fn set_gsi(&self, gsi: u32, level: bool) {
            self.0.lock().unwrap().push(("gsi", gsi, u32::from(level)));
        }
    }

    #[test]
    fn test_injection_follows_vector_per_vcpu_vector_and_gsi() {
        use std::sync::atomic::Ordering;
        let Some((d, _)) = crate::xen::hypercall::tests::test_domain() else { return };
        let rec = std::sync::Arc::new(Recorder::default());
        let _ = d.irq.set(rec.clone());
        let clear = |v: usize| d.shared_info_page.atomic_u8(v * 64).unwrap().store(0, Ordering::SeqCst);
        d.mark_events_pending(1);
        assert!(rec.0.lock().unwrap().is_empty(), "no callback: nothing injected");
        clear(1);
        set_callback(&d, Callback::Vector(0xf3));
        d.mark_events_pending(1);
        d.mark_events_pending(1);
        assert_eq!(*rec.0.lock().unwrap(), vec![("vector", 1, 0xf3)], "once, on the 0 -> 1 edge, to the vCPU with the event");
        clear(1);
        *d.vcpus[1].upcall_vector.lock().unwrap() = Some(0xe0);
        d.mark_events_pending(1);
        assert_eq!(rec.0.lock().unwrap().last(), Some(&("vector", 1, 0xe0)), "the per-vCPU vector wins");
        rec.0.lock().unwrap().clear();
        clear(1);
        set_callback(&d, Callback::Gsi(5));
        d.mark_events_pending(0);
        assert_eq!(*rec.0.lock().unwrap(), vec![("gsi", 5, 1)]);
        refresh_gsi(&d);
        assert_eq!(rec.0.lock().unwrap().last(), Some(&("gsi", 5, 1)), "held while pending");
        clear(0);
        refresh_gsi(&d);
        assert_eq!(rec.0.lock().unwrap().last(), Some(&("gsi", 5, 0)), "lowered once the guest cleared it");
        set_callback(&d, Callback::None);
        assert_eq!(rec.0.lock().unwrap().last(), Some(&("gsi", 5, 0)));
    }

    #[test]
    fn test_callback_parse() {
        assert_eq!(Callback::parse(0), Ok(Callback::None));
        assert_eq!(Callback::parse((2 << 56) | 0xf3), Ok(Callback::Vector(0xf3)));
        assert_eq!(Callback::parse(5), Ok(Callback::Gsi(5)));
        assert!(Callback::parse(24).is_err());
        assert!(Callback::parse((2 << 56) | 0x0f).is_err());
        assert!(Callback::parse((1 << 56) | 0x10).unwrap_err().contains("PCI INTx"));
        assert!(Callback::parse(3 << 56).is_err());
        assert!(Callback::parse(9 << 56).is_err());
    }
}
