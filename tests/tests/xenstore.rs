//! xenstored: Xen's own tools and pyxs against it, the protocol's
//! semantics on the socket, guests on their rings (introduced by the vmm),
//! a guest that writes garbage, and kill -9 restarts under load.

use std::time::Duration;

use xenkvm_tests::{run_vmm, spawn_vmm, XenstoredProc};
use xenstore::client::{Client, ClientError};
use xenstore::perms::Perm;
use xenstore::wire::{ty, XsError};

fn out(cmd: &mut std::process::Command) -> (bool, String) {
    let o = cmd.output().expect("run a xenstore tool (is xenstore-utils installed?)");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).trim_end().to_string() + &String::from_utf8_lossy(&o.stderr))
}

fn xs_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> XsError {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected a xenstore error, got {other:?}"),
    }
}

#[test]
fn test_xen_tools_and_pyxs_work_unchanged() {
    let xs = XenstoredProc::start(&[]);
    assert!(out(xs.tool("xenstore-write").args(["/tool/t/a", "hello", "/tool/t/b", "world"])).0);
    assert_eq!(out(xs.tool("xenstore-read").arg("/tool/t/a")), (true, "hello".into()));
    assert_eq!(out(xs.tool("xenstore-list").arg("/tool/t")), (true, "a\nb".into()));
    assert!(out(xs.tool("xenstore-chmod").args(["/tool/t/a", "n0", "r5"])).0);
    let (ok, ls) = out(xs.tool("xenstore-ls").args(["-p", "/tool/t"]));
    assert!(ok && ls.contains("(n0,r5)"), "{ls}");
    assert!(out(xs.tool("xenstore-exists").arg("/tool/t/b")).0);
    assert!(out(xs.tool("xenstore-rm").arg("/tool/t/b")).0);
    let (ok, _) = out(xs.tool("xenstore-read").arg("/tool/t/b"));
    assert!(!ok, "removed");
    let (ok, _) = out(xs.tool("xenstore-read").arg("/tool/t//x"));
    assert!(!ok, "bad path");
    // xenstore-watch sees the registration event and a change.
    let watch = xs.tool("xenstore-watch").args(["-n", "2", "/tool/w"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(out(xs.tool("xenstore-write").args(["/tool/w/x", "1"])).0);
    let o = watch.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(), vec!["/tool/w", "/tool/w/x"]);
    // pyxs (Debian's python3-pyxs), with a transaction.
    let script = r#"
import errno, os, pyxs
with pyxs.Client(unix_socket_path=os.environ["XENSTORED_PATH"]) as c:
    c[b"/tool/py/k"] = b"v1"
    assert c[b"/tool/py/k"] == b"v1"
    c.transaction()
    c[b"/tool/py/t"] = b"in-tx"
    assert c.commit()
    assert c[b"/tool/py/t"] == b"in-tx"
    c.transaction()
    c[b"/tool/py/gone"] = b"x"
    c.rollback()
    assert not c.exists(b"/tool/py/gone")
    assert c.get_perms(b"/tool/py/k") == [b"n0"]
    assert sorted(c.list(b"/tool/py")) == [b"k", b"t"]
    print("pyxs ok")
"#;
    let (ok, text) = out(xs.tool("/usr/bin/python3").args(["-c", script]));
    assert!(ok && text.contains("pyxs ok"), "{text}");
}

#[test]
fn test_protocol_semantics_on_the_socket() {
    let xs = XenstoredProc::start(&[]);
    let mut c = Client::connect(&xs.socket).unwrap();
    let mut d = Client::connect(&xs.socket).unwrap();
    // Errors come back as Xen's names; request ids are echoed (the client checks).
    assert_eq!(xs_err(c.read(0, "/nope")), XsError::ENOENT);
    assert_eq!(xs_err(c.read(0, "/a//b")), XsError::EINVAL);
    assert_eq!(xs_err(c.read(0, &format!("/{}", "x".repeat(3100)))), XsError::EINVAL);
    assert_eq!(xs_err(c.rm(0, "/no/parent")), XsError::ENOENT);
    c.rm(0, "/tool/missing-child").unwrap();
    assert_eq!(xs_err(c.request(99, 0, b"")), XsError::EINVAL, "unknown type");

    // Transactions: EAGAIN only on a conflict.
    c.write(0, "/t/a", b"1").unwrap();
    c.write(0, "/t/b", b"1").unwrap();
    let tx = c.transaction_start().unwrap();
    assert_eq!(c.read(tx, "/t/a").unwrap(), b"1");
    c.write(tx, "/t/c", b"new").unwrap();
    assert_eq!(xs_err(d.read(0, "/t/c")), XsError::ENOENT, "not visible before commit");
    d.write(0, "/t/b", b"2").unwrap();
    c.transaction_end(tx, true).unwrap();
    assert_eq!(d.read(0, "/t/c").unwrap(), b"new");
    let tx = c.transaction_start().unwrap();
    c.read(tx, "/t/a").unwrap();
    d.write(0, "/t/a", b"2").unwrap();
    c.write(tx, "/t/z", b"x").unwrap();
    assert_eq!(xs_err(c.transaction_end(tx, true)), XsError::EAGAIN);
    assert_eq!(xs_err(c.read(0, "/t/z")), XsError::ENOENT);
    assert_eq!(xs_err(c.transaction_end(tx, true)), XsError::ENOENT, "ended");
    let tx = c.transaction_start().unwrap();
    c.write(tx, "/t/aborted", b"x").unwrap();
    c.transaction_end(tx, false).unwrap();
    assert_eq!(xs_err(c.read(0, "/t/aborted")), XsError::ENOENT);

    // Watches: registration event, changes at and below, removal of a parent.
    c.watch("/w/x", "tok").unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)).unwrap(), Some(("/w/x".into(), b"tok".to_vec())));
    d.write(0, "/w/x/y", b"1").unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)).unwrap(), Some(("/w/x/y".into(), b"tok".to_vec())));
    d.write(0, "/w/other", b"1").unwrap();
    d.rm(0, "/w").unwrap();
    assert_eq!(c.next_event(Duration::from_secs(5)).unwrap(), Some(("/w/x".into(), b"tok".to_vec())), "parent removed");
    assert_eq!(c.next_event(Duration::from_millis(200)).unwrap(), None, "/w/other is not watched");
    assert_eq!(xs_err(c.watch("/w/x", "tok")), XsError::EEXIST);
    c.unwatch("/w/x", "tok").unwrap();
    assert_eq!(xs_err(c.unwatch("/w/x", "tok")), XsError::ENOENT);

    // Permissions as a guest sees them, with quotas set through CONTROL.
    c.mkdir(0, "/local/domain/7").unwrap();
    c.set_perms(0, "/local/domain/7", &[Perm { domid: 7, read: false, write: false }]).unwrap();
    assert_eq!(c.get_perms(0, "/local/domain/7").unwrap(), vec![Perm { domid: 7, read: false, write: false }]);
    assert_eq!(xs_err(c.set_perms(0, "/local/domain/7", &[])), XsError::EINVAL);
    let q = String::from_utf8(c.control(&["quota"]).unwrap()).unwrap();
    for expect in ["nodes 1000", "watches 128", "transactions 10", "value-bytes 2048", "permissions 5", "outstanding 20"] {
        assert!(q.contains(expect), "{q}");
    }
    c.control(&["quota", "set", "nodes", "500"]).unwrap();
    assert!(String::from_utf8(c.control(&["quota"]).unwrap()).unwrap().contains("nodes 500"));
    assert_eq!(xs_err(c.control(&["quota", "set", "bogus", "1"])), XsError::EINVAL);
    c.control(&["log", "debug"]).unwrap();
    assert!(c.control(&["help"]).unwrap().starts_with(b"check"));
    c.control(&["check"]).unwrap();

    // Domain paths and introductions.
    assert_eq!(c.request(ty::GET_DOMAIN_PATH, 0, b"5\0").unwrap(), b"/local/domain/5\0");
    assert!(!c.is_domain_introduced(5).unwrap());
    assert!(c.is_domain_introduced(0).unwrap());
    assert_eq!(xs_err(c.release(5)), XsError::ENOENT);
    assert_eq!(xs_err(c.introduce(0, 1, 1)), XsError::EINVAL);

    // DIRECTORY_PART pages a long list; the generation ties the parts together.
    for i in 0..300 {
        c.write(0, &format!("/big/entry-with-a-long-name-{i:04}"), b"").unwrap();
    }
    let mut names = Vec::new();
    let mut gen = None;
    loop {
        let part = c
            .request(ty::DIRECTORY_PART, 0, format!("/big\0{}\0", names.iter().map(|n: &String| n.len() + 1).sum::<usize>()).as_bytes())
            .unwrap();
        let mut f = part.split(|&b| b == 0);
        let g = f.next().unwrap().to_vec();
        assert!(gen.get_or_insert(g.clone()) == &g, "generation changed between parts");
        let rest: Vec<&[u8]> = f.collect();
        let done = rest.len() >= 2 && rest[rest.len() - 2].is_empty();
        names.extend(rest.iter().filter(|n| !n.is_empty()).map(|n| String::from_utf8(n.to_vec()).unwrap()));
        if done || part.len() < 4000 {
            break;
        }
    }
    let expect: Vec<String> = (0..300).map(|i| format!("entry-with-a-long-name-{i:04}")).collect();
    assert_eq!(names, expect);
    assert_eq!(xs_err(c.directory(0, "/big")), XsError::E2BIG, "too long for one reply");

    // RESET_WATCHES drops the caller's watches and transactions.
    c.watch("/r", "t").unwrap();
    let _ = c.next_event(Duration::from_secs(5)).unwrap();
    let tx = c.transaction_start().unwrap();
    c.request(ty::RESET_WATCHES, 0, b"").unwrap();
    assert_eq!(xs_err(c.unwatch("/r", "t")), XsError::ENOENT);
    assert_eq!(xs_err(c.transaction_end(tx, true)), XsError::ENOENT);
    // RESUME and SET_TARGET need an introduced domain.
    assert_eq!(xs_err(c.request(ty::RESUME, 0, b"9\0")), XsError::ENOENT);
    assert_eq!(xs_err(c.request(ty::SET_TARGET, 0, b"9\08\0")), XsError::ENOENT);

    // A client that breaks the protocol loses its connection; others go on.
    let mut raw = std::os::unix::net::UnixStream::connect(&xs.socket).unwrap();
    use std::io::{Read, Write};
    let mut h = xenstore::wire::Header { ty: ty::WRITE, req_id: 1, tx_id: 0, len: 5000 }.bytes().to_vec();
    h.extend_from_slice(&[b'a'; 64]);
    raw.write_all(&h).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "connection closed");
    assert_eq!(d.read(0, "/t/a").unwrap(), b"2");
}

