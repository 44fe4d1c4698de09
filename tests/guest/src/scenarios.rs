//! The checks, chosen by the command line: a list of scenario names plus
//! `key=value` options (`shutdown=`, `expect_version=`, `expect_domid=`,
//! `expect_base=`, `bench=`).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use xen_abi::errno::XenErrno;
use xen_abi::hvm::{param, XenHvmParam, HVMOP_GET_PARAM};
use xen_abi::memory::*;
use xen_abi::sched::*;
use xen_abi::shared_info::{SharedInfo64, VcpuInfo64, VcpuTimeInfo};
use xen_abi::start_info::{HvmMemmapTableEntry, HvmStartInfo, XEN_HVM_START_MAGIC_VALUE};
use xen_abi::vcpu::{VcpuRegisterVcpuInfo, VCPUOP_REGISTER_VCPU_INFO};
use xen_abi::version::*;
use xen_abi::DOMID_SELF;

use crate::console::println;
use crate::hcall::{self, Page};

/// Page the guest gives up for shared_info (first placement).
static mut SHINFO_A: Page = Page([0; 4096]);
/// Second placement, to check a remap.
static mut SHINFO_B: Page = Page([0; 4096]);
/// Where vcpu_info is registered.
static mut VCPU_INFO_PAGE: Page = Page([0; 4096]);
/// Where vcpu_info[0] lives now (0: in shared_info).
static mut LIVE_VCPU_INFO: u64 = 0;
/// Scratch buffer for hypercall arguments.
static mut SCRATCH: Page = Page([0; 4096]);
/// An address no page table maps (the identity map covers 4 GiB only).
const UNMAPPED: u64 = 0x0000_7fff_0000_0000;

struct Opts<'a> {
    cmdline: &'a str,
}

impl<'a> Opts<'a> {
    fn has(&self, name: &str) -> bool {
        self.cmdline.split_ascii_whitespace().any(|w| w == name || w == "all")
    }
    /// Scenarios that need set-up from the host run only when named.
    fn named(&self, name: &str) -> bool {
        self.cmdline.split_ascii_whitespace().any(|w| w == name)
    }
    fn get(&self, key: &str) -> Option<&'a str> {
        self.cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
    fn num(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

pub(crate) struct Checks {
    failed: u32,
    passed: u32,
}

impl Checks {
    pub(crate) fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
            println!("PASS {name}");
        } else {
            self.failed += 1;
            println!("FAIL {name}: {detail}");
        }
    }
}

fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Finds the Xen leaves the way guests do: every 0x100 from 0x40000000.
fn find_xen_base() -> Option<u32> {
    (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&b| {
        let (_, ebx, ecx, edx) = cpuid(b, 0);
        (ebx, ecx, edx) == (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e)
    })
}

fn cstr(b: &[u8]) -> &str {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..n]).unwrap_or("<not utf-8>")
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port input from the platform's UART.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

fn outb(port: u16, v: u8) {
    // SAFETY: port output to the platform's UART.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

fn scratch() -> *mut u8 {
    addr_of_mut!(SCRATCH) as *mut u8
}

fn errno_name(r: i64) -> &'static str {
    XenErrno::from_ret(r).map_or("?", |e| e.name())
}

/// System time from a vcpu_time_info, with the version protocol.
pub(crate) fn system_time(t: *const VcpuTimeInfo) -> u64 {
    loop {
        // SAFETY: `t` points at a vcpu_time_info the hypervisor maintains in mapped memory.
        unsafe {
            let v1 = read_volatile(addr_of!((*t).version));
            fence(Ordering::SeqCst);
            let ts = read_volatile(addr_of!((*t).tsc_timestamp));
            let sys = read_volatile(addr_of!((*t).system_time));
            let mul = read_volatile(addr_of!((*t).tsc_to_system_mul));
            let shift = read_volatile(addr_of!((*t).tsc_shift));
            let tsc = core::arch::x86_64::_rdtsc();
            fence(Ordering::SeqCst);
            let v2 = read_volatile(addr_of!((*t).version));
            if v1 != v2 || v1 & 1 != 0 {
                continue;
            }
            let mut delta = tsc.wrapping_sub(ts);
            if shift >= 0 {
                delta <<= shift;
            } else {
                delta >>= -shift;
            }
            return sys + ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
        }
    }
}

