//! The host side: a tap device opened with `IFF_VNET_HDR` (offloads pass
//! through as a `virtio_net_hdr` before each frame) and `IFF_MULTI_QUEUE`
//! (one descriptor per netif queue, so the host spreads flows across them).
//! Each queue descriptor is non-blocking; a queue the frontend does not use
//! is detached so the host sends it nothing.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD` (also in the seccomp filter, as `TUNSETQUEUE`).
pub(crate) const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
pub(crate) const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
/// `TUN_F_CSUM`: the tap may hand us frames with checksums to finish.
pub const TUN_F_CSUM: u32 = 1;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: u32 = 2;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: u32 = 4;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl_ptr<T>(file: &File, req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `req` is one of the tun ioctls above, each of which reads or
    // writes exactly a `T` (an ifreq or an int) at `arg`, which lives
    // across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(file: &File, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Frames to write to a tap, as iovecs, and afterwards how each write went.
#[derive(Default)]
pub struct FrameBatch {
    iov: Vec<libc::iovec>,
    frames: Vec<(usize, usize)>,
    /// None: not written (yet).
    results: Vec<Option<std::io::Result<()>>>,
}

impl FrameBatch {
    /// Empties it (keeping its room).
    pub fn clear(&mut self) {
        self.iov.clear();
        self.frames.clear();
        self.results.clear();
    }

    /// Adds a frame. Its iovecs must point at buffers that stay alive and
    /// untouched (guest pages: pinned) until the batch is written.
    pub fn push(&mut self, iov: impl IntoIterator<Item = libc::iovec>) {
        let start = self.iov.len();
        self.iov.extend(iov);
        self.frames.push((start, self.iov.len()));
    }

    /// Frames pushed.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Frame `i`'s iovecs.
    pub(crate) fn frame_iovecs(&self, i: usize) -> &[libc::iovec] {
        let (a, b) = self.frames[i];
        &self.iov[a..b]
    }

    /// Before writing: every frame not written yet.
    pub(crate) fn reset_results(&mut self) {
        self.results.clear();
        self.results.resize_with(self.frames.len(), || None);
    }

    /// How the write of frame `i` went.
    pub(crate) fn set_result(&mut self, i: usize, r: std::io::Result<()>) {
        if let Some(slot) = self.results.get_mut(i) {
            *slot = Some(r);
        }
    }

    /// The error number frame `i`'s write failed with, if it did.
    pub(crate) fn error_of(&self, i: usize) -> Option<i32> {
        match self.results.get(i) {
            Some(Some(Err(e))) => e.raw_os_error(),
            _ => None,
        }
    }

    /// How frame `i` went (an error if it was never written).
    pub fn result(&self, i: usize) -> Result<(), String> {
        match self.results.get(i) {
            Some(Some(Ok(()))) => Ok(()),
            Some(Some(Err(e))) => Err(e.to_string()),
            Some(None) | None => Err("not written".into()),
        }
    }
}

/// One queue of a multi-queue tap.
pub struct TapQueue {
    /// Its descriptor (non-blocking).
    pub file: File,
}

/// Opens (creating if needed, which needs CAP_NET_ADMIN) `queues` queues
/// of the tap `name`.
pub fn open(name: &str, queues: usize) -> std::io::Result<Vec<TapQueue>> {
    if name.is_empty() || name.len() > 15 || name.contains('/') {
        return Err(std::io::Error::other(format!("tap name {name:?} is not a valid interface name")));
    }
    (0..queues.max(1))
        .map(|_| {
            let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open("/dev/net/tun")?;
            let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE, _pad: [0; 22] };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            ioctl_ptr(&file, TUNSETIFF, &mut req).map_err(|e| std::io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
            let mut hdr_len: libc::c_int = crate::offload::VNET_HDR_LEN as libc::c_int;
            ioctl_ptr(&file, TUNSETVNETHDRSZ, &mut hdr_len)?;
            Ok(TapQueue { file })
        })
        .collect()
}

/// Takes over tap queue descriptors the launcher opened and passed down
/// (the backend then needs no network privileges). Each must be a tap
/// opened with `IFF_VNET_HDR`; they become non-blocking and close-on-exec.
pub fn from_fds(fds: &[RawFd]) -> std::io::Result<(String, Vec<TapQueue>)> {
    let mut name = String::new();
    let mut out = Vec::new();
    for &fd in fds {
        if fd < 3 || out.iter().any(|q: &TapQueue| q.file.as_raw_fd() == fd) {
            return Err(std::io::Error::other(format!("tap descriptor {fd} is not a passed descriptor")));
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; it fails
        // (EBADF) if `fd` is not open in this process.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::other(format!("tap descriptor {fd}: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` is open (checked above), was passed to this process
        // for its sole use (the launcher closed its copy), is not stdio and
        // is taken only once (checked above), so the File owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
        ioctl_ptr(&file, TUNGETIFF, &mut req).map_err(|e| std::io::Error::other(format!("tap descriptor {fd} is not a tap: {e}")))?;
        if req.flags & IFF_VNET_HDR == 0 || req.flags & IFF_TAP == 0 {
            return Err(std::io::Error::other(format!("tap descriptor {fd} was opened without IFF_TAP|IFF_VNET_HDR")));
        }
        let n = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        name = String::from_utf8_lossy(&req.name[..n]).into_owned();
        set_fd_flags(&file, true)?;
        let mut hdr_len: libc::c_int = crate::offload::VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(&file, TUNSETVNETHDRSZ, &mut hdr_len)?;
        out.push(TapQueue { file });
    }
    if out.is_empty() {
        return Err(std::io::Error::other("no tap descriptors"));
    }
    Ok((name, out))
}

/// Non-blocking and close-on-exec (`own`), or inheritable by the next
/// child (`!own`, for the launcher handing a queue to netback).
fn set_fd_flags(file: &File, own: bool) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL/F_SETFD only change flags of our own open descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFD, if own { libc::FD_CLOEXEC } else { 0 }) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl TapQueue {
    /// Lets the next spawned child inherit this queue's descriptor (`on`),
    /// or not.
    pub fn set_inheritable(&self, on: bool) -> std::io::Result<()> {
        set_fd_flags(&self.file, !on)
    }

    /// The descriptor's number.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Attaches or detaches this queue (a detached queue gets no frames).
    pub fn set_attached(&self, on: bool) -> std::io::Result<()> {
        let mut req = IfReq { name: [0; 16], flags: if on { IFF_ATTACH_QUEUE } else { IFF_DETACH_QUEUE }, _pad: [0; 22] };
        match ioctl_ptr(&self.file, TUNSETQUEUE, &mut req) {
            // Attaching an attached queue (or detaching a detached one) is EINVAL.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r,
        }
    }

    /// Which offloads the host may use on frames it sends us
    /// (`TUN_F_*`; what the frontend can take).
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        ioctl_val(&self.file, TUNSETOFFLOAD, libc::c_ulong::from(flags))
    }
}

