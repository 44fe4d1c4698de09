//! The 16550 UART at 0x3f8 (COM1, IRQ 4), from vm-superio, writing to the console log.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use super::console_log::ConsoleLog;
use super::ioapic::Ioapic;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports.
pub const COM1_LEN: u16 = 8;
/// COM1's IOAPIC pin.
pub const COM1_IRQ: usize = 4;

/// Raises COM1's IOAPIC pin.
pub struct IrqLine {
    ioapic: Arc<Mutex<Ioapic>>,
}

impl Trigger for IrqLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).pulse(COM1_IRQ);
        Ok(())
    }
}

/// Adapts the console log to `io::Write` for vm-superio.
pub struct ConsoleWriter(pub Arc<ConsoleLog>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1.
pub type Com1 = Serial<IrqLine, vm_superio::serial::NoEvents, ConsoleWriter>;

/// Creates COM1 wired to the IOAPIC and the console log.
pub fn com1(ioapic: Arc<Mutex<Ioapic>>, log: Arc<ConsoleLog>) -> Com1 {
    Serial::new(IrqLine { ioapic }, ConsoleWriter(log))
}
