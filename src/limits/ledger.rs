//! One session's reservations. Recipients are reserved before their RCPT
//! is forwarded; the upstream's replies arrive in order, so each RCPT reply
//! settles the oldest reservation still waiting for one. A transaction's end
//! commits (delivered) or releases (anything else) what it holds; a session
//! that goes away releases everything it still holds.
//!
//! A reservation is held by this process's engine, or elsewhere (a fleet's
//! Redis, settled in the background through [`Remote`]), or nowhere (an
//! unlimited sender, or Redis unreachable with `redis_failure = "open"`):
//! every sent recipient still counts in the hourly totals.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Limiter, Reservation, SenderKey};

/// Reservations kept outside this process, settled without waiting.
pub trait Remote: Send + Sync {
    fn commit(&self, key: &SenderKey, id: &str);
    fn release(&self, key: &SenderKey, id: &str);
}

/// One reserved recipient.
enum Held {
    Local(Reservation),
    Remote {
        key: SenderKey,
        id: String,
        remote: Arc<dyn Remote>,
    },
    Uncounted(SenderKey),
}

pub struct Ledger {
    limiter: Arc<Limiter>,
    /// Reservations of forwarded RCPTs whose reply has not come yet.
    awaiting: VecDeque<Held>,
    /// Reservations of RCPTs the upstream accepted in the open transaction.
    held: Vec<Held>,
}

impl Ledger {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Ledger {
            limiter,
            awaiting: VecDeque::new(),
            held: Vec::new(),
        }
    }

    /// A RCPT reserved in this process's engine was forwarded.
    pub fn forwarded(&mut self, r: Reservation) {
        self.awaiting.push_back(Held::Local(r));
    }

    /// A RCPT reserved elsewhere (as `id`) was forwarded.
    pub fn forwarded_remote(&mut self, key: SenderKey, id: String, remote: Arc<dyn Remote>) {
        self.awaiting.push_back(Held::Remote { key, id, remote });
    }

    /// A RCPT forwarded without any reservation.
    pub fn forwarded_uncounted(&mut self, key: SenderKey) {
        self.awaiting.push_back(Held::Uncounted(key));
    }

    /// The upstream answered the oldest forwarded RCPT.
    pub fn rcpt_reply(&mut self, accepted: bool) {
        if let Some(h) = self.awaiting.pop_front() {
            if accepted {
                self.held.push(h);
            } else {
                self.settle(h, false);
            }
        }
    }

    /// The transaction ended: sent (`delivered`) or not.
    pub fn transaction_end(&mut self, delivered: bool) {
        let held: Vec<Held> = self.held.drain(..).collect();
        for h in held {
            self.settle(h, delivered);
        }
        // Replies come in order, so none should still be waiting; if one is,
        // it was never accepted.
        let awaiting: Vec<Held> = self.awaiting.drain(..).collect();
        for h in awaiting {
            self.settle(h, false);
        }
    }

    fn settle(&self, h: Held, sent: bool) {
        match (h, sent) {
            (Held::Local(r), true) => self.limiter.commit(r),
            (Held::Local(r), false) => self.limiter.release(r),
            (Held::Remote { key, id, remote }, true) => {
                remote.commit(&key, &id);
                self.limiter.note_sent(&key);
            }
            (Held::Remote { key, id, remote }, false) => remote.release(&key, &id),
            (Held::Uncounted(key), true) => self.limiter.note_sent(&key),
            (Held::Uncounted(_), false) => {}
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
