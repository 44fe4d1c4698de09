//! One vif's xenbus life, as Linux's xen-netback runs it: features are
//! published and the backend waits in InitWait; when the frontend has
//! written its rings (Connected, or Initialised) each queue's rings are
//! mapped, its event channel(s) bound and a thread serves it, on its own
//! tap queue; Closing tears the connection down; a frontend that returns
//! to Initialising is served again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use xen_abi::netif;
use xenbus::Disconnect;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::{map_domain, Access, GrantTable};
use xenkvm_ipc::vmm as ipc_vmm;
use xenkvm_ipc::Channel;
use xenkvm_sandbox::cpus::CpuList;
use xenstore::client::Client;

use crate::queue::{self, Channels, QueueCtx, QueueEnd};
use crate::rx::RxFeatures;
use crate::stats::Stats;
use crate::tap::{self, TapQueue};
use crate::tap_uring::{TapUring, WriterRing};
use crate::tx::TxFeatures;

/// What the backend offers.
#[derive(Clone, Debug)]
pub struct Offer {
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// The most an idle queue polls before sleeping (the window adapts up
    /// to this, see xenbus::poll; zero: never).
    pub spin: std::time::Duration,
}

/// Where the backend finds its peers and its host side.
#[derive(Clone, Debug)]
pub struct Peers {
    /// The vmm's ipc socket.
    pub vmm_socket: PathBuf,
    /// xenstored's socket.
    pub xenstored: PathBuf,
    /// The tap (default `vif<domid>.<devid>`, or the backend's `vifname`).
    pub tap: Option<String>,
    /// Tap queue descriptors passed by the launcher (instead of opening `tap`).
    pub tap_fds: Vec<std::os::fd::RawFd>,
    /// Where the counters are written (every second and at the end).
    pub stats: Option<PathBuf>,
    /// Host CPUs the queues' TX writers run on, one each in turn (any when `None`).
    pub tx_writer_cpus: Option<CpuList>,
}

/// One frontend queue's ring details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRings {
    /// `tx-ring-ref`.
    pub tx_ref: u32,
    /// `rx-ring-ref`.
    pub rx_ref: u32,
    /// `event-channel`, or `event-channel-tx` when split.
    pub tx_port: u32,
    /// `event-channel-rx` when split.
    pub rx_port: Option<u32>,
}

/// What the frontend published.
#[derive(Clone, Debug)]
pub struct Frontend {
    /// The queues.
    pub queues: Vec<QueueRings>,
    /// TX side features.
    pub tx: TxFeatures,
    /// RX side features.
    pub rx: RxFeatures,
    /// Whether the frontend takes packets with checksums left blank.
    pub csum_offload: bool,
}

fn flag(be: &mut xenbus::Backend, key: &str) -> bool {
    be.frontend_number(key).unwrap_or(0) == 1
}

/// Reads the frontend's keys (netif.h's names), checking them against the offer.
pub fn read_frontend(be: &mut xenbus::Backend, offer: &Offer) -> Result<Frontend, String> {
    if !flag(be, "request-rx-copy") {
        return Err("the frontend does not use request-rx-copy (page flipping is not supported)".into());
    }
    let nqueues = be.frontend_number("multi-queue-num-queues").unwrap_or(1);
    if nqueues == 0 || nqueues > offer.max_queues {
        return Err(format!("the frontend asks for {nqueues} queues; at most {} are offered", offer.max_queues));
    }
    let mut queues = Vec::new();
    for q in 0..nqueues {
        let dir = if nqueues == 1 { String::new() } else { format!("queue-{q}/") };
        let tx_ref = be.frontend_number(&format!("{dir}tx-ring-ref"))?;
        let rx_ref = be.frontend_number(&format!("{dir}rx-ring-ref"))?;
        let (tx_port, rx_port) = match be.frontend_number(&format!("{dir}event-channel-tx")) {
            Ok(tx) => (tx, Some(be.frontend_number(&format!("{dir}event-channel-rx"))?)),
            Err(_) => (be.frontend_number(&format!("{dir}event-channel"))?, None),
        };
        queues.push(QueueRings { tx_ref, rx_ref, tx_port, rx_port });
    }
    let csum_offload = !flag(be, "feature-no-csum-offload");
    let (gso4, gso6, sg) = (flag(be, "feature-gso-tcpv4"), flag(be, "feature-gso-tcpv6"), flag(be, "feature-sg"));
    let ipv6_csum = flag(be, "feature-ipv6-csum-offload");
    Ok(Frontend {
        queues,
        // What the frontend may send us: we offered GSO both ways.
        tx: TxFeatures { gso_tcpv4: true, gso_tcpv6: true },
        rx: RxFeatures { sg, gso_tcpv4: gso4 && sg && csum_offload, gso_tcpv6: gso6 && sg && csum_offload && ipv6_csum },
        csum_offload,
    })
}

