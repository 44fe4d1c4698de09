//! Event channels, upcalls, PV timers, runstate, grant tables and SMP, as the
//! test guest exercises them through the hypercall page.

use xenkvm_tests::run_vmm;

#[test]
fn test_event_channels_upcalls_and_vcpu_info_relocation() {
    let run = run_vmm(&["--cmdline", "evtchn"]);
    run.assert_passed(&[
        "evtchn.callback_vector",
        "evtchn.loopback",
        "evtchn.loopback_reverse",
        "evtchn.masked_then_unmask",
        "evtchn.status",
        "evtchn.ipi_self",
        "evtchn.bad_arguments",
        "evtchn.close_and_rebind",
        "evtchn.vcpu_info_relocation_keeps_pending",
    ]);
    assert!(run.stderr.contains("refused HVM_PARAM_CALLBACK_IRQ"), "a PCI INTx callback is refused with a reason\n{run}");
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_timers_never_fire_early_and_block_wakes_on_them() {
    // The guest checks every expiry against its own clock: never before the
    // deadline, at most 100 ms after it (TIMER_TOLERANCE_NS).
    let run = run_vmm(&["--cmdline", "timer"]);
    run.assert_passed(&[
        "runstate.register",
        "timer.oneshot_block",
        "runstate.blocked_time",
        "timer.singleshot_vcpuop",
        "vcpu_time_area",
        "runstate.get_runstate_info",
        "timer.periodic",
    ]);
    assert!(run.console.contains("TIMER oneshot_late_ns="), "{run}");
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_grant_table_setup_query_and_remap() {
    let run = run_vmm(&["--cmdline", "gnttab"]);
    run.assert_passed(&["gnttab.query_size", "gnttab.versions", "gnttab.setup_table", "gnttab.remap"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_second_vcpu_initialise_up_ipis_timer_and_down() {
    let run = run_vmm(&["--vcpus", "2", "--cmdline", "smp"]);
    run.assert_passed(&[
        "smp.singleshot_only_on_self",
        "smp.vcpu_up",
        "smp.upcall_vector",
        "smp.ap_timer",
        "smp.ipi_ping_pong",
        "smp.vcpu_down",
    ]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_backend_notify_and_bare_msi_reach_the_handler() {
    // The benchmark's paths (no timing asserted): a host eventfd notify on a
    // backend channel the guest bound with bind_interdomain(0, port), and a
    // bare MSI, both reach the guest's upcall handler.
    let run = run_vmm(&["--test-device", "--cmdline", "bench_evtchn=3"]);
    run.assert_passed(&["evtchn.callback_vector", "bench_evtchn"]);
    assert!(run.console.contains("BENCH evtchn rounds=3"), "{run}");
}

#[test]
fn test_second_vcpu_started_by_init_and_sipi() {
    // The guest copies a real-mode trampoline to 0x8000 and sends INIT and
    // STARTUP through its local APIC's ICR; vCPU 1 climbs to long mode and
    // then runs the same timer and IPI checks as the VCPUOP_up path.
    let run = run_vmm(&["--vcpus", "2", "--cmdline", "sipi"]);
    run.assert_passed(&["sipi.vcpu_up", "smp.upcall_vector", "smp.ap_timer", "smp.ipi_ping_pong", "smp.vcpu_down"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_gsi_callback_through_the_ioapic() {
    // HVM_PARAM_CALLBACK_IRQ of GSI type: one upcall with work per event
    // (the line drops once the handler cleared evtchn_upcall_pending and
    // EOI'd; at most one empty upcall more, where this host's KVM reports the
    // EOI before the handler ran), the line stays asserted while the pin is
    // masked, and back to a vector.
    let run = run_vmm(&["--cmdline", "gsi"]);
    run.assert_passed(&["evtchn.callback_vector", "gsi.delivery", "gsi.level_held_while_masked", "gsi.back_to_vector"]);
    assert_eq!(run.code, Some(0), "{run}");
}
