//! One recipient's limit decision, whichever made it (this process's engine
//! or the fleet's Redis), and the one function that turns it into the
//! session's verdict, the reply, the log line and the metrics.

use super::engine::Refusal;
use super::ledger::{Held, Ledger};
use super::policy::{clock_text, rate_text, wait_text, when_text};
use super::{Limiter, SenderKey};
use crate::config::LimitAction;
use crate::metrics as m;
use crate::session::{Verdict, replies};

/// What became of one recipient under its sender's limits.
pub enum Decided {
    /// Within its limits: forwarded, holding what was reserved for it.
    Accepted(Held),
    /// Over its limits with `action = "observe"`: forwarded all the same
    /// (holding nothing in a window), and logged with the reply it would
    /// have had.
    Observed(Held, Refusal),
    /// Not forwarded; nothing held.
    Refused(Refused),
}

/// Why a recipient is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Over its limit, or its sender locked: the engine's or the fleet's word.
    Limit(Refusal),
    /// Faster than `[protect] rcpt_pace` allows its sender.
    TooQuickly,
    /// The fleet's Redis unreachable with `redis_failure = "closed"`.
    Unavailable,
    /// The limits cannot be saved (see [`Limiter::unsaved`]).
    Unsaved,
}

impl Decided {
    /// The verdict on one recipient of `key` (to `rcpt`): the reply it gets
    /// or would get, its log line, its `mailbrake_recipients_total` and
    /// `mailbrake_limit_decisions_total`; the ledger takes what a forwarded
    /// one holds.
    pub fn conclude(
        self,
        key: &SenderKey,
        rcpt: &str,
        limiter: &Limiter,
        ledger: &mut Ledger,
    ) -> Verdict {
        let (verdict, outcome, decision) = match self {
            Decided::Accepted(held) => {
                ledger.forwarded(held);
                (Verdict::Accept, "accepted", "accepted")
            }
            Decided::Observed(held, refusal) => {
                let text = refusal_text(key, &refusal, LimitAction::Observe, limiter);
                tracing::info!(sender = %key, rcpt = %rcpt, would_reply = %text, "over the limit (observe mode: accepted)");
                ledger.forwarded(held);
                (Verdict::Accept, "observed", "observed")
            }
            Decided::Refused(why) => {
                let text = why.reply(key, limiter);
                tracing::info!(sender = %key, rcpt = %rcpt, reply = %text, "recipient refused");
                let outcome = if text.starts_with('5') {
                    "rejected"
                } else {
                    "deferred"
                };
                (Verdict::Refuse(text), outcome, why.decision())
            }
        };
        m::count_recipient(key.class().as_str(), outcome, decision);
        verdict
    }
}

impl Refused {
    /// The reply line: it names the key, and for a limit, the limit and
    /// when mail will flow again.
    pub fn reply(&self, key: &SenderKey, limiter: &Limiter) -> String {
        match self {
            Refused::Limit(refusal) => refusal_text(key, refusal, limiter.action(), limiter),
            Refused::TooQuickly => replies::too_quickly(key),
            Refused::Unavailable => replies::LIMITS_UNAVAILABLE.into(),
            Refused::Unsaved => replies::LIMITS_UNSAVED.into(),
        }
    }

    /// `mailbrake_limit_decisions_total{result}`. Deferrals that are not a
    /// limit's own (pace, Redis, the database) are counted as over the limit.
    pub fn decision(&self) -> &'static str {
        match self {
            Refused::Limit(Refusal::Locked(_)) => "locked",
            Refused::Limit(Refusal::OverLimit(_))
            | Refused::TooQuickly
            | Refused::Unavailable
            | Refused::Unsaved => "over_limit",
        }
    }
}

/// A limit's refusal in words, for `action`, as of the limiter's now.
fn refusal_text(
    key: &SenderKey,
    refusal: &Refusal,
    action: LimitAction,
    limiter: &Limiter,
) -> String {
    let now = limiter.now();
    match refusal {
        Refusal::OverLimit(full) => {
            let next = full.next_free.map(|at| when_text(at, now));
            replies::over_limit(action, key, &rate_text(&full.rate), next.as_deref())
        }
        Refusal::Locked(lock) => {
            let until = lock
                .until
                .map(|at| (wait_text(at, now), clock_text(at, now)));
            let until = until
                .as_ref()
                .map(|(wait, at)| (wait.as_str(), at.as_str()));
            let contact = limiter.contact();
            replies::sender_locked(key, &lock.reason, until, contact.as_deref())
        }
    }
}
