//! The limit engine: per-key windows, reservations, rotation, locks. Pure and
//! clock-injected: every call takes `now`, nothing here does I/O. Changes
//! worth keeping are appended to a journal that the store drains.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::journal::{Event, Time};
use super::key::SenderKey;
use super::policy::{Policy, Source};
use super::window::{Full, Window};
use crate::config::{LimitAction, Rate};

/// Why a key is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockReason {
    /// More refusals than allowed in the lock window.
    Refusals(u32),
    /// More distinct envelope senders than allowed (sender rotation).
    Rotation(u32),
    /// Locked by an operator, with their reason.
    Operator(String),
    /// Restored from the store after a restart: the reason as it was written.
    Restored(String),
}

impl std::fmt::Display for LockReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockReason::Refusals(n) => write!(f, "{n} refused recipients"),
            LockReason::Rotation(n) => write!(f, "{n} different envelope senders"),
            LockReason::Operator(why) => write!(f, "locked by an operator: {why}"),
            LockReason::Restored(why) => f.write_str(why),
        }
    }
}

/// A lock on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub until: Option<Time>,
    pub reason: LockReason,
}

/// Why a recipient is (or, in observe mode, would be) refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    OverLimit(Full),
    Locked(Lock),
}

/// A recipient reserved against a key: commit it when sent, release it otherwise.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation must be committed or released"]
pub struct Reservation {
    pub key: SenderKey,
    /// False for unlimited or exempt keys and for observe-mode overflow: sent
    /// recipients are still totalled, but nothing was held in the window.
    counted: bool,
}

/// The engine's answer for one recipient.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Accept(Reservation),
    /// Accepted because `action = "observe"`; it would have been refused.
    Observed(Reservation, Refusal),
    Refuse(Refusal),
}

/// Everything one key costs.
#[derive(Debug, Default, Clone)]
struct KeyState {
    window: Window,
    /// Refusals in the current lock window: (window start, count).
    refusals: (Time, u32),
    /// Recent distinct envelope senders: (hash, last seen).
    senders: Vec<(u32, Time)>,
    /// Boxed: rare, and a key's size is multiplied by a million.
    lock: Option<Box<Lock>>,
    last_seen: Time,
}

/// One shard of keys and the policy they follow.
#[derive(Debug)]
pub struct Engine {
    policy: Arc<Policy>,
    keys: HashMap<SenderKey, KeyState>,
    journal: Vec<Entry>,
}

/// A journal entry as the engine records it on the hot path: keys shared,
/// nothing formatted. [`Entry::into_event`] writes it out for the store,
/// off the decision path.
#[derive(Debug, Clone)]
pub enum Entry {
    Sent {
        key: SenderKey,
        at: Time,
        /// Held in the key's window (see [`Event::Sent`]).
        windowed: bool,
    },
    Refused {
        key: SenderKey,
        at: Time,
        observed: bool,
    },
    Locked {
        key: SenderKey,
        at: Time,
        until: Option<Time>,
        reason: LockReason,
    },
    Unlocked {
        key: SenderKey,
        at: Time,
    },
    Reset {
        key: SenderKey,
        at: Time,
    },
}

impl Entry {
    pub fn into_event(self) -> Event {
        match self {
            Entry::Sent { key, at, windowed } => Event::Sent {
                key: key.to_string(),
                at,
                count: 1,
                windowed,
            },
            Entry::Refused { key, at, observed } => Event::Refused {
                key: key.to_string(),
                at,
                observed,
            },
            Entry::Locked {
                key,
                at,
                until,
                reason,
            } => Event::Locked {
                key: key.to_string(),
                at,
                until,
                reason: reason.to_string(),
            },
            Entry::Unlocked { key, at } => Event::Unlocked {
                key: key.to_string(),
                at,
            },
            Entry::Reset { key, at } => Event::Reset {
                key: key.to_string(),
                at,
            },
        }
    }
}

/// A key's state for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub rates: Vec<(Rate, usize)>,
    pub pending: u32,
    pub source: Source,
    pub lock: Option<Lock>,
    pub next_free: Option<Time>,
}

