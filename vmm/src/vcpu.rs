//! A vCPU thread: runs the guest and handles its exits.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use xen_abi::GuestWidth;

use crate::guest_access::{GuestAccess, PagingState};
use crate::kvm::{self, VcpuKickGuard};
use crate::layout::{IOAPIC_BASE, IOAPIC_SIZE};
use crate::platform::ioapic::Ioapic;
use crate::platform::serial::{Com1, COM1_BASE, COM1_LEN};
use crate::platform::DEBUGCON_PORT;
use crate::xen::hypercall::{dispatch, Hypercall, HypercallCtx};
use crate::xen::hypercall_page::{self, HYPERCALL_PORT};
use crate::xen::{request, shared_info, Domain, StopReason};

const EFER_LMA: u64 = 1 << 10;

/// Devices the vCPUs share.
pub struct Devices {
    /// The IOAPIC.
    pub ioapic: Arc<Mutex<Ioapic>>,
    /// COM1.
    pub com1: Mutex<Com1>,
    /// The test/benchmark device, when enabled.
    pub test_device: Option<crate::platform::test_device::TestDevice>,
}

/// What to do after an exit, once the exit's borrow of the vCPU is over.
enum Next {
    Continue,
    Hypercall,
    Wrmsr { index: u32, data: u64 },
    InternalError,
    Stop(StopReason),
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    /// vCPU id.
    pub id: u32,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// The domain.
    pub domain: Arc<Domain>,
    /// Shared devices.
    pub devices: Arc<Devices>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_out(d: &Domain, dev: &Devices, port: u16, data: &[u8]) {
    match port {
        crate::platform::test_device::PORT if dev.test_device.is_some() => {
            if let Some(t) = &dev.test_device {
                t.write(d, data);
            }
        }
        DEBUGCON_PORT => d.console.write(data),
        p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
            let mut com1 = lock(&dev.com1);
            for &b in data {
                if let Err(e) = com1.write((p - COM1_BASE) as u8, b) {
                    tracing::warn!(error = ?e, "COM1 write failed");
                }
            }
        }
        // Everything else (including port 0x80 POST codes) is ignored, as on a bare PC.
        _ => {}
    }
}

fn io_in(dev: &Devices, port: u16, data: &mut [u8]) {
    match port {
        crate::platform::test_device::PORT if dev.test_device.is_some() => {
            if let Some(t) = &dev.test_device {
                t.read(data);
            }
        }
        DEBUGCON_PORT => data.fill(0xe9), // Bochs/QEMU presence check
        p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
            let mut com1 = lock(&dev.com1);
            for b in data.iter_mut() {
                *b = com1.read((p - COM1_BASE) as u8);
            }
        }
        _ => data.fill(0xff),
    }
}

fn mmio(d: &Domain, dev: &Devices, addr: u64, data: &mut [u8], write: bool) {
    if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE).contains(&addr) {
        let mut io = lock(&dev.ioapic);
        if write {
            io.mmio_write(addr - IOAPIC_BASE, data);
        } else {
            io.mmio_read(addr - IOAPIC_BASE, data);
        }
        return;
    }
    // Memory whose memslot is being replaced (an overlay moving) is still served.
    let pm = d.physmap();
    let ok = if write { pm.write(addr, data).is_ok() } else { pm.read(addr, data).is_ok() };
    if !ok {
        if !write {
            data.fill(0xff);
        }
        tracing::debug!(addr = format_args!("{addr:#x}"), write, "MMIO access to nothing");
    }
}

/// The caller's width and arguments: rdi, rsi, rdx, r10, r8, r9 in 64-bit
/// mode; ebx, ecx, edx, esi, edi, ebp (truncated to 32 bits) otherwise.
fn hypercall_args(regs: &kvm_bindings::kvm_regs, long: bool) -> (GuestWidth, [u64; 6]) {
    if long {
        (GuestWidth::Bits64, [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9])
    } else {
        let m = |v: u64| v & 0xffff_ffff;
        (GuestWidth::Bits32, [m(regs.rbx), m(regs.rcx), m(regs.rdx), m(regs.rsi), m(regs.rdi), m(regs.rbp)])
    }
}

impl Vcpu {
    /// Runs the vCPU until the VM stops; a fault it hits stops the VM with the reason.
    pub fn run(mut self) {
        let _guard = VcpuKickGuard::new(&mut self.fd);
        crate::xen::upcall::set_current_vcpu(self.id);
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        let domain = self.domain.clone();
        let shared = &domain.vcpus[self.id as usize];
        // The kicker is installed after the guard and removed before it is dropped.
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *lock(&shared.kicker) = Some(kvm::kicker_for(me));
        if let Err(why) = self.run_loop() {
            self.domain.request_stop(why);
        }
        *lock(&shared.kicker) = None;
        shared.online.store(false, Ordering::SeqCst);
    }

