//! The KVM-facing code that needs `unsafe`, kept in one place: memslots, VM
//! capabilities, the PVH entry state and MSR writes for vCPUs.

use std::collections::HashMap;
use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_msr_entry, kvm_segment, kvm_userspace_memory_region, KvmIrqRouting, Msrs,
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X86_USER_SPACE_MSR, KVM_IRQ_ROUTING_MSI, KVM_MP_STATE_RUNNABLE, KVM_MSR_EXIT_REASON_FILTER,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};

use crate::memory::SlotSpec;
use crate::platform::ioapic::{Msi, MsiSink, NUM_PINS};

/// KVM's paravirtual clock MSR; KVM keeps a `pvclock_vcpu_time_info` (the
/// same layout as Xen's `vcpu_time_info`) current at the address written.
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

/// KVM set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("Cannot open /dev/kvm (is KVM available and are you in the kvm group?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// /dev/kvm opened but is not KVM.
    #[error("Cannot open /dev/kvm: it does not answer as KVM (API version {0}, expected 12)")]
    NotKvm(i32),
    /// A capability xenkvm relies on is missing.
    #[error("KVM lacks {0}, which xenkvm needs")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Result of KVM operations.
pub type Result<T> = std::result::Result<T, Error>;

fn ioctl<T>(op: &'static str, r: std::result::Result<T, kvm_ioctls::Error>) -> Result<T> {
    r.map_err(|source| Error::Ioctl { op, source })
}

/// Opens the KVM device (`/dev/kvm` unless given) and creates a VM with the
/// split irqchip and the MSR filter that traps writes to the Xen hypercall MSR.
pub fn create_vm(device: Option<&std::path::Path>, hypercall_msr: u32) -> Result<(Kvm, VmFd)> {
    let kvm = match device {
        Some(p) => Kvm::new_with_path(
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| Error::OpenKvm(kvm_ioctls::Error::new(libc::EINVAL)))?,
        ),
        None => Kvm::new(),
    }
    .map_err(Error::OpenKvm)?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(Error::NotKvm(api));
    }
    for (cap, name) in [
        (Cap::SyncRegs, "KVM_CAP_SYNC_REGS"),
        (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
        (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
        (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCap(name));
        }
    }
    let vm = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
    let mut split = kvm_enable_cap { cap: KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
    split.args[0] = NUM_PINS as u64;
    ioctl("KVM_ENABLE_CAP(SPLIT_IRQCHIP)", vm.enable_cap(&split))?;
    let mut msr = kvm_enable_cap { cap: KVM_CAP_X86_USER_SPACE_MSR, ..Default::default() };
    msr.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
    ioctl("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)", vm.enable_cap(&msr))?;
    // A clear bit denies the access, which (with the capability above) exits to us.
    let bitmap = [0u8; 1];
    let range = MsrFilterRange { flags: MsrFilterRangeFlags::WRITE, base: hypercall_msr, msr_count: 1, bitmap: &bitmap };
    ioctl("KVM_X86_SET_MSR_FILTER", vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range]))?;
    Ok((kvm, vm))
}

/// Tracks which KVM memslot holds which [`SlotSpec`], and applies changes.
pub struct Memslots {
    vm: Arc<VmFd>,
    by_spec: HashMap<SlotSpec, u32>,
    free: Vec<u32>,
    next: u32,
}

impl Memslots {
    /// No slots yet.
    pub fn new(vm: Arc<VmFd>) -> Memslots {
        Memslots { vm, by_spec: HashMap::new(), free: Vec::new(), next: 0 }
    }

