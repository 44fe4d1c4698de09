//! The guest's end of its primary PV console (`xencons_interface` at
//! `HVM_PARAM_CONSOLE_PFN`, `HVM_PARAM_CONSOLE_EVTCHN`): flooding it, and
//! echoing what an attached terminal types.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::console::offset::{IN, IN_CONS, IN_PROD, OUT, OUT_CONS, OUT_PROD};
use xen_abi::console::{IN_SIZE, OUT_SIZE};
use xen_abi::hvm::param;

use crate::scenarios::Checks;

/// Longest the guest waits for the backend to make room or send input.
const TIMEOUT_NS: u64 = 30_000_000_000;

pub(crate) struct Console {
    page: *mut u8,
    port: u32,
}

impl Console {
    /// A console ring at `page` (identity-mapped) notified through `port`.
    pub(crate) fn at(page: *mut u8, port: u32) -> Console {
        Console { page, port }
    }

    /// Waits until the backend took all output; false on timeout.
    pub(crate) fn drained(&self) -> bool {
        let deadline = crate::events::now0() + TIMEOUT_NS;
        while self.w(OUT_CONS).load(Ordering::Acquire) != self.w(OUT_PROD).load(Ordering::Acquire) {
            if crate::events::now0() > deadline {
                return false;
            }
            self.wait();
        }
        true
    }

    fn open() -> Option<Console> {
        let (r1, pfn) = crate::scenarios::get_param(param::CONSOLE_PFN);
        let (r2, port) = crate::scenarios::get_param(param::CONSOLE_EVTCHN);
        (r1 == 0 && r2 == 0 && pfn != 0).then_some(Console { page: (pfn << 12) as *mut u8, port: port as u32 })
    }

    fn w(&self, off: usize) -> &'static AtomicU32 {
        // SAFETY: the console page is identity-mapped RAM shared with the
        // backend; its index fields are aligned.
        unsafe { AtomicU32::from_ptr(self.page.add(off) as *mut u32) }
    }

    fn notify(&self) {
        crate::events::notify(self.port);
    }

    /// Sleeps until the port fires or 10 ms pass.
    fn wait(&self) {
        crate::events::poll_briefly(self.port);
    }

    /// Writes all of `data`, waiting for room as a bootloader does.
    pub(crate) fn write(&self, data: &[u8]) -> bool {
        let deadline = crate::events::now0() + TIMEOUT_NS;
        let mut done = 0;
        while done < data.len() {
            let cons = self.w(OUT_CONS).load(Ordering::Acquire);
            let prod = self.w(OUT_PROD).load(Ordering::Acquire);
            let room = (OUT_SIZE - prod.wrapping_sub(cons).min(OUT_SIZE)) as usize;
            if room == 0 {
                if crate::events::now0() > deadline {
                    return false;
                }
                self.notify();
                self.wait();
                continue;
            }
            let n = room.min(data.len() - done);
            for i in 0..n {
                // SAFETY: inside the output buffer of the page.
                unsafe { write_volatile(self.page.add(OUT + (prod.wrapping_add(i as u32) % OUT_SIZE) as usize), data[done + i]) };
            }
            fence(Ordering::SeqCst);
            self.w(OUT_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
            done += n;
        }
        self.notify();
        true
    }

    /// Reads one line of input (without the newline) into `buf`.
    fn read_line<'a>(&self, buf: &'a mut [u8]) -> Option<&'a [u8]> {
        let deadline = crate::events::now0() + TIMEOUT_NS;
        let mut len = 0;
        loop {
            let cons = self.w(IN_CONS).load(Ordering::Acquire);
            let prod = self.w(IN_PROD).load(Ordering::Acquire);
            if prod == cons {
                if crate::events::now0() > deadline {
                    return None;
                }
                self.wait();
                continue;
            }
            // SAFETY: inside the input buffer of the page.
            let b = unsafe { read_volatile(self.page.add(IN + (cons % IN_SIZE) as usize)) };
            self.w(IN_CONS).store(cons.wrapping_add(1), Ordering::Release);
            if b == b'\n' || b == b'\r' {
                if len > 0 {
                    return Some(&buf[..len]);
                }
            } else if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    }
}

/// Writes `kib` KiB of numbered lines as fast as the backend takes them.
pub fn scenario_flood(c: &mut Checks, kib: u64) {
    let Some(con) = Console::open() else {
        check!(c, "console.ring", false, "no console ring");
        return;
    };
    let mut line = *b"flood 000000 the quick brown fox jumps over the lazy dog 0123456789abcdef...\n";
    let lines = kib * 1024 / line.len() as u64 + 1;
    let mut ok = true;
    for i in 0..lines {
        let mut v = i;
        for d in (6..12).rev() {
            line[d] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        ok &= con.write(&line);
        if !ok {
            break;
        }
    }
    ok &= con.write(b"FLOOD DONE\n");
    check!(c, "console.flood", ok, "{lines} lines written without stalling");
}

/// Echoes one line typed on an attached terminal.
pub fn scenario_echo(c: &mut Checks) {
    let Some(con) = Console::open() else {
        check!(c, "console.ring", false, "no console ring");
        return;
    };
    con.write(b"ECHO READY\n");
    let mut buf = [0u8; 128];
    let got = con.read_line(&mut buf);
    let ok = got.is_some();
    if let Some(l) = got {
        con.write(b"echo: ");
        con.write(l);
        con.write(b"\n");
    }
    check!(c, "console.echo", ok, "a line of input arrived");
}
