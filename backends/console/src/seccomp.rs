//! The console backend's seccomp allow-list: the common rules plus
//! accepting terminals on its attach socket, connecting to xenstored and
//! the vmm for channels that appear later, and writing its logs (create,
//! append, rotate by rename) in the directories it keeps.

use xenkvm_sandbox::{allow_file_replacing, allow_unix_peers, common_rules, Rules};

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow_unix_peers(&mut r);
    allow_file_replacing(&mut r);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_the_filter_builds() {
        assert!(xenkvm_sandbox::compile(super::rules()).is_ok());
    }
}
