//! xenstored's seccomp allow-list: the common rules plus serving its Unix
//! socket (accepting clients), connecting to a vmm's socket when a domain
//! is introduced, and keeping its state file and journal (open, append,
//! truncate, sync, replace by rename) in the directories it keeps.

use xenkvm_sandbox::{allow, allow_file_replacing, allow_unix_peers, common_rules, Rules};

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    // Clients on its socket; a vmm's ipc socket when a domain is introduced.
    allow_unix_peers(&mut r);
    // State file and journal; only the kept directories exist.
    allow_file_replacing(&mut r);
    allow(
        &mut r,
        &[
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_ftruncate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
        ],
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }
}
