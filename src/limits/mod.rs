//! Recipient limits per sender.
//!
//! - [`key`]: the sender key (`auth:`, `vhost:`, `ip:`) limits count under;
//!   which key a session has is [`crate::identity`]'s to say.
//! - [`window`]: one key's exact sliding window: send times and reservations.
//! - [`policy`]: `[limits]` indexed for lookups: which limit applies and why.
//! - [`engine`]: per-key windows, rotation, locks; pure, clock-injected.
//! - [`journal`]: what the engine changed, for the store.
//! - [`store`]: the embedded database (SQLite) that survives restarts.
//! - [`operate`]: what operators do at run time: overrides that expire,
//!   exemptions, resets.
//! - [`shared`]: this process's link to a fleet's Redis.
//! - [`ledger`]: one session's reservations, each settled by the upstream's
//!   reply to its own RCPT and end of message; when the session goes, what
//!   an unanswered end of message may have delivered counts as sent.
//! - [`fleet`]: fleet mode: windows, locks and overrides shared in Redis.
//! - [`decide`]: one recipient's decision, local or fleet, and the one
//!   function that makes it a verdict, a reply, a log line and metrics.
//! - [`enforce`]: the limits as one session's policy: the key for each
//!   RCPT, the decision, the ledger.
//!
//! [`Limiter`] shares the engine between sessions: keys are spread over
//! shards, each behind its own mutex, so decisions on different keys rarely
//! wait for each other.

pub mod decide;
pub mod enforce;
pub mod engine;
pub mod fleet;
pub mod journal;
pub mod key;
pub mod ledger;
pub mod operate;
pub mod policy;
pub mod shared;
pub mod store;
pub mod window;

#[cfg(test)]
mod tests;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use engine::{Decision, Engine, HotSender, Lock, LockReason, Refusal, Reservation, Status};
pub use journal::{Event, Time};
pub use key::{KeyClass, SenderKey};
pub use policy::Policy;

/// The clock seam of the limits: unix seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        u32::try_from(crate::clock::unix_seconds()).unwrap_or(Time::MAX)
    }
}

/// Shards: a power of two comfortably above the core count.
const SHARDS: usize = 16;

