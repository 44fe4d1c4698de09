//! The guest in xenstore, as libxl puts it there: the default nodes under
//! `/local/domain/<domid>` and `/vm/<uuid>` with libxl's owners, then
//! `INTRODUCE` so xenstored connects to the guest's ring; `RELEASE` and the
//! nodes' removal when the guest is gone.

use std::path::Path;

use xenstore::client::{Client, ClientError};
use xenstore::perms::Perm;

use crate::xen::Domain;

/// The guest's `/vm/<uuid>` path.
fn vm_path(d: &Domain) -> String {
    let h = d.info.handle;
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("/vm/{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Writes the default nodes and introduces the guest.
pub fn introduce(xenstored: &Path, d: &Domain) -> Result<(), ClientError> {
    let mut c = Client::connect(xenstored)?;
    let domid = u32::from(d.info.domid);
    let home = format!("/local/domain/{domid}");
    let vm = vm_path(d);
    // libxl: the home and device/control are dom0's and readable by the
    // guest; the guest owns the nodes it is meant to write.
    let ro = [Perm { domid: 0, read: false, write: false }, Perm { domid, read: true, write: false }];
    let rw = [Perm { domid, read: false, write: false }];
    let (store, console) = {
        let st = d.state();
        use xen_abi::hvm::param;
        let p = |i: u32| st.params[i as usize];
        ((p(param::STORE_PFN), p(param::STORE_EVTCHN)), (p(param::CONSOLE_PFN), p(param::CONSOLE_EVTCHN)))
    };
    let memory_kib = (d.info.layout.low_end + d.info.layout.high_size) / 1024;
    loop {
        let tx = c.transaction_start()?;
        let r = (|| -> Result<(), ClientError> {
            c.rm(tx, &home)?;
            c.mkdir(tx, &home)?;
            c.set_perms(tx, &home, &ro)?;
            c.mkdir(tx, &vm)?;
            c.set_perms(tx, &vm, &ro)?;
            c.write(tx, &format!("{vm}/name"), d.info.name.as_bytes())?;
            c.write(tx, &format!("{vm}/uuid"), vm.trim_start_matches("/vm/").as_bytes())?;
            let values: [(&str, String); 10] = [
                ("vm", vm.clone()),
                ("name", d.info.name.clone()),
                ("domid", domid.to_string()),
                ("memory/static-max", memory_kib.to_string()),
                ("memory/target", memory_kib.to_string()),
                ("store/port", store.1.to_string()),
                ("store/ring-ref", store.0.to_string()),
                ("console/port", console.1.to_string()),
                ("console/ring-ref", console.0.to_string()),
                ("console/type", "xenconsoled".into()),
            ];
            for (k, v) in values {
                c.write(tx, &format!("{home}/{k}"), v.as_bytes())?;
            }
            for v in 0..d.info.vcpus {
                c.write(tx, &format!("{home}/cpu/{v}/availability"), b"online")?;
            }
            for dir in ["device", "control"] {
                c.mkdir(tx, &format!("{home}/{dir}"))?;
                c.set_perms(tx, &format!("{home}/{dir}"), &ro)?;
            }
            for node in [
                "control/shutdown",
                "control/feature-poweroff",
                "control/feature-reboot",
                "control/feature-suspend",
                "control/sysrq",
                "device/suspend/event-channel",
                "data",
                "drivers",
                "feature",
                "attr",
                "error",
            ] {
                let p = format!("{home}/{node}");
                c.mkdir(tx, &p)?;
                c.set_perms(tx, &p, &rw)?;
            }
            Ok(())
        })();
        match r.and_then(|_| c.transaction_end(tx, true)) {
            Ok(()) => break,
            Err(ClientError::Xs(xenstore::wire::XsError::EAGAIN)) => continue,
            Err(e) => {
                let _ = c.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
    c.introduce(domid, store.0, store.1 as u32)?;
    tracing::info!(event = "xenstore.introduced", domid, gfn = store.0, port = store.1);
    Ok(())
}

/// Releases the guest and removes its nodes.
pub fn release(xenstored: &Path, d: &Domain) -> Result<(), ClientError> {
    let mut c = Client::connect(xenstored)?;
    let domid = u32::from(d.info.domid);
    match c.release(domid) {
        Ok(()) | Err(ClientError::Xs(xenstore::wire::XsError::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    c.rm(0, &format!("/local/domain/{domid}"))?;
    c.rm(0, &vm_path(d))?;
    Ok(())
}