fn time_of(info: *const VcpuInfo64) -> *const VcpuTimeInfo {
    // SAFETY: only computes a field address.
    unsafe { addr_of!((*info).time) }
}

pub(crate) fn map_shared_info(page: u64) -> i64 {
    let x = XenAddToPhysmap64 { domid: DOMID_SELF, size: 0, space: XENMAPSPACE_SHARED_INFO, idx: 0, gpfn: page >> 12 };
    hcall::memory_op(XENMEM_ADD_TO_PHYSMAP, &x as *const _ as u64)
}

pub(crate) fn get_param(index: u32) -> (i64, u64) {
    let mut p = XenHvmParam { domid: DOMID_SELF, _pad: 0, index, value: 0 };
    let r = hcall::hvm_op(HVMOP_GET_PARAM, &mut p as *mut _ as u64);
    (r, p.value)
}

pub fn run(start_info: u64) -> ! {
    // SAFETY: the domain builder put a valid hvm_start_info at `start_info`.
    let si: HvmStartInfo = unsafe { read_volatile(start_info as *const HvmStartInfo) };
    let cmdline = if si.cmdline_paddr != 0 {
        // SAFETY: the command line is NUL-terminated in mapped memory.
        let bytes = unsafe { core::slice::from_raw_parts(si.cmdline_paddr as *const u8, 4096) };
        cstr(bytes)
    } else {
        ""
    };
    let opts = Opts { cmdline: if cmdline.trim().is_empty() { "all" } else { cmdline } };
    let mut c = Checks { failed: 0, passed: 0 };
    println!("xenkvm test guest: cmdline \"{}\"", opts.cmdline);

    // CPUID and the hypercall page are needed by everything else.
    let base = find_xen_base();
    let Some(base) = base else {
        check!(c, "cpuid.signature", false, "no XenVMMXenVMM leaves found");
        hcall::shutdown(SHUTDOWN_CRASH);
    };
    let (_, msr, _, _) = cpuid(base + 2, 0);
    hcall::setup(msr);
    if opts.has("cpuid") {
        scenario_cpuid(&mut c, &opts, base);
    }
    if opts.has("hypercall_page") {
        check!(c, "hypercall_page.filled", hcall::first_byte() != 0, "page still empty after WRMSR");
        let v = hcall::xen_version(XENVER_VERSION, 0);
        check!(c, "hypercall_page.call", v > 0 && (v >> 16) >= 3, "xen_version returned {v:#x}");
    }
    if opts.has("xen_version") {
        scenario_xen_version(&mut c, &opts);
    }
    if opts.has("memmap") {
        scenario_memmap(&mut c, &si);
    }
    if opts.named("modules") {
        let want = opts.get("expect_module").unwrap_or("");
        let ok = si.nr_modules == 1 && si.modlist_paddr != 0 && {
            // SAFETY: the domain builder wrote one module entry and the module itself.
            let m = unsafe { read_volatile(si.modlist_paddr as *const xen_abi::start_info::HvmModlistEntry) };
            let data = unsafe { core::slice::from_raw_parts(m.paddr as *const u8, m.size as usize) };
            m.paddr % 4096 == 0 && data.starts_with(want.as_bytes())
        };
        check!(c, "start_info.module", ok, "nr_modules {} (want one starting with {want})", si.nr_modules);
    }
    if opts.has("shared_info") {
        scenario_shared_info(&mut c);
    }
    if opts.has("vcpu_info") {
        scenario_vcpu_info(&mut c);
    }
    if opts.has("serial") {
        // 16550 at 0x3f8: wait for THR empty (LSR bit 5), then write each byte.
        let mut ok = true;
        for &b in b"serial: hello from COM1\n" {
            let mut spins = 0;
            while inb(0x3fd) & 0x20 == 0 {
                spins += 1;
                if spins > 1000 {
                    ok = false;
                    break;
                }
            }
            outb(0x3f8, b);
        }
        check!(c, "serial.thr_empty", ok, "LSR never reported THR empty");
    }
    if opts.has("console_io") {
        let r = hcall::console_write(b"console_io: hello from the test guest\n");
        check!(c, "console_io.write", r == 0, "returned {r}");
    }
    if opts.has("efault") {
        scenario_efault(&mut c);
    }
    if opts.has("hypercall32") {
        scenario_hypercall32(&mut c);
    }
    if opts.has("block") {
        scenario_block(&mut c);
    }
    let want_events = ["evtchn", "timer", "gnttab"].iter().any(|s| opts.has(s))
        || ["smp", "sipi", "gsi", "xenstore", "xenstore_garbage", "wait_shutdown", "channel", "blkfront", "netfront"]
            .iter()
            .any(|s| opts.named(s))
        || opts.num("xenstore_loop").is_some()
        || opts.num("idle").is_some()
        || opts.num("console_flood").is_some()
        || opts.named("console_echo")
        || opts.num("bench_evtchn").is_some();
    // SAFETY: single-threaded until the smp scenario; plain read of our own static.
    if want_events && crate::events::setup(&mut c, addr_of_mut!(SHINFO_A) as u64, unsafe { LIVE_VCPU_INFO }) {
        if opts.has("evtchn") {
            crate::events::scenario_evtchn(&mut c);
        }
        if opts.has("timer") {
            crate::events::scenario_timer(&mut c);
        }
        if opts.has("gnttab") {
            crate::events::scenario_gnttab(&mut c);
        }
        if opts.named("xenstore") {
            crate::xenstore::scenario(&mut c);
        }
        if opts.named("xenstore_garbage") {
            crate::xenstore::scenario_garbage(&mut c);
        }
        if opts.named("netfront") {
            let secs = opts.num("net_secs").unwrap_or(10);
            let tcp = opts.num("net_tcp").unwrap_or(0) as u16;
            let queues = opts.num("net_queues").unwrap_or(1) as usize;
            crate::netfront::scenario(
                &mut c,
                opts.get("net_ip").unwrap_or("10.99.0.2"),
                opts.get("net_peer").unwrap_or("10.99.0.1"),
                secs,
                tcp,
                queues,
            );
        }
        if opts.named("blkfront") {
            crate::blkfront::scenario(&mut c, opts.num("blk_rounds").unwrap_or(1));
        }
        if opts.named("channel") {
            crate::xenstore::scenario_channel(&mut c, opts.num("channel_lines").unwrap_or(0));
        }
        if opts.named("wait_shutdown") {
            crate::xenstore::scenario_wait_shutdown(&mut c);
        }
        if let Some(n) = opts.num("xenstore_loop") {
            crate::xenstore::scenario_loop(&mut c, n);
        }
        if let Some(kib) = opts.num("console_flood") {
            crate::pvconsole::scenario_flood(&mut c, kib);
        }
        if opts.named("console_echo") {
            crate::pvconsole::scenario_echo(&mut c);
        }
        if let Some(ms) = opts.num("idle") {
            crate::events::idle(ms);
        }
        if opts.named("gsi") {
            crate::events::scenario_gsi(&mut c);
        }
        if opts.named("smp") {
            crate::events::scenario_smp(&mut c, crate::events::ApStart::VcpuOp);
        }
        if opts.named("sipi") {
            crate::events::scenario_smp(&mut c, crate::events::ApStart::InitSipi);
        }
        if let Some(n) = opts.num("bench_evtchn") {
            crate::events::bench(&mut c, n as u32);
        }
    }
    if let Some(n) = opts.num("bench") {
        bench(&mut c, n);
    }
    println!("DONE passed={} failed={}", c.passed, c.failed);
    let reason = match opts.get("shutdown") {
        None | Some("poweroff") => SHUTDOWN_POWEROFF,
        Some("reboot") => SHUTDOWN_REBOOT,
        Some("suspend") => SHUTDOWN_SUSPEND,
        Some("crash") => SHUTDOWN_CRASH,
        Some("watchdog") => SHUTDOWN_WATCHDOG,
        Some("soft_reset") => SHUTDOWN_SOFT_RESET,
        Some("none") => loop {
            hcall::sched_op(SCHEDOP_YIELD, 0);
        },
        Some(other) => {
            println!("FAIL shutdown: unknown reason {other}");
            SHUTDOWN_CRASH
        }
    };
    hcall::shutdown(reason)
}

