//! The vmm's ipc service as a dom0 peer sees it: handshake, attach (guest
//! memory), binding the guest's xenstore channel, refusal of bad input
//! without harm to other peers, and re-attaching after a peer died.

use std::os::unix::fs::FileExt;

use xenkvm_ipc::vmm::{self, Reply, Request};
use xenkvm_ipc::{Channel, Error};
use xenkvm_tests::{spawn_vmm, tempdir};

fn connect(path: &std::path::Path) -> Channel {
    let start = std::time::Instant::now();
    loop {
        match Channel::connect(path) {
            Ok(c) => return c,
            Err(e) => {
                assert!(start.elapsed().as_secs() < 20, "vmm ipc socket never came up: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn test_peers_attach_bind_and_reattach_after_dying() {
    let dir = tempdir();
    let sock = dir.join("vmm-4.sock");
    let vm = spawn_vmm(&[
        "--domid".into(),
        "4".into(),
        "--ipc-socket".into(),
        sock.display().to_string(),
        "--cmdline".into(),
        "idle=3000".into(),
    ]);

    // A peer that skips the handshake is refused and cut off.
    let rude = connect(&sock);
    rude.send(&Request::Attach, &[]).unwrap();
    assert!(matches!(rude.recv::<Reply>().unwrap().0, Reply::Error { .. }));
    assert!(matches!(rude.recv::<Reply>(), Err(Error::Closed)), "the connection is closed after the refusal");
    // Garbage closes that connection only.
    let garbage = connect(&sock);
    garbage.send_raw(&[0xff; 40]).unwrap();
    assert!(matches!(garbage.recv::<Reply>(), Err(Error::Closed)));
    // A wrong version is refused.
    let old = connect(&sock);
    old.send(&Request::Hello { version: xenkvm_ipc::VERSION + 1, client: "old".into() }, &[]).unwrap();
    assert!(matches!(old.recv::<Reply>().unwrap().0, Reply::Error { errno: 22, .. }));

    // A proper peer.
    let peer = connect(&sock);
    assert_eq!(vmm::hello(&peer, "test-peer").unwrap(), 4);
    let (reply, fds) = vmm::call(&peer, &Request::Attach).unwrap();
    let Reply::Attached(mem) = reply else { panic!("{reply:?}") };
    mem.validate(fds.len()).unwrap();
    assert_eq!(mem.domid, 4);
    assert_eq!(mem.gnttab_frames, 64);
    let ram: u64 = mem.ram.iter().map(|r| r.size).sum();
    assert_eq!(ram, 256 << 20, "all of guest RAM");
    // The memfd is the guest's RAM: the guest's hvm_start_info magic is at 0x1000.
    let low = std::fs::File::from(fds.into_iter().next().unwrap());
    let mut magic = [0u8; 4];
    low.read_exact_at(&mut magic, 0x1000).unwrap();
    assert_eq!(u32::from_le_bytes(magic), 0x336e_c578, "hvm_start_info magic in the shared memfd");
    assert_eq!((mem.store.port, mem.console.port), (1, 2));

    let (reply, fds) = vmm::call(&peer, &Request::BindInterdomain { guest_port: mem.store.port }).unwrap();
    assert!(matches!(reply, Reply::Bound { .. }), "{reply:?}");
    assert_eq!(fds.len(), 2, "kick and notify eventfds");
    // The port is taken now; a second bind is refused but the peer stays.
    assert!(matches!(vmm::call(&peer, &Request::BindInterdomain { guest_port: mem.store.port }), Err(Error::Refused(_))));
    assert!(matches!(vmm::call(&peer, &Request::BindInterdomain { guest_port: 9999 }), Err(Error::Refused(_))));
    assert!(matches!(vmm::call(&peer, &Request::Close { port: 12345 }), Err(Error::Refused(_))));

    // The peer dies; a new one binds the same guest port.
    drop(peer);
    let again = connect(&sock);
    vmm::hello(&again, "restarted-peer").unwrap();
    let mut bound = false;
    for _ in 0..100 {
        if let Ok((Reply::Bound { port }, fds)) = vmm::call(&again, &Request::BindInterdomain { guest_port: 1 }) {
            assert_eq!(fds.len(), 2);
            let (r, _) = vmm::call(&again, &Request::Close { port }).unwrap();
            assert_eq!(r, Reply::Closed);
            bound = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(bound, "the guest port was released when the first peer died");
    let run = vm.wait();
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stderr.is_empty() || !run.stderr.contains("panicked"), "{run}");
    let _ = std::fs::remove_dir_all(dir);
}