    fn run_loop(&mut self) -> Result<(), StopReason> {
        let domain = self.domain.clone();
        let devices = self.devices.clone();
        let shared = &domain.vcpus[self.id as usize];
        let mut running = false;
        loop {
            if domain.stopping() {
                return Ok(());
            }
            self.handle_requests()?;
            let result = self.fd.run();
            if result.is_ok() && !running {
                // The first exit shows the vCPU runs guest code (for an AP: it got its SIPI).
                running = true;
                shared.online.store(true, Ordering::SeqCst);
                lock(&shared.bringup).initialised = true;
                domain.set_runstate(self.id, xen_abi::vcpu::RUNSTATE_RUNNING);
                // INIT resets KVM's clock MSR: an AP started by INIT/SIPI gets
                // its vcpu_info time back before it next enters the guest.
                shared.requests.fetch_or(request::UPDATE_TIME_AREA, Ordering::SeqCst);
            }
            let next = match result {
                Ok(exit) => match exit {
                    VcpuExit::IoOut(port, _) if port == u16::from(HYPERCALL_PORT) => Next::Hypercall,
                    VcpuExit::IoOut(port, data) => {
                        io_out(&domain, &devices, port, data);
                        Next::Continue
                    }
                    VcpuExit::IoIn(port, data) => {
                        io_in(&devices, port, data);
                        Next::Continue
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        mmio(&domain, &devices, addr, data, false);
                        Next::Continue
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        let mut buf = data.to_vec();
                        mmio(&domain, &devices, addr, &mut buf, true);
                        Next::Continue
                    }
                    VcpuExit::X86Wrmsr(exit) => Next::Wrmsr { index: exit.index, data: exit.data },
                    VcpuExit::X86Rdmsr(exit) => {
                        *exit.error = 1;
                        Next::Continue
                    }
                    VcpuExit::IoapicEoi(vector) => {
                        // A GSI upcall stays asserted while vCPU 0's upcall is pending.
                        crate::xen::upcall::refresh_gsi(&domain);
                        lock(&devices.ioapic).end_of_interrupt(vector);
                        Next::Continue
                    }
                    VcpuExit::Hlt | VcpuExit::Intr => Next::Continue,
                    VcpuExit::Shutdown => Next::Stop(StopReason::Fault(format!("vCPU {} triple-faulted", self.id))),
                    VcpuExit::InternalError => Next::InternalError,
                    VcpuExit::FailEntry(reason, cpu) => {
                        Next::Stop(StopReason::Fault(format!("vCPU {} failed to enter the guest (reason {reason:#x}, cpu {cpu})", self.id)))
                    }
                    VcpuExit::SystemEvent(kind, data) => {
                        Next::Stop(StopReason::Fault(format!("vCPU {} system event {kind} {data:?}", self.id)))
                    }
                    other => Next::Stop(StopReason::Fault(format!("vCPU {} unexpected exit {other:?}", self.id))),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    VcpuKickGuard::rearm(&mut self.fd);
                    Next::Continue
                }
                Err(e) => Next::Stop(StopReason::Fault(format!("KVM_RUN failed on vCPU {}: {e}", self.id))),
            };
            match next {
                Next::Continue => {}
                Next::Hypercall => self.hypercall(),
                Next::Wrmsr { index, data } => self.wrmsr(index, data),
                Next::InternalError => {
                    let (suberror, data) = kvm::internal_error(&mut self.fd);
                    let rip = self.fd.sync_regs().regs.rip;
                    return Err(StopReason::Fault(format!(
                        "vCPU {}: KVM internal error {suberror} at rip {rip:#x} (data {data:x?}); \
                         suberror 1 is an instruction this host's KVM cannot emulate",
                        self.id
                    )));
                }
                Next::Stop(why) => return Err(why),
            }
        }
    }

    fn handle_requests(&mut self) -> Result<(), StopReason> {
        let domain = self.domain.clone();
        let shared = &domain.vcpus[self.id as usize];
        let req = shared.requests.swap(0, Ordering::SeqCst);
        if req & request::START != 0 {
            let context = lock(&shared.bringup).context.take();
            if let Some(c) = context {
                kvm::load_hvm_context(&self.fd, &c)
                    .map_err(|e| StopReason::Fault(format!("vCPU {}: loading the VCPUOP_initialise context failed: {e}", self.id)))?;
                shared.online.store(true, Ordering::SeqCst);
                domain.set_runstate(self.id, xen_abi::vcpu::RUNSTATE_RUNNING);
                tracing::info!(event = "vcpu.up", vcpu = self.id);
            }
        }
        if req & request::DOWN != 0 || lock(&shared.bringup).down {
            self.park_while_down();
        }
        if req & request::UPDATE_TIME_AREA != 0 {
            // KVM keeps a pvclock (Xen's vcpu_time_info layout) at this address.
            let value = shared_info::time_area_gpa(&self.domain, self.id).map_or(0, |gpa| gpa | 1);
            kvm::write_msr(&self.fd, kvm::MSR_KVM_SYSTEM_TIME_NEW, value)
                .map_err(|e| StopReason::Fault(format!("vCPU {}: setting the time area failed: {e}", self.id)))?;
        }
        Ok(())
    }

