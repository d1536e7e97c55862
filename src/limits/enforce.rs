//! The limits as one session's policy: picks the sender key for each RCPT,
//! asks the engine or the fleet, and keeps the session's reservations. What
//! either answers is a [`Decided`], worded, logged and counted by
//! [`Decided::conclude`].
//!
//! What counts where: each recipient is counted under the key the session
//! has when its RCPT arrives. A client that authenticates halfway through a
//! session has its earlier recipients counted under its vhost or IP key and
//! the later ones under `auth:`.
//!
//! A fleet decision is awaited, and the driver may drop it unfinished (the
//! session's timer, shutdown, the client gone): from the moment it is asked
//! for until the ledger holds it, the reservation is owned by a guard that
//! releases it if dropped. A local decision holds nothing across an await.

use std::sync::Arc;

use super::Limiter;
use super::decide::{Decided, Refused};
use super::engine::{Decision, Lock, LockReason, Refusal};
use super::fleet::FleetDecision;
use super::key::SenderKey;
use super::ledger::{Held, Ledger, Remote};
use super::shared::{FleetLimits, FleetLink};
use super::window::Full;
use crate::config::LimitAction;
use crate::driver::{Pending, SessionPolicy};
use crate::identity::Identity;
use crate::metrics as m;
use crate::protect::Protect;
use crate::session::{Mechanism, RcptCheck, TxEvent, Username, Verdict};
use metrics::counter;

#[cfg(test)]
mod tests;

/// The limits, for one session.
pub struct Enforcer {
    limiter: Arc<Limiter>,
    protect: Arc<Protect>,
    ledger: Ledger,
    identity: Identity,
    /// The key last noted in the session's span.
    last_key: SenderKey,
    /// Set in fleet mode: limits are decided in the fleet's Redis.
    fleet: Option<Arc<dyn FleetLimits>>,
}

impl Enforcer {
    /// `identity` as [`crate::identity`] recognised the connection.
    pub fn new(
        limiter: Arc<Limiter>,
        protect: Arc<Protect>,
        identity: Identity,
        fleet: Option<Arc<FleetLink>>,
    ) -> Self {
        let policy = limiter.policy();
        let key = identity.key(&policy.identity, policy.ipv6_prefix);
        // The session's first key, in the span's `sender` field once.
        tracing::Span::current().record("sender", tracing::field::display(&key));
        Enforcer {
            fleet: fleet.map(|f| Arc::new(f) as Arc<dyn FleetLimits>),
            ledger: Ledger::new(limiter.clone()),
            limiter,
            protect,
            identity,
            last_key: key,
        }
    }

    /// The key the session would be counted under now.
    pub fn key(&self) -> SenderKey {
        let p = self.limiter.policy();
        self.identity.key(&p.identity, p.ipv6_prefix)
    }

    /// The key for this RCPT (the identity may have changed: AUTH), noted in
    /// the span when it changed.
    fn key_for(&mut self, check: &RcptCheck) -> SenderKey {
        self.identity
            .set_user(check.user.as_ref().map(Username::as_str));
        let key = self.key();
        if self.last_key != key {
            tracing::Span::current().record("sender", tracing::field::display(&key));
            self.last_key = key.clone();
        }
        key
    }