#[test]
fn test_guest_on_its_ring_with_default_nodes_and_domain_events() {
    let xs = XenstoredProc::start(&[]);
    let mut watcher = Client::connect(&xs.socket).unwrap();
    watcher.watch("@introduceDomain", "in").unwrap();
    watcher.watch("@releaseDomain", "out").unwrap();
    assert_eq!(watcher.next_event(Duration::from_secs(5)).unwrap().unwrap().0, "@introduceDomain");
    assert_eq!(watcher.next_event(Duration::from_secs(5)).unwrap().unwrap().0, "@releaseDomain");

    // A guest that stays up for a while: check libxl's nodes and owners.
    let mut args = xs.vmm_args(3);
    args.extend(["--name".into(), "ringtest".into(), "--cmdline".into(), "idle=1500".into()]);
    let vm = spawn_vmm(&args);
    assert_eq!(watcher.next_event(Duration::from_secs(20)).unwrap().map(|e| e.0), Some("@introduceDomain".into()));
    let mut c = Client::connect(&xs.socket).unwrap();
    assert!(c.is_domain_introduced(3).unwrap());
    assert_eq!(c.read(0, "/local/domain/3/name").unwrap(), b"ringtest");
    assert_eq!(c.read(0, "/local/domain/3/domid").unwrap(), b"3");
    assert_eq!(c.read(0, "/local/domain/3/store/port").unwrap(), b"1");
    assert_eq!(c.read(0, "/local/domain/3/memory/target").unwrap(), b"262144");
    assert_eq!(c.read(0, "/local/domain/3/cpu/0/availability").unwrap(), b"online");
    let ro = vec![Perm { domid: 0, read: false, write: false }, Perm { domid: 3, read: true, write: false }];
    let rw = vec![Perm { domid: 3, read: false, write: false }];
    assert_eq!(c.get_perms(0, "/local/domain/3").unwrap(), ro);
    assert_eq!(c.get_perms(0, "/local/domain/3/domid").unwrap(), ro);
    assert_eq!(c.get_perms(0, "/local/domain/3/device").unwrap(), ro);
    for node in ["control/shutdown", "control/feature-poweroff", "data", "drivers", "attr", "error", "device/suspend/event-channel"] {
        assert_eq!(c.get_perms(0, &format!("/local/domain/3/{node}")).unwrap(), rw, "{node}");
    }
    let vm_path = String::from_utf8(c.read(0, "/local/domain/3/vm").unwrap()).unwrap();
    assert_eq!(c.read(0, &format!("{vm_path}/name")).unwrap(), b"ringtest");
    let run = vm.wait();
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(watcher.next_event(Duration::from_secs(10)).unwrap().map(|e| e.0), Some("@releaseDomain".into()));
    assert!(!c.is_domain_introduced(3).unwrap());
    assert_eq!(xs_err(c.read(0, "/local/domain/3/name")), XsError::ENOENT, "nodes removed at shutdown");

    // The guest's own requests on its ring.
    let mut args = xs.vmm_args(1);
    args.extend(["--cmdline".into(), "xenstore".into()]);
    let run = run_vmm(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    run.assert_passed(&[
        "xs.features",
        "xs.read_own_nodes",
        "xs.write_read",
        "xs.directory",
        "xs.perms_and_paths",
        "xs.watch",
        "xs.transaction",
        "xs.transaction_conflict",
        "xs.large_value",
    ]);
}

#[test]
fn test_guest_that_writes_garbage_is_reset_not_the_daemon() {
    let xs = XenstoredProc::start(&[]);
    let mut args = xs.vmm_args(1);
    args.extend(["--cmdline".into(), "xenstore_garbage".into()]);
    let run = run_vmm(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    run.assert_passed(&["xs.garbage_resets_connection"]);
    assert!(xs.log_text().contains("broke the xenstore protocol"), "{}", xs.log_text());
    let mut c = Client::connect(&xs.socket).unwrap();
    c.write(0, "/tool/after", b"fine").unwrap();
    assert_eq!(c.read(0, "/tool/after").unwrap(), b"fine");
}

#[test]
fn test_kill_9_restarts_keep_store_domains_watches_and_rings() {
    let mut xs = XenstoredProc::start(&[]);
    let mut c = Client::connect(&xs.socket).unwrap();
    c.write(0, "/tool/persist", b"kept").unwrap();
    let mut args = xs.vmm_args(5);
    args.extend(["--cmdline".into(), "xenstore_loop=300".into()]);
    let mut vm = spawn_vmm(&args);
    // Kill xenstored in the middle of the guest's watch/transaction loop, three times.
    for round in [20, 100, 180] {
        assert!(vm.wait_for(&format!("XSLOOP {round} ")), "the guest reached round {round}\n{}", vm.console());
        xs.restart();
    }
    let mut c = Client::connect(&xs.socket).unwrap();
    assert_eq!(c.read(0, "/tool/persist").unwrap(), b"kept", "the store survived");
    assert!(c.is_domain_introduced(5).unwrap(), "the domain survived");
    let run = vm.wait();
    run.assert_passed(&["xs.loop"]);
    assert!(run.console.contains("XSLOOP 299 ok=true"), "{run}");
    assert!(xs.alive());
    assert!(xs.log_text().matches("xenstored.reattached").count() >= 3, "{}", xs.log_text());
}

/// xenstored runs jailed (every step applied), and a syscall outside its
/// seccomp allow-list (the test-only trigger) kills it with SIGSYS.
#[test]
fn test_xenstored_is_jailed_and_killed_by_a_forbidden_syscall() {
    use std::os::unix::process::ExitStatusExt;
    let xs = XenstoredProc::start(&[]);
    let start = std::time::Instant::now();
    while !xs.log_text().contains("sandbox.entered") && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let log = xs.log_text();
    let jailed = log.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default().to_string();
    for step in ["user+mount+net namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
        assert!(jailed.contains(step), "{step} missing: {log}");
    }
    let dir = xenkvm_tests::tempdir();
    let st = std::process::Command::new(xenkvm_tests::binary("xenkvm-xenstored"))
        .env("XENKVM_SELFTEST_FORBIDDEN_SYSCALL", "xenkvm-xenstored")
        .arg("--socket")
        .arg(dir.join("s"))
        .arg("--run-dir")
        .arg(&dir)
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .status()
        .unwrap();
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}\n{log}");
    assert!(log.contains("sandbox.selftest") && !log.contains("selftest_survived"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
