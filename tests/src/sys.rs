//! The few system calls the host-side test drivers need (memfds,
//! eventfds, poll).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

/// A memfd of `size` bytes.
pub fn memfd(name: &str, size: u64) -> File {
    let cname = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("size the memfd");
    f
}

/// A non-blocking eventfd.
pub fn eventfd() -> File {
    // SAFETY: plain syscall; the result is a fresh descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { File::from_raw_fd(fd) }
}

/// Waits until `f` is readable or `timeout` passes.
pub fn poll_in(f: &File, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd that lives across the call.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    r > 0
}
