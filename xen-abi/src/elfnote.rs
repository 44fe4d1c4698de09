//! `xen/elfnote.h`: ELF notes in a Xen guest kernel.

/// Name of Xen's ELF notes (`"Xen"`, NUL-terminated in the file).
pub const XEN_ELFNOTE_NAME: &[u8] = b"Xen";
/// 32-bit physical entry point of a PVH kernel.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