/// The features, written before InitWait.
fn feature_keys(offer: &Offer) -> Vec<(&'static str, String)> {
    vec![
        ("feature-sg", "1".to_string()),
        ("feature-gso-tcpv4", "1".into()),
        ("feature-gso-tcpv6", "1".into()),
        ("feature-ipv6-csum-offload", "1".into()),
        ("feature-rx-copy", "1".into()),
        ("feature-rx-flip", "0".into()),
        ("feature-split-event-channels", "1".into()),
        ("multi-queue-max-queues", offer.max_queues.to_string()),
    ]
}

/// Serves vif `devid` of the vmm's guest until the device is removed or
/// the guest is gone.
/// `jail` is called once set-up is done (the tap and the counters file
/// open, the features published), before the first guest byte is read,
/// with what it must run inside the jail just before the seccomp filter
/// (making the TX rings; `xenkvm_sandbox::enter_then`).
pub fn serve(peers: &Peers, devid: u32, offer: &Offer, jail: impl FnOnce(&mut dyn FnMut()) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let ipc = ipc_vmm::connect(&peers.vmm_socket, Duration::from_secs(10))
        .with_context(|| format!("connecting to the vmm at {}", peers.vmm_socket.display()))?;
    let domid = u32::from(ipc_vmm::hello(&ipc, &format!("netback {devid}"))?);
    let client = Client::connect(&peers.xenstored).with_context(|| format!("xenstored at {}", peers.xenstored.display()))?;
    let mut be = xenbus::Backend::open(client, "vif", domid, devid).with_context(|| format!("vif {devid} of domain {domid}"))?;
    let backend = be.paths.backend.clone();
    let (tap_name, taps) = if peers.tap_fds.is_empty() {
        let name = match &peers.tap {
            Some(t) => t.clone(),
            None => be
                .client
                .read(0, &format!("{backend}/vifname"))
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_else(|_| format!("vif{domid}.{devid}")),
        };
        let taps = tap::open(&name, offer.max_queues as usize).with_context(|| format!("tap {name}"))?;
        (name, taps)
    } else {
        tap::from_fds(&peers.tap_fds).context("the tap descriptors passed in")?
    };
    if taps.len() < offer.max_queues as usize {
        anyhow::bail!("{} tap queues for {} offered queues", taps.len(), offer.max_queues);
    }
    tracing::info!(event = "netback.tap_open", devid, domid, tap = %tap_name, queues = taps.len());
    xenbus::write_keys(&mut be.client, &backend, &feature_keys(offer))?;
    let stats_file = match &peers.stats {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(p)
                .with_context(|| format!("counters file {}", p.display()))?,
        ),
        None => None,
    };
    // The TX rings, inside the jail's namespaces (see tap_uring.rs).
    let mut rings: Vec<WriterRing> = Vec::new();
    jail(&mut || rings = tx_rings(taps.len(), peers.tx_writer_cpus.as_ref()))?;
    let peers_stats = stats_file.as_ref();
    let stats = Stats::default();
    let gone = || ipc.peer_closed();
    let r = be.run("vif", &gone, |be| {
        match ipc_vmm::attach(&ipc).map_err(|e| e.to_string()).and_then(|m| read_frontend(be, offer).map(|f| (m, f))) {
            Err(e) => Disconnect::Broken(e),
            Ok(((memory, files), fe)) => {
                connect_and_serve(be, &ipc, (&taps, &rings), (&fe, offer), devid, (memory, files), &stats, peers_stats)
            }
        }
    });
    write_stats(peers_stats, &stats);
    r?;
    Ok(())
}

/// One TX ring per tap queue, queue `q`'s polling thread on the `q`th CPU
/// of `cpus` (round the list again when there are more queues).
fn tx_rings(queues: usize, cpus: Option<&CpuList>) -> Vec<WriterRing> {
    (0..queues)
        .map(|q| {
            let cpu = cpus.and_then(|c| c.cpus().get(q % c.cpus().len().max(1)).copied());
            let ring = match TapUring::new(cpu) {
                Ok(r) => {
                    if let Some(cpu) = cpu {
                        tracing::info!(event = "netback.tx_writer_pinned", queue = q, cpus = cpu);
                    }
                    Ok(r)
                }
                Err(e) if cpu.is_some() => {
                    tracing::warn!(event = "netback.tx_writer_cpus", queue = q, cpus = ?cpu, error = %e, "TX writer unplaced");
                    TapUring::new(None)
                }
                Err(e) => Err(e),
            };
            std::sync::Mutex::new(
                ring.map_err(|e| {
                    tracing::warn!(event = "netback.tx_uring_unavailable", queue = q, error = %e, "the queue thread writes every TX frame itself");
                })
                .ok(),
            )
        })
        .collect()
}

