//! One session's reservations. Recipients are reserved before their RCPT
//! is forwarded; the upstream's replies arrive in order, so each RCPT reply
//! settles the oldest reservation still waiting for one. A transaction's end
//! commits (delivered) or releases (anything else) what it holds; a session
//! that goes away releases everything it still holds.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Limiter, Reservation};

pub struct Ledger {
    limiter: Arc<Limiter>,
    /// Reservations of forwarded RCPTs whose reply has not come yet.
    awaiting: VecDeque<Reservation>,
    /// Reservations of RCPTs the upstream accepted in the open transaction.
    held: Vec<Reservation>,
}

impl Ledger {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Ledger {
            limiter,
            awaiting: VecDeque::new(),
            held: Vec::new(),
        }
    }

    /// A reserved RCPT was forwarded.
    pub fn forwarded(&mut self, r: Reservation) {
        self.awaiting.push_back(r);
    }

    /// The upstream answered the oldest forwarded RCPT.
    pub fn rcpt_reply(&mut self, accepted: bool) {
        if let Some(r) = self.awaiting.pop_front() {
            if accepted {
                self.held.push(r);
            } else {
                self.limiter.release(r);
            }
        }
    }

    /// The transaction ended: sent (`delivered`) or not.
    pub fn transaction_end(&mut self, delivered: bool) {
        for r in self.held.drain(..) {
            if delivered {
                self.limiter.commit(r);
            } else {
                self.limiter.release(r);
            }
        }
        // Replies come in order, so none should still be waiting; if one is,
        // it was never accepted.
        for r in self.awaiting.drain(..) {
            self.limiter.release(r);
        }
    }

    /// Reservations still held (pending ones included).
    pub fn len(&self) -> usize {
        self.held.len() + self.awaiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.transaction_end(false);
    }
}
