//! One session's reservations, following the upstream's state.
//!
//! A recipient is reserved before its RCPT is forwarded. The session reports,
//! in the order the upstream answered, what became of each forwarded RCPT
//! and each end of message ([`TxEvent`](crate::session::TxEvent)); replies
//! come in the order commands were sent, so each one settles the oldest step
//! still waiting for it and nothing else:
//!
//! - a RCPT the upstream refused is released; one it accepted joins the
//!   upstream's open transaction;
//! - an end of message the upstream accepted commits that transaction, one
//!   it refused releases it (either way the upstream has cleared it);
//! - a RSET, EHLO or HELO the upstream accepted releases it;
//! - when the session goes away, whatever an end of message already sent
//!   may have delivered counts as sent (the upstream may have queued it
//!   before the connection went), and the rest is released.
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

/// What one forwarded recipient holds, until the upstream settles it.
pub enum Held {
    /// A reservation in this process's engine.
    Local(Reservation),
    /// A reservation elsewhere, as `id`.
    Remote {
        key: SenderKey,
        id: String,
        remote: Arc<dyn Remote>,
    },
    /// Nothing held; a send still counts in the hourly totals.
    Uncounted(SenderKey),
}

/// A command sent upstream whose reply decides reservations.
enum Step {
    Rcpt(Held),
    End,
}

pub struct Ledger {
    limiter: Arc<Limiter>,
    /// Forwarded RCPTs and ends of message without their reply, in the order sent.
    unanswered: VecDeque<Step>,
    /// Recipients the upstream accepted in its open transaction.
    accepted: Vec<Held>,
}

impl Ledger {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Ledger {
            limiter,
            unanswered: VecDeque::new(),
            accepted: Vec::new(),
        }
    }

    /// A RCPT was forwarded, holding `h`.
    pub fn forwarded(&mut self, h: Held) {
        self.unanswered.push_back(Step::Rcpt(h));
    }

    /// Gives back what a recipient that is not forwarded after all held.
    pub fn let_go(&self, h: Held) {
        self.settle(h, false);
    }

    /// An end of message (end of data, last BDAT) was sent.
    pub fn end_sent(&mut self) {
        self.unanswered.push_back(Step::End);
    }

    /// The upstream answered the oldest forwarded RCPT.
    pub fn rcpt_reply(&mut self, accepted: bool) {
        match self.unanswered.pop_front() {
            Some(Step::Rcpt(h)) if accepted => self.accepted.push(h),
            Some(Step::Rcpt(h)) => self.settle(h, false),
            other => self.out_of_step("a RCPT reply", other),
        }
    }

    /// The upstream answered the oldest end of message: the message was
    /// accepted (`delivered`) or refused. Its transaction is over.
    pub fn end_reply(&mut self, delivered: bool) {
        match self.unanswered.pop_front() {
            Some(Step::End) => self.settle_accepted(delivered),
            other => self.out_of_step("an end-of-message reply", other),
        }
    }

    /// The upstream accepted a RSET, EHLO or HELO.
    pub fn reset(&mut self) {
        self.settle_accepted(false);
    }

    /// A reply the session reported does not match the oldest step: a bug.
    /// Nothing may be let go that the upstream might deliver, so the step
    /// is put back and everything stays held until the session ends.
    fn out_of_step(&mut self, what: &str, step: Option<Step>) {
        tracing::error!("reservations out of step with the upstream: {what} with no step for it");
        debug_assert!(false, "{what} out of step");
        if let Some(step) = step {
            self.unanswered.push_front(step);
        }
    }

    fn settle_accepted(&mut self, sent: bool) {
        for h in std::mem::take(&mut self.accepted) {
            self.settle(h, sent);
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

    /// Reservations still held (those awaiting a reply included).
    pub fn len(&self) -> usize {
        let awaiting = self.unanswered.iter();
        self.accepted.len() + awaiting.filter(|s| matches!(s, Step::Rcpt(_))).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ledger {
    /// The session is gone, maybe before the upstream answered all it was
    /// sent. A recipient counts as sent if an end of message sent after it
    /// is unanswered: the upstream may have delivered it.
    fn drop(&mut self) {
        let steps = std::mem::take(&mut self.unanswered);
        let last_end = steps.iter().rposition(|s| matches!(s, Step::End));
        self.settle_accepted(last_end.is_some());
        for (i, step) in steps.into_iter().enumerate() {
            if let Step::Rcpt(h) = step {
                self.settle(h, last_end.is_some_and(|end| i < end));
            }
        }
    }
}
