//! Short-term protection, `[protect]`: GCRA rate limits (governor) on new
//! connections per address, failed AUTH per address and per username, and
//! an optional RCPT pace per sender. These smooth bursts and stop brute
//! force within seconds; they are not the hourly recipient limits.
//!
//! A rate `N/w` allows a burst of N, refilled one every w/N.
//! An address or username over its AUTH-failure rate is refused AUTH (421,
//! connection closed) until the rate would allow another failure: the
//! backoff grows with the attempts.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{ProtectConfig, Rate};
use crate::identity::ClientAddr;
use crate::limits::SenderKey;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn quota(rate: &Rate) -> Option<Quota> {
    let count = NonZeroU32::new(rate.count)?;
    let period = rate.window / rate.count;
    Quota::with_period(period.max(Duration::from_nanos(1))).map(|q| q.allow_burst(count))
}

fn keyed<K: Hash + Eq + Clone, C: Clock + Clone>(
    rate: &Option<Rate>,
    clock: &C,
) -> Option<Keyed<K, C>> {
    rate.as_ref()
        .and_then(quota)
        .map(|q| RateLimiter::dashmap_with_clock(q, clock.clone()))
}

/// Keys currently refused until a time (peekable, unlike a rate limiter).
struct PenaltyBox<K, I> {
    until: Mutex<HashMap<K, I>>,
}

impl<K: Hash + Eq, I: Ord + Copy> PenaltyBox<K, I> {
    fn new() -> Self {
        PenaltyBox {
            until: Mutex::new(HashMap::new()),
        }
    }

    fn put(&self, key: K, until: I) {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, until);
    }

    fn holds(&self, key: &K, now: I) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(&until) if until > now => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn prune(&self, now: I) {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, &mut u| u > now);
    }
}

/// The short-term limits shared by every session.
pub struct Protect<C: Clock = DefaultClock> {
    clock: C,
    connections: Option<Keyed<IpAddr, C>>,
    auth_ip: Option<Keyed<IpAddr, C>>,
    auth_user: Option<Keyed<String, C>>,
    rcpt_pace: Option<Keyed<SenderKey, C>>,
    banned_ips: PenaltyBox<IpAddr, C::Instant>,
    banned_users: PenaltyBox<String, C::Instant>,
}

