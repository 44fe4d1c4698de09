//! Per-vif counters: packets and bytes each way, and drops by reason.
//! Shared by the queues; written as `key value` lines to the stats file
//! the launcher reads (`xenkvm network-stats`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// A TX packet of more slots than a backend must take (18).
    TxTooManySlots,
    /// TX slot sizes that do not add up, a fragment across its page, a
    /// packet shorter than an Ethernet header or longer than 64 KiB.
    TxBadSize,
    /// A TX grant that could not be mapped.
    TxBadGrant,
    /// An unknown or malformed extra-info slot (or GSO the frontend did
    /// not negotiate).
    TxBadExtra,
    /// Offload flags on a packet they cannot apply to.
    TxBadOffload,
    /// The tap refused the frame.
    TxTapError,
    /// An RX packet larger than the frontend can take (no `feature-sg`).
    RxTooBig,
    /// An RX grant that could not be mapped for writing.
    RxBadGrant,
}

impl Drop {
    /// Every reason, in the stats file's order.
    pub const ALL: [Drop; 8] = [
        Drop::TxTooManySlots,
        Drop::TxBadSize,
        Drop::TxBadGrant,
        Drop::TxBadExtra,
        Drop::TxBadOffload,
        Drop::TxTapError,
        Drop::RxTooBig,
        Drop::RxBadGrant,
    ];

    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Drop::TxTooManySlots => "tx_drop_too_many_slots",
            Drop::TxBadSize => "tx_drop_bad_size",
            Drop::TxBadGrant => "tx_drop_bad_grant",
            Drop::TxBadExtra => "tx_drop_bad_extra",
            Drop::TxBadOffload => "tx_drop_bad_offload",
            Drop::TxTapError => "tx_drop_tap_error",
            Drop::RxTooBig => "rx_drop_too_big",
            Drop::RxBadGrant => "rx_drop_bad_grant",
        }
    }
}

/// The counters.
#[derive(Default)]
pub struct Stats {
    /// Packets from the guest onto the tap.
    pub tx_packets: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Packets from the tap into the guest.
    pub rx_packets: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    drops: [AtomicU64; 8],
}

impl Stats {
    /// Counts a drop.
    pub fn drop(&self, why: Drop) {
        self.drops[Drop::ALL.iter().position(|d| *d == why).unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops so far for `why`.
    pub fn drops(&self, why: Drop) -> u64 {
        self.drops[Drop::ALL.iter().position(|d| *d == why).unwrap_or(0)].load(Ordering::Relaxed)
    }

    /// `key value` lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in
            [("tx_packets", &self.tx_packets), ("tx_bytes", &self.tx_bytes), ("rx_packets", &self.rx_packets), ("rx_bytes", &self.rx_bytes)]
        {
            s += &format!("{k} {}\n", v.load(Ordering::Relaxed));
        }
        for d in Drop::ALL {
            s += &format!("{} {}\n", d.name(), self.drops(d));
        }
        s
    }
}
