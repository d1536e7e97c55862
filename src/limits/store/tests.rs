use super::*;

// === helpers ===

fn sent(key: &str, at: Time, count: u32) -> Event {
    Event::Sent {
        key: key.into(),
        at,
        count,
        windowed: true,
    }
}

/// Sent without a window: an exempt or unlimited key, fleet mode.
fn totalled(key: &str, at: Time, count: u32) -> Event {
    Event::Sent {
        key: key.into(),
        at,
        count,
        windowed: false,
    }
}

fn reset(key: &str, at: Time) -> Event {
    Event::Reset {
        key: key.into(),
        at,
    }
}

fn refused(key: &str, at: Time) -> Event {
    Event::Refused {
        key: key.into(),
        at,
        observed: false,
    }
}

fn observed(key: &str, at: Time) -> Event {
    Event::Refused {
        key: key.into(),
        at,
        observed: true,
    }
}

fn locked(key: &str, at: Time, until: Option<Time>, reason: &str) -> Event {
    Event::Locked {
        key: key.into(),
        at,
        until,
        reason: reason.into(),
    }
}

fn unlocked(key: &str, at: Time) -> Event {
    Event::Unlocked {
        key: key.into(),
        at,
    }
}

fn total(key: &str, hour: Time, sent: u64, refused: u64, observed: u64) -> HourlyTotal {
    HourlyTotal {
        key: key.into(),
        hour,
        sent,
        refused,
        observed,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn times(snapshot: &Snapshot) -> Vec<(&str, Vec<Time>)> {
    snapshot
        .sent
        .iter()
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect()
}

// === open ===

#[test]
fn open_creates_directory_wal_and_schema() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state/nested");
    let store = Store::open(&dir).unwrap();
    assert!(dir.join(FILE_NAME).is_file());
    assert_eq!(store.path(), dir.join(FILE_NAME));

    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // NORMAL is 1.
    let sync: i64 = store
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1);
    let version: u32 = store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn open_on_a_file_names_the_path() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = Store::open(&file).err().expect("a file is not a state dir");
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
}

#[test]
fn open_refuses_a_newer_schema() {
    let (dir, store) = open();
    store
        .conn
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(store);
    let err = Store::open(dir.path()).err().expect("newer schema");
    assert!(matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
    assert!(err.to_string().contains(FILE_NAME), "{err}");
}

#[test]
fn open_on_garbage_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![b'x'; 4096]).unwrap();
    let err = Store::open(dir.path()).err().expect("not a database");
    assert!(err.to_string().contains(FILE_NAME), "{err}");
}

// === apply and load ===

#[test]
fn apply_then_load_round_trips() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            sent("auth:bob", 1_000, 1),
            sent("auth:alice", 1_010, 2),
            sent("auth:alice", 1_005, 1),
            locked("ip:192.0.2.7", 1_020, None, "burst"),
            locked("auth:bob", 1_030, Some(5_000), "hourly limit"),
            refused("auth:bob", 1_040),
        ])
        .unwrap();

    let snap = store.load(0, 1_050).unwrap();
    assert_eq!(
        times(&snap),
        [
            // Oldest first per key, count 2 gives two times.
            ("auth:alice", vec![1_005, 1_010, 1_010]),
            ("auth:bob", vec![1_000]),
        ]
    );
    assert_eq!(
        snap.locks,
        [
            ("auth:bob".into(), Some(5_000), "hourly limit".into()),
            ("ip:192.0.2.7".into(), None, "burst".into()),
        ]
    );
}

#[test]
fn empty_store_loads_empty() {
    let (_dir, mut store) = open();
    store.apply(&[]).unwrap();
    assert_eq!(store.load(0, 0).unwrap(), Snapshot::default());
    assert!(store.hourly(0).unwrap().is_empty());
}

#[test]
fn load_filters_by_since() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            sent("a", 100, 1),
            sent("a", 200, 1),
            sent("a", 300, 1),
            sent("b", 199, 1),
        ])
        .unwrap();
    for (since, expected) in [
        (0, vec![("a", vec![100, 200, 300]), ("b", vec![199])]),
        (200, vec![("a", vec![200, 300])]),
        (301, vec![]),
    ] {
        assert_eq!(
            times(&store.load(since, 0).unwrap()),
            expected,
            "since {since}"
        );
    }
}

#[test]
fn load_drops_expired_locks() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            locked("expired", 10, Some(100), "r"),
            locked("ends-now", 10, Some(200), "r"),
            locked("later", 10, Some(201), "r"),
            locked("forever", 10, None, "r"),
        ])
        .unwrap();
    let keys: Vec<String> = store
        .load(0, 200)
        .unwrap()
        .locks
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, ["forever", "later"]);
}

#[test]
fn relock_replaces_and_unlock_removes() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            locked("a", 10, Some(100), "first"),
            locked("b", 10, None, "b"),
        ])
        .unwrap();
    store
        .apply(&[locked("a", 20, None, "second"), unlocked("b", 30)])
        .unwrap();
    assert_eq!(
        store.load(0, 50).unwrap().locks,
        [("a".into(), None, "second".into())]
    );
    // Lock and unlock in the same batch: order is kept.
    store
        .apply(&[
            unlocked("a", 40),
            locked("c", 41, None, "c"),
            unlocked("c", 42),
        ])
        .unwrap();
    assert!(store.load(0, 50).unwrap().locks.is_empty());
    // Unlocking a key that is not locked is not an error.
    store.apply(&[unlocked("nobody", 43)]).unwrap();
}

