//! The Xen CPUID leaves follow the configuration.

use xenkvm_tests::run_vmm;

#[test]
fn test_xen_version_setting_reaches_cpuid_and_xen_version() {
    let run = run_vmm(&["--xen-version", "0x4000a", "--cmdline", "cpuid xen_version expect_version=0x4000a"]);
    run.assert_passed(&["cpuid.version", "xen_version.version"]);
    assert_eq!(run.code, Some(0), "{run}");
}

#[test]
fn test_leaves_move_to_0x40000100_beside_viridian() {
    let run = run_vmm(&["--cpuid-base-viridian", "--cmdline", "cpuid hypercall_page expect_base=0x40000100"]);
    run.assert_passed(&["cpuid.signature", "cpuid.max_leaf", "cpuid.hypercall_leaf", "hypercall_page.call"]);
}

#[test]
fn test_domid_is_reported_in_the_hvm_leaf() {
    let run = run_vmm(&["--domid", "7", "--cmdline", "cpuid expect_domid=7"]);
    run.assert_passed(&["cpuid.hvm_leaf"]);
}
