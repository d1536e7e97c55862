//! The limits as one session's policy: picks the sender key for each RCPT,
//! asks the engine, words the refusal, and keeps the session's reservations.
//!
//! What counts where: each recipient is counted under the key the session
//! has when its RCPT arrives. A client that authenticates halfway through a
//! session has its earlier recipients counted under its vhost or IP key and
//! the later ones under `auth:`.

use std::sync::Arc;

use super::engine::{Decision, Lock, LockReason, Refusal};
use super::fleet::FleetDecision;
use super::key::SenderKey;
use super::ledger::Ledger;
use super::ledger::Remote;
use super::policy::{clock_text, rate_text, wait_text, when_text};
use super::shared::FleetLink;
use super::window::Full;
use super::{Limiter, Time};
use crate::config::LimitAction;
use crate::driver::{Pending, SessionPolicy};
use crate::identity::Identity;
use crate::metrics as m;
use crate::protect::Protect;
use crate::session::{Mechanism, RcptCheck, TxEvent, Username, Verdict};
use metrics::counter;

/// The limits, for one session.
pub struct Enforcer {
    limiter: Arc<Limiter>,
    protect: Arc<Protect>,
    ledger: Ledger,
    identity: Identity,
    last_key: Option<SenderKey>,
    /// Set in fleet mode: limits are decided in the fleet's Redis.
    fleet: Option<(Arc<FleetLink>, Arc<dyn Remote>)>,
}

impl Enforcer {
    /// `identity` as [`crate::identity`] recognised the connection.
    pub fn new(
        limiter: Arc<Limiter>,
        protect: Arc<Protect>,
        identity: Identity,
        fleet: Option<Arc<FleetLink>>,
    ) -> Self {
        let mut enforcer = Enforcer {
            fleet: fleet.map(|f| {
                let remote: Arc<dyn Remote> = Arc::new(f.clone());
                (f, remote)
            }),
            ledger: Ledger::new(limiter.clone()),
            limiter,
            protect,
            identity,
            last_key: None,
        };
        // The session's first key, in the span's `sender` field once.
        enforcer.last_key = enforcer.key();
        if let Some(key) = &enforcer.last_key {
            tracing::Span::current().record("sender", tracing::field::display(key));
        }
        enforcer
    }

    /// The key the session would be counted under now.
    pub fn key(&self) -> Option<SenderKey> {
        let p = self.limiter.policy();
        Some(self.identity.key(&p.identity, p.ipv6_prefix))
    }

    /// The key for this RCPT (the identity may have changed: AUTH), noted in
    /// the span when it changed.
    fn key_for(&mut self, check: &RcptCheck) -> Option<SenderKey> {
        self.identity
            .set_user(check.user.as_ref().map(Username::as_str));
        let key = self.key()?;
        if self.last_key.as_ref() != Some(&key) {
            tracing::Span::current().record("sender", tracing::field::display(&key));
            self.last_key = Some(key.clone());
        }
        Some(key)
    }