impl TapQueue {
    /// Writes one frame after its `virtio_net_hdr`.
    pub fn write_frame(&self, hdr: &[u8], frame: &[u8]) -> std::io::Result<()> {
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut libc::c_void, iov_len: hdr.len() },
            libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths,
        // which the kernel only reads. The raw syscall skips glibc's
        // cancellation-point bookkeeping (measured: 5% of a TX frame).
        let n = unsafe { libc::syscall(libc::SYS_writev, self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes every frame of `batch`, in order, recording how each went.
    pub fn write_batch(&self, batch: &mut FrameBatch) {
        batch.reset_results();
        for i in 0..batch.frames.len() {
            self.write_one(batch, i);
        }
    }

    /// Writes frame `i` of `batch`, recording how it went.
    pub(crate) fn write_one(&self, batch: &mut FrameBatch, i: usize) {
        let iov = batch.frame_iovecs(i);
        // SAFETY: the caller built the iovecs from live buffers and from
        // guest pages it holds pinned across this call (see
        // `FrameBatch::push`); the kernel only reads them. The raw system
        // call skips glibc's cancellation bookkeeping (measured: 5% of a
        // frame).
        let r = unsafe { libc::syscall(libc::SYS_writev, self.file.as_raw_fd(), iov.as_ptr(), iov.len()) };
        batch.set_result(i, if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }

    /// Reads one header-and-frame into the buffers of `iov`; its length,
    /// or None when none is waiting.
    ///
    /// # Safety
    /// Every iovec must point at memory this process may write for its
    /// whole length (a live buffer of ours, or a guest page mapped and
    /// pinned writable) for the duration of the call.
    pub unsafe fn read_frame_into(&self, iov: &[libc::iovec]) -> std::io::Result<Option<usize>> {
        // SAFETY: the caller vouches for the iovecs (see above).
        let n = unsafe { libc::syscall(libc::SYS_readv, self.file.as_raw_fd(), iov.as_ptr(), iov.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Reads one header-and-frame into `buf`; None when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
        // SAFETY: the one iovec is `buf`, live and borrowed mutably here.
        unsafe { self.read_frame_into(&iov) }
    }
}
