//! xenkvm's block backend (blkback): one process per virtual disk. It
//! speaks blkif (`xen/io/blkif.h`) to the guest's blkfront through the
//! guest's grant table and event channels, which the vmm hands over on its
//! ipc socket, and keeps the data in a raw file, a block device or a qcow2
//! image.
//!
//! ```text
//! device.rs   xenbus: features, InitWait, connect at Initialised, close, reconnect
//! ring.rs     the shared ring in both ABIs, multi-page, event indices
//! request.rs  request checks, grants (persistent or not), indirect segments
//! queue.rs    one thread per queue + the I/O worker pool
//! uring.rs    io_uring for raw images: batched submission, reaped on the queue thread
//! image.rs    raw / block device / qcow2 (imago)
//! io.rs       preadv/pwritev straight into granted pages
//! ```

pub mod device;
pub mod image;
pub mod io;
pub mod queue;
pub mod request;
pub mod ring;
pub mod seccomp;
pub mod uring;
