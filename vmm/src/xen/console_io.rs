//! `HYPERVISOR_console_io`: the hypervisor's own debug console.

use xen_abi::errno::XenErrno;
use xen_abi::hypercall::{CONSOLEIO_READ, CONSOLEIO_WRITE, CONSOLE_IO};

use super::hypercall::{HcResult, HypercallCtx};

/// Bytes copied from the guest per step.
const CHUNK: usize = 4096;

/// Handles `HYPERVISOR_console_io(cmd, count, buffer)`.
pub fn console_io(ctx: &HypercallCtx<'_>, cmd: u32, count: u32, buffer: u64) -> HcResult {
    match cmd {
        CONSOLEIO_WRITE => {
            let mut chunk = [0u8; CHUNK];
            let mut done = 0usize;
            let count = count as usize;
            while done < count {
                let n = (count - done).min(CHUNK);
                let at = buffer.checked_add(done as u64).ok_or(XenErrno::EFAULT)?;
                ctx.read_bytes(at, &mut chunk[..n])?;
                ctx.domain.console.write(&chunk[..n]);
                done += n;
            }
            Ok(0)
        }
        // No input is ever queued for a domU's hypervisor console.
        CONSOLEIO_READ => Ok(0),
        other => ctx.unknown(CONSOLE_IO, u64::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::CONSOLE_IO;
    use xen_abi::GuestWidth;

    #[test]
    fn test_write_reaches_console_log_and_bad_buffer_is_efault() {
        let Some((d, cap)) = test_domain() else {
            return;
        };
        let msg = vec![b'x'; 5000]; // spans chunks
        d.physmap().write(0x20_0000, &msg).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits32, CONSOLE_IO, &[0, 5000, 0x20_0000]), 0);
        assert_eq!(cap.0.lock().unwrap().len(), 5000);
        assert_eq!(call(&d, GuestWidth::Bits32, CONSOLE_IO, &[0, 16, 0xe000_0000]), -14);
        assert_eq!(call(&d, GuestWidth::Bits32, CONSOLE_IO, &[1, 16, 0x20_0000]), 0);
        assert_eq!(call(&d, GuestWidth::Bits32, CONSOLE_IO, &[7, 16, 0x20_0000]), -38);
    }
}
