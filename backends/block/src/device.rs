//! One vbd's xenbus life, as Linux's xen-blkback runs it: features are
//! published and the backend waits in InitWait; it connects as soon as the
//! frontend has published its rings (Initialised — GRUB never says
//! Connected); Closing/Closed tear the rings down, and a frontend that
//! comes back to Initialising gets InitWait again. A broken ring closes
//! the device with the reason in its `error` node.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use xen_abi::blkif;
use xen_abi::xenbus::state;
use xenbus::Disconnect;
use xenkvm_grant::{map_domain, Access, GrantTable};
use xenkvm_ipc::vmm as ipc_vmm;
use xenkvm_ipc::Channel;
use xenstore::client::Client;

use crate::image::{Image, ImageSpec};
use crate::queue::{self, QueueCtx, QueueEnd, TaskQueue};
use crate::request::{DeviceLimits, Grants, SECTOR};
use crate::ring::{Abi, Ring};
use crate::uring::QueueUring;

/// What the backend offers (the `max-*` keys).
#[derive(Clone, Debug)]
pub struct Offer {
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `max-ring-page-order`.
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments`.
    pub max_indirect_segments: u32,
    /// `feature-persistent`.
    pub persistent: bool,
    /// I/O worker threads.
    pub io_threads: usize,
    /// The most an idle queue polls its ring before sleeping (the window
    /// adapts up to this, see xenbus::poll).
    pub spin: Duration,
    /// io_uring entries per queue on raw images (0: the thread pool only).
    pub uring_entries: u32,
}

impl Default for Offer {
    fn default() -> Offer {
        // Linux's blkback defaults: 4 queues at most, order-4 rings, 256
        // indirect segments (1 MiB requests), persistent grants.
        Offer {
            max_queues: 4,
            max_ring_page_order: 4,
            max_indirect_segments: 256,
            persistent: true,
            io_threads: 32,
            spin: xenbus::poll::DEFAULT_MAX,
            uring_entries: 128,
        }
    }
}

/// Where the backend finds its peers.
#[derive(Clone, Debug)]
pub struct Peers {
    /// The vmm's ipc socket.
    pub vmm_socket: PathBuf,
    /// xenstored's socket.
    pub xenstored: PathBuf,
}

/// One frontend queue's ring details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRing {
    /// Grants of the ring pages.
    pub refs: Vec<u32>,
    /// The frontend's port.
    pub port: u32,
}

/// What the frontend published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRings {
    /// Layout.
    pub abi: Abi,
    /// Queues.
    pub queues: Vec<QueueRing>,
    /// `feature-persistent` on both sides.
    pub persistent: bool,
}

/// Reads the frontend's ring keys (`connect_ring` in Linux's blkback).
pub fn read_frontend_rings(be: &mut xenbus::Backend, offer: &Offer, guest_bits: u8) -> Result<FrontendRings, String> {
    let protocol = be.read_frontend("protocol").ok();
    let abi = Abi::from_protocol(protocol.as_deref(), guest_bits)?;
    let persistent = offer.persistent && be.frontend_number("feature-persistent").unwrap_or(0) == 1;
    let nqueues = be.frontend_number("multi-queue-num-queues").unwrap_or(1);
    if nqueues == 0 || nqueues > offer.max_queues {
        return Err(format!("the frontend asks for {nqueues} queues; at most {} are offered", offer.max_queues));
    }
    let order = match be.read_frontend("ring-page-order") {
        Ok(_) => be.frontend_number("ring-page-order")?,
        Err(_) => 0,
    };
    if order > offer.max_ring_page_order {
        return Err(format!("ring-page-order {order} exceeds max-ring-page-order {}", offer.max_ring_page_order));
    }
    let mut queues = Vec::new();
    for q in 0..nqueues {
        let dir = if nqueues == 1 { String::new() } else { format!("queue-{q}/") };
        let refs = if order == 0 {
            vec![be.frontend_number(&format!("{dir}ring-ref"))?]
        } else {
            (0..1u32 << order).map(|i| be.frontend_number(&format!("{dir}ring-ref{i}"))).collect::<Result<Vec<_>, _>>()?
        };
        let port = be.frontend_number(&format!("{dir}event-channel"))?;
        queues.push(QueueRing { refs, port });
    }
    Ok(FrontendRings { abi, queues, persistent })
}

fn write_keys(be: &mut xenbus::Backend, keys: &[(&str, String)]) -> anyhow::Result<()> {
    let dir = be.paths.backend.clone();
    Ok(xenbus::write_keys(&mut be.client, &dir, keys)?)
}

/// The features, written before InitWait.
fn feature_keys(image: &Image, offer: &Offer) -> Vec<(&'static str, String)> {
    let mut keys = vec![
        ("feature-flush-cache", "1".to_string()),
        ("feature-barrier", "1".into()),
        ("feature-persistent", u8::from(offer.persistent).to_string()),
        ("feature-max-indirect-segments", offer.max_indirect_segments.to_string()),
        ("multi-queue-max-queues", offer.max_queues.to_string()),
        ("max-ring-page-order", offer.max_ring_page_order.to_string()),
        ("feature-discard", u8::from(image.discard_granularity().is_some()).to_string()),
    ];
    if let Some(g) = image.discard_granularity() {
        keys.push(("discard-granularity", g.to_string()));
        keys.push(("discard-alignment", "0".into()));
        keys.push(("discard-secure", u8::from(image.discard_secure()).to_string()));
    }
    keys
}

/// The disk's geometry, written at connect.
fn connect_keys(image: &Image, cdrom: bool) -> Vec<(&'static str, String)> {
    let mut info = 0;
    if image.readonly() {
        info |= blkif::VDISK_READONLY;
    }
    if cdrom {
        info |= blkif::VDISK_CDROM | blkif::VDISK_REMOVABLE;
    }
    vec![
        ("sectors", (image.size() / u64::from(image.logical_sector())).to_string()),
        ("info", info.to_string()),
        ("sector-size", image.logical_sector().to_string()),
        ("physical-sector-size", image.physical_sector().to_string()),
    ]
}

/// Serves vbd `devid` of the vmm's guest until the device is removed or
/// the guest is gone.
/// `jail` is called once set-up is done (the image open, the features
/// published), before the first guest byte is read.
pub fn serve(
    peers: &Peers,
    devid: u32,
    offer: &Offer,
    direct_override: Option<bool>,
    jail: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let ipc = connect_vmm(&peers.vmm_socket)?;
    let domid = u32::from(ipc_vmm::hello(&ipc, &format!("blkback {devid}"))?);
    let client = Client::connect(&peers.xenstored).with_context(|| format!("xenstored at {}", peers.xenstored.display()))?;
    let mut be = xenbus::Backend::open(client, "vbd", domid, devid).with_context(|| format!("vbd {devid} of domain {domid}"))?;
    let params = String::from_utf8_lossy(&be.client.read(0, &format!("{}/params", be.paths.backend))?).into_owned();
    let mode =
        be.client.read(0, &format!("{}/mode", be.paths.backend)).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
    let cdrom = be.client.read(0, &format!("{}/device-type", be.paths.backend)).is_ok_and(|v| v == b"cdrom");
    let direct =
        direct_override.unwrap_or_else(|| be.client.read(0, &format!("{}/direct-io-safe", be.paths.backend)).is_ok_and(|v| v == b"1"));
    let spec = ImageSpec::from_params(&params, mode.starts_with('r') || cdrom, direct).map_err(anyhow::Error::msg)?;
    let image = match Image::open(&spec) {
        Ok(i) => i,
        Err(e) => {
            let _ = be.client.write(0, &format!("{}/hotplug-error", be.paths.backend), format!("{e:#}").as_bytes());
            let _ = be.set_state(state::CLOSED);
            return Err(e);
        }
    };
    tracing::info!(event = "blkback.image_open", devid, domid, path = %spec.path.display(), format = ?spec.format,
        size = image.size(), readonly = image.readonly(), direct);
    write_keys(&mut be, &feature_keys(&image, offer))?;
    // The queues' io_urings, before the jail (see uring.rs): one per queue
    // offered, for raw images. A queue without one uses the thread pool.
    let mut urings = Vec::new();
    if image.has_direct_path() && offer.uring_entries > 0 {
        for q in 0..offer.max_queues {
            match QueueUring::new(offer.uring_entries) {
                Ok(r) => urings.push(Mutex::new(r)),
                Err(e) => {
                    tracing::warn!(event = "blkback.uring_unavailable", queue = q, error = %e, "queues from here on use the thread pool");
                    break;
                }
            }
        }
    }
    jail()?;
    let gone = || ipc.peer_closed();
    be.run("vbd", &gone, |be| {
        // The guest's memory first: its bitness is the default protocol.
        let end = match ipc_vmm::attach(&ipc) {
            Err(e) => Disconnect::Broken(format!("attaching to the guest: {e}")),
            Ok((memory, files)) => match read_frontend_rings(be, offer, memory.guest_bits) {
                Ok(rings) => connect_and_serve(be, &ipc, (&image, &urings), cdrom, offer, &rings, devid, (memory, files)),
                Err(e) => Disconnect::Broken(e),
            },
        };
        // Whatever the guest did not flush is made durable now, as QEMU
        // does when a disk is closed: qcow2 metadata (allocations,
        // discards) otherwise lives only in imago's caches.
        if let Err(e) = image.flush() {
            tracing::error!(event = "blkback.flush_failed", devid, error = %e);
        }
        end
    })?;
    Ok(())
}

fn connect_vmm(path: &Path) -> anyhow::Result<Channel> {
    ipc_vmm::connect(path, Duration::from_secs(10)).with_context(|| format!("connecting to the vmm at {}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn connect_and_serve(
    be: &mut xenbus::Backend,
    ipc: &Channel,
    (image, urings): (&Image, &[Mutex<QueueUring>]),
    cdrom: bool,
    offer: &Offer,
    rings: &FrontendRings,
    devid: u32,
    (memory, files): (ipc_vmm::DomainMemory, Vec<std::fs::File>),
) -> Disconnect {
    let (ram, table) = match map_domain(&memory, &files) {
        Ok(m) => m,
        Err(e) => return Disconnect::Broken(format!("mapping the guest: {e}")),
    };
    drop(files);
    let table_view = GrantTable::new(&table, &ram, 0);
    let limits = DeviceLimits {
        sectors: image.size() / SECTOR,
        readonly: image.readonly(),
        discard: image.discard_granularity().is_some(),
        discard_secure: image.discard_secure(),
        max_indirect_segments: offer.max_indirect_segments,
    };
    // Map every ring and bind every port before saying Connected.
    let mut queues = Vec::new();
    let mut ports = Vec::new();
    for (i, q) in rings.queues.iter().enumerate() {
        let mut pages = Vec::new();
        for &gref in &q.refs {
            match table_view.map(gref, Access::Write) {
                Ok(p) => pages.push(p),
                Err(e) => return Disconnect::Broken(format!("queue {i} ring page: {e}")),
            }
        }
        let (port, kick, notify) = match ipc_vmm::bind(ipc, q.port) {
            Ok(b) => b,
            Err(e) => return Disconnect::Broken(format!("queue {i} event channel {}: {e}", q.port)),
        };
        ports.push(port);
        queues.push((Ring::new(pages, rings.abi), kick, notify));
    }
    if let Err(e) = write_keys(be, &connect_keys(image, cdrom)).and_then(|_| be.set_state(state::CONNECTED).map_err(Into::into)) {
        return Disconnect::Broken(format!("publishing the disk: {e}"));
    }
    tracing::info!(event = "blkback.connected", devid, queues = queues.len(), ring_pages = rings.queues[0].refs.len(),
        abi = ?rings.abi, persistent = rings.persistent);
    let set = xenbus::QueueSet::default();
    let (pool_tx, pool_rx) = std::sync::mpsc::channel();
    let tasks: TaskQueue = Mutex::new(pool_rx);
    let end = std::thread::scope(|s| {
        for i in 0..offer.io_threads.max(1) {
            let tasks = &tasks;
            std::thread::Builder::new().name(format!("blkio{i}")).spawn_scoped(s, move || queue::worker(tasks, image)).expect("spawn");
        }
        for (i, (ring, kick, notify)) in queues.into_iter().enumerate() {
            let ctx = QueueCtx {
                index: i as u32,
                image,
                limits,
                pool: pool_tx.clone(),
                stop: set.stop_flag(),
                spin: offer.spin,
                uring: urings.get(i),
            };
            let grants = Grants::new(&table_view, rings.persistent);
            let set = &set;
            std::thread::Builder::new()
                .name(format!("blkq{i}"))
                .spawn_scoped(s, move || {
                    if let QueueEnd::Corrupt(why) = queue::run(ctx, ring, grants, kick, notify) {
                        tracing::error!(event = "blkback.ring_corrupt", queue = i, reason = %why);
                        set.broke(i, &why);
                    }
                })
                .expect("spawn");
        }
        drop(pool_tx);
        // The queues stop when it ends; the scope waits for them.
        be.watch_queues(&set, &|| ipc.peer_closed(), || {})
    });
    ipc_vmm::close_ports(ipc, &ports);
    end
}
