//! A device for tests and benchmarks only (`--test-device`), on I/O port
//! 0xe5. It plays a backend in dom0 so that the guest can time the host
//! paths of event delivery against a bare interrupt:
//! - `in` (32-bit) returns the dom0 port of a backend channel the guest can
//!   bind with `EVTCHNOP_bind_interdomain(0, port)`;
//! - `out` 1: the host signals the guest's callback vector to vCPU 0 directly
//!   (`KVM_SIGNAL_MSI`, no event channel: the bare baseline);
//! - `out` 2: the host writes the channel's `notify` eventfd, exactly as a
//!   backend process would, and the event thread raises the guest's port.

use vmm_sys_util::eventfd::EventFd;

use crate::xen::evtchn::BackendChannel;
use crate::xen::Domain;

/// The device's I/O port.
pub const PORT: u16 = 0xe5;

/// The device state: one backend channel.
pub struct TestDevice {
    channel: BackendChannel,
}

impl TestDevice {
    /// Allocates the backend channel.
    pub fn new(d: &Domain) -> std::io::Result<TestDevice> {
        Ok(TestDevice { channel: d.backend_alloc_unbound()? })
    }

    /// A guest `out`.
    pub fn write(&self, d: &Domain, data: &[u8]) {
        match data.first() {
            Some(1) => {
                let vector = match *d.callback.lock().unwrap_or_else(|e| e.into_inner()) {
                    crate::xen::upcall::Callback::Vector(v) => v,
                    _ => return,
                };
                if let Some(sink) = d.irq.get() {
                    sink.vector(0, vector);
                }
            }
            Some(2) => notify(&self.channel.notify),
            _ => tracing::debug!(?data, "test device: unknown command"),
        }
    }

    /// A guest `in`.
    pub fn read(&self, data: &mut [u8]) {
        let v = self.channel.port.to_le_bytes();
        for (d, s) in data.iter_mut().zip(v.iter().chain(std::iter::repeat(&0))) {
            *d = *s;
        }
    }
}

fn notify(fd: &EventFd) {
    if let Err(e) = fd.write(1) {
        tracing::warn!(error = %e, "test device: notify failed");
    }
}
