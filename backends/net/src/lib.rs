//! xenkvm's network backend (netback): one process per vif. It speaks
//! netif (`xen/io/netif.h`) to the guest's netfront through the guest's
//! grant table and event channels, which the vmm hands over on its ipc
//! socket, and moves frames to and from a tap device, whose
//! `virtio_net_hdr` carries checksum and segmentation offloads to the host
//! stack.
//!
//! ```text
//! device.rs   xenbus: features, InitWait, connect, close, reconnect
//! queue.rs    one thread per queue: TX and RX passes, batching, sleeping
//! tx.rs       TX slots -> checked packet (sizes, grants, extras), a batch a pass
//! rx.rs       frames -> posted RX buffers (copy, GSO extra)
//! offload.rs  netif flags <-> virtio_net_hdr, checksum set-up
//! tap.rs      the multi-queue tap; a batch of frames written at once
//! tap_uring.rs  a queue's TX ring: its kernel polling thread writes the frames
//! tx_writer.rs  the batches out on that ring, back in order once written
//! stats.rs    counters: packets, bytes, drops by reason
//! ```

pub mod device;
pub mod offload;
pub mod queue;
pub mod rx;
pub mod seccomp;
pub mod stats;
pub mod tap;
pub mod tap_uring;
pub mod tx;
pub mod tx_writer;
