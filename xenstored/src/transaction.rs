//! A connection's open transactions: each a copy of the tree that records
//! what it touched (see `Store::fork`/`Store::commit`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::wire::XsError;

/// Open transactions of one connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transactions {
    open: BTreeMap<u32, Store>,
    last_id: u32,
}

impl Transactions {
    /// Starts one on a copy of `live`; at most `limit` open (if `Some`).
    pub fn start(&mut self, live: &Store, limit: Option<u32>) -> Result<u32, XsError> {
        if limit.is_some_and(|l| self.open.len() >= l as usize) {
            return Err(XsError::EQUOTA);
        }
        let mut id = self.last_id;
        loop {
            id = id.wrapping_add(1);
            if id != 0 && !self.open.contains_key(&id) {
                break;
            }
        }
        self.last_id = id;
        self.open.insert(id, live.fork());
        Ok(id)
    }

    /// The copy a request with `tx_id` works on.
    pub fn get(&mut self, id: u32) -> Result<&mut Store, XsError> {
        self.open.get_mut(&id).ok_or(XsError::ENOENT)
    }

    /// Ends one, returning its copy.
    pub fn end(&mut self, id: u32) -> Result<Store, XsError> {
        self.open.remove(&id).ok_or(XsError::ENOENT)
    }

    /// Drops them all (`RESET_WATCHES`, a connection reset).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// Number open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// None open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}
