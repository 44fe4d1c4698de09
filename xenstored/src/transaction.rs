//! A connection's open transactions: each an overlay of changes on the
//! live tree plus the generation of every node it touched (see
//! `store::TxView` and `Store::commit`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::Tx;
use crate::wire::XsError;

/// Open transactions of one connection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transactions {
    open: BTreeMap<u32, Tx>,
    last_id: u32,
}

impl Transactions {
    /// Starts one; at most `limit` open (if `Some`).
    pub fn start(&mut self, limit: Option<u32>) -> Result<u32, XsError> {
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
        self.open.insert(id, Tx::default());
        Ok(id)
    }

    /// The transaction a request with `tx_id` works in.
    pub fn get(&mut self, id: u32) -> Result<&mut Tx, XsError> {
        self.open.get_mut(&id).ok_or(XsError::ENOENT)
    }

    /// Ends one, returning it.
    pub fn end(&mut self, id: u32) -> Result<Tx, XsError> {
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