    /// `VCPUOP_down`: sleep, offline, until `VCPUOP_up` or the VM stops.
    fn park_while_down(&self) {
        let d = &self.domain;
        let shared = &d.vcpus[self.id as usize];
        shared.online.store(false, Ordering::SeqCst);
        d.set_runstate(self.id, xen_abi::vcpu::RUNSTATE_OFFLINE);
        let (m, cv) = &shared.wake;
        let mut gen = lock(m);
        while lock(&shared.bringup).down && !d.stopping() {
            gen = cv.wait_timeout(gen, std::time::Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(gen);
        shared.online.store(true, Ordering::SeqCst);
        d.set_runstate(self.id, xen_abi::vcpu::RUNSTATE_RUNNING);
    }

    fn hypercall(&mut self) {
        let sr = self.fd.sync_regs();
        let (regs, sregs) = (sr.regs, sr.sregs);
        let long = sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0;
        let rip_linear = if long { regs.rip } else { sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff };
        let Some(nr) = hypercall_page::call_number(rip_linear) else {
            self.domain.log_unknown(u32::MAX, rip_linear, "hypercall port access outside a stub");
            return;
        };
        let (width, args) = hypercall_args(&regs, long);
        let paging = PagingState::from_sregs(&sregs);
        let ctx = HypercallCtx { domain: &self.domain, vcpu: self.id, paging, width };
        let ret = dispatch(&ctx, Hypercall { nr, args });
        // Perform the stub's `ret`; if the stack cannot be read the guest runs the real one.
        let popped = {
            let pm = self.domain.physmap();
            let ga = GuestAccess::new(&pm, paging);
            if long {
                ga.read_obj::<u64>(regs.rsp).ok().map(|ra| (ra, regs.rsp.wrapping_add(8)))
            } else {
                let sp = sregs.ss.base.wrapping_add(regs.rsp) & 0xffff_ffff;
                ga.read_obj::<u32>(sp).ok().map(|ra| (u64::from(ra), (regs.rsp.wrapping_add(4)) & 0xffff_ffff))
            }
        };
        let r = &mut self.fd.sync_regs_mut().regs;
        r.rax = if long { ret as u64 } else { u64::from(ret as u32) };
        if let Some((ra, sp)) = popped {
            r.rip = ra;
            r.rsp = sp;
        }
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    fn wrmsr(&mut self, index: u32, data: u64) {
        if index != xen_abi::cpuid::XEN_HYPERCALL_MSR || data & 0xfff != 0 {
            // Only page 0 exists (CPUID leaf base+2 reports one page).
            kvm::fail_wrmsr(&mut self.fd);
            return;
        }
        let gpa = data & !0xfff;
        if self.domain.physmap().write(gpa, &hypercall_page::contents()).is_err() {
            tracing::warn!(gpa = format_args!("{gpa:#x}"), "hypercall page outside guest memory");
            kvm::fail_wrmsr(&mut self.fd);
            return;
        }
        let sregs = self.fd.sync_regs().sregs;
        let long = sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0;
        let width = if long { GuestWidth::Bits64 } else { GuestWidth::Bits32 };
        self.domain.state().width.get_or_insert(width);
        tracing::info!(event = "guest.hypercall_page", vcpu = self.id, gpa = format_args!("{gpa:#x}"), ?width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> kvm_bindings::kvm_regs {
        kvm_bindings::kvm_regs {
            rax: 0xa0,
            rbx: 0xdead_0000_0000_00b0,
            rcx: 0xdead_0000_0000_00c0,
            rdx: 0xdead_0000_0000_00d0,
            rsi: 0xdead_0000_0000_0051,
            rdi: 0xdead_0000_0000_00d1,
            rbp: 0xdead_0000_0000_00b1,
            r8: 0x8,
            r9: 0x9,
            r10: 0x10,
            ..Default::default()
        }
    }

    #[test]
    fn the_64_bit_convention_is_rdi_rsi_rdx_r10_r8_r9() {
        let (w, a) = hypercall_args(&regs(), true);
        assert_eq!(w, GuestWidth::Bits64);
        assert_eq!(a, [0xdead_0000_0000_00d1, 0xdead_0000_0000_0051, 0xdead_0000_0000_00d0, 0x10, 0x8, 0x9]);
    }

    #[test]
    fn the_32_bit_convention_is_ebx_ecx_edx_esi_edi_ebp_truncated() {
        let (w, a) = hypercall_args(&regs(), false);
        assert_eq!(w, GuestWidth::Bits32);
        assert_eq!(a, [0xb0, 0xc0, 0xd0, 0x51, 0xd1, 0xb1]);
    }
}
