//! The PV console ring (`struct xencons_interface`): the guest writes
//! `out` and `out_prod`, we consume and advance `out_cons`; we write `in`
//! and `in_prod` for its input. The guest's indices are checked first.

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};
use xen_abi::console::offset::{IN, IN_CONS, IN_PROD, OUT, OUT_CONS, OUT_PROD};
use xen_abi::console::{IN_SIZE, OUT_SIZE};

/// A console page: the primary console's, mapped from guest RAM, or a
/// further console's, reached through the guest's grant.
pub struct ConsoleRing<'p> {
    page: VolatileSlice<'p>,
}

/// Maps the page at `offset` of a guest RAM memfd.
pub fn map_page(file: &File, offset: u64) -> std::io::Result<MmapRegion> {
    MmapRegion::from_file(FileOffset::new(file.try_clone()?, offset), 4096)
        .map_err(|e| std::io::Error::other(format!("mapping the console ring: {e}")))
}

/// The guest's indices are impossible.
#[derive(Debug, PartialEq, Eq)]
pub struct BadIndex {
    /// Producer.
    pub prod: u32,
    /// Consumer.
    pub cons: u32,
}

impl<'p> ConsoleRing<'p> {
    /// The ring in `page` (at least 4096 bytes).
    pub fn new(page: VolatileSlice<'p>) -> ConsoleRing<'p> {
        ConsoleRing { page }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        self.page.get_atomic_ref::<AtomicU32>(off).expect("aligned offsets inside the page")
    }

    /// Takes all pending output (at most the ring's size).
    /// All output waiting, consumed at once (see [`ConsoleRing::peek_output`]).
    #[cfg(test)]
    pub fn take_output(&self) -> Result<Vec<u8>, BadIndex> {
        let (out, prod) = self.peek_output()?;
        self.consume_output(prod);
        Ok(out)
    }

    /// The output waiting, and the producer index to pass to
    /// [`ConsoleRing::consume_output`] once it is safely written: a backend
    /// killed in between leaves it in the ring for the next one (shown
    /// twice at worst, never lost).
    pub fn peek_output(&self) -> Result<(Vec<u8>, u32), BadIndex> {
        let cons = self.word(OUT_CONS).load(Ordering::Acquire);
        let prod = self.word(OUT_PROD).load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons);
        if n > OUT_SIZE {
            return Err(BadIndex { prod, cons });
        }
        let buf = self.page.get_slice(OUT, OUT_SIZE as usize).expect("inside the page");
        let mut out = vec![0u8; n as usize];
        let start = (cons % OUT_SIZE) as usize;
        let first = out.len().min(OUT_SIZE as usize - start);
        buf.get_slice(start, first).expect("inside").copy_to(&mut out[..first]);
        if out.len() > first {
            let rest = out.len() - first;
            buf.get_slice(0, rest).expect("inside").copy_to(&mut out[first..]);
        }
        Ok((out, prod))
    }

    /// Frees the output up to `prod` (from [`ConsoleRing::peek_output`]).
    pub fn consume_output(&self, prod: u32) {
        self.word(OUT_CONS).store(prod, Ordering::Release);
    }

    /// Puts as much input as fits; returns how much did.
    pub fn give_input(&self, data: &[u8]) -> Result<usize, BadIndex> {
        let cons = self.word(IN_CONS).load(Ordering::Acquire);
        let prod = self.word(IN_PROD).load(Ordering::Acquire);
        let used = prod.wrapping_sub(cons);
        if used > IN_SIZE {
            return Err(BadIndex { prod, cons });
        }
        let n = data.len().min((IN_SIZE - used) as usize);
        let buf = self.page.get_slice(IN, IN_SIZE as usize).expect("inside the page");
        for (i, &b) in data[..n].iter().enumerate() {
            buf.get_slice((prod.wrapping_add(i as u32) % IN_SIZE) as usize, 1).expect("inside").copy_from(&[b]);
        }
        self.word(IN_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Guest side (tests): writes output.
    #[cfg(test)]
    pub fn guest_write(&self, data: &[u8]) -> usize {
        let prod = self.word(OUT_PROD).load(Ordering::Acquire);
        let cons = self.word(OUT_CONS).load(Ordering::Acquire);
        let n = data.len().min((OUT_SIZE - prod.wrapping_sub(cons).min(OUT_SIZE)) as usize);
        let buf = self.page.get_slice(OUT, OUT_SIZE as usize).expect("inside the page");
        for (i, &b) in data[..n].iter().enumerate() {
            buf.get_slice((prod.wrapping_add(i as u32) % OUT_SIZE) as usize, 1).expect("inside").copy_from(&[b]);
        }
        self.word(OUT_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Guest side (tests): reads input.
    #[cfg(test)]
    pub fn guest_read(&self) -> Vec<u8> {
        let cons = self.word(IN_CONS).load(Ordering::Acquire);
        let prod = self.word(IN_PROD).load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons).min(IN_SIZE);
        let buf = self.page.get_slice(IN, IN_SIZE as usize).expect("inside the page");
        let mut out = vec![0u8; n as usize];
        for (i, b) in out.iter_mut().enumerate() {
            let mut one = [0u8];
            buf.get_slice((cons.wrapping_add(i as u32) % IN_SIZE) as usize, 1).expect("inside").copy_to(&mut one);
            *b = one[0];
        }
        self.word(IN_CONS).store(prod, Ordering::Release);
        out
    }

    /// Guest side (tests): sets `out_prod` to anything.
    #[cfg(test)]
    pub fn guest_set_out_prod(&self, v: u32) {
        self.word(OUT_PROD).store(v, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_wraps_input_fills_and_bad_indices_are_refused() {
        let region = MmapRegion::<()>::new(4096).unwrap();
        let r = ConsoleRing::new(region.as_volatile_slice());
        let text: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(r.guest_write(&text), 1500);
        assert_eq!(r.take_output().unwrap(), text);
        assert_eq!(r.guest_write(&text), 1500, "wraps the 2048-byte ring");
        assert_eq!(r.take_output().unwrap(), text);
        assert_eq!(r.give_input(&[b'x'; 1500]).unwrap(), 1024, "input ring is 1024 bytes");
        assert_eq!(r.guest_read().len(), 1024);
        assert_eq!(r.give_input(b"hi").unwrap(), 2);
        assert_eq!(r.guest_read(), b"hi");
        r.guest_set_out_prod(1_000_000);
        assert!(r.take_output().is_err());
    }
}
