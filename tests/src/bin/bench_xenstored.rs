//! Benchmark: xenstored over its Unix socket. ops/s and p99 latency of
//! read, write, directory and a read-modify-write transaction, with 1 and
//! 16 concurrent clients, each against a bare request/reply echo over a Unix
//! socket (the floor any socket daemon has) measured in the same run; and
//! the daemon's memory per 10,000 nodes.
//!
//! Usage: bench-xenstored [SECONDS_PER_CASE]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use xenkvm_tests::{rss_kib, XenstoredProc};
use xenstore::client::Client;
use xenstore::wire::{ty, Decoder, Message};

#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write,
    Directory,
    Transaction,
    Echo,
}

/// A server that answers every message with "OK": the socket round trip alone.
fn echo_server(path: std::path::PathBuf) {
    let l = UnixListener::bind(&path).expect("bind echo socket");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut d = Decoder::default();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    d.push(&buf[..n]);
                    while let Ok(Some(m)) = d.next_message() {
                        if s.write_all(&Message::reply(&m.header, b"OK\0".to_vec()).encode()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

fn one(c: &mut Client, op: Op, me: usize, i: u64) {
    match op {
        Op::Read => {
            c.read(0, &format!("/bench/c{me}/k")).expect("read");
        }
        Op::Write => c.write(0, &format!("/bench/c{me}/k"), i.to_string().as_bytes()).expect("write"),
        Op::Directory => {
            c.directory(0, "/bench/dir").expect("directory");
        }
        Op::Transaction => loop {
            let tx = c.transaction_start().expect("start");
            let v = c.read(tx, &format!("/bench/c{me}/n")).expect("read");
            let n: u64 = String::from_utf8_lossy(&v).parse().unwrap_or(0);
            c.write(tx, &format!("/bench/c{me}/n"), (n + 1).to_string().as_bytes()).expect("write");
            match c.transaction_end(tx, true) {
                Ok(()) => break,
                Err(xenstore::client::ClientError::Xs(xenstore::wire::XsError::EAGAIN)) => continue,
                Err(e) => panic!("commit: {e}"),
            }
        },
        Op::Echo => {
            c.request(ty::READ, 0, b"/x\0").expect("echo");
        }
    }
}

/// Runs `clients` threads doing `op` for `secs`; returns (ops/s, p99 µs).
fn run(socket: &std::path::Path, op: Op, clients: usize, secs: f64) -> (f64, f64) {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|me| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                let mut lat = Vec::new();
                while Instant::now() < start {
                    std::hint::spin_loop();
                }
                let mut i = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    one(&mut c, op, me, i);
                    lat.push(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect();
    all.sort_unstable();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
    (all.len() as f64 / secs, p99)
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1.0);
    let xs = XenstoredProc::start(&["--log", "warn"]);
    let echo = xs.dir.join("echo.sock");
    echo_server(echo.clone());
    let mut c = Client::connect(&xs.socket)?;
    for me in 0..16 {
        c.write(0, &format!("/bench/c{me}/k"), b"value")?;
        c.write(0, &format!("/bench/c{me}/n"), b"0")?;
    }
    for i in 0..10 {
        c.write(0, &format!("/bench/dir/entry{i}"), b"")?;
    }
    println!("xenstored over its Unix socket, {secs} s per case; baseline: a bare request/reply echo over a Unix socket");
    for clients in [1, 16] {
        let (base, base_p99) = run(&echo, Op::Echo, clients, secs);
        println!("{clients:>2} client(s): echo baseline {base:>9.0} ops/s, p99 {base_p99:>7.1} us");
        for op in [Op::Read, Op::Write, Op::Directory, Op::Transaction] {
            let (ops, p99) = run(&xs.socket, op, clients, secs);
            println!(
                "{clients:>2} client(s): {:<12} {ops:>9.0} ops/s ({:.2} x echo), p99 {p99:>7.1} us",
                format!("{op:?}").to_lowercase(),
                ops / base
            );
        }
    }
    let pid = xs_pid(&xs)?;
    let before = rss_kib(pid);
    let t = Instant::now();
    for i in 0..10_000 {
        c.write(0, &format!("/bench/mem/d{}/node{i}", i / 100), b"a-typical-value")?;
    }
    let took = t.elapsed();
    let after = rss_kib(pid);
    println!(
        "memory: {} KiB resident more for 10,000 nodes ({:.0} bytes per node; RSS {before} -> {after} KiB); writing them took {:.2} s",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 * 1024.0 / 10_000.0,
        took.as_secs_f64()
    );
    Ok(())
}

/// The daemon's pid, from the socket's peer credentials.
fn xs_pid(xs: &XenstoredProc) -> anyhow::Result<u32> {
    let s = UnixStream::connect(&xs.socket)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    let inode = link.to_string_lossy().trim_start_matches("socket:[").trim_end_matches(']').to_string();
    // Find the process holding the other end: scan /proc for the listener's socket file users.
    let _ = inode;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("xenkvm-xenstored") && c.contains(&*xs.socket.to_string_lossy()))
        {
            return Ok(pid);
        }
    }
    anyhow::bail!("xenstored's pid not found")
}
