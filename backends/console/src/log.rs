//! The console log with a size cap: past the cap the file is rotated to
//! `<name>.old` (replacing the previous one), so a guest that floods its
//! console uses at most twice the cap on disk and one ring of memory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A capped log file.
pub struct CappedLog {
    path: PathBuf,
    max: u64,
    file: File,
    written: u64,
    /// Times the log was rotated.
    pub rotations: u64,
}

impl CappedLog {
    /// Opens (appends to) `path`, keeping each file under `max` bytes.
    pub fn open(path: &Path, max: u64) -> std::io::Result<CappedLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog { path: path.to_path_buf(), max: max.max(1), file, written, rotations: 0 })
    }

    /// The previous file's path.
    pub fn old_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".old");
        PathBuf::from(p)
    }

    /// Appends bytes, rotating as needed.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.written >= self.max {
                std::fs::rename(&self.path, self.old_path())?;
                self.file = File::create(&self.path)?;
                self.written = 0;
                self.rotations += 1;
            }
            let n = data.len().min((self.max - self.written) as usize);
            self.file.write_all(&data[..n])?;
            self.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_never_grows_past_twice_the_cap() {
        let dir = std::env::temp_dir().join(format!("xenkvm-consolelog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("console.log");
        let mut log = CappedLog::open(&p, 1000).unwrap();
        for _ in 0..50 {
            log.write(&[b'x'; 333]).unwrap();
        }
        let cur = std::fs::metadata(&p).unwrap().len();
        let old = std::fs::metadata(log.old_path()).unwrap().len();
        assert!(cur <= 1000 && old == 1000, "{cur} {old}");
        assert_eq!(log.rotations, 16);
        let _ = std::fs::remove_dir_all(dir);
    }
}