fn scenario_cpuid(c: &mut Checks, opts: &Opts<'_>, base: u32) {
    let want_base = opts.num("expect_base").unwrap_or(0x4000_0000) as u32;
    check!(c, "cpuid.signature", base == want_base, "Xen leaves at {base:#x}, expected {want_base:#x}");
    let (max, ..) = cpuid(base, 0);
    check!(c, "cpuid.max_leaf", max == base + 5, "max leaf {max:#x}");
    let (ver, ..) = cpuid(base + 1, 0);
    if let Some(want) = opts.num("expect_version") {
        check!(c, "cpuid.version", u64::from(ver) == want, "version {ver:#x}, expected {want:#x}");
    } else {
        check!(c, "cpuid.version", ver >> 16 >= 4, "version {ver:#x}");
    }
    let (pages, msr, ..) = cpuid(base + 2, 0);
    check!(c, "cpuid.hypercall_leaf", pages == 1 && msr == 0x4000_0000, "pages {pages} msr {msr:#x}");
    let (flags, _, khz, _) = cpuid(base + 3, 0);
    let (_, _, mul, _) = cpuid(base + 3, 1);
    check!(c, "cpuid.tsc_leaf", khz > 100_000 && mul != 0 && flags & 1 == 0, "flags {flags:#x} khz {khz} mul {mul:#x}");
    let (hvm, vcpu, domid, _) = cpuid(base + 4, 0);
    let want_domid = opts.num("expect_domid").unwrap_or(1) as u32;
    check!(
        c,
        "cpuid.hvm_leaf",
        hvm & 0x18 == 0x18 && vcpu == 0 && domid == want_domid,
        "flags {hvm:#x} vcpu {vcpu} domid {domid} (want {want_domid})"
    );
    let (_, _, ecx1, _) = cpuid(1, 0);
    check!(c, "cpuid.hypervisor_bit", ecx1 & (1 << 31) != 0, "leaf 1 ecx {ecx1:#x}");
}

