//! The test guest boots through the hypercall page and every core check passes.

use xenkvm_tests::run_vmm;

const CORE_CHECKS: &[&str] = &[
    "cpuid.signature",
    "cpuid.max_leaf",
    "cpuid.version",
    "cpuid.hypercall_leaf",
    "cpuid.tsc_leaf",
    "cpuid.hvm_leaf",
    "cpuid.hypervisor_bit",
    "hypercall_page.filled",
    "hypercall_page.call",
    "xen_version.version",
    "xen_version.extraversion",
    "xen_version.compile_info",
    "xen_version.capabilities",
    "xen_version.changeset",
    "xen_version.platform_parameters",
    "xen_version.get_features",
    "xen_version.get_features_bad_submap",
    "xen_version.pagesize",
    "xen_version.guest_handle",
    "xen_version.commandline",
    "xen_version.build_id",
    "xen_version.unknown",
    "hypercall.unknown",
    "hypercall32.xen_version",
    "hypercall32.platform_parameters_layout",
    "hypercall32.console_io",
    "hypercall32.efault",
    "hypercall32.unknown",
    "start_info.header",
    "memmap.matches_start_info",
    "memmap.reserved_special_pages",
    "hvm_param.store_evtchn",
    "memmap.truncated",
    "memory.current_reservation",
    "shared_info.map",
    "shared_info.wallclock",
    "shared_info.time_scale",
    "shared_info.time_advances",
    "shared_info.remap",
    "vcpu_info.register",
    "vcpu_info.time_follows",
    "vcpu_info.bad_offset",
    "vcpu_info.bad_vcpu",
    "serial.thr_empty",
    "console_io.write",
    "efault.xen_version_get_features",
    "efault.xen_version_extraversion",
    "efault.memory_map_arg",
    "efault.memory_map_buffer",
    "efault.add_to_physmap",
    "efault.hvm_get_param",
    "efault.console_io",
    "efault.sched_shutdown",
    "efault.register_vcpu_info",
    "efault.straddling_buffer",
    "efault.vm_still_running",
    "sched.block_with_pending_event",
    "sched.yield",
];

#[test]
fn test_every_scenario_passes_and_guest_powers_off() {
    let run = run_vmm(&["--cmdline", "all expect_version=0x40013 expect_domid=1"]);
    run.assert_passed(CORE_CHECKS);
    assert_eq!(run.code, Some(0), "poweroff is exit 0\n{run}");
    assert!(run.console.contains("console_io: hello from the test guest"), "console_io output reaches the log\n{run}");
    assert!(
        run.console.contains("console32: hello from compat mode"),
        "a 32-bit console_io (count in ecx, buffer in edx) reaches the log\n{run}"
    );
    assert!(run.stderr.contains("shut down: poweroff"), "{run}");
}

#[test]
fn test_two_vcpus_boot_with_the_secondary_waiting_for_sipi() {
    let run = run_vmm(&["--vcpus", "2", "--memory", "64", "--cmdline", "cpuid hypercall_page shared_info"]);
    run.assert_passed(&["cpuid.hvm_leaf", "hypercall_page.call", "shared_info.time_advances"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_guest_above_the_4g_hole() {
    // 4.5 GiB: RAM is split around the hole; the map must say so.
    let run = run_vmm(&["--memory", "4608", "--cmdline", "memmap"]);
    run.assert_passed(&["memmap.matches_start_info", "memmap.reserved_special_pages", "memory.current_reservation"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_serial_and_debug_port_reach_the_console_log() {
    // The guest's own lines come through port 0xe9; the 16550 at 0x3f8 shares the log.
    let run = run_vmm(&["--cmdline", "serial"]);
    run.assert_passed(&["serial.thr_empty"]);
    assert!(run.console.starts_with("xenkvm test guest: cmdline \"serial\""), "{run}");
    assert!(run.console.contains("serial: hello from COM1\n"), "{run}");
}
