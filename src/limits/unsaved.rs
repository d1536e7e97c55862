//! Deferring mail while the limits cannot be saved. When the database has
//! refused writes for so long (a full disk) that the changes waiting for it
//! pass `[state] max_unsaved_changes`, the state thread sets
//! [`Limiter::unsaved`]; until they are written, every recipient gets
//! [`UNSAVED_REPLY`] instead of being counted in a window that a restart
//! would lose. Every recipient, whatever its limit, in every mode: each one
//! sent adds to the changes held in memory, which must stop growing.
//!
//! A layer in front of the session's [`Enforcer`], so that no reservation
//! is made for a recipient that is then deferred.

use std::net::IpAddr;
use std::sync::Arc;

use super::Limiter;
use super::enforce::Enforcer;
use super::key::Identity;
use crate::driver::{Pending, SessionPolicy};
use crate::session::{Mechanism, RcptCheck, TxEvent, Username, Verdict};

/// The reply to every recipient while [`Limiter::unsaved`] holds.
pub const UNSAVED_REPLY: &str =
    "451 4.3.0 Recipient limits cannot be saved right now; try again later";

/// A session's policy, deferring recipients while the state is unsaved.
pub struct Guarded<P = Enforcer> {
    inner: P,
    limiter: Arc<Limiter>,
    /// The session's identity as it was at connect, for the key logged and
    /// counted (the username comes with each RCPT).
    identity: Identity,
}

impl<P: SessionPolicy> Guarded<P> {
    /// `ip` and `vhost` as given to the [`Enforcer`].
    pub fn new(inner: P, limiter: Arc<Limiter>, ip: IpAddr, vhost: Option<String>) -> Self {
        Guarded {
            inner,
            limiter,
            identity: Identity {
                user: None,
                vhost,
                ip: Some(ip),
            },
        }
    }

    fn defer(&mut self, check: &RcptCheck) -> Verdict {
        self.identity.user = check.user.as_ref().map(|u| u.as_str().to_owned());
        let policy = self.limiter.policy();
        if let Some(key) = self.identity.key(&policy.identity, policy.ipv6_prefix) {
            tracing::info!(sender = %key, rcpt = %check.recipient, reply = UNSAVED_REPLY, "recipient refused");
            crate::metrics::count_recipient(key.class().as_str(), "deferred", "over_limit");
        }
        Verdict::Refuse(UNSAVED_REPLY.into())
    }
}

impl<P: SessionPolicy> SessionPolicy for Guarded<P> {
    fn check_rcpt<'a>(&'a mut self, check: &'a RcptCheck) -> Pending<'a, Verdict> {
        if self.limiter.unsaved() {
            return Box::pin(std::future::ready(self.defer(check)));
        }
        self.inner.check_rcpt(check)
    }

    fn on_tx(&mut self, event: TxEvent) {
        self.inner.on_tx(event);
    }

    fn check_auth(&mut self, user: Option<&Username>) -> bool {
        self.inner.check_auth(user)
    }

    fn on_auth(&mut self, user: Option<&Username>, mechanism: Mechanism, ok: bool) {
        self.inner.on_auth(user, mechanism, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::limits::{Policy, SystemClock};

    /// Accepts every recipient, counting the questions.
    #[derive(Default)]
    struct Inner {
        asked: usize,
        events: usize,
    }

    impl SessionPolicy for Inner {
        fn check_rcpt<'a>(&'a mut self, _: &'a RcptCheck) -> Pending<'a, Verdict> {
            self.asked += 1;
            Box::pin(std::future::ready(Verdict::Accept))
        }
        fn on_tx(&mut self, _: TxEvent) {
            self.events += 1;
        }
    }

    fn rcpt() -> RcptCheck {
        RcptCheck {
            recipient: "bob@example.net".into(),
            mail_from: "alice@example.com".into(),
            user: None,
            first_in_transaction: true,
        }
    }

    #[tokio::test]
    async fn recipients_are_deferred_only_while_unsaved() {
        let limiter = Arc::new(Limiter::new(
            Policy::new(&LimitsConfig::default()),
            Box::new(SystemClock),
        ));
        let ip = "192.0.2.7".parse().unwrap();
        let mut p = Guarded::new(Inner::default(), limiter.clone(), ip, None);
        let check = rcpt();
        assert_eq!(p.check_rcpt(&check).await, Verdict::Accept);

        assert!(!limiter.set_unsaved(true));
        assert_eq!(
            p.check_rcpt(&check).await,
            Verdict::Refuse(UNSAVED_REPLY.into())
        );
        assert_eq!(p.inner.asked, 1, "a deferred recipient is never reserved");
        // Transactions still end in the engine (reservations made before).
        p.on_tx(TxEvent::RcptReply { accepted: true });
        assert_eq!(p.inner.events, 1);

        assert!(limiter.set_unsaved(false));
        assert_eq!(p.check_rcpt(&check).await, Verdict::Accept);
        assert_eq!(p.inner.asked, 2);
    }
}
