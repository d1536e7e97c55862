//! This process's link to a fleet (`[state] backend = "redis"`): the
//! Redis connection (made in the background, so an unreachable Redis never
//! keeps mailbrake from starting), what to do while Redis cannot be reached,
//! the background settling of reservations, and the refresh that keeps the
//! reservations this process holds alive for as long as their sessions
//! hold them. Every failure is logged and counted
//! (`mailbrake_fleet_errors_total{op}`); the connection recovers by itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use metrics::counter;

use super::fleet::{Fleet, FleetDecision, FleetOptions};
use super::ledger::Remote;
use super::{Clock, SenderKey, SystemClock, Time};
use crate::config::{FleetConfig, Rate};
use crate::driver::Pending;
use crate::metrics as m;

/// The fleet, shared by every session of this process.
pub struct FleetLink {
    fleet: OnceLock<Fleet>,
    /// Accept recipients when Redis cannot be reached (else defer them).
    pub fail_open: bool,
    /// The longest window of the policy, for send expiry.
    pub longest: AtomicU32,
    /// For the times of commits and refreshes.
    clock: Box<dyn Clock>,
}

/// A failed fleet call (already logged and counted).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

impl Unavailable {
    pub fn new(why: impl Into<String>) -> Self {
        Unavailable(why.into())
    }
}

/// What a session's [`Enforcer`](super::enforce::Enforcer) asks of the
/// fleet: [`FleetLink`] in service, a stub in tests. Settling is
/// [`Remote`]'s, without waiting.
pub trait FleetLimits: Remote {
    /// Accept recipients while Redis cannot be reached (else defer them).
    fn fail_open(&self) -> bool;
    /// A reservation id unique across the fleet; `None` until connected.
    fn new_id(&self) -> Option<String>;
    /// See [`FleetLink::reserve`].
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        rates: &'a [Rate],
        now: Time,
        id: &'a str,
    ) -> Pending<'a, Result<FleetDecision, Unavailable>>;
    /// See [`FleetLink::lock`].
    fn lock<'a>(
        &'a self,
        key: &'a str,
        until: Option<Time>,
        reason: &'a str,
        now: Time,
    ) -> Pending<'a, Result<(), Unavailable>>;
}

impl FleetLink {
    /// Starts connecting in the background (retrying every second) and
    /// returns at once.
    pub fn start(cfg: &FleetConfig, longest: Time) -> Arc<Self> {
        Self::start_with(cfg, longest, FleetOptions::default(), Box::new(SystemClock))
    }

    /// [`FleetLink::start`] with the given options and clock.
    pub fn start_with(
        cfg: &FleetConfig,
        longest: Time,
        options: FleetOptions,
        clock: Box<dyn Clock>,
    ) -> Arc<Self> {
        let link = Arc::new(FleetLink {
            fleet: OnceLock::new(),
            fail_open: cfg.fail_open,
            longest: AtomicU32::new(longest),
            clock,
        });
        refresh_held(Arc::downgrade(&link), options.refresh_every);
        let (target, url, prefix) = (link.clone(), cfg.url.clone(), cfg.prefix.clone());
        tokio::spawn(async move {
            loop {
                match Fleet::connect_with(&url, &prefix, options).await {
                    Ok(fleet) => {
                        tracing::info!(%prefix, "fleet state in Redis: connected");
                        let _ = target.fleet.set(fleet);
                        return;
                    }
                    Err(e) => {
                        counter!(m::FLEET_ERRORS, "op" => "connect").increment(1);
                        tracing::error!(
                            fail_open = target.fail_open,
                            "cannot reach the fleet's Redis, retrying: {e}"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        link
    }

    fn get(&self, op: &'static str) -> Result<&Fleet, Unavailable> {
        self.fleet.get().ok_or_else(|| {
            counter!(m::FLEET_ERRORS, "op" => op).increment(1);
            Unavailable::new("not connected to the fleet's Redis yet")
        })
    }

    fn failed<T>(
        &self,
        op: &'static str,
        r: Result<T, super::fleet::FleetError>,
    ) -> Result<T, Unavailable> {
        r.map_err(|e| {
            counter!(m::FLEET_ERRORS, "op" => op).increment(1);
            tracing::warn!(
                op,
                fail_open = self.fail_open,
                "fleet state unavailable: {e}"
            );
            Unavailable::new(e.to_string())
        })
    }

    pub fn new_id(&self) -> Option<String> {
        self.fleet.get().map(Fleet::new_id)
    }

    pub async fn reserve(
        &self,
        key: &str,
        rates: &[Rate],
        now: Time,
        id: &str,
    ) -> Result<FleetDecision, Unavailable> {
        let f = self.get("reserve")?;
        self.failed("reserve", f.reserve(key, rates, now, id).await)
    }

    pub async fn lock(
        &self,
        key: &str,
        until: Option<Time>,
        reason: &str,
        now: Time,
    ) -> Result<(), Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.lock(key, until, reason, now).await)
    }

    pub async fn unlock(&self, key: &str) -> Result<bool, Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.unlock(key).await)
    }

    pub async fn set_override(
        &self,
        key: &str,
        limit: &str,
        until: Option<Time>,
        now: Time,
    ) -> Result<(), Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.set_override(key, limit, until, now).await)
    }

