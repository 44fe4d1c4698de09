//! The network backend's seccomp allow-list: the common rules plus the two
//! tap ioctls a (re)connect needs and rewriting its counters file.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETQUEUE: u64 = 0x4004_54d9;

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(&mut r, &[libc::SYS_pwrite64, libc::SYS_ftruncate]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[TUNSETOFFLOAD, TUNSETQUEUE]);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }
}
