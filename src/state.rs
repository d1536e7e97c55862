//! Keeping the limits across restarts: restore from the embedded database at
//! start-up, then a background thread that writes the engine's journal every
//! [`FLUSH_INTERVAL`] (the most a crash, even `kill -9`, can lose), evicts
//! idle keys, and prunes old rows.
//!
//! A write that fails (a full disk) loses nothing: its changes stay in
//! memory ([`Unsaved`]) and are written with the changes that follow, in
//! order, at every flush until the database takes them. Each failure is
//! counted (`mailbrake_state_write_errors_total`); a warning is logged once
//! per streak of failures, and once more when the database takes them
//! again. Past `[state] max_unsaved_changes`, recipients are deferred (see
//! [`crate::limits::unsaved`]) until then.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::limits::store::{Store, StoreError};
use crate::limits::{Event, Limiter, Time};

/// How often the journal is written: the bound on what a crash loses.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long hourly totals are kept (the report looks 30 days back).
pub const HOURLY_RETENTION: Time = 35 * 86_400;
/// Idle keys are evicted, and old rows pruned, this often.
const EVICT_EVERY: u32 = 60;
const PRUNE_EVERY: u32 = 3600;

/// Why the state could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the state thread: {0}")]
    Thread(std::io::Error),
}

/// The running state thread.
pub struct StateKeeper {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

/// Writes a batch of events in one transaction, all or nothing: the store,
/// or in tests one that fails on demand.
pub trait Sink {
    fn apply(&mut self, events: &[Event]) -> Result<(), StoreError>;
}

impl Sink for Store {
    fn apply(&mut self, events: &[Event]) -> Result<(), StoreError> {
        Store::apply(self, events)
    }
}

/// The engine's changes that the database has not taken yet, oldest first.
#[derive(Debug)]
pub struct Unsaved {
    events: Vec<Event>,
    /// Failed attempts since the last one that succeeded.
    failures: u32,
    /// Past this many changes, recipients are deferred.
    max: usize,
}

/// What one attempt to write did.
#[derive(Debug)]
pub enum Written {
    /// There was nothing to write.
    Nothing,
    /// `events` were written, after `failures` failed attempts (0: the
    /// first attempt).
    Saved { events: usize, failures: u32 },
    /// Nothing was written: `events` are kept; `streak` attempts in a row
    /// have failed.
    Failed {
        events: usize,
        streak: u32,
        error: StoreError,
    },
}

impl Unsaved {
    pub fn new(max: NonZeroUsize) -> Self {
        Unsaved {
            events: Vec::new(),
            failures: 0,
            max: max.get(),
        }
    }

    /// Writes what is kept followed by `new`, in one transaction; keeps all
    /// of it if that fails.
    pub fn write(&mut self, sink: &mut impl Sink, new: Vec<Event>) -> Written {
        if self.events.is_empty() {
            self.events = new;
        } else {
            self.events.extend(new);
        }
        if self.events.is_empty() {
            return Written::Nothing;
        }
        match sink.apply(&self.events) {
            Ok(()) => {
                let events = self.events.len();
                self.events = Vec::new();
                Written::Saved {
                    events,
                    failures: std::mem::take(&mut self.failures),
                }
            }
            Err(error) => {
                self.failures += 1;
                Written::Failed {
                    events: self.events.len(),
                    streak: self.failures,
                    error,
                }
            }
        }
    }