fn scenario_xen_version(c: &mut Checks, opts: &Opts<'_>) {
    let s = scratch();
    let buf = s as u64;
    let v = hcall::xen_version(XENVER_VERSION, 0);
    let want = opts.num("expect_version").map_or(v, |w| w as i64);
    check!(c, "xen_version.version", v == want && v >> 16 >= 4, "{v:#x}");
    let bytes = |n: usize| {
        // SAFETY: SCRATCH is ours and 4096 bytes long.
        unsafe { core::slice::from_raw_parts(s as *const u8, n) }
    };
    let r = hcall::xen_version(XENVER_EXTRAVERSION, buf);
    check!(c, "xen_version.extraversion", r == 0 && bytes(16)[0] == b'.', "ret {r} \"{}\"", cstr(bytes(16)));
    let r = hcall::xen_version(XENVER_COMPILE_INFO, buf);
    check!(c, "xen_version.compile_info", r == 0 && !cstr(bytes(64)).is_empty(), "ret {r}");
    let r = hcall::xen_version(XENVER_CAPABILITIES, buf);
    let caps = cstr(bytes(1024));
    check!(c, "xen_version.capabilities", r == 0 && caps.contains("hvm-3.0-x86_64"), "ret {r} \"{caps}\"");
    let r = hcall::xen_version(XENVER_CHANGESET, buf);
    check!(c, "xen_version.changeset", r == 0 && !cstr(bytes(64)).is_empty(), "ret {r}");
    // SAFETY: SCRATCH is ours.
    unsafe { write_volatile(s as *mut u64, u64::MAX) };
    let r = hcall::xen_version(XENVER_PLATFORM_PARAMETERS, buf);
    // SAFETY: as above.
    let vs = unsafe { read_volatile(s as *const u64) };
    check!(c, "xen_version.platform_parameters", r == 0 && vs == 0, "ret {r} virt_start {vs:#x}");
    let mut fi = XenFeatureInfo { submap_idx: 0, submap: 0 };
    let r = hcall::xen_version(XENVER_GET_FEATURES, &mut fi as *mut _ as u64);
    let want_bits = (1 << xen_abi::features::XENFEAT_AUTO_TRANSLATED_PHYSMAP) | (1 << xen_abi::features::XENFEAT_HVM_CALLBACK_VECTOR);
    check!(c, "xen_version.get_features", r == 0 && fi.submap & want_bits == want_bits, "ret {r} submap {:#x}", fi.submap);
    let mut fi = XenFeatureInfo { submap_idx: 1, submap: 0 };
    let r = hcall::xen_version(XENVER_GET_FEATURES, &mut fi as *mut _ as u64);
    check!(c, "xen_version.get_features_bad_submap", r == XenErrno::EINVAL.to_ret(), "ret {r}");
    let r = hcall::xen_version(XENVER_PAGESIZE, 0);
    let r2 = hcall::xen_version(XENVER_PAGESIZE, buf);
    check!(c, "xen_version.pagesize", r == 4096 && r2 == XenErrno::EINVAL.to_ret(), "ret {r} / {r2}");
    let r = hcall::xen_version(XENVER_GUEST_HANDLE, buf);
    check!(c, "xen_version.guest_handle", r == 0 && bytes(16).iter().any(|&b| b != 0), "ret {r}");
    let r = hcall::xen_version(XENVER_COMMANDLINE, buf);
    check!(c, "xen_version.commandline", r == 0 && cstr(bytes(1024)) == "<denied>", "ret {r} \"{}\"", cstr(bytes(32)));
    let r = hcall::xen_version(XENVER_BUILD_ID, buf);
    check!(c, "xen_version.build_id", r == XenErrno::EPERM.to_ret(), "ret {r}");
    let r = hcall::xen_version(77, buf);
    check!(c, "xen_version.unknown", r == XenErrno::ENOSYS.to_ret(), "ret {r}");
    let r = hcall::call(63, [0; 5]);
    check!(c, "hypercall.unknown", r == XenErrno::ENOSYS.to_ret(), "ret {r}");
}