    /// Decides one recipient in the fleet's Redis: shared counters,
    /// reservations, locks and overrides. Refusals still count towards this
    /// process's automatic lock, which is then shared.
    async fn check_fleet(
        &mut self,
        check: &RcptCheck,
        link: Arc<FleetLink>,
        remote: Arc<dyn Remote>,
    ) -> Verdict {
        let Some(key) = self.key_for(check) else {
            return no_key();
        };
        let class = key.class().as_str();
        let count = |outcome: &'static str, decision: &'static str| {
            m::count_recipient(class, outcome, decision);
        };
        let policy = self.limiter.policy();
        let observe = policy.action == LimitAction::Observe;
        let (rates, _) = policy.limit(&key, Some(self.identity.client.ip()));
        if rates.is_empty() {
            count("accepted", "accepted");
            self.ledger.forwarded_uncounted(key);
            return Verdict::Accept;
        }
        let rates = rates.to_vec();
        let now = self.limiter.now();
        let id = link.new_id().unwrap_or_default();
        let text_key = key.to_string();
        let refusal = match link.reserve(&text_key, &rates, now, &id).await {
            Ok(FleetDecision::Reserved) => {
                if !self.protect.allow_rcpt(&key) {
                    remote.release(&key, &id);
                    count("deferred", "over_limit");
                    return Verdict::Refuse(format!(
                        "450 4.7.1 Too many recipients too quickly for {key}; slow down"
                    ));
                }
                count("accepted", "accepted");
                self.ledger.forwarded_remote(key, id, remote);
                return Verdict::Accept;
            }
            Ok(FleetDecision::Full {
                rate_index,
                next_free,
            }) => {
                let rate = rates.get(rate_index).copied().unwrap_or(rates[0]);
                if let Some(lock) = self.limiter.note_refusal(&key, observe) {
                    let reason = lock.reason.to_string();
                    // Shared with the fleet (a failure is logged and counted).
                    let _ = link.lock(&text_key, lock.until, &reason, now).await;
                }
                Refusal::OverLimit(Full { rate, next_free })
            }
            Ok(FleetDecision::Locked { until, reason }) => Refusal::Locked(Lock {
                until,
                reason: LockReason::Restored(reason),
            }),
            Err(_) => {
                if link.fail_open {
                    count("accepted", "accepted");
                    self.ledger.forwarded_uncounted(key);
                    return Verdict::Accept;
                }
                count("deferred", "over_limit");
                return Verdict::Refuse(LIMITS_UNAVAILABLE.into());
            }
        };
        let decision = match refusal {
            Refusal::OverLimit(_) => "over_limit",
            Refusal::Locked(_) => "locked",
        };
        if observe {
            let text = refusal_text(&key, &refusal, LimitAction::Observe, &self.limiter);
            tracing::info!(sender = %key, rcpt = %check.recipient, would_reply = %text, "over the limit (observe mode: accepted)");
            count("observed", "observed");
            self.ledger.forwarded_uncounted(key);
            return Verdict::Accept;
        }
        let text = refusal_text(&key, &refusal, policy.action, &self.limiter);
        tracing::info!(sender = %key, rcpt = %check.recipient, reply = %text, "recipient refused");
        let outcome = if text.starts_with('5') {
            "rejected"
        } else {
            "deferred"
        };
        count(outcome, decision);
        Verdict::Refuse(text)
    }

    /// Decides one recipient with this process's own engine.
    fn check_local(&mut self, check: &RcptCheck) -> Verdict {
        let Some(key) = self.key_for(check) else {
            return no_key();
        };
        let mail_from = check
            .first_in_transaction
            .then_some(check.mail_from.as_str());
        let class = key.class().as_str();
        let count = |outcome: &'static str, decision: &'static str| {
            m::count_recipient(class, outcome, decision);
        };
        match self
            .limiter
            .check(&key, Some(self.identity.client.ip()), mail_from)
        {
            Decision::Accept(r) => {
                if !self.protect.allow_rcpt(&key) {
                    self.limiter.release(r);
                    let text =
                        format!("450 4.7.1 Too many recipients too quickly for {key}; slow down");
                    tracing::info!(sender = %key, rcpt = %check.recipient, reply = %text, "recipient refused");
                    count("deferred", "over_limit");
                    return Verdict::Refuse(text);
                }
                count("accepted", "accepted");
                self.ledger.forwarded(r);
                Verdict::Accept
            }
            Decision::Observed(r, refusal) => {
                let text = refusal_text(&key, &refusal, LimitAction::Observe, &self.limiter);
                tracing::info!(sender = %key, rcpt = %check.recipient, would_reply = %text, "over the limit (observe mode: accepted)");
                count("observed", "observed");
                self.ledger.forwarded(r);
                Verdict::Accept
            }
            Decision::Refuse(refusal) => {
                let action = self.limiter.action();
                let text = refusal_text(&key, &refusal, action, &self.limiter);
                tracing::info!(sender = %key, rcpt = %check.recipient, reply = %text, "recipient refused");
                let outcome = if text.starts_with('5') {
                    "rejected"
                } else {
                    "deferred"
                };
                let decision = match refusal {
                    Refusal::OverLimit(_) => "over_limit",
                    Refusal::Locked(_) => "locked",
                };
                count(outcome, decision);
                Verdict::Refuse(text)
            }
        }
    }
}

impl Enforcer {
    /// While the limits cannot be saved (see [`Limiter::unsaved`]), every
    /// recipient is deferred, whatever its limit and in every mode: each one
    /// sent adds to the changes held in memory, which must stop growing. No
    /// reservation is made for it.
    fn defer_unsaved(&mut self, check: &RcptCheck) -> Verdict {
        if let Some(key) = self.key_for(check) {
            tracing::info!(sender = %key, rcpt = %check.recipient, reply = UNSAVED_REPLY, "recipient refused");
            m::count_recipient(key.class().as_str(), "deferred", "over_limit");
        }
        Verdict::Refuse(UNSAVED_REPLY.into())
    }
}

