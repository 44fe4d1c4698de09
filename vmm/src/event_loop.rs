//! The domain's event thread: waits on the eventfds backends write
//! (`notify`) and raises the guest's end of each channel.

use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::xen::Domain;

/// The epoll set of backend notify eventfds, keyed by dom0 port.
pub struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    /// A new, empty set.
    pub fn new() -> std::io::Result<EventLoop> {
        Ok(EventLoop { epoll: Epoll::new()? })
    }

    /// Starts watching a backend's notify eventfd for dom0 port `port`.
    pub fn watch(&self, port: u32, fd: &EventFd) -> std::io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), EpollEvent::new(EventSet::IN, u64::from(port)))
    }

    /// Stops watching an eventfd.
    pub fn unwatch(&self, fd: &EventFd) {
        let _ = self.epoll.ctl(ControlOperation::Delete, fd.as_raw_fd(), EpollEvent::default());
    }

    /// Runs until the domain stops.
    pub fn run(&self, d: &Domain) {
        let mut events = vec![EpollEvent::default(); 64];
        while !d.stopping() {
            let n = match self.epoll.wait(Duration::from_millis(100).as_millis() as i32, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "event loop wait failed");
                    return;
                }
            };
            for ev in &events[..n] {
                d.backend_notified(ev.data() as u32);
            }
        }
    }
}
