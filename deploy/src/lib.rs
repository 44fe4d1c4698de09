//! xenkvm's launcher: domain configs in xl.cfg syntax, and the process
//! tree of a guest (xenstored, vmm, console backend) it starts, supervises
//! and tears down.

pub mod config;
pub mod launcher;
pub mod xlcfg;
