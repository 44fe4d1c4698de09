//! The few system calls the host-side test drivers need (memfds,
//! eventfds, poll).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use xenkvm_sandbox::cpus::{self, CpuList};

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

/// Waits for a backend's notification as a guest vCPU halted for an
/// interrupt does under KVM: polls `ready` for up to `halt_poll` (KVM's
/// `halt_poll_ns`), yielding to any other task that wants the CPU (KVM
/// polls only while none does), then sleeps on the eventfd `notify` for up
/// to `timeout` and consumes what it signalled. Returns early once
/// `ready` holds; the caller looks again either way.
pub fn halt(halt_poll: Duration, ready: impl Fn() -> bool, notify: &File, timeout: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < halt_poll {
        if ready() {
            return;
        }
        std::thread::yield_now();
    }
    if !ready() && poll_in(notify, timeout) {
        let mut b = [0u8; 8];
        let _ = (&*notify).read(&mut b);
    }
}

/// Moves this process into a fresh network namespace (needs root); the
/// benchmarks that make taps run there and leave nothing on the host.
pub fn unshare_net() -> std::io::Result<()> {
    // SAFETY: unshare only changes this process's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw packet socket bound to interface `ifname` (frames sent on it go
/// out through that interface), with a `virtio_net_hdr` before each frame
/// when `vnet_hdr`.
pub fn packet_socket(ifname: &str, vnet_hdr: bool) -> std::io::Result<File> {
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name only.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by the File from here on.
    let f = unsafe { File::from_raw_fd(fd) };
    if vnet_hdr {
        let one: libc::c_int = 1;
        // SAFETY: PACKET_VNET_HDR reads one int from `one`, which lives across the call.
        let r = unsafe {
            libc::setsockopt(fd, libc::SOL_PACKET, 15, &one as *const libc::c_int as *const libc::c_void, size_of::<libc::c_int>() as u32)
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind reads a sockaddr_ll of the given size from `sll`.
    let r = unsafe { libc::bind(fd, &sll as *const libc::sockaddr_ll as *const libc::sockaddr, size_of::<libc::sockaddr_ll>() as u32) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// The calling thread confined to some CPUs until dropped (then back on
/// the ones it had); threads it starts meanwhile inherit the placement.
pub struct Pinned(CpuList);

impl Pinned {
    pub fn to(cpus: &CpuList) -> Pinned {
        let before = cpus::this_thread().expect("sched_getaffinity");
        cpus::pin_this_thread(cpus).unwrap_or_else(|e| panic!("pinning to CPUs {cpus}: {e}"));
        Pinned(before)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = cpus::pin_this_thread(&self.0);
    }
}

/// Confines every thread of process `pid` to `cpus`; threads it starts later
/// inherit their parent's placement. The kernel's own threads in it (an
/// io_uring's workers) refuse, and keep theirs. Returns how many moved.
pub fn pin_process(pid: u32, cpus: &CpuList) -> std::io::Result<usize> {
    let mut moved = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        if cpus::pin_thread(tid, cpus).is_ok() {
            moved += 1;
        }
    }
    Ok(moved)
}
