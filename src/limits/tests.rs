//! The limit engine's rules, with a fake clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::ledger::{Held, Ledger};
use super::*;
use crate::config::{Limit, LimitAction, LimitsConfig, Override, Rate};

/// A clock the test moves.
#[derive(Debug, Default)]
struct FakeClock(Arc<AtomicU32>);

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

pub(super) fn rate(count: u32, secs: u64) -> Rate {
    Rate {
        count,
        window: Duration::from_secs(secs),
    }
}

/// A limiter on a fake clock at `start`, and the handle that moves it.
pub(super) fn limiter(cfg: LimitsConfig) -> (Arc<Limiter>, Arc<AtomicU32>) {
    let time = Arc::new(AtomicU32::new(1_000_000));
    let clock = FakeClock(time.clone());
    (
        Arc::new(Limiter::new(Policy::new(&cfg), Box::new(clock))),
        time,
    )
}

fn key(text: &str) -> SenderKey {
    SenderKey::parse(text).unwrap()
}

/// Sends `n` recipients for `k` now (reserve + commit); returns how many were accepted.
fn send(l: &Limiter, k: &SenderKey, n: u32) -> u32 {
    let mut accepted = 0;
    for _ in 0..n {
        if let Decision::Accept(r) = l.check(k, None, None) {
            l.commit(r);
            accepted += 1;
        }
    }
    accepted
}

fn twelve() -> LimitsConfig {
    LimitsConfig {
        default: Limit::Rates(vec![rate(12, 3600)]),
        lock_after_refusals: None,
        rotation: None,
        ..LimitsConfig::default()
    }
}

#[test]
fn first_n_accepted_then_refused_until_the_window_moves() {
    let (l, time) = limiter(twelve());
    let alice = key("auth:alice@example.com");
    assert_eq!(send(&l, &alice, 15), 12);
    match l.check(&alice, None, None) {
        Decision::Refuse(Refusal::OverLimit(full)) => {
            assert_eq!(full.rate, rate(12, 3600));
            assert_eq!(full.next_free, Some(1_000_000 + 3600));
        }
        other => panic!("{other:?}"),
    }
    // Another sender is unaffected.
    assert_eq!(send(&l, &key("auth:bob@example.com"), 12), 12);
    time.store(1_000_000 + 3599, Ordering::SeqCst);
    assert_eq!(send(&l, &alice, 1), 0);
    time.store(1_000_000 + 3600, Ordering::SeqCst);
    assert_eq!(
        send(&l, &alice, 15),
        12,
        "the whole batch left the window at once"
    );
}