    fn set(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<()> {
        let region = kvm_userspace_memory_region { slot, flags: 0, guest_phys_addr: gpa, memory_size: size, userspace_addr: host_addr };
        // SAFETY: every `host_addr` comes from a SlotSpec built by the Physmap
        // from a live mapping of at least `size` bytes; the Physmap's backings
        // are kept alive by the Domain for the VM's whole life. Deleting a slot
        // (size 0) touches no memory.
        ioctl("KVM_SET_USER_MEMORY_REGION", unsafe { self.vm.set_user_memory_region(region) })
    }

    /// Makes the VM's memslots exactly `specs`: deletes stale slots first, then adds new ones.
    pub fn apply(&mut self, specs: &[SlotSpec]) -> Result<()> {
        let stale: Vec<SlotSpec> = self.by_spec.keys().filter(|s| !specs.contains(s)).cloned().collect();
        for s in stale {
            let slot = self.by_spec.remove(&s).expect("present");
            self.set(slot, s.gpa, 0, s.host_addr)?;
            self.free.push(slot);
        }
        for s in specs {
            if self.by_spec.contains_key(s) {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.next += 1;
                self.next - 1
            });
            self.set(slot, s.gpa, s.size, s.host_addr)?;
            self.by_spec.insert(s.clone(), slot);
        }
        Ok(())
    }
}

/// Delivers the IOAPIC's MSIs through KVM.
pub struct KvmMsiSink {
    /// The VM.
    pub vm: Arc<VmFd>,
}

fn to_kvm_msi(m: Msi) -> kvm_msi {
    kvm_msi { address_lo: m.address as u32, address_hi: (m.address >> 32) as u32, data: m.data, ..Default::default() }
}

impl MsiSink for KvmMsiSink {
    fn signal_msi(&self, msi: Msi) {
        if let Err(e) = self.vm.signal_msi(to_kvm_msi(msi)) {
            tracing::warn!(error = %e, ?msi, "KVM_SIGNAL_MSI failed");
        }
    }

    fn set_routes(&self, routes: &[Option<Msi>; NUM_PINS]) {
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .enumerate()
            .filter_map(|(gsi, r)| {
                let m = (*r)?;
                let mut e = kvm_irq_routing_entry { gsi: gsi as u32, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
                e.u.msi.address_lo = m.address as u32;
                e.u.msi.address_hi = (m.address >> 32) as u32;
                e.u.msi.data = m.data;
                Some(e)
            })
            .collect();
        let table = match KvmIrqRouting::from_entries(&entries) {
            Ok(t) => t,
            Err(e) => return tracing::warn!(error = ?e, "building the GSI routing table failed"),
        };
        if let Err(e) = self.vm.set_gsi_routing(&table) {
            tracing::warn!(error = %e, "KVM_SET_GSI_ROUTING failed");
        }
    }
}

/// Puts a vCPU at a PVH entry point: 32-bit flat protected mode, paging off,
/// `%ebx` = start_info, as `docs/misc/pvh.pandoc` specifies.
pub fn set_pvh_entry(vcpu: &VcpuFd, entry: u32, start_info: u64) -> Result<()> {
    let mut sregs = ioctl("KVM_GET_SREGS", vcpu.get_sregs())?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment { selector: 0x10, type_: 0x3, ..code };
    let tss = kvm_segment { base: 0, limit: 0x67, selector: 0x18, type_: 0xb, s: 0, db: 0, g: 0, ..code };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    ioctl("KVM_SET_SREGS", vcpu.set_sregs(&sregs))?;
    let mut regs = ioctl("KVM_GET_REGS", vcpu.get_regs())?;
    regs.rip = u64::from(entry);
    regs.rbx = start_info;
    regs.rflags = 0x2;
    ioctl("KVM_SET_REGS", vcpu.set_regs(&regs))?;
    let mp = kvm_bindings::kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE };
    ioctl("KVM_SET_MP_STATE", vcpu.set_mp_state(mp))?;
    Ok(())
}