// === operators' resets ===

#[test]
fn a_reset_forgets_the_sends_before_it_and_keeps_those_after() {
    let (_dir, mut store) = open();
    // Written by an earlier batch, as when the reset comes later.
    store
        .apply(&[sent("a", 100, 3), sent("b", 100, 2)])
        .unwrap();
    // One batch, in the engine's order: a send, the reset, a send in the
    // same second (the second one counts, the first does not).
    store
        .apply(&[sent("a", 101, 1), reset("a", 101), sent("a", 101, 1)])
        .unwrap();
    assert_eq!(
        times(&store.load(0, 0).unwrap()),
        [("a", vec![101]), ("b", vec![100, 100])],
        "b is not a's reset"
    );
    // Kept across reopening, and a reset of a key with nothing is no error.
    store
        .apply(&[reset("b", 102), reset("nobody", 102)])
        .unwrap();
    drop(store);
    let store = Store::open(_dir.path()).unwrap();
    assert_eq!(times(&store.load(0, 0).unwrap()), [("a", vec![101])]);
    // The report still sees what was sent.
    assert_eq!(
        store.hourly(0).unwrap(),
        [total("a", 0, 5, 0, 0), total("b", 0, 2, 0, 0)]
    );
}

#[test]
fn sends_outside_any_window_count_in_the_totals_only() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            totalled("a", 100, 4),
            sent("a", 200, 1),
            totalled("b", 100, 1),
        ])
        .unwrap();
    assert_eq!(times(&store.load(0, 0).unwrap()), [("a", vec![200])]);
    assert_eq!(
        store.hourly(0).unwrap(),
        [total("a", 0, 5, 0, 0), total("b", 0, 1, 0, 0)]
    );
}

// === hourly ===

#[test]
fn hourly_adds_up_across_batches_and_separates_observed() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            sent("a", 3_600, 2),
            sent("a", 7_199, 3),
            refused("a", 3_700),
            observed("a", 3_800),
            sent("a", 7_200, 1),
        ])
        .unwrap();
    store
        .apply(&[
            sent("a", 4_000, 5),
            refused("a", 4_000),
            refused("a", 4_001),
            observed("a", 7_300),
            observed("b", 0),
        ])
        .unwrap();
    assert_eq!(
        store.hourly(0).unwrap(),
        [
            total("a", 3_600, 10, 3, 1),
            total("a", 7_200, 1, 0, 1),
            total("b", 0, 0, 0, 1),
        ]
    );
    assert_eq!(store.hourly(3_601).unwrap(), [total("a", 7_200, 1, 0, 1)]);
}

// === prune ===

#[test]
fn prune_deletes_only_old_rows() {
    let (_dir, mut store) = open();
    store
        .apply(&[
            sent("a", 3_599, 1),
            sent("a", 3_600, 1),
            sent("a", 7_200, 1),
            refused("b", 0),
            locked("c", 0, None, "kept"),
        ])
        .unwrap();
    // hourly rows: a@0, a@3600, a@7200, b@0.
    // Deletes sent at 3_599 and hourly rows a@0, b@0.
    assert_eq!(store.prune(3_600, 3_600).unwrap(), 3);
    assert_eq!(
        times(&store.load(0, 0).unwrap()),
        [("a", vec![3_600, 7_200])]
    );
    assert_eq!(
        store.hourly(0).unwrap(),
        [total("a", 3_600, 1, 0, 0), total("a", 7_200, 1, 0, 0)]
    );
    assert_eq!(
        store.load(0, 0).unwrap().locks.len(),
        1,
        "prune keeps locks"
    );
    assert_eq!(store.prune(3_600, 3_600).unwrap(), 0);
}

// === restart ===

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let events = [
        sent("a", 100, 1),
        sent("a", 4_000, 2),
        observed("a", 4_100),
        locked("a", 4_200, Some(9_000), "r"),
    ];
    let (snapshot, hourly) = {
        let mut store = Store::open(dir.path()).unwrap();
        store.apply(&events).unwrap();
        (store.load(0, 5_000).unwrap(), store.hourly(0).unwrap())
    };
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load(0, 5_000).unwrap(), snapshot);
    assert_eq!(store.hourly(0).unwrap(), hourly);
    assert_eq!(snapshot.sent.len(), 1);
    assert_eq!(snapshot.locks.len(), 1);
    // And the reopened store keeps writing.
    store.apply(&[sent("a", 4_001, 1)]).unwrap();
    assert_eq!(store.hourly(0).unwrap()[1], total("a", 3_600, 3, 0, 1));
}

// === volume ===

#[test]
fn ten_thousand_events_in_one_batch() {
    let (_dir, mut store) = open();
    let events: Vec<Event> = (0..10_000u32)
        .map(|i| sent(&format!("auth:user{}", i % 100), 1_000_000 + i / 10, 1))
        .collect();
    // Wall time only for the log line; nothing asserts on it.
    #[allow(clippy::disallowed_methods)]
    let start = std::time::Instant::now();
    store.apply(&events).unwrap();
    println!("applied 10,000 Sent events in {:?}", start.elapsed());

    let snap = store.load(0, 0).unwrap();
    assert_eq!(snap.sent.len(), 100);
    assert!(snap.sent.iter().all(|(_, t)| t.len() == 100));
    let sent: u64 = store.hourly(0).unwrap().iter().map(|h| h.sent).sum();
    assert_eq!(sent, 10_000);
}