    /// Changes kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// More changes kept than allowed: mail is deferred.
    pub fn over_bound(&self) -> bool {
        self.events.len() > self.max
    }
}

/// Writes the limiter's journal (and what earlier attempts kept), logs and
/// counts the outcome, and defers recipients while too much is unsaved.
pub fn flush(limiter: &Limiter, sink: &mut impl Sink, unsaved: &mut Unsaved) -> Written {
    let written = unsaved.write(sink, limiter.drain_journal());
    match &written {
        Written::Nothing | Written::Saved { failures: 0, .. } => {}
        Written::Saved { events, failures } => tracing::info!(
            events,
            failed_attempts = failures,
            "limits database written again: every change kept is saved"
        ),
        Written::Failed {
            events,
            streak,
            error,
        } => {
            metrics::counter!(crate::metrics::STATE_WRITE_ERRORS).increment(1);
            if *streak == 1 {
                tracing::warn!(
                    events,
                    "cannot write the limits database, keeping the changes in memory and retrying every second: {error}"
                );
            } else {
                tracing::debug!(
                    events,
                    streak,
                    "limits database still not writable: {error}"
                );
            }
        }
    }
    let over = unsaved.over_bound();
    if limiter.set_unsaved(over) != over {
        if over {
            tracing::error!(
                unsaved = unsaved.len(),
                max_unsaved_changes = unsaved.max,
                "too many changes unsaved: deferring every recipient until the limits database takes them"
            );
        } else {
            tracing::info!("limits saved: recipients accepted again");
        }
    }
    written
}

/// Opens the database under `dir`, restores the limiter from it, and starts
/// the flush thread, which keeps at most `max_unsaved` changes before mail
/// is deferred.
pub fn start(
    limiter: Arc<Limiter>,
    dir: &Path,
    max_unsaved: NonZeroUsize,
) -> Result<StateKeeper, StateError> {
    let mut store = Store::open(dir)?;
    // Overrides first: a raised limit's windows and counts decide how far
    // back sends are read and how many of them each key keeps. One that ran
    // out while mailbrake was stopped goes now, before any session.
    limiter.restore_overrides(store.overrides()?);
    expire_overrides(&limiter, &mut store);
    let now = limiter.now();
    let snapshot = store.load(now.saturating_sub(limiter.policy().longest), now)?;
    let keys = snapshot.sent.len();
    limiter.restore(&snapshot);
    tracing::info!(path = %store.path().display(), keys, locks = snapshot.locks.len(), "limits restored");
    let (stop, stopped) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mailbrake-state".into())
        .spawn(move || {
            let mut tick: u32 = 0;
            let mut unsaved = Unsaved::new(max_unsaved);
            loop {
                let last = !matches!(
                    stopped.recv_timeout(FLUSH_INTERVAL),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                let written = flush(&limiter, &mut store, &mut unsaved);
                if last {
                    if let Written::Failed { events, .. } = written {
                        tracing::error!(
                            events,
                            "stopping with changes the limits database did not take: they are lost"
                        );
                    }
                    break;
                }
                expire_overrides(&limiter, &mut store);
                tick = tick.wrapping_add(1);
                if tick.is_multiple_of(EVICT_EVERY) {
                    let evicted = limiter.evict_idle();
                    tracing::debug!(evicted, resident = limiter.len(), "idle senders evicted");
                }
                if tick.is_multiple_of(PRUNE_EVERY) {
                    let now = limiter.now();
                    let longest = limiter.policy().longest;
                    if let Err(e) = store.prune(
                        now.saturating_sub(longest),
                        now.saturating_sub(HOURLY_RETENTION),
                    ) {
                        tracing::error!("cannot prune the limits database: {e}");
                    }
                }
            }
        })
        .map_err(StateError::Thread)?;
    Ok(StateKeeper {
        stop,
        thread: Some(thread),
    })
}

/// Drops the operators' overrides whose time is up, in memory and on disk,
/// with an audit entry each. On disk only an expired one goes: an operator
/// may have set another for the key since it was taken from memory.
fn expire_overrides(limiter: &Limiter, store: &mut Store) {
    let now = limiter.now();
    for o in limiter.expire_overrides(now) {
        let s = &o.stored;
        tracing::info!(sender = %s.key, limit = %s.limit, reason = %s.reason, "override expired");
        let audit = crate::limits::store::AuditEntry {
            at: now,
            who: "mailbrake".into(),
            action: "expire".into(),
            key: s.key.clone(),
            old: Some(if s.exempt {
                "exempt".into()
            } else {
                s.limit.clone()
            }),
            new: None,
            reason: format!("expired (set by {}: {})", s.who, s.reason),
        };
        if let Err(e) = store.expire_override(&s.key, now, &audit) {
            tracing::error!("cannot record an expired override: {e}");
        }
    }
}

impl StateKeeper {
    /// Writes what is left and stops.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StateKeeper {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
