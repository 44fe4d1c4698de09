//! Every SCHEDOP_shutdown reason ends the vmm with its documented exit status.

use xenkvm_tests::run_vmm;

#[test]
fn test_each_shutdown_reason_maps_to_its_exit_status() {
    for (reason, code) in [("poweroff", 0), ("reboot", 3), ("suspend", 4), ("crash", 5), ("watchdog", 6), ("soft_reset", 7)] {
        let run = run_vmm(&["--cmdline", &format!("hypercall_page shutdown={reason}")]);
        assert_eq!(run.code, Some(code), "shutdown={reason}\n{run}");
        assert!(run.stderr.contains(&format!("shut down: {reason}")), "{run}");
    }
}
