//! vCPU runstate (`VCPUOP_register_runstate_memory_area`, `xen/vcpu.h`):
//! which state a vCPU is in and how long it spent in each, kept current in a
//! guest area at every change of state (run, block, yield, down).

use xen_abi::vcpu::{VcpuRunstateInfo32, VcpuRunstateInfo64, RUNSTATE_OFFLINE, RUNSTATE_RUNNING};
use xen_abi::GuestWidth;
use zerocopy::IntoBytes;

use super::Domain;

/// One vCPU's runstate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runstate {
    /// Guest-physical address of the registered area.
    pub area: Option<u64>,
    /// `RUNSTATE_*`.
    pub state: u32,
    /// System time the state was entered.
    pub entry: u64,
    /// Accumulated ns per state.
    pub time: [u64; 4],
}

impl Default for Runstate {
    fn default() -> Runstate {
        Runstate { area: None, state: RUNSTATE_OFFLINE, entry: 0, time: [0; 4] }
    }
}

impl Runstate {
    fn bytes(&self, width: GuestWidth) -> Vec<u8> {
        match width {
            GuestWidth::Bits64 => {
                VcpuRunstateInfo64 { state: self.state, pad: 0, state_entry_time: self.entry, time: self.time }.as_bytes().to_vec()
            }
            GuestWidth::Bits32 => {
                let split = |v: u64| [v as u32, (v >> 32) as u32];
                VcpuRunstateInfo32 { state: self.state, state_entry_time: split(self.entry), time: self.time.map(split) }
                    .as_bytes()
                    .to_vec()
            }
        }
    }
}

impl Domain {
    /// Moves vCPU `vcpu` to runstate `state` and updates its area.
    pub fn set_runstate(&self, vcpu: u32, state: u32) {
        let Some(v) = self.vcpus.get(vcpu as usize) else { return };
        let now = self.system_time();
        let mut rs = v.runstate.lock().unwrap_or_else(|e| e.into_inner());
        if rs.state == state && state != RUNSTATE_RUNNING {
            return;
        }
        let spent = now.saturating_sub(rs.entry);
        let cur = rs.state as usize & 3;
        rs.time[cur] += spent;
        rs.state = state;
        rs.entry = now;
        self.write_runstate(&rs);
        drop(rs);
        if state == RUNSTATE_RUNNING {
            // Xen refreshes the secondary time area whenever a vCPU is scheduled in.
            self.copy_time_area(vcpu);
        }
    }

    /// Writes a runstate to its guest area, if one is registered.
    pub fn write_runstate(&self, rs: &Runstate) {
        if let Some(gpa) = rs.area {
            if self.physmap().write(gpa, &rs.bytes(self.width())).is_err() {
                tracing::debug!(gpa = format_args!("{gpa:#x}"), "runstate area is no longer guest RAM");
            }
        }
    }
}
