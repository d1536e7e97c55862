//! Flushing against a database that refuses writes on demand. (The real
//! full disk, end to end, is in `tests/full_disk.rs`.)

use std::path::PathBuf;

use super::*;
use crate::config::{Limit, LimitsConfig, Rate};
use crate::limits::{Clock, Decision, Lock, LockReason, Policy, SenderKey};

const NOW: Time = 1_000_000;

struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> Time {
        NOW
    }
}

/// Takes whole batches unless `full`; keeps everything it took, in order.
#[derive(Default)]
struct Disk {
    full: bool,
    attempts: usize,
    taken: Vec<Event>,
}

impl Sink for Disk {
    fn apply(&mut self, events: &[Event]) -> Result<(), StoreError> {
        self.attempts += 1;
        if self.full {
            return Err(StoreError::Sqlite {
                path: PathBuf::from("mailbrake.db"),
                action: "write events",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                ),
            });
        }
        self.taken.extend_from_slice(events);
        Ok(())
    }
}

fn limiter() -> Limiter {
    let cfg = LimitsConfig {
        default: Limit::Rates(vec![Rate {
            count: 12,
            window: Duration::from_secs(3600),
        }]),
        lock_after_refusals: None,
        rotation: None,
        ..LimitsConfig::default()
    };
    Limiter::new(Policy::new(&cfg), Box::new(Fixed))
}

fn alice() -> SenderKey {
    SenderKey::parse("auth:alice").unwrap()
}

/// `n` recipients of alice reserved and sent.
fn send(l: &Limiter, n: usize) {
    for _ in 0..n {
        match l.check(&alice(), None, None) {
            Decision::Accept(r) => l.commit(r),
            other => panic!("{other:?}"),
        }
    }
}

fn sent() -> Event {
    Event::Sent {
        key: "auth:alice".into(),
        at: NOW,
        count: 1,
        windowed: true,
    }
}

#[test]
fn failed_writes_keep_their_changes_and_retry_them_in_order() {
    let l = limiter();
    let mut disk = Disk {
        full: true,
        ..Disk::default()
    };
    let mut unsaved = Unsaved::new(NonZeroUsize::new(5).unwrap());

    send(&l, 3);
    match flush(&l, &mut disk, &mut unsaved) {
        Written::Failed { events, streak, .. } => assert_eq!((events, streak), (3, 1)),
        other => panic!("{other:?}"),
    }
    let lock = Lock {
        until: None,
        reason: LockReason::Operator("spam".into()),
    };
    l.lock(&alice(), lock);
    assert!(l.unlock(&alice()));
    match flush(&l, &mut disk, &mut unsaved) {
        Written::Failed { events, streak, .. } => assert_eq!((events, streak), (5, 2)),
        other => panic!("{other:?}"),
    }
    assert!(!l.unsaved(), "5 changes kept is within the bound of 5");

    send(&l, 1);
    assert!(matches!(
        flush(&l, &mut disk, &mut unsaved),
        Written::Failed {
            events: 6,
            streak: 3,
            ..
        }
    ));
    assert!(l.unsaved(), "past the bound, recipients are deferred");
    assert!(disk.taken.is_empty());

    // Space is back: everything kept, then what came since, in one batch.
    disk.full = false;
    send(&l, 1);
    match flush(&l, &mut disk, &mut unsaved) {
        Written::Saved { events, failures } => assert_eq!((events, failures), (7, 3)),
        other => panic!("{other:?}"),
    }
    let want = vec![
        sent(),
        sent(),
        sent(),
        Event::Locked {
            key: "auth:alice".into(),
            at: NOW,
            until: None,
            reason: "locked by an operator: spam".into(),
        },
        Event::Unlocked {
            key: "auth:alice".into(),
            at: NOW,
        },
        sent(),
        sent(),
    ];
    assert_eq!(disk.taken, want);
    assert_eq!(disk.attempts, 4);
    assert!(!l.unsaved(), "saved: recipients accepted again");
    assert!(unsaved.is_empty());

    // Nothing is written twice, and a quiet second writes nothing.
    assert!(matches!(
        flush(&l, &mut disk, &mut unsaved),
        Written::Nothing
    ));
    send(&l, 1);
    assert!(matches!(
        flush(&l, &mut disk, &mut unsaved),
        Written::Saved {
            events: 1,
            failures: 0
        }
    ));
    assert_eq!(disk.taken.len(), 8);
}

/// `stored` as an operator's override of `key`, set at `NOW - 100`.
fn stored(key: &str, limit: &str, until: Option<Time>) -> crate::limits::store::StoredOverride {
    crate::limits::store::StoredOverride {
        key: key.into(),
        exempt: false,
        limit: limit.into(),
        until,
        reason: "campaign".into(),
        who: "ops".into(),
        at: NOW - 100,
    }
}

fn audit(action: &str, key: &str) -> crate::limits::store::AuditEntry {
    crate::limits::store::AuditEntry {
        at: NOW - 100,
        who: "ops".into(),
        action: action.into(),
        key: key.into(),
        old: None,
        new: None,
        reason: "campaign".into(),
    }
}

#[test]
fn start_restores_overrides_before_the_windows_they_widen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        // Under a raise to 20/1d: 5 sends two hours ago, 10 a minute ago.
        let at = |at, count| Event::Sent {
            key: "auth:alice".into(),
            at,
            count,
            windowed: true,
        };
        store.apply(&[at(NOW - 7200, 5), at(NOW - 60, 10)]).unwrap();
        let raise = stored("auth:alice", "20/1d", None);
        store
            .save_override(&raise, &audit("raise", "auth:alice"))
            .unwrap();
        // And one that ran out while mailbrake was stopped.
        let over = stored("auth:bob", "50/1h", Some(NOW - 1));
        store
            .save_override(&over, &audit("raise", "auth:bob"))
            .unwrap();
    }
    let l = Arc::new(limiter());
    let keeper = start(l.clone(), dir.path(), NonZeroUsize::new(100).unwrap()).unwrap();
    // All 15 counted against 20/1d (not the file's 12/1h: 10 read back, 12 kept).
    let mut accepted = 0;
    for _ in 0..10 {
        if let Decision::Accept(r) = l.check(&alice(), None, None) {
            l.commit(r);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
    let bob = SenderKey::parse("auth:bob").unwrap();
    assert_eq!(
        l.override_of(&bob),
        None,
        "expired before the first session"
    );
    keeper.stop();
    let store = Store::open(dir.path()).unwrap();
    let keys: Vec<String> = store
        .overrides()
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["auth:alice"]);
    assert_eq!(store.audit(1).unwrap()[0].action, "expire");
    assert_eq!(store.audit(1).unwrap()[0].key, "auth:bob");
}
