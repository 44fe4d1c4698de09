//! The vmm's console log: where the 16550, port 0xe9 and `console_io` output go.

use std::io::Write;
use std::sync::Mutex;

/// A shared, line-oriented sink for guest console output.
pub struct ConsoleLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl ConsoleLog {
    /// A console log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> ConsoleLog {
        ConsoleLog { out: Mutex::new(out) }
    }

    /// Appends guest output. Host I/O errors are logged, never passed to the guest.
    pub fn write(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(bytes).and_then(|_| out.flush()) {
            tracing::warn!(error = %e, "console log write failed");
        }
    }
}

impl std::fmt::Debug for ConsoleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleLog")
    }
}