/// Hypercalls from 32-bit compatibility mode: ebx/ecx/edx arguments, eax
/// result, 4-byte return address, 32-bit struct layouts.
fn scenario_hypercall32(c: &mut Checks) {
    let s = scratch();
    let buf = s as u64;
    assert!(buf < 1 << 32, "scratch must be addressable from 32-bit code");
    let v64 = hcall::xen_version(XENVER_VERSION, 0);
    let v32 = hcall::call32(xen_abi::hypercall::XEN_VERSION, [XENVER_VERSION, 0, 0, 0, 0]);
    check!(c, "hypercall32.xen_version", v32 == v64, "32-bit {v32:#x}, 64-bit {v64:#x}");
    // SAFETY: SCRATCH is ours.
    unsafe { write_volatile(s as *mut u64, u64::MAX) };
    let r = hcall::call32(xen_abi::hypercall::XEN_VERSION, [XENVER_PLATFORM_PARAMETERS, buf as u32, 0, 0, 0]);
    // SAFETY: as above.
    let vs = unsafe { read_volatile(s as *const u64) };
    // The compat xen_platform_parameters is one 4-byte virt_start.
    check!(c, "hypercall32.platform_parameters_layout", r == 0 && vs == 0xffff_ffff_0000_0000, "ret {r} bytes {vs:#x}");
    let text = b"console32: hello from compat mode\n";
    let r =
        hcall::call32(xen_abi::hypercall::CONSOLE_IO, [xen_abi::hypercall::CONSOLEIO_WRITE, text.len() as u32, text.as_ptr() as u32, 0, 0]);
    check!(c, "hypercall32.console_io", r == 0, "ret {r}");
    // Above RAM, in the MMIO hole: not guest memory.
    let r = hcall::call32(xen_abi::hypercall::XEN_VERSION, [XENVER_EXTRAVERSION, 0xf000_0000, 0, 0, 0]);
    check!(c, "hypercall32.efault", r == XenErrno::EFAULT.to_ret(), "ret {r}");
    let r = hcall::call32(63, [0; 5]);
    check!(c, "hypercall32.unknown", r == XenErrno::ENOSYS.to_ret(), "ret {r}");
}