/// Writes one MSR of a vCPU (from its own thread).
pub fn write_msr(vcpu: &VcpuFd, index: u32, data: u64) -> Result<()> {
    let msrs =
        Msrs::from_entries(&[kvm_msr_entry { index, data, ..Default::default() }]).map_err(|_| Error::MissingCap("an MSR buffer"))?;
    let n = ioctl("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
    if n != 1 {
        return Err(Error::Ioctl { op: "KVM_SET_MSRS (MSR refused)", source: kvm_ioctls::Error::new(libc::EINVAL) });
    }
    Ok(())
}

/// `KVM_EXIT_INTERNAL_ERROR` details: suberror and the first data words.
pub fn internal_error(vcpu: &mut VcpuFd) -> (u32, Vec<u64>) {
    let run = vcpu.get_kvm_run();
    // SAFETY: only called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR,
    // when `internal` is the union member the kernel filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    (internal.suberror, internal.data[..n].to_vec())
}

/// Marks the pending WRMSR exit as failed, so the guest gets #GP.
pub fn fail_wrmsr(vcpu: &mut VcpuFd) {
    // Writing a union field is safe; this is only called right after KVM_RUN
    // returned KVM_EXIT_X86_WRMSR, when `msr` is the member in use.
    vcpu.get_kvm_run().__bindgen_anon_1.msr.error = 1;
}

/// The VM's clock (ns since creation) and, where the kernel gives it, the host realtime at the same instant.
pub fn clock(vm: &VmFd) -> Result<(u64, Option<u64>)> {
    let c = ioctl("KVM_GET_CLOCK", vm.get_clock())?;
    let realtime = (c.flags & kvm_bindings::KVM_CLOCK_REALTIME != 0).then_some(c.realtime);
    Ok((c.clock, realtime))
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: std::cell::Cell<*mut kvm_bindings::kvm_run> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` is this thread's live kvm_run mapping, registered by
            // `VcpuKickGuard::new` and cleared before the VcpuFd is dropped; a
            // volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The signal that kicks vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<std::result::Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// While alive, a kick signal to this thread makes its next or current `KVM_RUN` return `EINTR`.
pub struct VcpuKickGuard(());

impl VcpuKickGuard {
    /// Registers `vcpu`'s kvm_run for this thread.
    pub fn new(vcpu: &mut VcpuFd) -> VcpuKickGuard {
        let run: *mut kvm_bindings::kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|p| p.set(run));
        VcpuKickGuard(())
    }

    /// Clears a consumed kick so the next `KVM_RUN` enters the guest.
    pub fn rearm(vcpu: &mut VcpuFd) {
        vcpu.set_kvm_immediate_exit(0);
    }
}

impl Drop for VcpuKickGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// A function that kicks thread `t`.
pub fn kicker_for(t: libc::pthread_t) -> Box<dyn Fn() + Send> {
    Box::new(move || {
        // SAFETY: the vCPU thread removes this kicker (under the same lock the
        // caller holds while calling it) before it exits, so `t` names a live thread.
        let r = unsafe { libc::pthread_kill(t, kick_signal()) };
        if r != 0 {
            tracing::warn!(errno = r, "kicking a vCPU thread failed");
        }
    })
}

/// Upcall IRQs into KVM: vectors as fixed MSIs to one vCPU's APIC, GSIs
/// through the userspace IOAPIC.
pub struct KvmIrqSink {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// The IOAPIC.
    pub ioapic: Arc<std::sync::Mutex<crate::platform::ioapic::Ioapic>>,
}

impl crate::xen::upcall::IrqSink for KvmIrqSink {
    fn vector(&self, vcpu: u32, vector: u8) {
        // APIC ids are vCPU ids; physical destination, fixed delivery, edge.
        let msi = kvm_msi { address_lo: 0xfee0_0000 | (vcpu << 12), data: u32::from(vector), ..Default::default() };
        if let Err(e) = self.vm.signal_msi(msi) {
            tracing::warn!(error = %e, vcpu, vector, "KVM_SIGNAL_MSI for an upcall failed");
        }
    }

    fn set_gsi(&self, gsi: u32, level: bool) {
        self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).set_irq(gsi as usize, level);
    }
}

/// A segment from `vcpu_hvm_x86_32`'s base/limit/attributes (SVM-style `ar`:
/// type 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11).
pub fn segment_from_ar(base: u32, limit: u32, ar: u16) -> kvm_segment {
    let bit = |n: u16| ((ar >> n) & 1) as u8;
    kvm_segment {
        base: u64::from(base),
        limit,
        selector: 0,
        type_: (ar & 0xf) as u8,
        s: bit(4),
        dpl: ((ar >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(8),
        l: bit(9),
        db: bit(10),
        g: bit(11),
        unusable: u8::from(bit(7) == 0),
        padding: 0,
    }
}

/// Loads a `VCPUOP_initialise` context (already checked) into a vCPU and makes it runnable.
pub fn load_hvm_context(vcpu: &VcpuFd, c: &xen_abi::vcpu::VcpuHvmContext) -> Result<()> {
    use xen_abi::vcpu::{VcpuHvmX86_32, VcpuHvmX86_64, VCPU_HVM_MODE_64B};
    use zerocopy::FromBytes;
    let mut sregs = ioctl("KVM_GET_SREGS", vcpu.get_sregs())?;
    let mut regs = kvm_bindings::kvm_regs::default();
    if c.mode == VCPU_HVM_MODE_64B {
        let r = VcpuHvmX86_64::read_from_prefix(&c.regs).map_err(|_| Error::MissingCap("a 64-bit context"))?.0;
        (regs.rax, regs.rcx, regs.rdx, regs.rbx) = (r.rax, r.rcx, r.rdx, r.rbx);
        (regs.rsp, regs.rbp, regs.rsi, regs.rdi) = (r.rsp, r.rbp, r.rsi, r.rdi);
        (regs.rip, regs.rflags) = (r.rip, r.rflags | 2);
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (r.cr0, r.cr3, r.cr4, r.efer | (1 << 10));
        // Xen's flat long-mode segments for VCPU_HVM_MODE_64B.
        sregs.cs = segment_from_ar(0, 0xffff_ffff, 0xa9b);
        let data = segment_from_ar(0, 0xffff_ffff, 0xc93);
        (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs) = (data, data, data, data, data);
        sregs.tr = segment_from_ar(0, 0x67, 0x8b);
    } else {
        let r = VcpuHvmX86_32::read_from_prefix(&c.regs).map_err(|_| Error::MissingCap("a 32-bit context"))?.0;
        let w = u64::from;
        (regs.rax, regs.rcx, regs.rdx, regs.rbx) = (w(r.eax), w(r.ecx), w(r.edx), w(r.ebx));
        (regs.rsp, regs.rbp, regs.rsi, regs.rdi) = (w(r.esp), w(r.ebp), w(r.esi), w(r.edi));
        (regs.rip, regs.rflags) = (w(r.eip), w(r.eflags) | 2);
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (w(r.cr0), w(r.cr3), w(r.cr4), r.efer);
        sregs.cs = segment_from_ar(r.cs_base, r.cs_limit, r.cs_ar);
        sregs.ds = segment_from_ar(r.ds_base, r.ds_limit, r.ds_ar);
        sregs.ss = segment_from_ar(r.ss_base, r.ss_limit, r.ss_ar);
        sregs.es = segment_from_ar(r.es_base, r.es_limit, r.es_ar);
        sregs.fs = sregs.ds;
        sregs.gs = sregs.ds;
        sregs.tr = segment_from_ar(r.tr_base, r.tr_limit, r.tr_ar);
    }
    ioctl("KVM_SET_SREGS", vcpu.set_sregs(&sregs))?;
    ioctl("KVM_SET_REGS", vcpu.set_regs(&regs))?;
    let mp = kvm_bindings::kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE };
    ioctl("KVM_SET_MP_STATE", vcpu.set_mp_state(mp))?;
    Ok(())
}