/// FNV-1a of a lower-cased address: 4 bytes per remembered sender.
fn sender_hash(addr: &str) -> u32 {
    addr.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0193)
    })
}

impl Engine {
    pub fn new(policy: Arc<Policy>) -> Self {
        Engine {
            policy,
            keys: HashMap::new(),
            journal: Vec::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// New policy (reload); keys and their history stay.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.policy = policy;
    }

    /// Decides one recipient of `key` sending from `client`. `mail_from` is
    /// the envelope sender, given with the first recipient of each
    /// transaction for the rotation signal.
    pub fn check(
        &mut self,
        key: &SenderKey,
        client: Option<IpAddr>,
        mail_from: Option<&str>,
        now: Time,
    ) -> Decision {
        let policy = self.policy.clone();
        let (rates, source) = policy.limit(key, client);
        let observe = self.policy.action == LimitAction::Observe;
        let rotation = self.policy.rotation;
        let state = self.keys.entry(key.clone()).or_default();
        state.last_seen = now;
        if let Some(lock) = &state.lock {
            if lock.until.is_some_and(|until| until <= now) {
                state.lock = None;
                self.journal.push(Entry::Unlocked {
                    key: key.clone(),
                    at: now,
                });
            } else {
                let refusal = Refusal::Locked(Lock::clone(lock));
                return self.refuse(key, refusal, observe, now);
            }
        }
        if source == Source::Exempt || rates.is_empty() {
            // Exempt or unlimited: not counted, and no rotation signal either
            // (mailing lists use a new envelope sender per recipient).
            return Decision::Accept(Reservation {
                key: key.clone(),
                counted: false,
            });
        }
        if let (Some(rate), Some(from)) = (rotation, mail_from)
            && let Some(distinct) = Self::note_sender(state, rate, from, now)
        {
            self.lock_key(key, LockReason::Rotation(distinct), now);
            let lock = self.keys[key].lock.as_deref().cloned();
            if let Some(lock) = lock {
                return self.refuse(key, Refusal::Locked(lock), observe, now);
            }
        }
        let state = self.keys.get_mut(key).expect("entry created above");
        match state.window.check(rates, now) {
            Ok(()) => {
                state.window.reserve();
                Decision::Accept(Reservation {
                    key: key.clone(),
                    counted: true,
                })
            }
            Err(full) => self.refuse(key, Refusal::OverLimit(full), observe, now),
        }
    }

    /// Records `from` among the key's recent senders; returns the number of
    /// distinct senders when that exceeds the rotation rate.
    fn note_sender(state: &mut KeyState, rate: Rate, from: &str, now: Time) -> Option<u32> {
        let w = u32::try_from(rate.window.as_secs()).unwrap_or(Time::MAX);
        state
            .senders
            .retain(|&(_, seen)| seen > now.saturating_sub(w));
        let h = sender_hash(from);
        match state.senders.iter_mut().find(|(hash, _)| *hash == h) {
            Some(entry) => entry.1 = now,
            None => state.senders.push((h, now)),
        }
        let distinct = state.senders.len() as u32;
        (distinct > rate.count).then_some(distinct)
    }

    /// Counts a refusal (and locks the key past the threshold); in observe
    /// mode, accepts without holding anything in the window.
    fn refuse(&mut self, key: &SenderKey, refusal: Refusal, observe: bool, now: Time) -> Decision {
        if matches!(refusal, Refusal::OverLimit(_)) {
            self.note_refusal(key, observe, now);
        } else {
            self.journal.push(Entry::Refused {
                key: key.clone(),
                at: now,
                observed: observe,
            });
        }
        if observe {
            Decision::Observed(
                Reservation {
                    key: key.clone(),
                    counted: false,
                },
                refusal,
            )
        } else {
            Decision::Refuse(refusal)
        }
    }

    /// Journals a recipient over the limit and counts it towards the
    /// automatic lock; returns the lock if this refusal set one. (Fleet mode
    /// decides limits in Redis and reports its refusals here.)
    pub fn note_refusal(&mut self, key: &SenderKey, observe: bool, now: Time) -> Option<Lock> {
        self.journal.push(Entry::Refused {
            key: key.clone(),
            at: now,
            observed: observe,
        });
        if observe {
            return None;
        }
        let window = self.policy.lock_window;
        let threshold = self.policy.lock_after_refusals;
        let state = self.keys.entry(key.clone()).or_default();
        state.last_seen = now;
        if now.saturating_sub(state.refusals.0) >= window {
            state.refusals = (now, 0);
        }
        state.refusals.1 += 1;
        let count = state.refusals.1;
        if threshold.is_some_and(|k| count > k) {
            self.lock_key(key, LockReason::Refusals(count), now);
            return self.keys.get(key).and_then(|s| s.lock.as_deref().cloned());
        }
        None
    }

    /// Journals a recipient sent without a window here (fleet mode, exempt
    /// senders): it still counts in the hourly totals.
    pub fn note_sent(&mut self, key: &SenderKey, now: Time) {
        self.journal.push(Entry::Sent {
            key: key.clone(),
            at: now,
            windowed: false,
        });
    }

    /// Locks `key` for the configured lock time (observe mode only logs).
    fn lock_key(&mut self, key: &SenderKey, reason: LockReason, now: Time) {
        if self.policy.action == LimitAction::Observe {
            tracing::warn!(sender = %key, %reason, "would lock sender (observe mode)");
            return;
        }
        let until = self.policy.lock_duration.map(|d| now.saturating_add(d));
        tracing::warn!(sender = %key, %reason, ?until, "sender locked");
        self.set_lock(key, Lock { until, reason }, now);
    }

    /// Locks `key` (operator or automatic).
    pub fn set_lock(&mut self, key: &SenderKey, lock: Lock, now: Time) {
        self.journal.push(Entry::Locked {
            key: key.clone(),
            at: now,
            until: lock.until,
            reason: lock.reason.clone(),
        });
        let state = self.keys.entry(key.clone()).or_default();
        state.last_seen = now;
        state.lock = Some(Box::new(lock));
    }

    /// Unlocks `key`; false if it was not locked.
    pub fn unlock(&mut self, key: &SenderKey, now: Time) -> bool {
        let Some(state) = self.keys.get_mut(key) else {
            return false;
        };
        state.refusals = (now, 0);
        state.senders.clear();
        if state.lock.take().is_none() {
            return false;
        }
        self.journal.push(Entry::Unlocked {
            key: key.clone(),
            at: now,
        });
        true
    }

    /// Forgets `key`'s counts, refusals and senders (reservations in flight
    /// stay: their transactions still end). Journaled whether or not the key
    /// is resident, in order with its sends: the store forgets the sends
    /// written before it and keeps those after.
    pub fn reset(&mut self, key: &SenderKey, now: Time) {
        self.journal.push(Entry::Reset {
            key: key.clone(),
            at: now,
        });
        if let Some(state) = self.keys.get_mut(key) {
            let pending = state.window.pending();
            state.window = Window::default();
            for _ in 0..pending {
                state.window.reserve();
            }
            state.refusals = (now, 0);
            state.senders.clear();
        }
    }

    /// The recipient was sent (the upstream accepted the message).
    pub fn commit(&mut self, r: Reservation, now: Time) {
        self.journal.push(Entry::Sent {
            key: r.key.clone(),
            at: now,
            windowed: r.counted,
        });
        if r.counted {
            let keep = self.policy.keep;
            if let Some(state) = self.keys.get_mut(&r.key) {
                state.window.commit(now, keep);
                state.last_seen = now;
            }
        }
    }

    /// The recipient was not sent.
    pub fn release(&mut self, r: Reservation) {
        if r.counted
            && let Some(state) = self.keys.get_mut(&r.key)
        {
            state.window.release();
        }
    }

    /// Restores send times and locks from the store at start-up.
    pub fn restore_sent(&mut self, key: SenderKey, times: &[Time]) {
        let keep = self.policy.keep;
        let state = self.keys.entry(key).or_default();
        for &t in times {
            state.window.record(t, keep);
            state.last_seen = state.last_seen.max(t);
        }
    }

    pub fn restore_lock(&mut self, key: SenderKey, lock: Lock, now: Time) {
        let state = self.keys.entry(key).or_default();
        state.lock = Some(Box::new(lock));
        state.last_seen = now;
    }

    /// Forgets keys with nothing in any window, nothing pending and no lock;
    /// returns how many.
    pub fn evict_idle(&mut self, now: Time) -> usize {
        let longest = self.policy.longest;
        let before = self.keys.len();
        self.keys.retain(|_, s| {
            let empty = s.window.prune(longest, now);
            let locked = s
                .lock
                .as_ref()
                .is_some_and(|l| l.until.is_none_or(|u| u > now));
            !(empty && !locked && now.saturating_sub(s.last_seen) >= longest)
        });
        before - self.keys.len()
    }

    /// The changes since the last call, for the store (see [`Entry::into_event`]).
    pub fn drain_journal(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.journal)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A key's counts, limit and lock, for operators.
    /// `key`'s lock, if it is still in force at `now`.
    pub fn lock_in_force(&self, key: &SenderKey, now: Time) -> Option<Lock> {
        let lock = self.keys.get(key)?.lock.as_deref()?;
        lock.until.is_none_or(|u| u > now).then(|| lock.clone())
    }

    pub fn status(&self, key: &SenderKey, client: Option<IpAddr>, now: Time) -> Status {
        let (rates, source) = self.policy.limit(key, client);
        let state = self.keys.get(key).cloned().unwrap_or_default();
        let counts = rates
            .iter()
            .map(|r| {
                let w = u32::try_from(r.window.as_secs()).unwrap_or(Time::MAX);
                (*r, state.window.count(w, now))
            })
            .collect();
        Status {
            rates: counts,
            pending: state.window.pending(),
            source,
            lock: state.lock.as_deref().cloned(),
            next_free: state
                .window
                .check(rates, now)
                .err()
                .and_then(|f| f.next_free),
        }
    }

    /// Approximate heap bytes per key (map entry, key text, window, senders).
    pub fn bytes_per_key(&self) -> usize {
        if self.keys.is_empty() {
            return 0;
        }
        let entry = std::mem::size_of::<(SenderKey, KeyState)>() + 1; // + hashbrown control byte
        let heap: usize = self
            .keys
            .iter()
            .map(|(k, s)| {
                k.name().len()
                    + 16 // Arc counts
                    + s.window.heap_bytes()
                    + s.senders.capacity() * std::mem::size_of::<(u32, Time)>()
            })
            .sum();
        let slots = self.keys.capacity() * entry;
        (slots + heap) / self.keys.len()
    }
}

/// A sender close to (or at) its limit, or locked: for per-sender metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct HotSender {
    pub key: SenderKey,
    /// (recipients in the window + pending) / limit, for the tightest rate.
    pub usage: f64,
    /// Recipients in that window (pending included).
    pub recipients: usize,
    pub locked: bool,
}

impl Engine {
    /// Keys at `threshold` of a limit or more, or locked; and how many are locked.
    pub fn survey(&self, threshold: f64, now: Time, hot: &mut Vec<HotSender>) -> usize {
        let mut locked = 0;
        for (key, state) in &self.keys {
            let is_locked = state
                .lock
                .as_ref()
                .is_some_and(|l| l.until.is_none_or(|u| u > now));
            locked += usize::from(is_locked);
            let (rates, _) = self.policy.limit(key, None);
            let mut best = (0.0f64, 0usize);
            for r in rates {
                let w = u32::try_from(r.window.as_secs()).unwrap_or(Time::MAX);
                let used = state.window.count(w, now) + state.window.pending() as usize;
                let usage = used as f64 / f64::from(r.count.max(1));
                if usage > best.0 {
                    best = (usage, used);
                }
            }
            if is_locked || best.0 >= threshold {
                hot.push(HotSender {
                    key: key.clone(),
                    usage: best.0,
                    recipients: best.1,
                    locked: is_locked,
                });
            }
        }
        locked
    }
}
