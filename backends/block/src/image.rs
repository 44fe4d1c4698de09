//! Disk images: raw files and block devices (I/O straight into granted
//! pages), and qcow2 through the `imago` crate (QEMU's block maintainer's
//! Rust qcow2 driver). For qcow2, imago maps each request: a range stored
//! as plain data in the image file is read or written there directly
//! (straight into granted pages, by io_uring or, for a request the queue
//! thread runs itself, by `preadv`/`pwritev`), as QEMU's qcow2 driver does;
//! anything else (unallocated, compressed, a backing file) goes through
//! imago with a bounce buffer, since imago takes plain byte slices and
//! guest memory can change under us.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use anyhow::Context;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, StorageOpenOptions};

use crate::io::{total_len, transfer, Buf, Dir};

/// Image formats (xl's `format=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Raw file or block device.
    Raw,
    /// qcow2.
    Qcow2,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "raw" | "aio" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(format!("image format {other:?} is not supported (raw and qcow2 are)")),
        }
    }
}

/// How to open an image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// File or block device.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Opened read-only (xl `mode=r`, cdroms).
    pub readonly: bool,
    /// `O_DIRECT` (xl `direct-io-safe`).
    pub direct: bool,
}

impl ImageSpec {
    /// Parses the backend's `params` node as libxl writes it for qdisk
    /// backends: `format:path` (a bare path is raw).
    pub fn from_params(params: &str, readonly: bool, direct: bool) -> Result<ImageSpec, String> {
        let (format, path) = match params.split_once(':') {
            Some((f, p)) if !f.contains('/') => (f.parse()?, p),
            _ => (Format::Raw, params),
        };
        if path.is_empty() {
            return Err("params names no image".into());
        }
        Ok(ImageSpec { path: path.into(), format, readonly, direct })
    }
}

enum Backend {
    Raw(File),
    Qcow2(Qcow2Image),
}

struct Qcow2Image {
    access: RwLock<FormatAccess<imago::file::File>>,
    /// The image file again, for direct I/O on mapped ranges; None when
    /// data may live elsewhere (a backing or external data file).
    file: Option<File>,
    /// Direct I/Os on mapped ranges not yet completed. A discard (which
    /// can free and later reuse clusters) waits for none to be left.
    in_flight: AtomicUsize,
}

/// An open image.
pub struct Image {
    backend: Backend,
    size: u64,
    readonly: bool,
    /// Bytes a discard works in (None: the image cannot discard).
    discard_granularity: Option<u32>,
    logical_sector: u32,
    physical_sector: u32,
    block_device: bool,
    /// The block device erases securely (`discard-secure`).
    secure_erase: bool,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;
/// `BLKDISCARD` (also in the seccomp filter).
pub(crate) const BLKDISCARD: libc::c_ulong = 0x1277;
/// `BLKSECDISCARD` (also in the seccomp filter).
pub(crate) const BLKSECDISCARD: libc::c_ulong = 0x127d;

/// What a block device can discard (as Linux's blkback asks
/// `bdev_max_discard_sectors` and `bdev_max_secure_erase_sectors`): the
/// granularity in bytes when it can discard at all, and whether it erases
/// securely.
fn block_device_discard(file: &File, meta: &std::fs::Metadata, physical: u32) -> (Option<u32>, bool) {
    use std::os::unix::fs::MetadataExt;
    if !block_device_takes(file, BLKDISCARD) {
        return (None, false);
    }
    // The granularity is only in sysfs; a device that does not say gets its
    // physical sector (at least a page).
    let rdev = meta.rdev();
    let dev = std::path::PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev)));
    // A partition's limits are its disk's.
    let queue = if dev.join("partition").exists() { dev.join("../queue") } else { dev.join("queue") };
    let granularity = std::fs::read_to_string(queue.join("discard_granularity"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&g| g >= 512)
        .unwrap_or(physical.max(4096));
    (Some(granularity), block_device_takes(file, BLKSECDISCARD))
}

