//! The network backend's seccomp allow-list: the common rules plus the two
//! tap ioctls a (re)connect needs and rewriting its counters file.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(&mut r, &[libc::SYS_pwrite64, libc::SYS_ftruncate]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[crate::tap::TUNSETOFFLOAD, crate::tap::TUNSETQUEUE]);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }
}
