//! A userspace 82093AA IOAPIC for KVM's split irqchip.
//!
//! The LAPICs are in the kernel; this IOAPIC turns pin changes into MSIs
//! (`KVM_SIGNAL_MSI`), keeps level-triggered pins' Remote IRR, and re-delivers
//! a still-asserted level pin when the guest EOIs its vector
//! (`KVM_EXIT_IOAPIC_EOI`). It publishes each pin's MSI as a GSI route so that
//! KVM knows which vectors need EOI exits.

/// Number of pins.
pub const NUM_PINS: usize = 24;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;
const REG_ID: u32 = 0x00;
const REG_VER: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDIR_BASE: u32 = 0x10;
/// Version 0x11, max redirection entry 23.
const VERSION: u32 = 0x11 | ((NUM_PINS as u32 - 1) << 16);

const RTE_VECTOR: u64 = 0xff;
const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
const RTE_DEST_MODE_LOGICAL: u64 = 1 << 11;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_TRIGGER_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_RO_BITS: u64 = RTE_REMOTE_IRR | (1 << 12);

/// An MSI as the LAPICs receive it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    /// Address (0xfeeXXXXX).
    pub address: u64,
    /// Data: vector, delivery mode, trigger.
    pub data: u32,
}

/// Where the IOAPIC sends interrupts.
pub trait MsiSink: Send + Sync {
    /// Delivers one MSI.
    fn signal_msi(&self, msi: Msi);
    /// Publishes each pin's current MSI (None: masked) for EOI tracking.
    fn set_routes(&self, routes: &[Option<Msi>; NUM_PINS]);
}

/// The IOAPIC's register state.
pub struct Ioapic {
    id: u32,
    ioregsel: u32,
    redir: [u64; NUM_PINS],
    level: [bool; NUM_PINS],
    sink: Box<dyn MsiSink>,
}

impl Ioapic {
    /// An IOAPIC at reset: every pin masked.
    pub fn new(sink: Box<dyn MsiSink>) -> Ioapic {
        Ioapic { id: 0, ioregsel: 0, redir: [RTE_MASKED; NUM_PINS], level: [false; NUM_PINS], sink }
    }

    fn msi_for(rte: u64) -> Msi {
        let dest = (rte >> 56) & 0xff;
        let logical = rte & RTE_DEST_MODE_LOGICAL != 0;
        let address = 0xfee0_0000 | (dest << 12) | if logical { 1 << 2 } else { 0 };
        let mode = ((rte >> RTE_DELIVERY_MODE_SHIFT) & 7) as u32;
        let level = rte & RTE_TRIGGER_LEVEL != 0;
        let data = (rte & RTE_VECTOR) as u32 | (mode << 8) | if level { (1 << 15) | (1 << 14) } else { 0 };
        Msi { address, data }
    }

    fn publish_routes(&self) {
        let mut routes = [None; NUM_PINS];
        for (i, &rte) in self.redir.iter().enumerate() {
            if rte & RTE_MASKED == 0 {
                routes[i] = Some(Self::msi_for(rte));
            }
        }
        self.sink.set_routes(&routes);
    }

    fn deliver(&mut self, pin: usize) {
        let rte = self.redir[pin];
        if rte & RTE_MASKED != 0 {
            return;
        }
        if rte & RTE_TRIGGER_LEVEL != 0 {
            if rte & RTE_REMOTE_IRR != 0 {
                return;
            }
            self.redir[pin] |= RTE_REMOTE_IRR;
        }
        self.sink.signal_msi(Self::msi_for(rte));
    }

    /// Sets a pin's input level. Edge pins fire on a rising edge; level pins while high.
    pub fn set_irq(&mut self, pin: usize, high: bool) {
        let Some(old) = self.level.get(pin).copied() else {
            tracing::warn!(pin, "IOAPIC pin out of range");
            return;
        };
        self.level[pin] = high;
        let level_triggered = self.redir[pin] & RTE_TRIGGER_LEVEL != 0;
        if high && (level_triggered || !old) {
            self.deliver(pin);
        }
    }

    /// Pulses an edge-triggered pin.
    pub fn pulse(&mut self, pin: usize) {
        self.set_irq(pin, true);
        self.set_irq(pin, false);
    }