/// Rewrites the counters file in place (it was opened before the jail).
fn write_stats(file: Option<&std::fs::File>, stats: &Stats) {
    use std::os::unix::fs::FileExt;
    if let Some(f) = file {
        let text = stats.render();
        if f.write_all_at(text.as_bytes(), 0).and_then(|_| f.set_len(text.len() as u64)).is_err() {
            tracing::warn!(event = "netback.stats_write");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn connect_and_serve(
    be: &mut xenbus::Backend,
    ipc: &Channel,
    (taps, rings): (&[TapQueue], &[WriterRing]),
    (fe, offer): (&Frontend, &Offer),
    devid: u32,
    (memory, files): (ipc_vmm::DomainMemory, Vec<std::fs::File>),
    stats: &Stats,
    stats_path: Option<&std::fs::File>,
) -> Disconnect {
    let (ram, table) = match map_domain(&memory, &files) {
        Ok(m) => m,
        Err(e) => return Disconnect::Broken(format!("mapping the guest: {e}")),
    };
    drop(files);
    let table_view = GrantTable::new(&table, &ram, 0);
    // Offloads the host may use towards the guest, as the frontend takes them.
    let mut offload = 0;
    if fe.csum_offload {
        offload |= tap::TUN_F_CSUM;
        if fe.rx.gso_tcpv4 {
            offload |= tap::TUN_F_TSO4;
        }
        if fe.rx.gso_tcpv6 {
            offload |= tap::TUN_F_TSO6;
        }
    }
    for (i, t) in taps.iter().enumerate() {
        let used = i < fe.queues.len();
        if let Err(e) = t.set_attached(used).and_then(|_| if used { t.set_offload(offload) } else { Ok(()) }) {
            return Disconnect::Broken(format!("tap queue {i}: {e}"));
        }
    }
    let mut queues = Vec::new();
    let mut ports = Vec::new();
    for (i, q) in fe.queues.iter().enumerate() {
        let map = |gref: u32, what: &str| table_view.map(gref, Access::Write).map_err(|e| format!("queue {i} {what} ring: {e}"));
        let (tx_page, rx_page) = match map(q.tx_ref, "TX").and_then(|t| map(q.rx_ref, "RX").map(|r| (t, r))) {
            Ok(p) => p,
            Err(e) => return Disconnect::Broken(e),
        };
        let bind = |port: u32| ipc_vmm::bind(ipc, port).map_err(|e| format!("queue {i} event channel {port}: {e}"));
        let ch = match bind(q.tx_port).and_then(|(p, k, n)| {
            ports.push(p);
            match q.rx_port {
                Some(rp) => bind(rp).map(|(p2, k2, n2)| {
                    ports.push(p2);
                    Channels { tx_kick: k, tx_notify: n, rx: Some((k2, n2)) }
                }),
                None => Ok(Channels { tx_kick: k, tx_notify: n, rx: None }),
            }
        }) {
            Ok(c) => c,
            Err(e) => return Disconnect::Broken(e),
        };
        queues.push((SharedRing::new(vec![tx_page], netif::TX_SLOT), SharedRing::new(vec![rx_page], netif::RX_SLOT), ch));
    }
    if let Err(e) = be.set_state(xen_abi::xenbus::state::CONNECTED) {
        return Disconnect::Broken(format!("publishing the state: {e}"));
    }
    tracing::info!(
        event = "netback.connected",
        devid,
        queues = queues.len(),
        split = fe.queues[0].rx_port.is_some(),
        sg = fe.rx.sg,
        gso_tcpv4 = fe.rx.gso_tcpv4,
        csum_offload = fe.csum_offload
    );
    let set = xenbus::QueueSet::default();
    let end = std::thread::scope(|s| {
        for (i, (tx, rx, ch)) in queues.into_iter().enumerate() {
            let ctx = QueueCtx {
                index: i as u32,
                table: &table_view,
                tap: &taps[i],
                tap_uring: &rings[i],
                stats,
                stop: set.stop_flag(),
                tx_features: fe.tx,
                rx_features: fe.rx,
                spin: offer.spin,
            };
            let set = &set;
            std::thread::Builder::new()
                .name(format!("netq{i}"))
                .spawn_scoped(s, move || {
                    if let QueueEnd::Corrupt(why) = queue::run(ctx, tx, rx, ch) {
                        tracing::error!(event = "netback.ring_corrupt", queue = i, reason = %why);
                        set.broke(i, &why);
                    }
                })
                .expect("spawn");
        }
        let mut last_stats = Instant::now();
        let tick = || {
            if last_stats.elapsed() >= Duration::from_secs(1) {
                write_stats(stats_path, stats);
                last_stats = Instant::now();
            }
        };
        // The queues stop when it ends; the scope waits for them.
        be.watch_queues(&set, &|| ipc.peer_closed(), tick)
    });
    ipc_vmm::close_ports(ipc, &ports);
    end
}