/// The reply to every recipient while the limits cannot be saved.
pub const UNSAVED_REPLY: &str =
    "451 4.3.0 Recipient limits cannot be saved right now; try again later";

impl SessionPolicy for Enforcer {
    fn check_rcpt<'a>(&'a mut self, check: &'a RcptCheck) -> Pending<'a, Verdict> {
        if self.limiter.unsaved() {
            return Box::pin(std::future::ready(self.defer_unsaved(check)));
        }
        match self.fleet.clone() {
            Some((link, remote)) => Box::pin(self.check_fleet(check, link, remote)),
            None => Box::pin(std::future::ready(self.check_local(check))),
        }
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

/// A session always has an address, so always a key; were it ever without
/// one, nothing would count its recipients, so none is accepted.
fn no_key() -> Verdict {
    tracing::error!("no sender key for this session; recipient deferred");
    Verdict::Refuse(LIMITS_UNAVAILABLE.into())
}

/// The reply to a recipient no limit can be decided for (Redis unreachable
/// with `redis_failure = "closed"`, or no sender key).
const LIMITS_UNAVAILABLE: &str =
    "451 4.3.0 Recipient limits are temporarily unavailable; try again later";

/// The reply line for a refused recipient: it names the key, the limit and
/// when mail will flow again.
pub fn refusal_text(
    key: &SenderKey,
    refusal: &Refusal,
    action: LimitAction,
    limiter: &Limiter,
) -> String {
    let now: Time = limiter.now();
    match refusal {
        Refusal::OverLimit(full) => {
            let when = match full.next_free {
                Some(at) => format!("next recipient accepted {}", when_text(at, now)),
                None => "next recipient accepted when messages in progress are sent".into(),
            };
            let code = match action {
                LimitAction::Reject => "550 5.7.1",
                LimitAction::Defer | LimitAction::Observe => "450 4.7.1",
            };
            format!(
                "{code} Recipient limit reached for {key} ({}); {when}",
                rate_text(&full.rate)
            )
        }
        Refusal::Locked(lock) => {
            let until = match lock.until {
                Some(at) => format!(
                    " for {} (until {})",
                    wait_text(at, now),
                    clock_text(at, now)
                ),
                None => " until an operator unlocks it".into(),
            };
            let contact = limiter
                .contact()
                .map(|c| format!("; contact {c}"))
                .unwrap_or_default();
            format!(
                "450 4.7.1 Sender {key} is locked ({}){until}{contact}",
                lock.reason
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, ProtectConfig};
    use crate::identity::ClientAddr;
    use crate::limits::{Policy, SystemClock};

    fn rcpt() -> RcptCheck {
        RcptCheck {
            recipient: "bob@example.net".into(),
            mail_from: "alice@example.com".into(),
            user: None,
            first_in_transaction: true,
        }
    }

    #[tokio::test]
    async fn recipients_are_deferred_unreserved_while_the_limits_are_unsaved() {
        let limiter = Arc::new(Limiter::new(
            Policy::new(&LimitsConfig::default()),
            Box::new(SystemClock),
        ));
        let client = ClientAddr::new("192.0.2.7:4321".parse().unwrap());
        let ip = client.ip();
        let protect = Arc::new(Protect::new(&ProtectConfig::default()));
        let identity = Identity::by_address(client);
        let mut e = Enforcer::new(limiter.clone(), protect, identity, None);
        let key = e.key().unwrap();
        let pending = || limiter.status(&key, Some(ip)).pending;
        assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
        assert_eq!(pending(), 1, "an accepted recipient is reserved");
        e.on_tx(TxEvent::RcptReply { accepted: true });
        e.on_tx(TxEvent::Reset);
        assert_eq!(pending(), 0, "and released by an accepted RSET");

        assert!(!limiter.set_unsaved(true));
        assert_eq!(
            e.check_rcpt(&rcpt()).await,
            Verdict::Refuse(UNSAVED_REPLY.into())
        );
        assert_eq!(pending(), 0, "a deferred recipient is never reserved");
        assert!(limiter.set_unsaved(false));
        assert_eq!(e.check_rcpt(&rcpt()).await, Verdict::Accept);
        assert_eq!(pending(), 1);
    }
}