    /// The guest EOI'd `vector`: clear Remote IRR and re-deliver asserted level pins.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..NUM_PINS {
            let rte = self.redir[pin];
            if rte & RTE_TRIGGER_LEVEL != 0 && (rte & RTE_VECTOR) as u8 == vector && rte & RTE_REMOTE_IRR != 0 {
                self.redir[pin] &= !RTE_REMOTE_IRR;
                if self.level[pin] {
                    self.deliver(pin);
                }
            }
        }
    }

    fn read_reg(&self) -> u32 {
        match self.ioregsel {
            REG_ID => self.id << 24,
            REG_VER => VERSION,
            REG_ARB => self.id << 24,
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let i = ((r - REG_REDIR_BASE) / 2) as usize;
                let shift = if r % 2 == 0 { 0 } else { 32 };
                (self.redir[i] >> shift) as u32
            }
            _ => 0xffff_ffff,
        }
    }

    fn write_reg(&mut self, val: u32) {
        match self.ioregsel {
            REG_ID => self.id = (val >> 24) & 0xf,
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let i = ((r - REG_REDIR_BASE) / 2) as usize;
                let old = self.redir[i];
                let new =
                    if r % 2 == 0 { (old & 0xffff_ffff_0000_0000) | u64::from(val) } else { (old & 0xffff_ffff) | (u64::from(val) << 32) };
                self.redir[i] = (new & !RTE_RO_BITS) | (old & RTE_REMOTE_IRR);
                if self.redir[i] & RTE_TRIGGER_LEVEL == 0 {
                    self.redir[i] &= !RTE_REMOTE_IRR;
                }
                self.publish_routes();
                // Unmasking an asserted level pin delivers it.
                if self.redir[i] & (RTE_MASKED | RTE_TRIGGER_LEVEL) == RTE_TRIGGER_LEVEL && self.level[i] {
                    self.deliver(i);
                }
            }
            _ => {}
        }
    }

    /// An MMIO read at `offset` in the IOAPIC window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            IOREGSEL => self.ioregsel,
            IOWIN => self.read_reg(),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    /// An MMIO write at `offset` in the IOAPIC window.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            IOREGSEL => self.ioregsel = v & 0xff,
            IOWIN => self.write_reg(v),
            EOI => self.end_of_interrupt(v as u8),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder {
        msis: Mutex<Vec<Msi>>,
        routes: Mutex<Vec<[Option<Msi>; NUM_PINS]>>,
    }
    impl MsiSink for Arc<Recorder> {
        fn signal_msi(&self, msi: Msi) {
            self.msis.lock().unwrap().push(msi);
        }
        fn set_routes(&self, r: &[Option<Msi>; NUM_PINS]) {
            self.routes.lock().unwrap().push(*r);
        }
    }

    fn program(io: &mut Ioapic, pin: u32, rte: u64) {
        io.mmio_write(IOREGSEL, &(REG_REDIR_BASE + 2 * pin).to_le_bytes());
        io.mmio_write(IOWIN, &(rte as u32).to_le_bytes());
        io.mmio_write(IOREGSEL, &(REG_REDIR_BASE + 2 * pin + 1).to_le_bytes());
        io.mmio_write(IOWIN, &((rte >> 32) as u32).to_le_bytes());
    }

    #[test]
    fn test_version_register_reports_24_pins() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(Box::new(rec));
        io.mmio_write(IOREGSEL, &[REG_VER as u8, 0, 0, 0]);
        let mut d = [0u8; 4];
        io.mmio_read(IOWIN, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0017_0011);
    }

    #[test]
    fn test_masked_pin_does_not_fire_and_edge_fires_once() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(Box::new(rec.clone()));
        io.pulse(4);
        assert!(rec.msis.lock().unwrap().is_empty());
        program(&mut io, 4, 0x30 | (1 << 56));
        io.set_irq(4, true);
        io.set_irq(4, true); // no new edge
        let msis = rec.msis.lock().unwrap().clone();
        assert_eq!(msis, vec![Msi { address: 0xfee0_1000, data: 0x30 }]);
        assert_eq!(rec.routes.lock().unwrap().last().unwrap()[4], Some(Msi { address: 0xfee0_1000, data: 0x30 }));
    }

    #[test]
    fn test_level_pin_waits_for_eoi_and_redelivers_while_asserted() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(Box::new(rec.clone()));
        program(&mut io, 9, 0x41 | RTE_TRIGGER_LEVEL);
        io.set_irq(9, true);
        io.set_irq(9, true); // Remote IRR set: no second delivery
        assert_eq!(rec.msis.lock().unwrap().len(), 1);
        io.end_of_interrupt(0x41); // still asserted: redeliver
        assert_eq!(rec.msis.lock().unwrap().len(), 2);
        io.set_irq(9, false);
        io.end_of_interrupt(0x41);
        assert_eq!(rec.msis.lock().unwrap().len(), 2);
        assert_eq!(rec.msis.lock().unwrap()[0].data, 0x41 | (1 << 15) | (1 << 14));
    }
}
