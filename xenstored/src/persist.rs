//! The state a restart restores: a snapshot of the tree and the daemon's
//! other state, plus a journal of what changed since. Each round that
//! changed anything appends one record (the nodes it changed, whole, and
//! the small rest of the state) in one `write`, before any reply of that
//! round leaves the daemon; the journal is folded into a new snapshot when
//! it outgrows it. Records carry a sequence number so a snapshot written
//! just before a crash is never overwritten by older records on replay.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::Meta;
use crate::store::{Node, Store};

/// Ring positions of a guest, saved with its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMarks {
    /// `req_cons` to publish (bytes before it are in the saved buffers).
    pub req_cons: u32,
    /// `rsp_prod` when the saved output queue was current.
    pub rsp_prod: u32,
}

/// Everything but the tree.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Extra {
    /// Domains, guest connections, quotas.
    pub meta: Meta,
    /// Ring positions per domain.
    pub marks: BTreeMap<u32, RingMarks>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    store: Store,
    extra: Extra,
}

#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    changes: Vec<(String, Option<Node>)>,
    generation: u64,
    extra: Extra,
}

/// Fold the journal into a snapshot beyond this size (and twice the snapshot's).
const MIN_JOURNAL_FOLD: u64 = 4 << 20;

/// The state files.
pub struct StateFiles {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    journal_bytes: u64,
    snapshot_bytes: u64,
    seq: u64,
}

fn journal_path(snapshot: &Path) -> PathBuf {
    let mut p = snapshot.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

impl StateFiles {
    /// Opens the files at `snapshot` (and `<snapshot>.journal`) and loads
    /// what they hold: `None` when there is no saved state.
    pub fn open(snapshot: &Path) -> anyhow::Result<(StateFiles, Option<(Store, Extra)>)> {
        let jpath = journal_path(snapshot);
        let (mut seq, mut loaded, snapshot_bytes) = match std::fs::read(snapshot) {
            Ok(bytes) => {
                let s: Snapshot =
                    bincode::deserialize(&bytes).map_err(|e| anyhow::anyhow!("state snapshot {}: {e}", snapshot.display()))?;
                (s.seq, Some((s.store, s.extra)), bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None, 0),
            Err(e) => return Err(e.into()),
        };
        let mut journal_bytes = 0;
        if let Ok(mut f) = File::open(&jpath) {
            let mut all = Vec::new();
            f.read_to_end(&mut all)?;
            let mut at = 0;
            // A record cut short by a crash ends the replay.
            while at + 8 <= all.len() {
                let len = u64::from_le_bytes(all[at..at + 8].try_into().expect("8 bytes")) as usize;
                if at + 8 + len > all.len() {
                    break;
                }
                let r: Record = bincode::deserialize(&all[at + 8..at + 8 + len])
                    .map_err(|e| anyhow::anyhow!("state journal {}: {e}", jpath.display()))?;
                at += 8 + len;
                if r.seq <= seq {
                    continue;
                }
                seq = r.seq;
                let (store, extra) = loaded.get_or_insert_with(|| (Store::new(), Extra::default()));
                store.apply_changes(r.changes, r.generation);
                *extra = r.extra;
            }
            journal_bytes = at as u64;
            // Drop a torn tail so new records follow whole ones.
            OpenOptions::new().write(true).open(&jpath)?.set_len(journal_bytes)?;
        }
        let journal = OpenOptions::new().create(true).append(true).open(&jpath)?;
        Ok((StateFiles { snapshot: snapshot.to_path_buf(), journal_path: jpath, journal, journal_bytes, snapshot_bytes, seq }, loaded))
    }

    /// Saves one round: the nodes changed since the last save and the rest.
    pub fn save(&mut self, store: &mut Store, extra: Extra) -> anyhow::Result<()> {
        self.seq += 1;
        let changes = store.drain_changes();
        if self.journal_bytes > MIN_JOURNAL_FOLD.max(2 * self.snapshot_bytes) {
            let bytes = bincode::serialize(&Snapshot { seq: self.seq, store: store.clone(), extra })?;
            let tmp = self.snapshot.with_extension("tmp");
            File::create(&tmp)?.write_all(&bytes)?;
            std::fs::rename(&tmp, &self.snapshot)?;
            self.journal.set_len(0)?;
            self.journal = OpenOptions::new().create(true).append(true).open(&self.journal_path)?;
            self.journal_bytes = 0;
            self.snapshot_bytes = bytes.len() as u64;
            return Ok(());
        }
        let body = bincode::serialize(&Record { seq: self.seq, changes, generation: store.generation(), extra })?;
        let mut rec = Vec::with_capacity(8 + body.len());
        rec.extend_from_slice(&(body.len() as u64).to_le_bytes());
        rec.extend_from_slice(&body);
        self.journal.write_all(&rec)?;
        self.journal_bytes += rec.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Caller;
    use crate::quota::Quota;

    #[test]
    fn journal_replays_and_survives_a_torn_tail_and_folding() {
        let dir = std::env::temp_dir().join(format!("xenkvm-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let snap = dir.join("state");
        let (mut files, loaded) = StateFiles::open(&snap).unwrap();
        assert!(loaded.is_none());
        let mut store = Store::new();
        let q = Quota::default();
        for i in 0..50 {
            store.tree().write(&format!("/a/n{i}"), b"v", &Caller::DOM0, &q, &mut Vec::new()).unwrap();
            files.save(&mut store, Extra::default()).unwrap();
        }
        store.tree().rm("/a/n7", &Caller::DOM0, &mut Vec::new()).unwrap();
        files.save(&mut store, Extra::default()).unwrap();
        drop(files);
        // A torn record at the end is ignored.
        OpenOptions::new().append(true).open(journal_path(&snap)).unwrap().write_all(&[200, 0, 0, 0, 0, 0, 0, 0, 1, 2]).unwrap();
        let (mut files, loaded) = StateFiles::open(&snap).unwrap();
        let (mut back, _) = loaded.unwrap();
        assert_eq!(back.len(), store.len());
        assert_eq!(back.tree().read("/a/n8", &Caller::DOM0).unwrap(), b"v");
        assert!(back.get("/a/n7").is_none());
        // Fold into a snapshot, then more records; a reload sees all.
        files.journal_bytes = u64::MAX / 4;
        files.save(&mut back, Extra::default()).unwrap();
        back.tree().write("/after", b"x", &Caller::DOM0, &q, &mut Vec::new()).unwrap();
        files.save(&mut back, Extra::default()).unwrap();
        drop(files);
        let (_, loaded) = StateFiles::open(&snap).unwrap();
        let (mut again, _) = loaded.unwrap();
        assert_eq!(again.tree().read("/after", &Caller::DOM0).unwrap(), b"x");
        assert_eq!(again.len(), back.len());
        let _ = std::fs::remove_dir_all(dir);
    }
}
