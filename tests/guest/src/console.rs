//! Output on the 0xe9 debug port, one `rep outsb` (one exit) per line.

use core::fmt;

const DEBUGCON: u16 = 0xe9;

/// A line being built; written out by [`Line::flush`].
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 256], len: 0 }
    }

    pub fn flush(&mut self) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        write_port(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn write_port(bytes: &[u8]) {
    // SAFETY: `rep outsb` reads `bytes.len()` bytes from `bytes`, which is valid.
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") DEBUGCON,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, readonly)
        );
    }
}

/// Prints one formatted line.
macro_rules! println {
    ($($arg:tt)*) => {{
        let mut l = $crate::console::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut l, format_args!($($arg)*));
        l.flush();
    }};
}
pub(crate) use println;
