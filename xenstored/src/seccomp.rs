//! xenstored's seccomp allow-list: the common rules plus serving its Unix
//! socket (accepting clients), connecting to a vmm's socket when a domain
//! is introduced, and keeping its state file and journal (open, append,
//! truncate, sync, replace by rename) in the directories it keeps.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

/// `FIONBIO`: std's `set_nonblocking` on sockets.
const FIONBIO: u64 = 0x5421;

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(
        &mut r,
        &[
            libc::SYS_accept4,
            libc::SYS_connect,
            // State file and journal; only the kept directories exist.
            libc::SYS_openat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_ftruncate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
        ],
    );
    // Unix sockets only (to a vmm's ipc socket).
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
