//! The network backend's seccomp allow-list: the common rules plus the two
//! tap ioctls a (re)connect needs, rewriting its counters file, and
//! entering the queues' TX rings.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(&mut r, &[libc::SYS_pwrite64, libc::SYS_ftruncate]);
    // The TX rings, made before the filter (writes to the tap only; see
    // tap_uring.rs): entering them, not making or changing one. Their
    // kernel threads were placed when made: no thread places itself.
    allow(&mut r, &[libc::SYS_io_uring_enter]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[crate::tap::TUNSETOFFLOAD, crate::tap::TUNSETQUEUE]);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }

    #[test]
    fn test_the_jail_enters_rings_but_cannot_make_or_change_one() {
        let r = super::rules();
        assert!(r.contains_key(&libc::SYS_io_uring_enter));
        assert!(!xenkvm_sandbox::uring::rules_make_or_change_rings(&r), "a ring made inside the jail would have no restrictions");
    }
}
