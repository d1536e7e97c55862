//! Keeping the limits across restarts: restore from the embedded database at
//! start-up, then a background thread that writes the engine's journal every
//! [`FLUSH_INTERVAL`] (the most a crash, even `kill -9`, can lose), evicts
//! idle keys, and prunes old rows.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::limits::store::{Store, StoreError};
use crate::limits::{Limiter, Time};

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

/// Opens the database under `dir`, restores the limiter from it, and starts
/// the flush thread.
pub fn start(limiter: Arc<Limiter>, dir: &Path) -> Result<StateKeeper, StateError> {
    let mut store = Store::open(dir)?;
    let now = limiter.now();
    let snapshot = store.load(now.saturating_sub(limiter.policy().longest), now)?;
    let keys = snapshot.sent.len();
    limiter.restore(&snapshot);
    limiter.restore_overrides(store.overrides()?);
    tracing::info!(path = %store.path().display(), keys, locks = snapshot.locks.len(), "limits restored");
    let (stop, stopped) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mailbrake-state".into())
        .spawn(move || {
            let mut tick: u32 = 0;
            loop {
                let last = !matches!(
                    stopped.recv_timeout(FLUSH_INTERVAL),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                let events = limiter.drain_journal();
                if !events.is_empty()
                    && let Err(e) = store.apply(&events)
                {
                    tracing::error!(
                        events = events.len(),
                        "cannot write the limits database: {e}"
                    );
                    metrics::counter!(crate::metrics::STATE_WRITE_ERRORS).increment(1);
                }
                if last {
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
/// with an audit entry each.
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
        if let Err(e) = store.remove_override(&s.key, &audit) {
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
