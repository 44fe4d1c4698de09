//! netback against a host-side netfront (fake vmm, real grant table and
//! rings, eventfds), with its tap in a network namespace made by the test:
//! ARP and ICMP echo from the host's `ping`, UDP with checksum offload and
//! scatter-gather to a host socket, and malformed TX requests dropped,
//! counted and answered without breaking the ring; jumbo frames over
//! several RX buffers and RX buffers the guest granted read-only.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use xen_abi::netif::{self, ExtraInfo, TxRequest};
use xenkvm_tests::blkfront::FakeDomain;
use xenkvm_tests::netfront::Netfront;
use xenkvm_tests::{binary, rss_kib, status_field, tempdir, Netns, XenstoredProc};
use zerocopy::IntoBytes;

const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 99, 0, 2];
const HOST_IP: [u8; 4] = [10, 99, 0, 1];

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts netback for vif 0 of `dom` inside `ns` on tap `tap` (extra
/// arguments after), logging to `dir/netback.log`, counters in
/// `dir/netback.stats`.
fn start_netback(ns: &Netns, dom: &FakeDomain, xs: &XenstoredProc, tap: &str, extra: &[&str], dir: &std::path::Path) -> Proc {
    Proc(
        ns.cmd(binary("xenkvm-netback").to_str().unwrap())
            .arg("--vmm-socket")
            .arg(&dom.socket)
            .arg("--xenstored")
            .arg(&xs.socket)
            .args(["--devid", "0", "--tap", tap])
            .args(extra)
            .arg("--stats")
            .arg(dir.join("netback.stats"))
            .arg("--log")
            .arg(dir.join("netback.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Vif 0 of domain `domid` ready for traffic: netback on tap `tap` in a
/// network namespace of its own, the tap up as 10.99.0.1/24, and a
/// host-side netfront connected (`split`: one event channel per ring).
/// Tests take it apart in the order its fields should drop in reverse:
/// the frontend first, the namespace last.
struct Vif {
    f: Netfront,
    netback: Proc,
    dom: std::sync::Arc<FakeDomain>,
    xs: XenstoredProc,
    ns: Netns,
    dir: std::path::PathBuf,
}

impl Vif {
    fn up(ns_name: &str, domid: u16, ram_mib: u64, tap: &str, split: bool) -> Vif {
        let v = Vif::connected(ns_name, domid, ram_mib, tap, 1, split, &[]);
        v.ns.run(&["ip", "addr", "add", "10.99.0.1/24", "dev", tap]);
        v.ns.run(&["ip", "link", "set", tap, "up"]);
        v
    }

    /// As [`Vif::up`] with `queues` queues and `args` for netback, the
    /// tap left unconfigured.
    fn connected(ns_name: &str, domid: u16, ram_mib: u64, tap: &str, queues: u32, split: bool, args: &[&str]) -> Vif {
        let ns = Netns::new(ns_name);
        let xs = XenstoredProc::start(&[]);
        let dir = tempdir();
        let dom = FakeDomain::start(&dir, domid, ram_mib, 32);
        Netfront::create_device(&xs.socket, domid, 0, "00:16:3e:12:34:56").unwrap();
        let max_queues = queues.to_string();
        let mut extra = args.to_vec();
        if queues > 1 {
            extra.extend(["--max-queues", &max_queues]);
        }
        let netback = start_netback(&ns, &dom, &xs, tap, &extra, &dir);
        let f = Netfront::connect_queues(dom.clone(), &xs.socket, 0, queues, split)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", std::fs::read_to_string(dir.join("netback.log")).unwrap_or_default()));
        Vif { f, netback, dom, xs, ns, dir }
    }
}

fn csum(data: &[u8]) -> u16 {
    let mut acc: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The guest's answer to `frame` (ARP request or ICMP echo for GUEST_IP).
fn answer(frame: &[u8]) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x0806 && frame.len() >= 42 && frame[20..22] == [0, 1] && frame[38..42] == GUEST_IP {
        let mut r = frame[..42].to_vec();
        r[0..6].copy_from_slice(&frame[6..12]);
        r[6..12].copy_from_slice(&GUEST_MAC);
        r[20..22].copy_from_slice(&[0, 2]);
        r[22..28].copy_from_slice(&GUEST_MAC);
        r[28..32].copy_from_slice(&GUEST_IP);
        r[32..38].copy_from_slice(&frame[22..28]);
        r[38..42].copy_from_slice(&frame[28..32]);
        return Some(r);
    }
    if ethertype == 0x0800 && frame.len() >= 42 && frame[23] == 1 && frame[30..34] == GUEST_IP && frame[34] == 8 {
        let ihl = usize::from(frame[14] & 0xf) * 4;
        let mut r = frame.to_vec();
        r[0..6].copy_from_slice(&frame[6..12]);
        r[6..12].copy_from_slice(&GUEST_MAC);
        r[26..30].copy_from_slice(&frame[30..34]);
        r[30..34].copy_from_slice(&frame[26..30]);
        let icmp = 14 + ihl;
        r[icmp] = 0;
        r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
        let c = csum(&r[icmp..]);
        r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
        return Some(r);
    }
    None
}

/// An Ethernet/IPv4/UDP frame from the guest to the host, its UDP checksum
/// left blank (the backend's offload finishes it).
fn udp_frame(host_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&host_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&GUEST_IP);
    ip[16..20].copy_from_slice(&HOST_IP);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4321u16.to_be_bytes());
    f.extend_from_slice(&5555u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn stat(path: &std::path::Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

#[test]
fn test_ping_udp_offload_and_malformed_tx_on_a_tap_in_a_netns() {
    let Vif { ns, xs: _xs, dir, dom, netback: _netback, mut f } = Vif::up("nb", 4, 64, "xkt0", true);
    let (log, stats) = (dir.join("netback.log"), dir.join("netback.stats"));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(f.backend_key("feature-split-event-channels").unwrap(), "1");

    // ARP and ICMP: the host pings the guest, the guest answers.
    let mut ping = Proc(ns.cmd("ping").args(["-c", "3", "-i", "0.2", "-W", "3", "10.99.0.2"]).stdout(Stdio::piped()).spawn().unwrap());
    let start = Instant::now();
    let mut host_mac = None;
    let status = loop {
        if let Some(st) = ping.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "ping never ended\n{}", logs());
        for fr in f.recv(Duration::from_millis(50)) {
            assert!(!fr.error, "{fr:?}");
            if fr.data[12..14] == [0x08, 0x06] {
                host_mac = Some(<[u8; 6]>::try_from(&fr.data[6..12]).unwrap());
            }
            if let Some(reply) = answer(&fr.data) {
                f.send(&reply, 4096, 0, None);
                let r = f.tx_responses(1, Duration::from_secs(5));
                assert!(r.iter().all(|r| r.status == netif::RSP_OKAY), "{r:?}");
            }
        }
    };
    let mut out = String::new();
    std::io::Read::read_to_string(ping.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success() && out.contains("3 received"), "{out}\n{}", logs());
    let host_mac = host_mac.expect("the host resolved the guest by ARP");

    // UDP with a blank checksum, in three slots (scatter-gather), to a socket on the host.
    let receiver = ns
        .cmd("/usr/bin/python3")
        .args(["-c", "import socket;s=socket.socket(2,2);s.bind(('10.99.0.1',5555));s.settimeout(10);d,a=s.recvfrom(9000);print(len(d),a[0],d[:16].decode())"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let payload: Vec<u8> = b"xenkvm-udp-test:".iter().copied().chain((0..1384).map(|i| (i % 251) as u8)).collect();
    f.send(&udp_frame(host_mac, &payload), 600, netif::NETTXF_CSUM_BLANK, None);
    let r = f.tx_responses(3, Duration::from_secs(5));
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r.iter().all(|r| r.status == netif::RSP_OKAY), "{r:?}");
    let got = receiver.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&got.stdout);
    assert_eq!(line.trim(), "1400 10.99.0.2 xenkvm-udp-test:", "the host took the datagram (checksum completed)\n{}", logs());

    // Malformed TX requests: each dropped, counted, every slot answered.
    let good = f.tx_page(0, &[0u8; 64]);
    let slot = |gref: u32, flags: u16, id: u16, size: u16| TxRequest { gref, offset: 0, flags, id, size }.as_bytes().to_vec();
    // Fragments larger than the packet.
    f.put_tx_slots(&[slot(good, netif::NETTXF_MORE_DATA, 100, 20), slot(good, 0, 101, 100)]);
    // A grant never given.
    f.put_tx_slots(&[slot(dom.unused_gref(), 0, 102, 60)]);
    // A fragment across its page.
    f.put_tx_slots(&[TxRequest { gref: good, offset: 4000, flags: 0, id: 103, size: 200 }.as_bytes().to_vec()]);
    // 19 data slots.
    let many: Vec<Vec<u8>> =
        (0..19).map(|i| slot(good, if i < 18 { netif::NETTXF_MORE_DATA } else { 0 }, 110 + i, if i == 0 { 19 * 60 } else { 60 })).collect();
    f.put_tx_slots(&many);
    // An unknown extra-info type.
    let bad_extra = ExtraInfo { ty: 7, flags: 0, u: [0; 6] };
    f.put_tx_slots(&[slot(good, netif::NETTXF_EXTRA_INFO, 130, 60), bad_extra.as_bytes().to_vec()]);
    let r = f.tx_responses(2 + 1 + 1 + 19 + 2, Duration::from_secs(5));
    let statuses: Vec<(u16, i16)> = r.iter().map(|r| (r.id, r.status)).collect();
    let mut want = vec![(100, netif::RSP_ERROR), (101, netif::RSP_ERROR), (102, netif::RSP_ERROR), (103, netif::RSP_ERROR)];
    want.extend((0..19).map(|i| (110 + i, netif::RSP_ERROR)));
    want.extend([(130, netif::RSP_ERROR), (0, netif::RSP_NULL)]);
    assert_eq!(statuses, want);
    // The ring still works: the host still answers a ping.
    let ping = ns.cmd("ping").args(["-c", "1", "-W", "3", "10.99.0.2"]).stdout(Stdio::null()).spawn().unwrap();
    let mut ping = Proc(ping);
    let start = Instant::now();
    let ok = loop {
        if let Some(st) = ping.0.try_wait().unwrap() {
            break st.success();
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        for fr in f.recv(Duration::from_millis(50)) {
            if let Some(reply) = answer(&fr.data) {
                f.send(&reply, 4096, 0, None);
                f.tx_responses(1, Duration::from_secs(5));
            }
        }
    };
    assert!(ok, "ping after the malformed requests\n{}", logs());
    // Counters (rewritten every second).
    std::thread::sleep(Duration::from_millis(1300));
    for (key, min) in [
        ("tx_drop_bad_size", 2),
        ("tx_drop_bad_grant", 1),
        ("tx_drop_too_many_slots", 1),
        ("tx_drop_bad_extra", 1),
        ("tx_packets", 5),
        ("rx_packets", 4),
    ] {
        assert!(stat(&stats, key) >= min, "{key} < {min}\n{}", std::fs::read_to_string(&stats).unwrap_or_default());
    }
    let jailed = logs().lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default().to_string();
    for step in ["user+mount+net namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
        assert!(jailed.contains(step), "{step} missing: {jailed}");
    }
    f.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A burst of TX frames as fast as the ring takes them (netback's writer
/// thread writes one batch while the next is taken): every frame reaches
/// the host whole, in the order sent, and every slot is answered OKAY.
/// Every other frame asks for checksum offload (its head is copied and
/// fixed); the rest go to the tap straight from their granted pages.
#[test]
fn test_a_tx_burst_arrives_whole_and_in_order() {
    const FRAMES: usize = 20_000;
    let Vif { ns, xs: _xs, dir, dom: _dom, netback: _netback, mut f } = Vif::up("burst", 8, 64, "xkt5", false);
    let log = dir.join("netback.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let link = String::from_utf8_lossy(&ns.cmd("ip").args(["-o", "link", "show", "xkt5"]).output().unwrap().stdout).to_string();
    let mac = link.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no MAC in {link}"));
    let host_mac: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    let host_mac: [u8; 6] = host_mac.try_into().unwrap();
    // The receiver's buffer holds the whole burst (SO_RCVBUFFORCE), so a
    // missing datagram is netback's, not a slow reader's.
    let script = format!(
        "import socket\ns=socket.socket(2,2)\ns.setsockopt(1,33,1<<27)\ns.bind(('10.99.0.1',5555))\ns.settimeout(10)\nprint('ready',flush=True)\n\
         seen=[]\nbad=0\nwhile len(seen)<{FRAMES}:\n try: d=s.recv(2048)\n except socket.timeout: break\n \
         seen.append(int(d[:8]))\n bad+=d[8:]!=bytes(range(200))\n\
         out=[(a,b) for a,b in zip([-1]+seen,seen) if b!=a+1]\n\
         print(len(seen),'out-of-order',out[:8],'missing',sorted(set(range({FRAMES}))-set(seen))[:8],'bad',bad)"
    );
    let mut receiver = ns.cmd("/usr/bin/python3").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for k in 0..FRAMES {
        let payload: Vec<u8> = format!("{k:08}").bytes().chain((0..200).map(|i| i as u8)).collect();
        // Two slots a frame: the head in one, the rest in another. A UDP
        // checksum left 0 without offload means "none" (IPv4).
        let flags = if k % 2 == 0 { netif::NETTXF_CSUM_BLANK } else { 0 };
        f.send(&udp_frame(host_mac, &payload), 128, flags, None);
    }
    let r = f.tx_responses(2 * FRAMES, Duration::from_secs(20));
    assert_eq!(r.len(), 2 * FRAMES, "every slot answered\n{}", logs());
    assert!(r.iter().all(|r| r.status == netif::RSP_OKAY), "every slot OKAY\n{}", logs());
    line.clear();
    std::io::Read::read_to_string(&mut out, &mut line).unwrap();
    let _ = receiver.wait();
    assert_eq!(line.trim(), format!("{FRAMES} out-of-order [] missing [] bad 0"), "every datagram, whole and in order\n{}", logs());
    f.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal TCP endpoint for the simulated guest: enough to take a bulk
/// stream from the host (ACKing in order) and to push one to it.
struct Tcp {
    host_mac: [u8; 6],
    port: u16,
    peer_port: u16,
    seq: u32,
    ack: u32,
    received: usize,
    acked: u32,
    fin: bool,
}

fn tcp_frame(t: &Tcp, flags: u8, payload: &[u8]) -> Vec<u8> {
    let syn = flags & 0x02 != 0;
    let hl = if syn { 24 } else { 20 };
    let mut f = Vec::with_capacity(14 + 20 + hl + payload.len());
    f.extend_from_slice(&t.host_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + hl + payload.len()) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&GUEST_IP);
    ip[16..20].copy_from_slice(&HOST_IP);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&t.port.to_be_bytes());
    f.extend_from_slice(&t.peer_port.to_be_bytes());
    f.extend_from_slice(&t.seq.to_be_bytes());
    f.extend_from_slice(&t.ack.to_be_bytes());
    f.push(((hl / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    if syn {
        f.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    }
    f.extend_from_slice(payload);
    f
}

/// (src port, dst port, seq, ack, flags, payload) of a TCP segment.
type TcpSegment<'a> = (u16, u16, u32, u32, u8, &'a [u8]);

/// The TCP segment in a TCP/IPv4 frame to the guest.
fn parse_tcp(fr: &[u8]) -> Option<TcpSegment<'_>> {
    if fr.len() < 54 || fr[12..14] != [8, 0] || fr[23] != 6 || fr[30..34] != GUEST_IP {
        return None;
    }
    let ihl = usize::from(fr[14] & 0xf) * 4;
    let total = 14 + usize::from(u16::from_be_bytes([fr[16], fr[17]]));
    let t = 14 + ihl;
    let be16 = |i: usize| u16::from_be_bytes([fr[i], fr[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([fr[i], fr[i + 1], fr[i + 2], fr[i + 3]]);
    let doff = usize::from(fr[t + 12] >> 4) * 4;
    Some((be16(t), be16(t + 2), be32(t + 4), be32(t + 8), fr[t + 13], fr.get(t + doff..total.min(fr.len()))?))
}

/// GSO and scatter-gather both ways, with checksum offload: the host
/// streams 1 MiB over TCP to the simulated guest (the tap hands netback
/// TSO frames, delivered over several RX slots with a GSO extra), then the
/// guest streams 256 KiB back in 16 KiB GSO segments of four TX slots each.
#[test]
fn test_tcp_bulk_with_gso_and_sg_both_ways() {
    let Vif { ns, xs: _xs, dir, dom: _dom, netback: _netback, mut f } = Vif::up("gso", 5, 128, "xkt1", false);
    let log = dir.join("netback.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    const IN: usize = 1 << 20;
    // Reno, not the host's default congestion control: BBR sends one
    // segment per skb on a slow flow (a loaded host), so no TSO frame.
    let sender = ns
        .cmd("/usr/bin/python3")
        .args(["-c", &format!("import socket;s=socket.create_connection(('10.99.0.2',7000),timeout=30);s.setsockopt(socket.IPPROTO_TCP,socket.TCP_CONGESTION,b'reno');s.sendall(b'x'*{IN});s.shutdown(1);s.recv(1);print('sent')")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tcp: Option<Tcp> = None;
    let (mut gso_frames, mut biggest) = (0, 0);
    let start = Instant::now();
    while !tcp.as_ref().is_some_and(|t| t.fin) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "host to guest stalled at {:?} ack {:?}: {}\n{}\n{}",
            tcp.as_ref().map(|t| t.received),
            tcp.as_ref().map(|t| t.ack),
            f.debug_state(),
            String::from_utf8_lossy(&ns.cmd("ip").args(["-s", "-d", "link", "show", "xkt1"]).output().unwrap().stdout),
            logs()
        );
        for fr in f.recv(Duration::from_millis(20)) {
            if let Some(reply) = answer(&fr.data) {
                f.send(&reply, 4096, 0, None);
                continue;
            }
            let Some((sport, dport, seq, _ack, flags, payload)) = parse_tcp(&fr.data) else { continue };
            if dport != 7000 {
                continue;
            }
            if fr.gso.is_some() {
                gso_frames += 1;
            }
            biggest = biggest.max(fr.data.len());
            let host_mac = <[u8; 6]>::try_from(&fr.data[6..12]).unwrap();
            let t = tcp.get_or_insert(Tcp { host_mac, port: 7000, peer_port: sport, seq: 5000, ack: 0, received: 0, acked: 0, fin: false });
            let reply = if flags & 0x02 != 0 {
                // A SYN (or its retransmission): SYN-ACK from our ISN, 5000.
                t.ack = seq.wrapping_add(1);
                t.seq = 5000;
                let r = tcp_frame(t, 0x12, &[]);
                t.seq = 5001;
                r
            } else {
                // In order, or a retransmission overlapping what we have:
                // take the new part.
                let skip = t.ack.wrapping_sub(seq) as usize;
                if skip <= payload.len() && (t.ack.wrapping_sub(seq) as i32) >= 0 {
                    let fresh = payload.len() - skip;
                    t.ack = t.ack.wrapping_add(fresh as u32);
                    t.received += fresh;
                    if flags & 0x01 != 0 {
                        t.ack = t.ack.wrapping_add(1);
                        t.fin = true;
                    }
                }
                tcp_frame(t, if t.fin { 0x11 } else { 0x10 }, &[])
            };
            f.send(&reply, 4096, netif::NETTXF_CSUM_BLANK, None);
        }
        f.tx_responses(0, Duration::ZERO);
    }
    let out = sender.wait_with_output().unwrap();
    assert_eq!(tcp.as_ref().unwrap().received, IN, "{}", logs());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent"));
    assert!(gso_frames > 0 && biggest > 4096, "the host sent TSO frames over several slots: {gso_frames} GSO, biggest {biggest}");

    // Guest to host: 16 KiB segments with a GSO extra, four slots each.
    const OUT: usize = 256 << 10;
    let receiver = ns
        .cmd("/usr/bin/python3")
        .args(["-c", "import socket;l=socket.socket();l.setsockopt(1,2,1);l.bind(('10.99.0.1',7001));l.listen(1);c,a=l.accept();n=0\nwhile True:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\nprint(n)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let host_mac = tcp.as_ref().unwrap().host_mac;
    let mut t = Tcp { host_mac, port: 40000, peer_port: 7001, seq: 90000, ack: 0, received: 0, acked: 90000, fin: false };
    f.send(&tcp_frame(&t, 0x02, &[]), 4096, netif::NETTXF_CSUM_BLANK, None);
    t.seq += 1;
    let isn = t.seq;
    let mut sent = 0usize;
    let mut established = false;
    let start = Instant::now();
    let mut progress = Instant::now();
    while t.acked != isn.wrapping_add(OUT as u32).wrapping_add(1) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "guest to host stalled: sent {sent}, acked {}\n{}",
            t.acked.wrapping_sub(isn),
            logs()
        );
        for fr in f.recv(Duration::from_millis(10)) {
            if let Some(reply) = answer(&fr.data) {
                f.send(&reply, 4096, 0, None);
                continue;
            }
            let Some((_, dport, seq, ack, flags, _)) = parse_tcp(&fr.data) else { continue };
            if dport != 40000 {
                continue;
            }
            if flags & 0x12 == 0x12 && !established {
                established = true;
                t.ack = seq.wrapping_add(1);
                f.send(&tcp_frame(&t, 0x10, &[]), 4096, netif::NETTXF_CSUM_BLANK, None);
            }
            if flags & 0x10 != 0 && ack.wrapping_sub(t.acked) as i32 > 0 {
                t.acked = ack;
                progress = Instant::now();
            }
        }
        // A loaded host may drop a segment after the tap took it (its
        // backlog overflows): go back to what it acknowledged, as TCP does.
        if established && t.seq != t.acked && progress.elapsed() > Duration::from_millis(300) {
            t.seq = t.acked;
            sent = t.acked.wrapping_sub(isn) as usize;
            progress = Instant::now();
        }
        while established && sent < OUT && t.seq.wrapping_sub(t.acked) < 48 << 10 {
            let chunk: Vec<u8> = (0..16384.min(OUT - sent)).map(|i| ((sent + i) % 253) as u8).collect();
            let seg = tcp_frame(&t, 0x18, &chunk);
            let gso = (chunk.len() > 1448).then(|| ExtraInfo::gso(1448, netif::GSO_TYPE_TCPV4));
            f.send(&seg, 4096, netif::NETTXF_CSUM_BLANK, gso);
            t.seq = t.seq.wrapping_add(chunk.len() as u32);
            sent += chunk.len();
        }
        if established && t.seq == isn.wrapping_add(OUT as u32) {
            f.send(&tcp_frame(&t, 0x11, &[]), 4096, netif::NETTXF_CSUM_BLANK, None);
            t.seq = t.seq.wrapping_add(1);
        }
        let r = f.tx_responses(0, Duration::ZERO);
        assert!(r.iter().all(|r| r.status == netif::RSP_OKAY || r.status == netif::RSP_NULL), "{r:?}\n{}", logs());
    }
    let got = receiver.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), OUT.to_string(), "{}", logs());
    f.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two queues on a multi-queue tap: the host's flows spread over both,
/// each queue sends, and a queue flooded with TX does not starve the other
/// (the host still pings through it) nor grow netback's memory.
#[test]
fn test_multi_queue_spread_and_a_flooding_queue_starves_nobody() {
    // Each queue's TX writer (its ring's kernel thread) is placed on our
    // last CPU; the queue threads keep ours.
    let ours = xenkvm_sandbox::cpus::this_thread().unwrap();
    let last_cpu = ours.cpus().last().unwrap().to_string();
    let Vif { ns, xs: _xs, dir, dom: _dom, netback, mut f } =
        Vif::connected("mq", 6, 128, "xkt2", 2, false, &["--tx-writer-cpus", &last_cpu]);
    let log = dir.join("netback.log");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(f.backend_key("multi-queue-max-queues").unwrap(), "2");
    for (thread, want) in [("netq0", &ours.to_string()), ("netq1", &ours.to_string())] {
        assert_eq!(&thread_cpus(netback.0.id(), thread, want), want, "{thread}'s CPUs\n{}", logs());
    }
    // The polling threads are named after the thread that made the rings
    // (netback's first, inside the jail), one per tap queue.
    let pid = netback.0.id();
    let pollers: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter(|s| status_field(s, "Name") == Some(&format!("iou-sqp-{pid}")))
        .filter_map(|s| status_field(&s, "Cpus_allowed_list").map(str::to_string))
        .collect();
    assert_eq!(pollers, vec![last_cpu.clone(); 2], "the TX rings' polling threads' CPUs\n{}", logs());
    // Each queue writes through its io_uring (inside the jail).
    for q in 0..2 {
        let engine = format!("event=\"netback.tx_writer\" queue={q} engine=\"io_uring\"");
        assert!(logs().contains(&engine), "{engine}\n{}", logs());
    }
    ns.run(&["ip", "addr", "add", "10.99.0.1/24", "dev", "xkt2"]);
    ns.run(&["ip", "link", "set", "xkt2", "up"]);
    // 64 flows from the host: the tap spreads them by flow hash.
    let sender = ns
        .cmd("/usr/bin/python3")
        .args(["-c", "import socket,time\nfor r in range(40):\n for p in range(64):\n  s=socket.socket(2,2);s.bind(('10.99.0.1',20000+p));s.sendto(b'flow',('10.99.0.2',9000));s.close()\n time.sleep(0.05)"])
        .spawn()
        .unwrap();
    let mut per_queue = [0usize; 2];
    let mut host_mac = None;
    let start = Instant::now();
    while per_queue.contains(&0) && start.elapsed() < Duration::from_secs(20) {
        for (q, seen) in per_queue.iter_mut().enumerate() {
            for fr in f.queues[q].recv(Duration::from_millis(10)) {
                if let Some(reply) = answer(&fr.data) {
                    host_mac = Some(<[u8; 6]>::try_from(&fr.data[6..12]).unwrap());
                    f.queues[q].send(&reply, 4096, 0, None);
                } else if fr.data.len() > 42 && fr.data[23] == 17 && fr.data[36..38] == 9000u16.to_be_bytes() {
                    *seen += 1;
                }
            }
            f.queues[q].tx_responses(0, Duration::ZERO);
        }
    }
    let _ = Proc(sender);
    assert!(per_queue.iter().all(|&n| n > 0), "flows on both queues: {per_queue:?}\n{}", logs());
    // Queue 1 sends too.
    let receiver = ns
        .cmd("/usr/bin/python3")
        .args([
            "-c",
            "import socket;s=socket.socket(2,2);s.bind(('10.99.0.1',5555));s.settimeout(10);d,a=s.recvfrom(9000);print(a[0],d.decode())",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let host_mac = host_mac.expect("ARP went through");
    f.queues[1].send(&udp_frame(host_mac, b"from queue 1"), 4096, netif::NETTXF_CSUM_BLANK, None);
    let got = receiver.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "10.99.0.2 from queue 1");

    // Queue 0 floods (frames to an address nobody has) while the host
    // pings through queue 1's flows.
    let rss_before = rss_kib(netback.0.id());
    let mut ping = Proc(ns.cmd("ping").args(["-c", "5", "-i", "0.2", "-W", "5", "10.99.0.2"]).stdout(Stdio::piped()).spawn().unwrap());
    let mut flood = udp_frame([0x02, 0, 0, 0, 0, 0x77], &[0x55; 1000]);
    flood[30..34].copy_from_slice(&[10, 99, 0, 77]);
    let mut flooded = 0u64;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = ping.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "ping never ended\n{}", logs());
        for _ in 0..32 {
            f.queues[0].send(&flood, 4096, 0, None);
            flooded += 1;
        }
        f.queues[0].tx_responses(0, Duration::ZERO);
        for q in 0..2 {
            for fr in f.queues[q].recv(Duration::ZERO) {
                if let Some(reply) = answer(&fr.data) {
                    f.queues[q].send(&reply, 4096, 0, None);
                }
            }
        }
    };
    let mut out = String::new();
    std::io::Read::read_to_string(ping.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success() && out.contains("5 received"), "ping during a flood of {flooded} frames:\n{out}\n{}", logs());
    let rss_after = rss_kib(netback.0.id());
    assert!(flooded > 1000, "the flood ran ({flooded} frames)");
    assert!(rss_after < rss_before + 16 * 1024, "netback grew from {rss_before} KiB to {rss_after} KiB during the flood");
    f.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CPUs (`Cpus_allowed_list`) of `pid`'s thread named `name`: what
/// they are once they are `want`, or after 10 s (a thread pins itself
/// just after it starts).
fn thread_cpus(pid: u32, name: &str, want: &str) -> String {
    let start = Instant::now();
    let mut seen = format!("no thread {name}");
    while start.elapsed() < Duration::from_secs(10) {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if status_field(&status, "Name") == Some(name) {
                seen = status_field(&status, "Cpus_allowed_list").expect("Cpus_allowed_list").to_string();
            }
        }
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Sends `len` bytes of UDP from the host side of `ns` to the guest.
fn host_udp(ns: &Netns, to: &str, len: usize) {
    let script = format!("import socket;s=socket.socket(2,2);s.sendto(bytes(i%251 for i in range({len})),('{to}',7777))");
    let st = ns.cmd("/usr/bin/python3").args(["-c", &script]).status().unwrap();
    assert!(st.success());
}

/// Frames received within `timeout` (waits for at least one).
fn recv_some(f: &mut Netfront, timeout: Duration) -> Vec<xenkvm_tests::netfront::RxFrame> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.is_empty() && start.elapsed() < timeout {
        out.extend(f.recv(Duration::from_millis(100)));
    }
    out
}

#[test]
fn test_rx_jumbo_frames_and_read_only_rx_buffers() {
    let Vif { ns, xs: _xs, dir, dom, netback: _netback, mut f } = Vif::connected("nbrx", 4, 64, "xkt2", 1, false, &[]);
    let logs = || std::fs::read_to_string(dir.join("netback.log")).unwrap_or_default();
    ns.run(&["ip", "addr", "add", "10.99.2.1/24", "dev", "xkt2"]);
    ns.run(&["ip", "link", "set", "xkt2", "mtu", "9000", "up"]);
    ns.run(&["ip", "neigh", "replace", "10.99.2.2", "lladdr", "00:16:3e:12:34:56", "dev", "xkt2"]);
    let udp_payload = |fr: &[u8]| fr.get(42..).map(<[u8]>::to_vec).unwrap_or_default();
    let expect = |len: usize| (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    // Drain what the host sends on its own (IPv6 router solicitations...).
    std::thread::sleep(Duration::from_millis(300));
    while !f.recv(Duration::from_millis(100)).is_empty() {}
    let udp_to_guest = |fr: &xenkvm_tests::netfront::RxFrame| fr.data.len() > 42 && fr.data[23] == 17 && fr.data[30..34] == [10, 99, 2, 2];

    // A jumbo frame (one UDP datagram of 8000 bytes, not GSO) over three
    // buffers, while GSO is negotiated (its data would otherwise skip the
    // second buffer, kept for a GSO extra).
    for len in [8000, 100, 5000] {
        host_udp(&ns, "10.99.2.2", len);
        let frames: Vec<_> = recv_some(&mut f, Duration::from_secs(5)).into_iter().filter(udp_to_guest).collect();
        assert_eq!(frames.len(), 1, "one datagram of {len}\n{}\n{}", f.debug_state(), logs());
        assert!(!frames[0].error && frames[0].gso.is_none());
        assert_eq!(frames[0].data.len(), 42 + len);
        assert_eq!(udp_payload(&frames[0].data), expect(len), "the {len}-byte payload arrives intact");
    }

    // The next RX buffer granted read-only: that frame is answered with
    // errors and counted; the ring goes on.
    let (gfn, gref) = f.next_rx_buffer(0);
    let frame_no = u32::try_from(gfn).unwrap();
    dom.set_grant(gref, xen_abi::grant_table::GTF_PERMIT_ACCESS | xen_abi::grant_table::GTF_READONLY, 0, frame_no);
    host_udp(&ns, "10.99.2.2", 200);
    let frames = recv_some(&mut f, Duration::from_secs(5));
    assert!(frames.iter().any(|fr| fr.error), "the frame for the read-only buffer failed: {frames:?}");
    dom.set_grant(gref, xen_abi::grant_table::GTF_PERMIT_ACCESS, 0, frame_no);
    while !f.recv(Duration::from_millis(100)).is_empty() {}
    host_udp(&ns, "10.99.2.2", 300);
    let frames: Vec<_> = recv_some(&mut f, Duration::from_secs(5)).into_iter().filter(udp_to_guest).collect();
    assert_eq!(frames.len(), 1, "{}", logs());
    assert_eq!(udp_payload(&frames[0].data), expect(300), "later frames arrive intact");
    std::thread::sleep(Duration::from_millis(1300));
    let stats = dir.join("netback.stats");
    assert!(stat(&stats, "rx_drop_bad_grant") >= 1, "{}", std::fs::read_to_string(&stats).unwrap_or_default());
    f.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