#[test]
fn reservations_count_and_releases_give_back() {
    let (l, _) = limiter(twelve());
    let k = key("vhost:shop-42");
    let held: Vec<Reservation> = (0..12)
        .map(|_| match l.check(&k, None, None) {
            Decision::Accept(r) => r,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        matches!(l.check(&k, None, None), Decision::Refuse(_)),
        "pending reservations count"
    );
    for r in held {
        l.release(r);
    }
    assert_eq!(send(&l, &k, 12), 12, "released reservations are free again");
}

#[test]
fn ledger_commits_delivered_and_releases_the_rest() {
    let (l, _) = limiter(twelve());
    let k = key("ip:192.0.2.7");
    let reserve = || match l.check(&k, None, None) {
        Decision::Accept(r) => r,
        other => panic!("{other:?}"),
    };
    let mut ledger = Ledger::new(l.clone());
    for _ in 0..3 {
        ledger.forwarded(Held::Local(reserve()));
    }
    ledger.rcpt_reply(true);
    ledger.rcpt_reply(false); // the upstream refused this one: released
    ledger.rcpt_reply(true);
    ledger.end_sent();
    ledger.end_reply(true);
    assert_eq!(l.status(&k, None).rates[0].1, 2, "two sent");
    // An abandoned transaction (RSET) and a disconnect release.
    ledger.forwarded(Held::Local(reserve()));
    ledger.rcpt_reply(true);
    ledger.reset();
    ledger.forwarded(Held::Local(reserve()));
    drop(ledger);
    let status = l.status(&k, None);
    assert_eq!((status.rates[0].1, status.pending), (2, 0));
}

#[test]
fn fifty_parallel_sessions_never_exceed_the_limit_together() {
    let (l, _) = limiter(twelve());
    let k = key("auth:botnet@example.com");
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (l, k) = (l.clone(), k.clone());
            std::thread::spawn(move || {
                let mut ledger = Ledger::new(l.clone());
                let mut got = 0;
                for _ in 0..10 {
                    if let Decision::Accept(r) = l.check(&k, None, None) {
                        ledger.forwarded(Held::Local(r));
                        ledger.rcpt_reply(true);
                        got += 1;
                    }
                }
                ledger.end_sent();
                ledger.end_reply(true);
                got
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 12);
}

#[test]
fn several_windows() {
    let (l, time) = limiter(LimitsConfig {
        default: Limit::Rates(vec![rate(12, 3600), rate(20, 86_400)]),
        ..twelve()
    });
    let k = key("auth:a@x");
    assert_eq!(send(&l, &k, 15), 12);
    time.fetch_add(3600, Ordering::SeqCst);
    assert_eq!(
        send(&l, &k, 15),
        8,
        "the day's 20 are reached before the hour's 12"
    );
    match l.check(&k, None, None) {
        Decision::Refuse(Refusal::OverLimit(full)) => assert_eq!(full.rate, rate(20, 86_400)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn overrides_and_exemptions() {
    let (l, _) = limiter(LimitsConfig {
        overrides: vec![
            Override {
                key: "auth:shop@example.com".into(),
                limit: Limit::Rates(vec![rate(500, 3600)]),
            },
            Override {
                key: "auth:lists@example.net".into(),
                limit: Limit::Unlimited,
            },
        ],
        exempt_users: vec!["news@example.net".into()],
        exempt_networks: vec!["192.0.2.0/24".parse().unwrap()],
        rotation: Some(rate(3, 3600)),
        ..twelve()
    });
    assert_eq!(send(&l, &key("auth:shop@example.com"), 600), 500);
    assert_eq!(send(&l, &key("auth:lists@example.net"), 1000), 1000);
    // An unlimited list with a new envelope sender per message (VERP) is not
    // taken for sender rotation.
    let list = key("auth:lists@example.net");
    for i in 0..100 {
        let from = format!("bounce-{i}@example.net");
        assert!(matches!(
            l.check(&list, None, Some(&from)),
            Decision::Accept(_)
        ));
    }
    assert_eq!(send(&l, &key("auth:news@example.net"), 1000), 1000);
    let inside = key("auth:someone@example.com");
    let mut n = 0;
    for _ in 0..100 {
        if let Decision::Accept(r) = l.check(&inside, Some("192.0.2.9".parse().unwrap()), None) {
            l.commit(r);
            n += 1;
        }
    }
    assert_eq!(n, 100, "exempt network");
}

#[test]
fn observe_mode_accepts_and_reports() {
    let (l, _) = limiter(LimitsConfig {
        action: LimitAction::Observe,
        lock_after_refusals: Some(1),
        ..twelve()
    });
    let k = key("auth:a@x");
    let mut observed = 0;
    for _ in 0..20 {
        match l.check(&k, None, None) {
            Decision::Accept(r) => l.commit(r),
            Decision::Observed(r, Refusal::OverLimit(_)) => {
                observed += 1;
                l.commit(r);
            }
            other => panic!("observe mode refused: {other:?}"),
        }
    }
    assert_eq!(observed, 8);
    assert!(
        l.status(&k, None).lock.is_none(),
        "observe mode never locks"
    );
    let journal = l.drain_journal();
    let sent = journal
        .iter()
        .filter(|e| matches!(e, Event::Sent { .. }))
        .count();
    let would = journal
        .iter()
        .filter(|e| matches!(e, Event::Refused { observed: true, .. }))
        .count();
    assert_eq!((sent, would), (20, 8));
}

#[test]
fn too_many_refusals_lock_until_unlocked_or_expired() {
    let (l, time) = limiter(LimitsConfig {
        lock_after_refusals: Some(5),
        lock_duration: Some(Duration::from_secs(7200)),
        ..twelve()
    });
    let k = key("vhost:hacked");
    assert_eq!(send(&l, &k, 12 + 6), 12);
    match l.check(&k, None, None) {
        Decision::Refuse(Refusal::Locked(lock)) => {
            assert_eq!(lock.reason, LockReason::Refusals(6));
            assert_eq!(lock.until, Some(1_000_000 + 7200));
        }
        other => panic!("{other:?}"),
    }
    // Even after the window moved, the lock holds...
    time.fetch_add(3600, Ordering::SeqCst);
    assert!(matches!(
        l.check(&k, None, None),
        Decision::Refuse(Refusal::Locked(_))
    ));
    // ...until an operator unlocks...
    assert!(l.unlock(&k));
    assert_eq!(send(&l, &k, 1), 1);
    // ...or it expires.
    l.lock(
        &k,
        Lock {
            until: Some(l.now() + 10),
            reason: LockReason::Operator("test".into()),
        },
    );
    assert_eq!(send(&l, &k, 1), 0);
    time.fetch_add(10, Ordering::SeqCst);
    assert_eq!(send(&l, &k, 1), 1);
}

#[test]
fn sender_rotation_locks() {
    let (l, _) = limiter(LimitsConfig {
        rotation: Some(rate(3, 3600)),
        default: Limit::Rates(vec![rate(100, 3600)]),
        lock_after_refusals: None,
        ..LimitsConfig::default()
    });
    let k = key("vhost:shop");
    for (i, from) in ["a@x", "b@x", "A@x", "c@x"].iter().enumerate() {
        match l.check(&k, None, Some(from)) {
            Decision::Accept(r) => l.commit(r),
            other => panic!("sender {i}: {other:?}"),
        }
    }
    match l.check(&k, None, Some("d@x")) {
        Decision::Refuse(Refusal::Locked(lock)) => assert_eq!(lock.reason, LockReason::Rotation(4)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn idle_keys_are_evicted_and_cost_little() {
    let (l, time) = limiter(twelve());
    for i in 0..1000 {
        send(&l, &key(&format!("auth:user{i}@example.com")), 3);
    }
    assert_eq!(l.len(), 1000);
    let bytes = l.shards[0].lock().unwrap().bytes_per_key();
    assert!(bytes > 0 && bytes < 400, "{bytes} bytes per key");
    time.fetch_add(3599, Ordering::SeqCst);
    assert_eq!(l.evict_idle(), 0, "still in the window");
    time.fetch_add(1, Ordering::SeqCst);
    assert_eq!(l.evict_idle(), 1000);
    assert!(l.is_empty());
}

#[test]
fn restore_keeps_counts_across_a_restart() {
    let (l, _) = limiter(twelve());
    let k = key("auth:alice@example.com");
    assert_eq!(send(&l, &k, 10), 10);
    let snapshot = journal::Snapshot {
        sent: vec![(k.to_string(), vec![l.now(); 10])],
        locks: vec![],
    };
    let (fresh, _) = limiter(twelve());
    fresh.restore(&snapshot);
    assert_eq!(send(&fresh, &k, 5), 2);
}

/// A journal through a real database and back into a fresh limiter, as a
/// restart would.
fn restarted(journal: &[Event], cfg: LimitsConfig) -> Arc<Limiter> {
    let dir = tempfile::tempdir().unwrap();
    let mut db = store::Store::open(dir.path()).unwrap();
    db.apply(journal).unwrap();
    let (fresh, _) = limiter(cfg);
    fresh.restore(&db.load(0, fresh.now()).unwrap());
    fresh
}

fn counted(l: &Limiter, k: &SenderKey) -> usize {
    l.status(k, None).rates[0].1
}

#[test]
fn a_reset_is_journaled_in_order_with_the_sends_around_it() {
    let (l, _) = limiter(twelve());
    let (alice, bob) = (key("auth:alice"), key("auth:bob"));
    assert_eq!(send(&l, &alice, 5), 5);
    let Decision::Accept(in_flight) = l.check(&alice, None, None) else {
        panic!("refused")
    };
    l.reset(&alice);
    // Reserved before the reset, sent after it: it counts.
    l.commit(in_flight);
    assert_eq!(send(&l, &alice, 2), 2);
    // A key that is not resident is reset on disk all the same.
    l.reset(&bob);
    assert_eq!(counted(&l, &alice), 3);

    let journal = l.drain_journal();
    let kinds: Vec<&str> = journal
        .iter()
        .filter(|e| matches!(e, Event::Sent { key, .. } | Event::Reset { key, .. } if key == "auth:alice"))
        .map(|e| match e {
            Event::Sent { .. } => "sent",
            _ => "reset",
        })
        .collect();
    assert_eq!(
        kinds,
        ["sent"; 5]
            .into_iter()
            .chain(["reset"])
            .chain(["sent"; 3])
            .collect::<Vec<_>>()
    );
    assert!(journal.contains(&Event::Reset {
        key: "auth:bob".into(),
        at: l.now()
    }));
    let fresh = restarted(&journal, twelve());
    assert_eq!(counted(&fresh, &alice), 3, "as before the restart");
    assert_eq!(send(&fresh, &alice, 12), 9);
}

#[test]
fn sends_outside_the_window_are_not_restored_into_it() {
    let (l, _) = limiter(twelve());
    let alice = key("auth:alice");
    let exempt = store::StoredOverride {
        key: alice.to_string(),
        exempt: true,
        limit: "unlimited".into(),
        until: None,
        reason: "list".into(),
        who: "ops".into(),
        at: l.now(),
    };
    let (k, o) = operate::RuntimeOverride::from_stored(exempt).unwrap();
    l.set_override(k, o);
    assert_eq!(send(&l, &alice, 20), 20);
    l.remove_override(&alice);
    assert_eq!(counted(&l, &alice), 0, "sent while exempt: not counted");
    assert_eq!(send(&l, &alice, 2), 2);
    let journal = l.drain_journal();
    let windowed = |w: bool| {
        journal
            .iter()
            .filter(|e| matches!(e, Event::Sent { windowed, .. } if *windowed == w))
            .count()
    };
    assert_eq!((windowed(false), windowed(true)), (20, 2));
    let fresh = restarted(&journal, twelve());
    assert_eq!(counted(&fresh, &alice), 2, "as before the restart");
    assert_eq!(send(&fresh, &alice, 12), 10);
}