    pub async fn remove_override(&self, key: &str) -> Result<bool, Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.remove_override(key).await)
    }

    pub async fn reset(&self, key: &str) -> Result<(), Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.reset(key).await)
    }

    pub async fn counts(
        &self,
        key: &str,
        rates: &[Rate],
        now: Time,
    ) -> Result<(Vec<u64>, u64), Unavailable> {
        let f = self.get("admin")?;
        self.failed("admin", f.counts(key, rates, now).await)
    }
}

/// Every `every`, moves the expiry of the reservations this process holds
/// to now + the reservation TTL. Stops when the link is dropped; when the
/// process dies, nothing refreshes them and they expire within the TTL.
fn refresh_held(link: Weak<FleetLink>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once; nothing is held yet.
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(link) = link.upgrade() else {
                return;
            };
            let Some(fleet) = link.fleet.get() else {
                continue;
            };
            match fleet.refresh(link.clock.now()).await {
                Ok(done) if done.expired > 0 => tracing::warn!(
                    expired = done.expired,
                    held = done.held,
                    "fleet reservations were gone from Redis before they could be refreshed \
                     (expired while it was unreachable, or it lost its data): \
                     their senders may go over their limits until those transactions end"
                ),
                Ok(_) => {}
                Err(e) => {
                    counter!(m::FLEET_ERRORS, "op" => "refresh").increment(1);
                    tracing::warn!(
                        held = fleet.held(),
                        "cannot refresh this process's fleet reservations, retrying: {e}"
                    );
                }
            }
        }
    });
}

impl FleetLimits for Arc<FleetLink> {
    fn fail_open(&self) -> bool {
        self.fail_open
    }

    fn new_id(&self) -> Option<String> {
        FleetLink::new_id(self)
    }

    fn reserve<'a>(
        &'a self,
        key: &'a str,
        rates: &'a [Rate],
        now: Time,
        id: &'a str,
    ) -> Pending<'a, Result<FleetDecision, Unavailable>> {
        Box::pin(FleetLink::reserve(self, key, rates, now, id))
    }

    fn lock<'a>(
        &'a self,
        key: &'a str,
        until: Option<Time>,
        reason: &'a str,
        now: Time,
    ) -> Pending<'a, Result<(), Unavailable>> {
        Box::pin(FleetLink::lock(self, key, until, reason, now))
    }
}

impl Remote for Arc<FleetLink> {
    fn commit(&self, key: &SenderKey, id: &str) {
        let (link, key, id) = (self.clone(), key.to_string(), id.to_owned());
        tokio::spawn(async move {
            let now = link.clock.now();
            let longest = link.longest.load(Ordering::Relaxed);
            if let Ok(f) = link.get("commit") {
                let _ = link.failed("commit", f.commit(&key, &id, now, longest).await);
            }
        });
    }

    fn release(&self, key: &SenderKey, id: &str) {
        let (link, key, id) = (self.clone(), key.to_string(), id.to_owned());
        tokio::spawn(async move {
            if let Ok(f) = link.get("release") {
                let _ = link.failed("release", f.release(&key, &id).await);
            }
        });
    }
}