impl Protect<DefaultClock> {
    pub fn new(cfg: &ProtectConfig) -> Self {
        Protect::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Protect<C> {
    pub fn with_clock(cfg: &ProtectConfig, clock: C) -> Self {
        Protect {
            connections: keyed(&cfg.connections_per_ip, &clock),
            auth_ip: keyed(&cfg.auth_failures_per_ip, &clock),
            auth_user: keyed(&cfg.auth_failures_per_user, &clock),
            rcpt_pace: keyed(&cfg.rcpt_pace, &clock),
            banned_ips: PenaltyBox::new(),
            banned_users: PenaltyBox::new(),
            clock,
        }
    }

    /// A new connection from `client`: false when it comes too fast.
    pub fn allow_connection(&self, client: ClientAddr) -> bool {
        self.connections
            .as_ref()
            .is_none_or(|l| l.check_key(&client.ip()).is_ok())
    }

    /// Whether `client` (and `user`, when known) may try AUTH now.
    pub fn allow_auth(&self, client: ClientAddr, user: Option<&str>) -> bool {
        let now = self.clock.now();
        !self.banned_ips.holds(&client.ip(), now)
            && user.is_none_or(|u| !self.banned_users.holds(&u.to_ascii_lowercase(), now))
    }

    /// Counts a failed AUTH; returns false when `client` or `user` is now
    /// over its rate (and refused AUTH until the rate allows again).
    pub fn auth_failed(&self, client: ClientAddr, user: Option<&str>) -> bool {
        let ip = client.ip();
        let mut ok = true;
        if let Some(l) = &self.auth_ip
            && let Err(not_until) = l.check_key(&ip)
        {
            self.banned_ips.put(ip, not_until.earliest_possible());
            ok = false;
        }
        if let (Some(l), Some(user)) = (&self.auth_user, user) {
            let user = user.to_ascii_lowercase();
            if let Err(not_until) = l.check_key(&user) {
                self.banned_users.put(user, not_until.earliest_possible());
                ok = false;
            }
        }
        ok
    }

    /// One RCPT of `key`: false when it comes faster than the pace.
    pub fn allow_rcpt(&self, key: &SenderKey) -> bool {
        self.rcpt_pace
            .as_ref()
            .is_none_or(|l| l.check_key(key).is_ok())
    }

    /// Forgets state that no longer matters (call now and then).
    pub fn prune(&self) {
        let now = self.clock.now();
        self.banned_ips.prune(now);
        self.banned_users.prune(now);
        for l in [&self.connections, &self.auth_ip].into_iter().flatten() {
            l.retain_recent();
        }
        if let Some(l) = &self.auth_user {
            l.retain_recent();
        }
        if let Some(l) = &self.rcpt_pace {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(count: u32, secs: u64) -> Option<Rate> {
        Some(Rate {
            count,
            window: Duration::from_secs(secs),
        })
    }

    /// A client at `ip` (any port: the limits are per address).
    fn client(ip: &str) -> ClientAddr {
        ClientAddr::new(std::net::SocketAddr::new(ip.parse().unwrap(), 4321))
    }

    fn protect(cfg: ProtectConfig) -> (Protect<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Protect::with_clock(&cfg, clock.clone()), clock)
    }

    #[test]
    fn connection_rate_per_address() {
        let (p, clock) = protect(ProtectConfig {
            connections_per_ip: rate(3, 60),
            ..ProtectConfig::default()
        });
        let (a, b) = (client("192.0.2.1"), client("192.0.2.2"));
        assert!((0..3).all(|_| p.allow_connection(a)));
        assert!(!p.allow_connection(a), "burst of 3 used up");
        assert!(p.allow_connection(b), "another address is not affected");
        assert!(
            !p.allow_connection(client("::ffff:192.0.2.1")),
            "v4-mapped is the same address"
        );
        clock.advance(Duration::from_secs(20));
        assert!(p.allow_connection(a), "one refilled every 20 s");
        assert!(!p.allow_connection(a));
    }

    #[test]
    fn auth_failures_ban_address_and_user_with_backoff() {
        let (p, clock) = protect(ProtectConfig {
            auth_failures_per_ip: rate(3, 60),
            auth_failures_per_user: rate(5, 600),
            ..ProtectConfig::default()
        });
        let ip = client("198.51.100.9");
        for _ in 0..3 {
            assert!(p.allow_auth(ip, Some("alice")));
            assert!(p.auth_failed(ip, Some("alice")));
        }
        assert!(!p.auth_failed(ip, Some("alice")), "4th failure in a minute");
        assert!(!p.allow_auth(ip, None));
        clock.advance(Duration::from_secs(20));
        assert!(
            p.allow_auth(ip, None),
            "banned until the rate allows one more"
        );
        // Distributed guessing against one user: the per-user rate catches it.
        for i in 0..5 {
            let other = client(&format!("203.0.113.{i}"));
            let _ = p.auth_failed(other, Some("Bob"));
        }
        assert!(!p.auth_failed(client("203.0.113.99"), Some("bob")));
        assert!(!p.allow_auth(client("203.0.113.100"), Some("BOB")));
        assert!(p.allow_auth(client("203.0.113.100"), Some("carol")));
    }

    #[test]
    fn rcpt_pace_is_off_by_default() {
        let (p, _) = protect(ProtectConfig::default());
        let k = SenderKey::auth("a@x");
        assert!((0..10_000).all(|_| p.allow_rcpt(&k)));
        let (p, _) = protect(ProtectConfig {
            rcpt_pace: rate(5, 60),
            ..ProtectConfig::default()
        });
        assert_eq!((0..10).filter(|_| p.allow_rcpt(&k)).count(), 5);
    }
}
