//! Reservations that live as long as their sessions: refreshed while held,
//! expired once nothing refreshes them (their process is gone). Against a
//! real redis-server, with fake times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::test_redis::*;
use super::*;
use crate::config::FleetConfig;
use crate::limits::ledger::Remote;
use crate::limits::shared::FleetLink;
use crate::limits::{Clock, SenderKey};

/// Reservations live 10 (fake) seconds unless refreshed.
fn short() -> FleetOptions {
    FleetOptions {
        reservation_ttl: Duration::from_secs(10),
        ..FleetOptions::default()
    }
}

fn refreshed(held: usize, expired: usize) -> Refreshed {
    Refreshed { held, expired }
}

/// The slow session of the incident: 12 recipients held under 12/1h for
/// longer than the TTL, while a second session tries 12 more.
#[tokio::test]
async fn held_reservations_stay_counted_past_the_ttl_while_refreshed() {
    let server = Server::start();
    let (slow, other) = (
        fleet_with(&server, short()).await,
        fleet_with(&server, short()).await,
    );
    let rates = [rate(12, 3600)];
    let ids: Vec<String> = (0..12).map(|_| slow.new_id()).collect();
    for id in &ids {
        assert_eq!(
            slow.reserve(KEY, &rates, 1000, id).await.unwrap(),
            FleetDecision::Reserved
        );
    }
    assert_eq!(slow.held(), 12);
    for t in [1008, 1016, 1024] {
        assert_eq!(slow.refresh(t).await.unwrap(), refreshed(12, 0), "at {t}");
    }
    // Long past the first expiry (1010): still 12 pending, none to spare.
    assert_eq!(
        other.counts(KEY, &rates, 1030).await.unwrap(),
        (vec![0], 12)
    );
    assert_eq!(
        other.reserve(KEY, &rates, 1030, "second").await.unwrap(),
        full(0, None)
    );
    // The slow message is sent: 12 sends, nothing held, still none to spare.
    for id in &ids {
        slow.commit(KEY, id, 1031, 3600).await.unwrap();
    }
    assert_eq!(slow.held(), 0);
    assert_eq!(
        other.reserve(KEY, &rates, 1032, "second").await.unwrap(),
        full(0, Some(4631))
    );
    assert_eq!(slow.refresh(1033).await.unwrap(), refreshed(0, 0));
}

#[tokio::test]
async fn reservations_whose_process_is_gone_expire() {
    let server = Server::start();
    let (live, gone) = (
        fleet_with(&server, short()).await,
        fleet_with(&server, short()).await,
    );
    let rates = [rate(2, 3600)];
    for (f, id) in [(&live, "live"), (&gone, "gone")] {
        assert_eq!(
            f.reserve(KEY, &rates, 1000, id).await.unwrap(),
            FleetDecision::Reserved
        );
    }
    assert_eq!(
        live.reserve(KEY, &rates, 1000, "x").await.unwrap(),
        full(0, None)
    );
    // Only the live process refreshes; the other one's expires at 1010.
    assert_eq!(live.refresh(1009).await.unwrap(), refreshed(1, 0));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{PREFIX}r:{{{KEY}}}"))
        .query_async(&mut server.raw().await)
        .await
        .unwrap();
    assert!((65..=70).contains(&ttl), "refreshed expiry + 60 s: {ttl}");
    assert_eq!(live.counts(KEY, &rates, 1010).await.unwrap(), (vec![0], 1));
    assert_eq!(
        live.reserve(KEY, &rates, 1010, "y").await.unwrap(),
        FleetDecision::Reserved,
        "the dead process's place is free"
    );
    assert_eq!(
        live.reserve(KEY, &rates, 1010, "z").await.unwrap(),
        full(0, None)
    );
}

#[tokio::test]
async fn a_refresh_never_revives_an_expired_or_settled_reservation() {
    let server = Server::start();
    let f = fleet_with(&server, short()).await;
    let rates = [rate(5, 3600)];
    for id in ["sent", "released", "late"] {
        assert_eq!(
            f.reserve(KEY, &rates, 1000, id).await.unwrap(),
            FleetDecision::Reserved
        );
    }
    f.commit(KEY, "sent", 1001, 3600).await.unwrap();
    f.release(KEY, "released").await.unwrap();
    assert_eq!(f.held(), 1);
    assert_eq!(f.refresh(1005).await.unwrap(), refreshed(1, 0));
    assert_eq!(
        f.reserve(KEY, &rates, 1008, "kept").await.unwrap(),
        FleetDecision::Reserved
    );
    // Say Redis was unreachable from 1006 to 1016: "late" expired at 1015,
    // "kept" expires at 1018.
    assert_eq!(f.refresh(1016).await.unwrap(), refreshed(1, 1));
    assert_eq!(f.counts(KEY, &rates, 1016).await.unwrap(), (vec![1], 1));
    assert_eq!(f.held(), 1, "an expired one is forgotten: reported once");
    assert_eq!(f.refresh(1017).await.unwrap(), refreshed(1, 0));
    // Its commit still counts the send.
    f.commit(KEY, "late", 1018, 3600).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 1018).await.unwrap(), (vec![2], 1));

    // Nothing is held under an unlimited override: nothing to refresh.
    f.set_override(KEY, "unlimited", None, 1018).await.unwrap();
    assert_eq!(
        f.reserve(KEY, &rates, 1018, "free").await.unwrap(),
        FleetDecision::Reserved
    );
    assert_eq!(f.held(), 1);
    assert_eq!(f.refresh(1019).await.unwrap(), refreshed(1, 0));
}

/// A clock the test moves.
struct FakeClock(Arc<AtomicU32>);

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits (up to 10 s) until the score of reservation `id` is `want`.
async fn expiry_becomes(server: &Server, id: &str, want: Option<u32>) {
    let mut raw = server.raw().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let score: Option<u32> = redis::cmd("ZSCORE")
            .arg(format!("{PREFIX}r:{{{KEY}}}"))
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
        if score == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: expiry {score:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The link of a mailbrake process refreshes on its own, in the background.
#[tokio::test]
async fn the_link_refreshes_what_its_sessions_hold() {
    let server = Server::start();
    let time = Arc::new(AtomicU32::new(1000));
    let cfg = FleetConfig {
        url: server.url(),
        prefix: PREFIX.into(),
        fail_open: false,
    };
    let options = FleetOptions {
        refresh_every: Duration::from_millis(50),
        ..short()
    };
    let link = FleetLink::start_with(&cfg, 3600, options, Box::new(FakeClock(time.clone())));
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        if let Some(id) = link.new_id() {
            break id;
        }
        assert!(Instant::now() < deadline, "the link did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rates = [rate(1, 3600)];
    assert_eq!(
        link.reserve(KEY, &rates, 1000, &id).await.unwrap(),
        FleetDecision::Reserved
    );
    time.store(1009, Ordering::SeqCst);
    expiry_becomes(&server, &id, Some(1019)).await;
    time.store(1018, Ordering::SeqCst);
    expiry_becomes(&server, &id, Some(1028)).await;

    // Past two TTLs, another process still finds the recipient counted.
    let other = fleet(&server).await;
    assert_eq!(
        other.reserve(KEY, &rates, 1025, "x").await.unwrap(),
        full(0, None)
    );
    // The session sends it: a send, nothing held, nothing refreshed again.
    Remote::commit(&link, &SenderKey::parse(KEY).unwrap(), &id);
    expiry_becomes(&server, &id, None).await;
    assert_eq!(other.counts(KEY, &rates, 1026).await.unwrap(), (vec![1], 0));
}