fn scenario_memmap(c: &mut Checks, si: &HvmStartInfo) {
    check!(
        c,
        "start_info.header",
        si.magic == XEN_HVM_START_MAGIC_VALUE && si.version >= 1,
        "magic {:#x} version {}",
        si.magic,
        si.version
    );
    let n = si.memmap_entries as usize;
    // SAFETY: the domain builder wrote `n` entries at memmap_paddr.
    let sim = unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const HvmMemmapTableEntry, n) };
    let mut e820 = [E820Entry::default(); 16];
    let mut map = XenMemoryMap64 { nr_entries: 16, _pad: 0, buffer: e820.as_mut_ptr() as u64 };
    let r = hcall::memory_op(XENMEM_MEMORY_MAP, &mut map as *mut _ as u64);
    let got = map.nr_entries as usize;
    let same = got == n && sim.iter().zip(e820.iter()).all(|(a, b)| a.addr == b.addr && a.size == b.size && a.kind == b.kind);
    check!(c, "memmap.matches_start_info", r == 0 && same && n >= 2, "ret {r} entries {got} vs start_info {n}");
    let (r1, store) = get_param(param::STORE_PFN);
    let (r2, console) = get_param(param::CONSOLE_PFN);
    let reserved = |pfn: u64| {
        let a = pfn << 12;
        sim.iter().any(|e| e.kind == E820_RESERVED && a >= e.addr && a + 4096 <= e.addr + e.size)
            && !sim.iter().any(|e| e.kind == E820_RAM && a < e.addr + e.size && e.addr < a + 4096)
    };
    check!(
        c,
        "memmap.reserved_special_pages",
        r1 == 0 && r2 == 0 && store != console && reserved(store) && reserved(console),
        "store pfn {store:#x} console pfn {console:#x} (ret {r1}/{r2})"
    );
    let (r, port) = get_param(param::STORE_EVTCHN);
    check!(c, "hvm_param.store_evtchn", r == 0 && port != 0, "ret {r} port {port}");
    let mut small = XenMemoryMap64 { nr_entries: 1, _pad: 0, buffer: e820.as_mut_ptr() as u64 };
    let r = hcall::memory_op(XENMEM_MEMORY_MAP, &mut small as *mut _ as u64);
    check!(c, "memmap.truncated", r == 0 && small.nr_entries == 1, "ret {r} nr {}", small.nr_entries);
    let me = DOMID_SELF;
    let cur = hcall::memory_op(XENMEM_CURRENT_RESERVATION, &me as *const _ as u64);
    let ram: u64 = sim.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
    check!(c, "memory.current_reservation", cur > 0 && (cur as u64) << 12 >= ram, "{cur} pages, {ram} bytes of RAM in the map");
}

fn scenario_shared_info(c: &mut Checks) {
    let a = addr_of_mut!(SHINFO_A) as u64;
    let r = map_shared_info(a);
    check!(c, "shared_info.map", r == 0, "ret {r}");
    let sh = a as *const SharedInfo64;
    // SAFETY: shared_info is now mapped at `a`.
    let (wv, ws) = unsafe { (read_volatile(addr_of!((*sh).wc_version)), read_volatile(addr_of!((*sh).wc_sec))) };
    check!(c, "shared_info.wallclock", wv % 2 == 0 && wv > 0 && ws > 1_600_000_000, "wc_version {wv} wc_sec {ws}");
    // SAFETY: as above.
    let info0 = unsafe { addr_of!((*sh).vcpu_info[0]) };
    let t = time_of(info0);
    // SAFETY: as above.
    let mul = unsafe { read_volatile(addr_of!((*t).tsc_to_system_mul)) };
    check!(c, "shared_info.time_scale", mul != 0, "tsc_to_system_mul is 0");
    let t1 = system_time(t);
    for _ in 0..200 {
        core::hint::spin_loop();
    }
    let t2 = system_time(t);
    let mut mono = true;
    let mut prev = t2;
    for _ in 0..20 {
        let n = system_time(t);
        mono &= n >= prev;
        prev = n;
    }
    check!(c, "shared_info.time_advances", t2 > t1 && mono, "t1 {t1} t2 {t2} monotonic {mono}");
    let b = addr_of_mut!(SHINFO_B) as u64;
    let r = map_shared_info(b);
    let sh2 = b as *const SharedInfo64;
    // SAFETY: shared_info now lives at `b`.
    let (wv2, t3) = unsafe { (read_volatile(addr_of!((*sh2).wc_version)), system_time(time_of(addr_of!((*sh2).vcpu_info[0])))) };
    check!(c, "shared_info.remap", r == 0 && wv2 >= wv && t3 >= t2, "ret {r} wc_version {wv2} time {t3} after {t2}");
}

