//! `xenkvm-consoled attach`: this terminal, raw, relayed to a console's
//! attach socket until Ctrl-] or the console goes away.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Ctrl-].
const DETACH: u8 = 0x1d;

/// Restores the terminal's settings when dropped.
struct Raw {
    saved: Option<libc::termios>,
}

impl Raw {
    fn enter() -> Raw {
        let fd = libc::STDIN_FILENO;
        // SAFETY: a zeroed termios is a valid out-parameter; isatty/tcgetattr
        // only read the descriptor's state.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::isatty(fd) == 1 && libc::tcgetattr(fd, &mut t) == 0).then_some(t)
        };
        if let Some(mut t) = saved {
            // SAFETY: `t` came from tcgetattr; cfmakeraw and tcsetattr take it by pointer.
            unsafe {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(fd, libc::TCSANOW, &t);
            }
        }
        Raw { saved }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores settings tcgetattr gave us.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

/// Relays until detached.
pub fn attach(socket: &Path) -> anyhow::Result<()> {
    let s = UnixStream::connect(socket)?;
    let mut from = s.try_clone()?;
    eprintln!("[connected to {}; Ctrl-] detaches]\r", socket.display());
    let raw = Raw::enter();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut to = s;
    let mut buf = [0u8; 1024];
    let mut stdin = std::io::stdin();
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == DETACH) {
            to.write_all(&buf[..i])?;
            break;
        }
        to.write_all(&buf[..n])?;
    }
    drop(raw);
    eprintln!("\r\n[detached]");
    Ok(())
}
