//! The minimal platform around a Xen guest: the userspace IOAPIC of the split
//! irqchip, a 16550 UART, the 0xe9 debug port and the console log they all
//! write to. Nothing else is emulated.

pub mod console_log;
pub mod ioapic;
pub mod serial;
pub mod test_device;

/// Port of the Bochs/Xen debug console (`outb` to 0xe9).
pub const DEBUGCON_PORT: u16 = 0xe9;