fn scenario_vcpu_info(c: &mut Checks) {
    if map_shared_info(addr_of_mut!(SHINFO_A) as u64) != 0 {
        check!(c, "vcpu_info.register", false, "cannot map shared_info first");
        return;
    }
    let p = addr_of_mut!(VCPU_INFO_PAGE) as u64;
    let reg = VcpuRegisterVcpuInfo { mfn: p >> 12, offset: 64, rsvd: 0 };
    let r = hcall::vcpu_op(VCPUOP_REGISTER_VCPU_INFO, 0, &reg as *const _ as u64);
    let info = (p + 64) as *const VcpuInfo64;
    // SAFETY: vcpu_info now lives at `info`, in our own page.
    let (pending, sel) =
        unsafe { (read_volatile(addr_of!((*info).evtchn_upcall_pending)), read_volatile(addr_of!((*info).evtchn_pending_sel))) };
    check!(c, "vcpu_info.register", r == 0 && pending == 1 && sel == u64::MAX, "ret {r} pending {pending} sel {sel:#x}");
    if r == 0 {
        // SAFETY: single-threaded guest; plain store to our own static.
        unsafe { LIVE_VCPU_INFO = p + 64 };
    }
    // The time area follows vcpu_info; it is filled on the next entry to the guest.
    let t = time_of(info);
    // SAFETY: as above.
    let mul = unsafe { read_volatile(addr_of!((*t).tsc_to_system_mul)) };
    let (a, b) = (system_time(t), system_time(t));
    check!(c, "vcpu_info.time_follows", mul != 0 && b >= a && a > 0, "mul {mul:#x} {a} {b}");
    let bad = VcpuRegisterVcpuInfo { mfn: p >> 12, offset: 4090, rsvd: 0 };
    let r = hcall::vcpu_op(VCPUOP_REGISTER_VCPU_INFO, 0, &bad as *const _ as u64);
    check!(c, "vcpu_info.bad_offset", r == XenErrno::EINVAL.to_ret(), "ret {r}");
    let r = hcall::vcpu_op(VCPUOP_REGISTER_VCPU_INFO, 99, &reg as *const _ as u64);
    check!(c, "vcpu_info.bad_vcpu", r == XenErrno::ENOENT.to_ret(), "ret {r}");
}

fn scenario_efault(c: &mut Checks) {
    let ef = XenErrno::EFAULT.to_ret();
    let mut all = true;
    let mut report = |c: &mut Checks, name: &str, r: i64| {
        all &= r == ef;
        check!(c, name, r == ef, "ret {r} ({}) instead of -EFAULT", errno_name(r));
    };
    report(c, "efault.xen_version_get_features", hcall::xen_version(XENVER_GET_FEATURES, UNMAPPED));
    report(c, "efault.xen_version_extraversion", hcall::xen_version(XENVER_EXTRAVERSION, 0xffff_ffff_ffff_fff0));
    report(c, "efault.memory_map_arg", hcall::memory_op(XENMEM_MEMORY_MAP, UNMAPPED));
    let mut map = XenMemoryMap64 { nr_entries: 4, _pad: 0, buffer: UNMAPPED };
    report(c, "efault.memory_map_buffer", hcall::memory_op(XENMEM_MEMORY_MAP, &mut map as *mut _ as u64));
    report(c, "efault.add_to_physmap", hcall::memory_op(XENMEM_ADD_TO_PHYSMAP, UNMAPPED));
    report(c, "efault.hvm_get_param", hcall::hvm_op(HVMOP_GET_PARAM, UNMAPPED));
    report(c, "efault.console_io", hcall::call(xen_abi::hypercall::CONSOLE_IO, [0, 64, UNMAPPED, 0, 0]));
    report(c, "efault.sched_shutdown", hcall::sched_op(SCHEDOP_SHUTDOWN, UNMAPPED));
    report(c, "efault.register_vcpu_info", hcall::vcpu_op(VCPUOP_REGISTER_VCPU_INFO, 0, UNMAPPED));
    // A buffer that starts mapped and runs off the end of the identity map.
    let edge = 0x1_0000_0000u64 - 8;
    report(c, "efault.straddling_buffer", hcall::xen_version(XENVER_EXTRAVERSION, edge));
    check!(c, "efault.vm_still_running", all, "a bad pointer did not give -EFAULT");
}

