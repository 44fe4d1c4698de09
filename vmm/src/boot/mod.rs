//! Loading a guest kernel for PVH boot.

pub mod elf;
pub mod pvh;
