//! A small ELF reader for PVH kernels: 32- and 64-bit little-endian x86
//! images, their `PT_LOAD` segments and Xen's `PHYS32_ENTRY` note.
//!
//! linux-loader only reads ELF64 and loads by itself; PVH images such as
//! GRUB's `i386-xen_pvh` are ELF32, and we want every segment checked against
//! the guest layout before a byte is copied, so we parse here.

use xen_abi::elfnote::{XEN_ELFNOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Why an image is not a loadable PVH kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not an ELF file.
    #[error("Not an ELF file (bad magic)")]
    NotElf,
    /// Something other than little-endian 32/64-bit x86.
    #[error("Unsupported ELF: {0}")]
    Unsupported(&'static str),
    /// A header or table points outside the file.
    #[error("Malformed ELF: {0}")]
    Malformed(&'static str),
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note.
    #[error("ELF has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); it is not a PVH kernel")]
    NoPvhNote,
    /// No loadable segment.
    #[error("ELF has no loadable segments")]
    NoSegments,
}

/// One `PT_LOAD` segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Bytes in memory (the tail past `data` is zeroed).
    pub memsz: u64,
    /// Offset of the file bytes.
    pub file_offset: usize,
    /// Number of file bytes.
    pub filesz: usize,
}

/// A parsed PVH kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhImage {
    /// 32-bit physical entry point from the note.
    pub entry: u32,
    /// Whether the file is ELF64.
    pub elf64: bool,
    /// Loadable segments.
    pub segments: Vec<Segment>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn bytes(&self, off: u64, len: u64) -> Result<&[u8], Error> {
        let start = usize::try_from(off).map_err(|_| Error::Malformed("offset too large"))?;
        let len = usize::try_from(len).map_err(|_| Error::Malformed("length too large"))?;
        let end = start.checked_add(len).ok_or(Error::Malformed("range overflows"))?;
        self.b.get(start..end).ok_or(Error::Malformed("table or segment beyond end of file"))
    }
    fn u16(&self, off: u64) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.bytes(off, 2)?.try_into().unwrap()))
    }
    fn u32(&self, off: u64) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.bytes(off, 4)?.try_into().unwrap()))
    }
    fn u64(&self, off: u64) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.bytes(off, 8)?.try_into().unwrap()))
    }
    /// A word: 4 bytes in ELF32, 8 in ELF64.
    fn word(&self, off: u64, elf64: bool) -> Result<u64, Error> {
        if elf64 {
            self.u64(off)
        } else {
            self.u32(off).map(u64::from)
        }
    }
}

/// Finds the PHYS32_ENTRY note in a note area.
fn find_entry_note(notes: &[u8]) -> Result<Option<u32>, Error> {
    let r = Reader { b: notes };
    let mut off = 0u64;
    let align4 = |x: u64| (x + 3) & !3;
    while off + 12 <= notes.len() as u64 {
        let namesz = u64::from(r.u32(off)?);
        let descsz = u64::from(r.u32(off + 4)?);
        let kind = r.u32(off + 8)?;
        let name_off = off + 12;
        let desc_off = name_off + align4(namesz);
        let name = r.bytes(name_off, namesz)?;
        let desc = r.bytes(desc_off, descsz)?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        if name == XEN_ELFNOTE_NAME && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            let entry = match desc.len() {
                4 => u64::from(u32::from_le_bytes(desc.try_into().unwrap())),
                8 => u64::from_le_bytes(desc.try_into().unwrap()),
                _ => return Err(Error::Malformed("PHYS32_ENTRY note has a bad size")),
            };
            let entry = u32::try_from(entry).map_err(|_| Error::Malformed("PHYS32_ENTRY is above 4 GiB"))?;
            return Ok(Some(entry));
        }
        off = desc_off + align4(descsz);
    }
    Ok(None)
}