fn scenario_block(c: &mut Checks) {
    let a = addr_of_mut!(SHINFO_A) as u64;
    if map_shared_info(a) != 0 {
        check!(c, "sched.block_with_pending_event", false, "cannot map shared_info");
        return;
    }
    // SAFETY: single-threaded guest; plain load of our own static.
    let live = unsafe { LIVE_VCPU_INFO };
    let info = if live != 0 { live } else { a } as *mut VcpuInfo64;
    // SAFETY: `info` is vcpu_info[0]: in shared_info at `a`, or where it was registered.
    unsafe {
        write_volatile(addr_of_mut!((*info).evtchn_upcall_mask), 1);
        write_volatile(addr_of_mut!((*info).evtchn_upcall_pending), 1);
    }
    let r = hcall::sched_op(SCHEDOP_BLOCK, 0);
    // SAFETY: as above.
    let mask = unsafe { read_volatile(addr_of!((*info).evtchn_upcall_mask)) };
    check!(c, "sched.block_with_pending_event", r == 0 && mask == 0, "ret {r} mask {mask}");
    let r = hcall::sched_op(SCHEDOP_YIELD, 0);
    check!(c, "sched.yield", r == 0, "ret {r}");
}

core::arch::global_asm!(".pushsection .text.out_ret,\"ax\"", "out_ret:", "out %al, $0x80", "ret", ".popsection", options(att_syntax));
extern "C" {
    fn out_ret();
}

fn bench(c: &mut Checks, n: u64) {
    let a = addr_of_mut!(SHINFO_A) as u64;
    if map_shared_info(a) != 0 {
        check!(c, "bench", false, "cannot map shared_info for timing");
        return;
    }
    // SAFETY: shared_info is mapped at `a`.
    let t = time_of(unsafe { addr_of!((*(a as *const SharedInfo64)).vcpu_info[0]) });
    // Both loops are the same three instructions around the operation timed:
    // `call` of the XENVER_version stub (arguments 0/NULL, preserved by the
    // stub) versus a bare `out` to a port nothing handles.
    let stub = hcall::page_addr() + u64::from(xen_abi::hypercall::XEN_VERSION) * 32;
    // The loops alternate in blocks so that a slow spell of the host hits both
    // alike; the fastest block of each is the figure (host noise only adds time).
    const BLOCKS: u64 = 10;
    let per_block = (n / BLOCKS).max(1);
    let (mut h, mut b, mut f) = (u64::MAX, u64::MAX, u64::MAX);
    for _ in 0..BLOCKS {
        let t0 = system_time(t);
        // SAFETY: calls the XENVER_version stub `per_block` times; it clobbers only rax.
        unsafe {
            core::arch::asm!(
                "2:", "call *{f}", "dec {n}", "jnz 2b",
                f = in(reg) stub, n = inout(reg) per_block => _,
                in("rdi") 0u64, in("rsi") 0u64, out("rax") _,
                options(att_syntax)
            );
        }
        let t1 = system_time(t);
        // SAFETY: port 0x80 (POST codes) is ignored by the platform.
        unsafe {
            core::arch::asm!(
                "2:", "out %al, $0x80", "dec {n}", "jnz 2b",
                n = inout(reg) per_block => _, in("al") 0u8,
                options(att_syntax, nomem, nostack)
            );
        }
        let t2 = system_time(t);
        // The floor for any `call`-based ABI on this host: a call of an
        // ordinary function that does the same bare exit and returns.
        // SAFETY: `out_ret` only does the port write and returns.
        unsafe {
            core::arch::asm!(
                "2:", "call {f}", "dec {n}", "jnz 2b",
                f = sym out_ret, n = inout(reg) per_block => _, out("rax") _,
                options(att_syntax)
            );
        }
        let t3 = system_time(t);
        h = h.min((t1 - t0) / per_block);
        b = b.min((t2 - t1) / per_block);
        f = f.min((t3 - t2) / per_block);
    }
    println!("BENCH iterations={} hypercall_ns={h} bare_exit_ns={b} call_exit_ret_ns={f}", per_block * BLOCKS);
    check!(c, "bench", h > 0 && b > 0, "zero timings");
}
