//! The console backend's seccomp allow-list: the common rules plus
//! accepting terminals on its attach socket, connecting to xenstored and
//! the vmm for channels that appear later, and writing its logs (create,
//! append, rotate by rename) in the directories it keeps.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

/// `FIONBIO`: std's `set_nonblocking` on sockets.
const FIONBIO: u64 = 0x5421;

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(&mut r, &[libc::SYS_accept4, libc::SYS_connect, libc::SYS_openat, libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2]);
    allow_arg(&mut r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[FIONBIO]);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }
}