/// Parses a PVH kernel image.
pub fn parse(image: &[u8]) -> Result<PvhImage, Error> {
    let r = Reader { b: image };
    if image.len() < 52 || &image[..4] != b"\x7fELF" {
        return Err(Error::NotElf);
    }
    let elf64 = match image[4] {
        1 => false,
        2 => true,
        _ => return Err(Error::Unsupported("unknown ELF class")),
    };
    if image[5] != 1 {
        return Err(Error::Unsupported("big-endian ELF"));
    }
    let machine = r.u16(18)?;
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(Error::Unsupported("not an x86 ELF"));
    }
    let (phoff, phentsize, phnum, shoff, shentsize, shnum) = if elf64 {
        (r.u64(32)?, r.u16(54)?, r.u16(56)?, r.u64(40)?, r.u16(58)?, r.u16(60)?)
    } else {
        (u64::from(r.u32(28)?), r.u16(42)?, r.u16(44)?, u64::from(r.u32(32)?), r.u16(46)?, r.u16(48)?)
    };
    let min_ph = if elf64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_ph {
        return Err(Error::Malformed("program header entries too small"));
    }
    let mut segments = Vec::new();
    let mut entry = None;
    for i in 0..u64::from(phnum) {
        let ph = phoff + i * u64::from(phentsize);
        r.bytes(ph, u64::from(phentsize))?;
        let p_type = r.u32(ph)?;
        let (offset, paddr, filesz, memsz) = if elf64 {
            (r.u64(ph + 8)?, r.u64(ph + 24)?, r.u64(ph + 32)?, r.u64(ph + 40)?)
        } else {
            (r.word(ph + 4, false)?, r.word(ph + 12, false)?, r.word(ph + 16, false)?, r.word(ph + 20, false)?)
        };
        match p_type {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(Error::Malformed("segment file size exceeds memory size"));
                }
                r.bytes(offset, filesz)?;
                if memsz > 0 {
                    segments.push(Segment { paddr, memsz, file_offset: offset as usize, filesz: filesz as usize });
                }
            }
            PT_NOTE if entry.is_none() => entry = find_entry_note(r.bytes(offset, filesz)?)?,
            _ => {}
        }
    }
    // Some images carry their notes only in sections.
    if entry.is_none() && shnum > 0 {
        let min_sh = if elf64 { 64 } else { 40 };
        if usize::from(shentsize) < min_sh {
            return Err(Error::Malformed("section header entries too small"));
        }
        for i in 0..u64::from(shnum) {
            let sh = shoff + i * u64::from(shentsize);
            r.bytes(sh, u64::from(shentsize))?;
            if r.u32(sh + 4)? != SHT_NOTE {
                continue;
            }
            let (offset, size) =
                if elf64 { (r.u64(sh + 24)?, r.u64(sh + 32)?) } else { (u64::from(r.u32(sh + 16)?), u64::from(r.u32(sh + 20)?)) };
            if let Some(e) = find_entry_note(r.bytes(offset, size)?)? {
                entry = Some(e);
                break;
            }
        }
    }
    let entry = entry.ok_or(Error::NoPvhNote)?;
    if segments.is_empty() {
        return Err(Error::NoSegments);
    }
    Ok(PvhImage { entry, elf64, segments })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF32 with one PT_LOAD and optionally a PVH note.
    pub(crate) fn elf32(paddr: u32, payload: &[u8], memsz: u32, entry_note: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(e) = entry_note {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let phnum = 2u16;
        let phoff = 52u32;
        let note_off = phoff + 32 * u32::from(phnum);
        let data_off = note_off + note.len() as u32;
        let mut f = vec![0u8; 52];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&EM_386.to_le_bytes());
        f[28..32].copy_from_slice(&phoff.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&phnum.to_le_bytes());
        let ph = |t: u32, off: u32, pa: u32, fs: u32, ms: u32| {
            let mut p = vec![0u8; 32];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[4..8].copy_from_slice(&off.to_le_bytes());
            p[8..12].copy_from_slice(&pa.to_le_bytes());
            p[12..16].copy_from_slice(&pa.to_le_bytes());
            p[16..20].copy_from_slice(&fs.to_le_bytes());
            p[20..24].copy_from_slice(&ms.to_le_bytes());
            p
        };
        f.extend(ph(PT_LOAD, data_off, paddr, payload.len() as u32, memsz));
        f.extend(ph(PT_NOTE, note_off, 0, note.len() as u32, 0));
        f.extend(note);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn test_parses_elf32_with_pvh_note() {
        let img = parse(&elf32(0x10_0000, &[0x90; 16], 0x2000, Some(0x10_0004))).unwrap();
        assert_eq!(img.entry, 0x10_0004);
        assert!(!img.elf64);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].paddr, 0x10_0000);
        assert_eq!(img.segments[0].memsz, 0x2000);
        assert_eq!(img.segments[0].filesz, 16);
    }

    #[test]
    fn test_missing_note_is_a_clear_error() {
        assert_eq!(parse(&elf32(0x10_0000, &[0x90; 16], 16, None)), Err(Error::NoPvhNote));
    }

    #[test]
    fn test_garbage_and_truncation_are_errors_not_panics() {
        assert_eq!(parse(b"hello"), Err(Error::NotElf));
        let good = elf32(0x10_0000, &[0x90; 16], 16, Some(0x10_0000));
        for cut in [53, 60, 100, good.len() - 1] {
            assert!(parse(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut bad = good.clone();
        bad[28..32].copy_from_slice(&u32::MAX.to_le_bytes()); // phoff past the end
        assert!(matches!(parse(&bad), Err(Error::Malformed(_))));
    }
}
