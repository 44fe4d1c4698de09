//! What the daemon keeps per client: who it is, its watches and
//! transactions, and the bytes waiting to go out. Transports (a socket, a
//! guest ring) live in the daemon; this part is plain data that a restart
//! can save and restore.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::perms::Caller;
use crate::transaction::Transactions;
use crate::watch::Watch;
use crate::wire::{Decoder, Message};

/// Most bytes of watch events queued for a client that does not read them;
/// later events to it are dropped (with a log line) so a stalled guest
/// cannot grow the daemon's memory.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// A client's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Conn {
    /// Who it is.
    pub caller: Caller,
    /// A guest on its ring (else a socket client).
    pub is_domain: bool,
    /// Its watches.
    pub watches: Vec<Watch>,
    /// Its transactions.
    pub transactions: Transactions,
    /// Bytes received that do not yet make a whole message.
    pub input: Decoder,
    /// Encoded messages waiting to be sent.
    pub output: VecDeque<u8>,
    /// Replies queued and not yet sent (input pauses at the quota).
    pub replies_queued: u32,
    /// Watch events dropped because the client did not read.
    pub dropped_events: u64,
}

impl Conn {
    /// A new client.
    pub fn new(caller: Caller, is_domain: bool) -> Conn {
        Conn {
            caller,
            is_domain,
            watches: Vec::new(),
            transactions: Transactions::default(),
            input: Decoder::default(),
            output: VecDeque::new(),
            replies_queued: 0,
            dropped_events: 0,
        }
    }

    /// Queues a reply.
    pub fn reply(&mut self, m: Message) {
        self.output.extend(m.encode());
        self.replies_queued += 1;
    }

    /// Queues a watch event unless the client is hopelessly behind.
    pub fn event(&mut self, m: Message) {
        if self.output.len() > MAX_QUEUED_BYTES {
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                tracing::warn!(domid = self.caller.domid, dropped = self.dropped_events, "client does not read its watch events; dropping");
            }
            return;
        }
        self.output.extend(m.encode());
    }

    /// Notes that `n` bytes went out.
    pub fn sent(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
        if self.output.is_empty() {
            self.replies_queued = 0;
        }
    }

    /// Forgets watches, transactions and buffers (a reset connection).
    pub fn reset(&mut self) {
        self.watches.clear();
        self.transactions.clear();
        self.input = Decoder::default();
        self.output.clear();
        self.replies_queued = 0;
    }
}
