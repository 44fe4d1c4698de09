use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;

use crate::vmm::{DomainMemory, RamRange, Reply, Request, Ring};
use crate::*;

#[test]
fn messages_round_trip_with_descriptors() {
    let (a, b) = Channel::pair().unwrap();
    let mut f = std::fs::File::from(tempfile());
    f.write_all(b"guest ram").unwrap();
    a.send(&Request::BindInterdomain { guest_port: 7 }, &[f.as_fd()]).unwrap();
    let (req, fds) = b.recv::<Request>().unwrap();
    assert_eq!(req, Request::BindInterdomain { guest_port: 7 });
    assert_eq!(fds.len(), 1);
    let mut g = std::fs::File::from(fds.into_iter().next().unwrap());
    g.rewind().unwrap();
    let mut s = String::new();
    g.read_to_string(&mut s).unwrap();
    assert_eq!(s, "guest ram", "the received descriptor is the same file");
}

fn tempfile() -> std::os::fd::OwnedFd {
    let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(std::env::temp_dir().join(format!(
        "xenkvm-ipc-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )));
    f.unwrap().into()
}

#[test]
fn oversized_garbage_and_closed_are_errors_not_panics() {
    let (a, b) = Channel::pair().unwrap();
    a.send_raw(&vec![0u8; MAX_MESSAGE_BYTES + 100]).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(Error::TooLarge)));
    a.send_raw(&[0xff; 13]).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(Error::Malformed(_))));
    // A valid message with trailing bytes is refused too.
    let mut bytes =
        bincode::Options::serialize(bincode::Options::with_fixint_encoding(bincode::DefaultOptions::new()), &Request::Close { port: 3 })
            .unwrap();
    bytes.push(0);
    a.send_raw(&bytes).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(Error::Malformed(_))));
    let huge = Request::Hello { version: VERSION, client: "x".repeat(MAX_MESSAGE_BYTES) };
    assert!(matches!(a.send(&huge, &[]), Err(Error::TooLarge)), "the sender refuses too");
    drop(a);
    assert!(matches!(b.recv::<Request>(), Err(Error::Closed)));
}

#[test]
fn peer_credentials_are_the_kernel_ones() {
    let (a, _b) = Channel::pair().unwrap();
    let c = a.peer_credentials().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid: u32 = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(c.uid, uid, "effective uid");
    assert_eq!(c.pid, Some(std::process::id()));
}

#[test]
fn hello_checks_the_version() {
    let (a, b) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        let (req, _) = b.recv::<Request>().unwrap();
        assert!(matches!(req, Request::Hello { version: VERSION, .. }));
        b.send(&Reply::Hello { version: VERSION + 1, domid: 3 }, &[]).unwrap();
    });
    assert!(matches!(vmm::hello(&a, "test"), Err(Error::Version { peer }) if peer == VERSION + 1));
    t.join().unwrap();
}

#[test]
fn domain_memory_is_validated_before_use() {
    let ring = Ring { gfn: 0xfffc, port: 1 };
    let mut m = DomainMemory {
        domid: 1,
        ram: vec![RamRange { gpa: 0, size: 0x1000_0000, offset: 0, fd_index: 0 }],
        gnttab_fd_index: 1,
        gnttab_frames: 64,
        store: ring,
        console: ring,
        guest_bits: 64,
    };
    m.validate(2).unwrap();
    assert_eq!(m.range_of(0xfffc).unwrap().gpa, 0);
    assert!(m.range_of(0x10000).is_none());
    assert!(m.validate(1).is_err(), "grant-table descriptor missing");
    m.ram.push(RamRange { gpa: 0x800_0000, size: 0x1000, offset: 0, fd_index: 0 });
    assert!(m.validate(2).is_err(), "overlapping ranges");
    m.ram[1] = RamRange { gpa: u64::MAX - 0xfff, size: 0x2000, offset: 0, fd_index: 0 };
    assert!(m.validate(2).is_err(), "wrapping range");
}
