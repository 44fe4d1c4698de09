//! Vectored file I/O straight between an image file and granted guest
//! pages (no bounce buffer): the one place this backend hands guest memory
//! to a system call.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use xenkvm_grant::{Access, GrantedPage};

/// A piece of one granted page: `len` bytes at `offset`.
#[derive(Clone)]
pub struct Buf<'t, 'a> {
    /// The page, pinned for as long as any `Buf` holds it.
    pub page: Arc<GrantedPage<'t, 'a>>,
    /// Byte offset in the page.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl Buf<'_, '_> {
    /// Copies the guest's bytes out (for a disk write).
    pub fn copy_to(&self, out: &mut [u8]) -> std::io::Result<()> {
        self.page.read(self.offset, &mut out[..self.len]).map_err(std::io::Error::other)
    }

    /// Copies bytes into the guest's page (for a disk read); refused when
    /// the page was granted read-only.
    pub fn copy_from(&self, data: &[u8]) -> std::io::Result<()> {
        self.page.write(self.offset, &data[..self.len]).map_err(std::io::Error::other)
    }
}

/// Total bytes of `bufs`.
pub fn total_len(bufs: &[Buf]) -> usize {
    bufs.iter().map(|b| b.len).sum()
}

/// Direction of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// File to guest (a disk read).
    Read,
    /// Guest to file (a disk write).
    Write,
}

/// The iovecs of `bufs`, with the guards that keep their pages mapped for
/// as long as this lives. A disk read into a read-only grant is refused.
pub struct Pinned {
    iov: Vec<libc::iovec>,
    _guards: Vec<vm_memory::volatile_memory::PtrGuardMut>,
}

// SAFETY: the iovecs point into guest pages pinned by the guards (and by
// the job's `Buf`s); nothing in them is tied to the creating thread.
unsafe impl Send for Pinned {}

impl Pinned {
    /// Pins `bufs` for a transfer in direction `dir`.
    pub fn new(dir: Dir, bufs: &[Buf]) -> std::io::Result<Pinned> {
        let mut iov = Vec::with_capacity(bufs.len());
        let mut guards = Vec::with_capacity(bufs.len());
        for b in bufs {
            if dir == Dir::Read && b.page.access() != Access::Write {
                return Err(std::io::Error::other(format!("grant {} is read-only: cannot read data into it", b.page.gref())));
            }
            let s = b.page.slice().subslice(b.offset, b.len).map_err(|e| std::io::Error::other(e.to_string()))?;
            let g = s.ptr_guard_mut();
            iov.push(libc::iovec { iov_base: g.as_ptr().cast(), iov_len: b.len });
            guards.push(g);
        }
        Ok(Pinned { iov, _guards: guards })
    }

    /// The iovecs (valid while `self` lives).
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }
}

/// `preadv`/`pwritev` of `bufs` at `offset`, looping over short transfers;
/// hitting the end of the file on a read is an error (the caller checked
/// the range against the image's size).
pub fn transfer(file: &File, dir: Dir, bufs: &[Buf], offset: u64) -> std::io::Result<()> {
    let mut pinned = Pinned::new(dir, bufs)?;
    let iov = &mut pinned.iov;
    let mut done_iov = 0;
    let mut pos = offset;
    while done_iov < iov.len() {
        let rest = &iov[done_iov..];
        let cnt = rest.len().min(1024) as libc::c_int;
        // SAFETY: every iovec points into a granted guest page that `bufs`
        // keeps pinned and mapped (the pointer guards are alive), within the
        // page (subslice checked it); the kernel reads or writes at most
        // those bytes. The guest may change the bytes concurrently, which
        // the kernel tolerates as it would for any shared mapping.
        let n = unsafe {
            match dir {
                Dir::Read => libc::preadv(file.as_raw_fd(), rest.as_ptr(), cnt, pos as libc::off_t),
                Dir::Write => libc::pwritev(file.as_raw_fd(), rest.as_ptr(), cnt, pos as libc::off_t),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("end of image at {pos}")));
        }
        let mut n = n as usize;
        pos += n as u64;
        // Drop the fully done vectors, trim a partly done one.
        while n > 0 {
            let v = &mut iov[done_iov];
            if n >= v.iov_len {
                n -= v.iov_len;
                done_iov += 1;
            } else {
                // SAFETY: stays inside the same iovec's buffer (n < its length).
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}
