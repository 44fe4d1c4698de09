//! The block backend's seccomp allow-list: the common rules plus file I/O
//! on the image it already holds (positional and vectored reads and
//! writes, syncs, hole punching, growing a qcow2), entering its io_urings, and the
//! two ioctls a block device needs at run time (discard, secure erase).

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules};

/// The filter's rules.
pub fn rules() -> Rules {
    let mut r = common_rules();
    allow(
        &mut r,
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            // Punching holes for discards; imago growing a qcow2 file.
            libc::SYS_fallocate,
            libc::SYS_ftruncate,
            libc::SYS_fstatfs,
            // Its rings, made before the jail (see uring.rs): entering
            // them only.
            libc::SYS_io_uring_enter,
        ],
    );
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[crate::image::BLKDISCARD, crate::image::BLKSECDISCARD]);
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