/// The engine shared by every session.
pub struct Limiter {
    shards: Box<[Mutex<Engine>]>,
    hasher: std::collections::hash_map::RandomState,
    clock: Box<dyn Clock>,
    /// The policy as a whole, for what sessions read on every RCPT.
    policy: std::sync::RwLock<Arc<Policy>>,
    /// Operators' overrides (see [`operate`]).
    runtime: Mutex<std::collections::HashMap<SenderKey, operate::RuntimeOverride>>,
    /// Set by the state thread while more changes wait for the database
    /// than `[state] max_unsaved_changes` (the session's [`enforce::Enforcer`] then defers every recipient).
    unsaved: AtomicBool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Limiter {
    pub fn new(policy: Policy, clock: Box<dyn Clock>) -> Self {
        let policy = Arc::new(policy);
        Limiter {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Engine::new(policy.clone())))
                .collect(),
            hasher: Default::default(),
            clock,
            policy: std::sync::RwLock::new(policy),
            runtime: Mutex::new(Default::default()),
            unsaved: AtomicBool::new(false),
        }
    }

    pub fn now(&self) -> Time {
        self.clock.now()
    }

    fn shard(&self, key: &SenderKey) -> std::sync::MutexGuard<'_, Engine> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A panic while holding a shard cannot leave a window half-updated in
        // a way that matters more than stopping all mail: keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn each(&self, mut f: impl FnMut(&mut Engine)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    pub fn check(
        &self,
        key: &SenderKey,
        client: Option<IpAddr>,
        mail_from: Option<&str>,
    ) -> Decision {
        let now = self.now();
        self.shard(key).check(key, client, mail_from, now)
    }

    pub fn commit(&self, r: Reservation) {
        let now = self.now();
        self.shard(&r.key).commit(r, now);
    }

    /// See [`Engine::note_refusal`].
    pub fn note_refusal(&self, key: &SenderKey, observe: bool) -> Option<Lock> {
        let now = self.now();
        self.shard(key).note_refusal(key, observe, now)
    }

    /// See [`Engine::note_sent`].
    pub fn note_sent(&self, key: &SenderKey) {
        let now = self.now();
        self.shard(key).note_sent(key, now);
    }

    pub fn release(&self, r: Reservation) {
        self.shard(&r.key).release(r);
    }

    pub fn lock(&self, key: &SenderKey, lock: Lock) {
        let now = self.now();
        self.shard(key).set_lock(key, lock, now);
    }

    pub fn unlock(&self, key: &SenderKey) -> bool {
        let now = self.now();
        self.shard(key).unlock(key, now)
    }

    /// `key`'s lock, if it is still in force.
    pub fn lock_in_force(&self, key: &SenderKey) -> Option<Lock> {
        let now = self.now();
        self.shard(key).lock_in_force(key, now)
    }

    pub fn status(&self, key: &SenderKey, client: Option<IpAddr>) -> Status {
        let now = self.now();
        self.shard(key).status(key, client, now)
    }

    /// New policy for every key (reload); operators' overrides stay on top.
    pub fn set_policy(&self, policy: &Policy) {
        let policy = Arc::new(policy.clone().with_runtime(self.runtime_entries()));
        self.each(|e| e.set_policy(policy.clone()));
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn action(&self) -> crate::config::LimitAction {
        self.policy().action
    }

    pub fn contact(&self) -> Option<String> {
        self.policy().contact.clone()
    }

    /// Whether the changes waiting for the database are past their bound:
    /// recipients are then deferred rather than counted in windows that a
    /// restart would lose.
    pub fn unsaved(&self) -> bool {
        self.unsaved.load(Ordering::Relaxed)
    }

    /// Sets [`Limiter::unsaved`]; returns what it was.
    pub fn set_unsaved(&self, unsaved: bool) -> bool {
        self.unsaved.swap(unsaved, Ordering::Relaxed)
    }

    /// Everything changed since the last call, for the store.
    pub fn drain_journal(&self) -> Vec<Event> {
        let mut entries = Vec::new();
        self.each(|e| entries.append(&mut e.drain_journal()));
        for e in &entries {
            if let engine::Entry::Locked { reason, .. } = e {
                let reason = match reason {
                    LockReason::Refusals(_) => "refusals",
                    LockReason::Rotation(_) => "rotation",
                    LockReason::Operator(_) | LockReason::Restored(_) => "operator",
                };
                metrics::counter!(crate::metrics::LOCKS, "reason" => reason).increment(1);
            }
        }
        // Formatted here, with no shard locked.
        entries.into_iter().map(engine::Entry::into_event).collect()
    }

    /// Forgets idle keys; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut n = 0;
        self.each(|e| n += e.evict_idle(now));
        n
    }

    /// Keys resident.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.each(|e| n += e.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes per resident key, averaged over the shards by
    /// their key counts (see [`Engine::bytes_per_key`]).
    pub fn bytes_per_key(&self) -> usize {
        let (mut bytes, mut keys) = (0, 0);
        self.each(|e| {
            bytes += e.bytes_per_key() * e.len();
            keys += e.len();
        });
        bytes.checked_div(keys).unwrap_or(0)
    }

    /// The senders at `threshold` of a limit or more, or locked, most
    /// pressing first, at most `top`; and how many senders are locked.
    pub fn survey(&self, threshold: f64, top: usize) -> (Vec<HotSender>, usize) {
        let now = self.now();
        let mut hot = Vec::new();
        let mut locked = 0;
        self.each(|e| locked += e.survey(threshold, now, &mut hot));
        hot.sort_by(|a, b| b.locked.cmp(&a.locked).then(b.usage.total_cmp(&a.usage)));
        hot.truncate(top);
        (hot, locked)
    }

    /// Loads what the store kept (start-up).
    pub fn restore(&self, snapshot: &journal::Snapshot) {
        let now = self.now();
        for (key, times) in &snapshot.sent {
            if let Some(k) = SenderKey::parse(key) {
                self.shard(&k).restore_sent(k.clone(), times);
            }
        }
        for (key, until, reason) in &snapshot.locks {
            if let Some(k) = SenderKey::parse(key) {
                let lock = Lock {
                    until: *until,
                    reason: LockReason::Restored(reason.clone()),
                };
                self.shard(&k).restore_lock(k.clone(), lock, now);
            }
        }
    }
}