    /// The limits decided by `fleet` from now on, instead of this
    /// process's engine (a stub, in tests).
    pub fn with_fleet(mut self, fleet: Arc<dyn FleetLimits>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Decides one recipient with this process's own engine.
    fn decide_local(&mut self, key: &SenderKey, check: &RcptCheck) -> Decided {
        let mail_from = check
            .first_in_transaction
            .then_some(check.mail_from.as_str());
        match self.limiter.check(key, self.identity.address(), mail_from) {
            Decision::Accept(r) => self.paced(key, Held::Local(r)),
            Decision::Observed(r, refusal) => Decided::Observed(Held::Local(r), refusal),
            Decision::Refuse(refusal) => Decided::Refused(Refused::Limit(refusal)),
        }
    }

    /// Decides one recipient in the fleet's Redis: shared counters,
    /// reservations, locks and overrides. Refusals still count towards this
    /// process's automatic lock, which is then shared.
    async fn decide_fleet(&mut self, key: &SenderKey, fleet: Arc<dyn FleetLimits>) -> Decided {
        let policy = self.limiter.policy();
        let observe = policy.action == LimitAction::Observe;
        let (rates, _) = policy.limit(key, self.identity.address());
        if rates.is_empty() {
            return Decided::Accepted(Held::Uncounted(key.clone()));
        }
        let rates = rates.to_vec();
        let now = self.limiter.now();
        let text_key = key.to_string();
        let asked = Asked {
            key: key.clone(),
            id: fleet.new_id().unwrap_or_default(),
            remote: Some(fleet.clone()),
        };
        let refusal = match fleet.reserve(&text_key, &rates, now, &asked.id).await {
            Ok(FleetDecision::Reserved) => return self.paced(key, asked.held()),
            Ok(FleetDecision::Full {
                rate_index,
                next_free,
            }) => {
                asked.answered();
                let rate = rates.get(rate_index).copied().unwrap_or(rates[0]);
                if let Some(lock) = self.limiter.note_refusal(key, observe) {
                    let reason = lock.reason.to_string();
                    // Shared with the fleet (a failure is logged and counted).
                    let _ = fleet.lock(&text_key, lock.until, &reason, now).await;
                }
                Refusal::OverLimit(Full { rate, next_free })
            }
            Ok(FleetDecision::Locked { until, reason }) => {
                asked.answered();
                Refusal::Locked(Lock {
                    until,
                    reason: LockReason::Restored(reason),
                })
            }
            Err(_) => {
                // A call that timed out may still have reserved: nothing
                // here refreshes that reservation, so it expires within the
                // reservation TTL.
                asked.answered();
                if !fleet.fail_open() {
                    return Decided::Refused(Refused::Unavailable);
                }
                // Mail flows without the fleet's limits, but not for a
                // sender this process knows to be locked (by an operator
                // here, its own automatic lock, or restored at start).
                match self.limiter.lock_in_force(key) {
                    Some(lock) => Refusal::Locked(lock),
                    None => return Decided::Accepted(Held::Uncounted(key.clone())),
                }
            }
        };
        if observe {
            Decided::Observed(Held::Uncounted(key.clone()), refusal)
        } else {
            Decided::Refused(Refused::Limit(refusal))
        }
    }

    /// A recipient within its limits, unless it comes faster than
    /// `[protect] rcpt_pace` allows: then what it holds is given back.
    fn paced(&self, key: &SenderKey, held: Held) -> Decided {
        if self.protect.allow_rcpt(key) {
            return Decided::Accepted(held);
        }
        self.ledger.let_go(held);
        Decided::Refused(Refused::TooQuickly)
    }
}

/// A fleet reservation asked for and not yet handed on: if Redis made it,
/// it is this session's until the ledger holds it. Dropped before then (the
/// decision dropped unfinished), it is released in the background;
/// releasing one that Redis never made changes nothing.
struct Asked {
    key: SenderKey,
    id: String,
    /// Taken when answered.
    remote: Option<Arc<dyn FleetLimits>>,
}

impl Asked {
    /// Reserved: what the ledger (or [`Enforcer::paced`]) holds from now on.
    fn held(mut self) -> Held {
        let remote: Arc<dyn Remote> = self.remote.take().expect("answered once");
        Held::Remote {
            key: self.key.clone(),
            id: std::mem::take(&mut self.id),
            remote,
        }
    }

    /// Answered without a reservation: nothing to release.
    fn answered(mut self) {
        self.remote = None;
    }
}

impl Drop for Asked {
    fn drop(&mut self) {
        if let Some(remote) = self.remote.take() {
            remote.release(&self.key, &self.id);
        }
    }
}

impl SessionPolicy for Enforcer {
    /// Nothing is decided until the future is first polled; a local
    /// decision is then made, held and returned in that one poll, so a
    /// future dropped unpolled leaves nothing behind. A fleet decision
    /// waits for Redis (see [`Asked`]).
    fn check_rcpt<'a>(&'a mut self, check: &'a RcptCheck) -> Pending<'a, Verdict> {
        Box::pin(async move {
            let key = self.key_for(check);
            // While the limits cannot be saved, every recipient is deferred,
            // whatever its limit and in every mode: each one sent adds to the
            // changes held in memory, which must stop growing. Nothing is
            // reserved for it.
            let decided = if self.limiter.unsaved() {
                Decided::Refused(Refused::Unsaved)
            } else if let Some(fleet) = self.fleet.clone() {
                self.decide_fleet(&key, fleet).await
            } else {
                self.decide_local(&key, check)
            };
            decided.conclude(&key, &check.recipient, &self.limiter, &mut self.ledger)
        })
    }

    fn check_auth(&mut self, user: Option<&Username>) -> bool {
        let client = self.identity.client;
        let allowed = self.protect.allow_auth(client, user.map(Username::as_str));
        if !allowed {
            tracing::warn!(user = %user.map_or("?", Username::as_str), "AUTH refused: too many failures");
            counter!(m::AUTH_ATTEMPTS, "mechanism" => "other", "result" => "blocked").increment(1);
        }
        allowed
    }

    fn on_auth(&mut self, user: Option<&Username>, mechanism: Mechanism, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        counter!(m::AUTH_ATTEMPTS, "mechanism" => mechanism.name(), "result" => result)
            .increment(1);
        if !ok {
            let client = self.identity.client;
            if !self.protect.auth_failed(client, user.map(Username::as_str)) {
                tracing::warn!(user = %user.map_or("?", Username::as_str), "too many failed AUTH: further attempts refused for a while");
            }
        }
    }

    fn on_tx(&mut self, event: TxEvent) {
        match event {
            TxEvent::RcptReply { accepted } => self.ledger.rcpt_reply(accepted),
            TxEvent::EndSent => self.ledger.end_sent(),
            TxEvent::End { delivered, .. } => self.ledger.end_reply(delivered),
            TxEvent::Reset => self.ledger.reset(),
        }
    }
}
