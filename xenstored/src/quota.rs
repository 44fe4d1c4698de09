//! Per-domain quotas, with the C xenstored's defaults. Dom0 has none.

use serde::{Deserialize, Serialize};

/// Limits for one unprivileged domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Nodes a domain may own.
    pub nodes: u32,
    /// Watches a connection may hold.
    pub watches: u32,
    /// Transactions a connection may have open.
    pub transactions: u32,
    /// Bytes in one value.
    pub value_bytes: u32,
    /// Entries in one permission list.
    pub perms: u32,
    /// Requests whose replies are not yet taken (then input pauses).
    pub outstanding: u32,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { nodes: 1000, watches: 128, transactions: 10, value_bytes: 2048, perms: 5, outstanding: 20 }
    }
}

impl Quota {
    /// The names `CONTROL quota` uses.
    pub const NAMES: [&'static str; 6] = ["nodes", "watches", "transactions", "value-bytes", "permissions", "outstanding"];

    /// Reads one limit by name.
    pub fn get(&self, name: &str) -> Option<u32> {
        Some(match name {
            "nodes" => self.nodes,
            "watches" => self.watches,
            "transactions" => self.transactions,
            "value-bytes" => self.value_bytes,
            "permissions" => self.perms,
            "outstanding" => self.outstanding,
            _ => return None,
        })
    }

    /// Sets one limit by name.
    pub fn set(&mut self, name: &str, v: u32) -> bool {
        let slot = match name {
            "nodes" => &mut self.nodes,
            "watches" => &mut self.watches,
            "transactions" => &mut self.transactions,
            "value-bytes" => &mut self.value_bytes,
            "permissions" => &mut self.perms,
            "outstanding" => &mut self.outstanding,
            _ => return false,
        };
        *slot = v;
        true
    }
}