/// Whether a block device opened for writing takes `request` (BLKDISCARD
/// or BLKSECDISCARD). The kernel checks that the device can before it reads
/// the range: given none, it answers EFAULT where it can and EOPNOTSUPP
/// where it cannot, and touches nothing. (Kernels before 5.19 check secure
/// erase only later: there the probe says yes, and a secure discard the
/// device cannot do gets an error response.)
fn block_device_takes(file: &File, request: libc::c_ulong) -> bool {
    // SAFETY: a null range: the kernel answers before reading it or fails
    // to copy from it; no memory of ours is read or written.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, std::ptr::null::<u64>()) };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: the request writes one u64 (BLKGETSIZE64) into `v`, which lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, &mut v as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(file: &File, req: libc::c_ulong) -> std::io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into `v`, which lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v as u32)
}

/// Reads a qcow2 header's cluster size (big-endian `cluster_bits` at 20).
fn qcow2_cluster_size(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4];
    File::open(path)?.read_exact_at(&mut b, 20)?;
    let bits = u32::from_be_bytes(b);
    if !(9..=21).contains(&bits) {
        return Err(std::io::Error::other(format!("qcow2 cluster_bits {bits}")));
    }
    Ok(1 << bits)
}

impl Image {
    /// Opens the image.
    pub fn open(spec: &ImageSpec) -> anyhow::Result<Image> {
        let what = || format!("{} ({:?})", spec.path.display(), spec.format);
        match spec.format {
            Format::Raw => {
                let mut o = OpenOptions::new();
                o.read(true).write(!spec.readonly);
                if spec.direct {
                    o.custom_flags(libc::O_DIRECT);
                }
                let file = o.open(&spec.path).with_context(what)?;
                let meta = file.metadata().with_context(what)?;
                let block_device = meta.file_type().is_block_device();
                let (size, logical, physical, granularity, secure_erase) = if block_device {
                    let size = ioctl_u64(&file, BLKGETSIZE64).with_context(what)?;
                    let logical = ioctl_int(&file, BLKSSZGET).unwrap_or(512);
                    let physical = ioctl_int(&file, BLKPBSZGET).unwrap_or(logical);
                    let (granularity, secure) = if spec.readonly { (None, false) } else { block_device_discard(&file, &meta, physical) };
                    (size, logical, physical, granularity, secure)
                } else if meta.is_file() {
                    use std::os::unix::fs::MetadataExt;
                    (meta.len(), 512, meta.blksize().clamp(512, 65536) as u32, Some(meta.blksize().clamp(512, 1 << 20) as u32), false)
                } else {
                    anyhow::bail!("{} is neither a file nor a block device", spec.path.display());
                };
                Ok(Image {
                    backend: Backend::Raw(file),
                    size,
                    readonly: spec.readonly,
                    discard_granularity: granularity.filter(|_| !spec.readonly),
                    logical_sector: logical,
                    physical_sector: physical,
                    block_device,
                    secure_erase,
                })
            }
            Format::Qcow2 => {
                let cluster = qcow2_cluster_size(&spec.path).with_context(what)?;
                let opts = StorageOpenOptions::new().direct(spec.direct);
                let q = imago::qcow2::Qcow2::<imago::file::File>::builder_path(&spec.path)
                    .write(!spec.readonly)
                    .storage_open_options(opts)
                    .open(PermissiveImplicitOpenGate::default())
                    .with_context(what)?;
                let self_contained = !q.requires_external_data_file() && q.implicit_backing_file().is_none();
                let file = if self_contained {
                    let mut o = OpenOptions::new();
                    o.read(true).write(!spec.readonly);
                    if spec.direct {
                        o.custom_flags(libc::O_DIRECT);
                    }
                    Some(o.open(&spec.path).with_context(what)?)
                } else {
                    None
                };
                let access = FormatAccess::new(q);
                Ok(Image {
                    size: access.size(),
                    backend: Backend::Qcow2(Qcow2Image { access: RwLock::new(access), file, in_flight: AtomicUsize::new(0) }),
                    readonly: spec.readonly,
                    discard_granularity: Some(cluster).filter(|_| !spec.readonly),
                    logical_sector: 512,
                    physical_sector: 4096,
                    block_device: false,
                    secure_erase: false,
                })
            }
        }
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Logical sector size (`sector-size`).
    pub fn logical_sector(&self) -> u32 {
        self.logical_sector
    }

    /// Physical sector size (`physical-sector-size`).
    pub fn physical_sector(&self) -> u32 {
        self.physical_sector
    }

    /// `discard-granularity`, when the image can discard.
    pub fn discard_granularity(&self) -> Option<u32> {
        self.discard_granularity
    }

    /// Whether [`Image::begin_direct`] can ever succeed (io_uring is worth setting up).
    pub fn has_direct_path(&self) -> bool {
        match &self.backend {
            Backend::Raw(_) => true,
            Backend::Qcow2(q) => q.file.is_some(),
        }
    }

    /// The file a flush is an fsync of (raw images; qcow2 flushes go
    /// through imago, which writes its metadata first).
    pub fn fsync_file(&self) -> Option<&File> {
        match &self.backend {
            Backend::Raw(f) => Some(f),
            Backend::Qcow2(_) => None,
        }
    }

    /// For I/O straight to the file: the file and offset holding `len`
    /// bytes at `offset`, when they are one run of plain data there
    /// (writable, for a write). None sends the request the slow way
    /// (imago). Never waits: a qcow2 busy with a discard answers None.
    /// Each Some must be followed by [`Image::end_direct`] once the I/O
    /// has completed.
    pub fn begin_direct(&self, offset: u64, len: u64, write: bool) -> Option<(&File, u64)> {
        match &self.backend {
            Backend::Raw(f) => Some((f, offset)),
            Backend::Qcow2(q) => {
                let file = q.file.as_ref()?;
                let access = q.access.try_read().ok()?;
                let (mapping, mapped) = access.get_mapping(offset, len).ok()?;
                let imago::Mapping::Raw { offset: host, writable, .. } = mapping else { return None };
                if mapped < len || (write && !writable) {
                    return None;
                }
                // Counted while the read lock is held: a discard (write
                // lock) sees every I/O that might touch what it frees.
                q.in_flight.fetch_add(1, Ordering::AcqRel);
                Some((file, host))
            }
        }
    }

    /// Ends what [`Image::begin_direct`] began.
    pub fn end_direct(&self) {
        if let Backend::Qcow2(q) = &self.backend {
            q.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether secure discard is possible: on a block device that erases
    /// securely; never on files and qcow2 (the freed blocks may survive in
    /// the host filesystem).
    pub fn discard_secure(&self) -> bool {
        self.secure_erase
    }

    /// A transfer straight between the guest's pages and the file where
    /// the range is one run of plain data there (see
    /// [`Image::begin_direct`]); None where it is not.
    fn transfer_direct(&self, dir: Dir, bufs: &[Buf], offset: u64) -> Option<std::io::Result<()>> {
        let (file, at) = self.begin_direct(offset, total_len(bufs) as u64, dir == Dir::Write)?;
        let r = transfer(file, dir, bufs, at);
        self.end_direct();
        Some(r)
    }

    /// Reads `offset..offset+len(bufs)` into the guest's pages.
    pub fn read(&self, bufs: &[Buf], offset: u64) -> std::io::Result<()> {
        match &self.backend {
            Backend::Raw(f) => transfer(f, Dir::Read, bufs, offset),
            Backend::Qcow2(_) if let Some(r) = self.transfer_direct(Dir::Read, bufs, offset) => r,
            Backend::Qcow2(q) => {
                let mut data = vec![0u8; total_len(bufs)];
                q.access.read().unwrap_or_else(|e| e.into_inner()).read(&mut data[..], offset)?;
                let mut at = 0;
                for b in bufs {
                    b.copy_from(&data[at..at + b.len])?;
                    at += b.len;
                }
                Ok(())
            }
        }
    }

    /// Writes the guest's pages at `offset`.
    pub fn write(&self, bufs: &[Buf], offset: u64) -> std::io::Result<()> {
        if self.readonly {
            return Err(std::io::Error::from_raw_os_error(libc::EROFS));
        }
        match &self.backend {
            Backend::Raw(f) => transfer(f, Dir::Write, bufs, offset),
            Backend::Qcow2(_) if let Some(r) = self.transfer_direct(Dir::Write, bufs, offset) => r,
            Backend::Qcow2(q) => {
                let mut data = vec![0u8; total_len(bufs)];
                let mut at = 0;
                for b in bufs {
                    b.copy_to(&mut data[at..at + b.len])?;
                    at += b.len;
                }
                q.access.read().unwrap_or_else(|e| e.into_inner()).write(&data[..], offset)
            }
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.backend {
            Backend::Raw(f) => f.sync_data(),
            Backend::Qcow2(q) => {
                let q = q.access.read().unwrap_or_else(|e| e.into_inner());
                q.flush()?;
                q.sync()
            }
        }
    }

    /// Discards `len` bytes at `offset` (`secure`: erases them so that
    /// they cannot be recovered, where [`Image::discard_secure`]); on files
    /// and qcow2 they read as zeroes afterwards, on a device as it decides.
    pub fn discard(&self, offset: u64, len: u64, secure: bool) -> std::io::Result<()> {
        if self.readonly || self.discard_granularity.is_none() || (secure && !self.secure_erase) {
            return Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        match &self.backend {
            Backend::Raw(f) if self.block_device => {
                let range = [offset, len];
                let request = if secure { BLKSECDISCARD } else { BLKDISCARD };
                // SAFETY: BLKDISCARD and BLKSECDISCARD read two u64s from `range`, which lives across the call.
                let r = unsafe { libc::ioctl(f.as_raw_fd(), request, range.as_ptr()) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
            Backend::Raw(f) => {
                // SAFETY: plain syscall on our own descriptor.
                let r = unsafe {
                    libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
            Backend::Qcow2(q) => {
                let mut access = q.access.write().unwrap_or_else(|e| e.into_inner());
                // Direct I/O still in flight may target clusters this frees.
                while q.in_flight.load(Ordering::Acquire) > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                access.discard_to_zero(offset, len)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_params_as_libxl_writes_them() {
        let s = ImageSpec::from_params("qcow2:/var/lib/x.qcow2", false, false).unwrap();
        assert_eq!((s.format, s.path.to_str().unwrap()), (Format::Qcow2, "/var/lib/x.qcow2"));
        let s = ImageSpec::from_params("/dev/vg/disk", true, false).unwrap();
        assert_eq!((s.format, s.path.to_str().unwrap(), s.readonly), (Format::Raw, "/dev/vg/disk", true));
        assert_eq!(ImageSpec::from_params("raw:/a:b", false, false).unwrap().path.to_str().unwrap(), "/a:b");
        assert!(ImageSpec::from_params("vhd:/x.vhd", false, false).unwrap_err().contains("not supported"));
        assert!(ImageSpec::from_params("raw:", false, false).is_err());
    }

    #[test]
    fn test_raw_and_qcow2_open_discard_and_flush() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![0xabu8; 1 << 20]).unwrap();
        let img = Image::open(&ImageSpec { path: raw.clone(), format: Format::Raw, readonly: false, direct: false }).unwrap();
        assert_eq!(img.size(), 1 << 20);
        img.discard(65536, 65536, false).unwrap();
        // Freed blocks of a file may survive in the host filesystem.
        assert!(!img.discard_secure());
        assert_eq!(img.discard(0, 4096, true).unwrap_err().raw_os_error(), Some(libc::EOPNOTSUPP));
        img.flush().unwrap();
        let data = std::fs::read(&raw).unwrap();
        assert!(data[65536..131072].iter().all(|&b| b == 0), "punched hole reads zero");
        assert_eq!(data[65535], 0xab);
        assert_eq!(data[131072], 0xab);
        let ro = Image::open(&ImageSpec { path: raw, format: Format::Raw, readonly: true, direct: false }).unwrap();
        assert!(ro.discard(0, 4096, false).is_err());
        assert!(ro.write(&[], 0).is_err());

        let q = dir.path().join("d.qcow2");
        let st = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&q).arg("4M").status();
        if st.is_ok_and(|s| s.success()) {
            let img = Image::open(&ImageSpec { path: q, format: Format::Qcow2, readonly: false, direct: false }).unwrap();
            assert_eq!(img.size(), 4 << 20);
            assert_eq!(img.discard_granularity(), Some(65536));
            img.discard(0, 65536, false).unwrap();
            img.flush().unwrap();
        }
        assert!(Image::open(&ImageSpec { path: dir.path().join("none"), format: Format::Raw, readonly: false, direct: false }).is_err());
    }
}
