//! Fleet mode against a real redis-server (Debian's, which `.ci/run`
//! installs), one per test on a free loopback port, with fake times.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use super::test_redis::*;
use super::*;
use crate::limits::window::Window;

#[tokio::test]
async fn window_edges_are_exact() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(3, 3600)];
    for t in [1000, 1100, 1200] {
        send(&f, KEY, &rates, t).await;
    }
    // Full until the first send is a whole window old.
    assert_eq!(
        f.reserve(KEY, &rates, 4599, "x").await.unwrap(),
        full(0, Some(4600))
    );
    assert_eq!(
        f.reserve(KEY, &rates, 4600, "x").await.unwrap(),
        FleetDecision::Reserved,
        "at exactly 1000 + 3600 the first send left the window"
    );
    assert_eq!(f.counts(KEY, &rates, 4600).await.unwrap(), (vec![2], 1));
}

#[tokio::test]
async fn reservations_count_and_release_gives_back() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(2, 60)];
    for id in ["a", "b"] {
        assert_eq!(
            f.reserve(KEY, &rates, 10, id).await.unwrap(),
            FleetDecision::Reserved
        );
    }
    // Pending reservations alone fill the window: no time frees it.
    assert_eq!(
        f.reserve(KEY, &rates, 10, "c").await.unwrap(),
        full(0, None)
    );
    f.release(KEY, "b").await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 10).await.unwrap(), (vec![0], 1));
    assert_eq!(
        f.reserve(KEY, &rates, 10, "c").await.unwrap(),
        FleetDecision::Reserved
    );
    f.release(KEY, "c").await.unwrap();
    f.commit(KEY, "a", 10, 60).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 10).await.unwrap(), (vec![1], 0));
    // One sent at 10, none pending: one more fits, then full until 70.
    assert_eq!(
        f.reserve(KEY, &rates, 11, "d").await.unwrap(),
        FleetDecision::Reserved
    );
    assert_eq!(
        f.reserve(KEY, &rates, 11, "e").await.unwrap(),
        full(0, Some(70))
    );
    // Reserving an id that is already held is a retry, not a second recipient.
    assert_eq!(
        f.reserve(KEY, &rates, 11, "d").await.unwrap(),
        FleetDecision::Reserved
    );
    assert_eq!(f.counts(KEY, &rates, 11).await.unwrap(), (vec![1], 1));
}

#[tokio::test]
async fn several_rates_report_the_first_full_one() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(2, 60), rate(3, 3600)];
    for t in [0, 1] {
        send(&f, KEY, &rates, t).await;
    }
    assert_eq!(
        f.reserve(KEY, &rates, 2, "x").await.unwrap(),
        full(0, Some(60))
    );
    send(&f, KEY, &rates, 61).await;
    assert_eq!(
        f.reserve(KEY, &rates, 200, "x").await.unwrap(),
        full(1, Some(3600))
    );
    assert_eq!(f.counts(KEY, &rates, 200).await.unwrap(), (vec![0, 3], 0));
}

/// The same random walk through a local [`Window`] and through Redis gives
/// the same decision at every step: same full rate, same `next_free`.
#[tokio::test]
async fn decides_exactly_like_the_local_window() {
    let server = Server::start();
    let options = FleetOptions {
        reservation_ttl: Duration::from_secs(1_000_000),
        ..FleetOptions::default()
    };
    let f = fleet_with(&server, options).await;
    let rates = [rate(3, 50), rate(5, 200)];
    let keep = 5;
    let mut w = Window::default();
    let mut pending: Vec<String> = Vec::new();
    let (mut x, mut t): (u64, Time) = (7, 1_000_000);
    let (mut accepted, mut refused) = (0, 0);
    for step in 0..1500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t += (x % 9) as Time;
        match x % 3 {
            0 => {
                let id = f.new_id();
                let got = f.reserve(KEY, &rates, t, &id).await.unwrap();
                let want = match w.check(&rates, t) {
                    Ok(()) => {
                        w.reserve();
                        pending.push(id);
                        accepted += 1;
                        FleetDecision::Reserved
                    }
                    Err(e) => {
                        refused += 1;
                        full(
                            rates.iter().position(|r| *r == e.rate).unwrap(),
                            e.next_free,
                        )
                    }
                };
                assert_eq!(got, want, "step {step} at {t}");
            }
            1 if !pending.is_empty() => {
                let id = pending.remove(0);
                f.commit(KEY, &id, t, 200).await.unwrap();
                w.commit(t, keep);
            }
            2 if !pending.is_empty() => {
                let id = pending.pop().unwrap();
                f.release(KEY, &id).await.unwrap();
                w.release();
            }
            _ => {}
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

/// Two processes (two connections), 50 concurrent recipients, one limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_enforce_one_limit() {
    let server = Server::start();
    let a = Arc::new(fleet(&server).await);
    let b = Arc::new(fleet(&server).await);
    let rates = [rate(12, 3600)];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let f = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let id = f.new_id();
            f.reserve(KEY, &rates, 1000, &id).await.unwrap()
        });
    }
    let (mut reserved, mut refused) = (0, 0);
    while let Some(decision) = tasks.join_next().await {
        match decision.unwrap() {
            FleetDecision::Reserved => reserved += 1,
            d => {
                assert_eq!(d, full(0, None));
                refused += 1;
            }
        }
    }
    assert_eq!((reserved, refused), (12, 38));
    assert_eq!(a.counts(KEY, &rates, 1000).await.unwrap(), (vec![0], 12));
    assert_eq!(b.counts(KEY, &rates, 1000).await.unwrap(), (vec![0], 12));
    assert_ne!(a.new_id(), b.new_id(), "ids differ between processes");
}

#[tokio::test]
async fn locks_are_shared_and_expire() {
    let server = Server::start();
    let (a, b) = (fleet(&server).await, fleet(&server).await);
    let rates = [rate(12, 3600)];
    a.lock(KEY, Some(1010), "spam run", 1000).await.unwrap();
    let locked = FleetDecision::Locked {
        until: Some(1010),
        reason: "spam run".into(),
    };
    assert_eq!(b.reserve(KEY, &rates, 1009, "x").await.unwrap(), locked);
    assert_eq!(
        b.reserve(KEY, &rates, 1010, "x").await.unwrap(),
        FleetDecision::Reserved
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{PREFIX}l:{{{KEY}}}"))
        .query_async(&mut server.raw().await)
        .await
        .unwrap();
    assert!(
        (9..=10).contains(&ttl),
        "the lock's key lives until - now: {ttl}"
    );

    // Open-ended, with '|' in the reason; lifted from the other instance.
    b.lock(KEY, None, "operator: a|b", 1000).await.unwrap();
    assert_eq!(
        a.reserve(KEY, &rates, 5000, "y").await.unwrap(),
        FleetDecision::Locked {
            until: None,
            reason: "operator: a|b".into()
        }
    );
    assert!(a.unlock(KEY).await.unwrap());
    assert!(!b.unlock(KEY).await.unwrap(), "already unlocked");
    assert_eq!(
        b.reserve(KEY, &rates, 5000, "y").await.unwrap(),
        FleetDecision::Reserved
    );

    // A lock that is already over is no lock.
    a.lock(KEY, Some(900), "late", 1000).await.unwrap();
    assert!(!a.unlock(KEY).await.unwrap());
}

#[tokio::test]
async fn overrides_are_shared() {
    let server = Server::start();
    let (a, b) = (fleet(&server).await, fleet(&server).await);
    let rates = [rate(2, 60)];
    a.set_override(KEY, "500/1h", None, 1000).await.unwrap();
    for t in 1000..1010 {
        send(&b, KEY, &rates, t).await;
    }
    assert_eq!(b.counts(KEY, &rates, 1010).await.unwrap(), (vec![10], 0));

    // Several rates: the override's own index is reported.
    a.set_override(KEY, "12/1h, 100/24h", None, 1000)
        .await
        .unwrap();
    send(&b, KEY, &rates, 1010).await;
    send(&b, KEY, &rates, 1011).await;
    assert_eq!(
        b.reserve(KEY, &rates, 1012, "x").await.unwrap(),
        full(0, Some(4600))
    );

    // Unlimited: reserved at once, nothing held.
    a.set_override(KEY, "unlimited", None, 1000).await.unwrap();
    for i in 0..20 {
        let id = format!("u{i}");
        assert_eq!(
            b.reserve(KEY, &rates, 1012, &id).await.unwrap(),
            FleetDecision::Reserved
        );
    }
    // Nothing held; and only what the file's 2/60 needs is kept: the 2
    // newest sends.
    assert_eq!(b.counts(KEY, &rates, 1012).await.unwrap(), (vec![2], 0));

    // Removed: the file's 2/60 applies again.
    assert!(b.remove_override(KEY).await.unwrap());
    assert!(!a.remove_override(KEY).await.unwrap());
    assert_eq!(
        a.reserve(KEY, &rates, 1012, "x").await.unwrap(),
        full(0, Some(1070))
    );
    let kept: i64 = redis::cmd("ZCARD")
        .arg(format!("{PREFIX}s:{{{KEY}}}"))
        .query_async(&mut server.raw().await)
        .await
        .unwrap();
    assert_eq!(kept, 2);

    // Until a time: in force before it, not at it.
    let other = "auth:bob@example.com";
    for t in [2000, 2001] {
        send(&a, other, &rates, t).await;
    }
    a.set_override(other, "5/1m", Some(2010), 2002)
        .await
        .unwrap();
    assert_eq!(
        b.reserve(other, &rates, 2009, "x").await.unwrap(),
        FleetDecision::Reserved
    );
    // 2 sent and "x" pending under 2/60: free when 2001 leaves the window.
    assert_eq!(
        b.reserve(other, &rates, 2010, "y").await.unwrap(),
        full(0, Some(2061))
    );

    match a.set_override(KEY, "lots", None, 1000).await {
        Err(FleetError::Limit(message)) => assert!(message.contains("\"lots\" is not a rate")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reset_forgets_sends_not_reservations() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(3, 3600)];
    for t in [100, 101] {
        send(&f, KEY, &rates, t).await;
    }
    assert_eq!(
        f.reserve(KEY, &rates, 102, "live").await.unwrap(),
        FleetDecision::Reserved
    );
    f.reset(KEY).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 102).await.unwrap(), (vec![0], 1));
    f.commit(KEY, "live", 103, 3600).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 103).await.unwrap(), (vec![1], 0));
}

#[tokio::test]
async fn reservations_expire_on_their_own() {
    let server = Server::start();
    let options = FleetOptions {
        reservation_ttl: Duration::from_secs(1),
        ..FleetOptions::default()
    };
    let f = fleet_with(&server, options).await;
    let rates = [rate(1, 60)];
    assert_eq!(
        f.reserve(KEY, &rates, 100, "crashed").await.unwrap(),
        FleetDecision::Reserved
    );
    assert_eq!(
        f.reserve(KEY, &rates, 100, "x").await.unwrap(),
        full(0, None)
    );
    assert_eq!(f.counts(KEY, &rates, 101).await.unwrap(), (vec![0], 0));
    assert_eq!(
        f.reserve(KEY, &rates, 101, "y").await.unwrap(),
        FleetDecision::Reserved
    );
    // A commit after its reservation expired still counts the send.
    f.commit(KEY, "crashed", 102, 60).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 102).await.unwrap(), (vec![1], 0));
}

/// The documented key names and TTLs: nothing stays once idle.
#[tokio::test]
async fn keys_are_named_and_expire_as_documented() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(12, 3600)];
    send(&f, KEY, &rates, 1000).await;
    assert_eq!(
        f.reserve(KEY, &rates, 1000, "held").await.unwrap(),
        FleetDecision::Reserved
    );
    f.set_override(KEY, "5/1h", Some(1100), 1000).await.unwrap();
    let mut raw = server.raw().await;
    for (kind, low, high) in [("s", 3600, 3660), ("r", 300, 360), ("o", 99, 100)] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{PREFIX}{kind}:{{{KEY}}}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!((low..=high).contains(&ttl), "{kind}: TTL {ttl}");
    }
    // The same id committed twice at the same time is one send; at another
    // time, a second one.
    f.commit(KEY, "held", 1001, 3600).await.unwrap();
    f.commit(KEY, "held", 1001, 3600).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 1001).await.unwrap(), (vec![2], 0));
    f.commit(KEY, "held", 1002, 3600).await.unwrap();
    assert_eq!(f.counts(KEY, &rates, 1002).await.unwrap(), (vec![3], 0));
}

/// The figures in the module doc.
#[tokio::test]
async fn bytes_per_key() {
    let server = Server::start();
    let f = fleet(&server).await;
    let mut raw = server.raw().await;
    let mut usage = async |key: String| -> i64 {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut raw)
            .await
            .unwrap()
    };
    let key = "auth:user@example.com";
    let sends = |n| format!("{PREFIX}s:{{auth:user{n}@example.com}}");
    for (n, count) in [(1, 1), (12, 12), (100, 100), (128, 128), (1000, 1000)] {
        let k = format!("auth:user{n}@example.com");
        let rates = [rate(count, 86400)];
        for t in 0..count {
            send(&f, &k, &rates, 1000 + t).await;
        }
    }
    let s1 = usage(sends(1)).await;
    let s12 = usage(sends(12)).await;
    let s100 = usage(sends(100)).await;
    let s128 = usage(sends(128)).await;
    let s1000 = usage(sends(1000)).await;
    f.reserve(key, &[rate(12, 3600)], 1000, &f.new_id())
        .await
        .unwrap();
    let r1 = usage(format!("{PREFIX}r:{{{key}}}")).await;
    f.lock(key, Some(2000), "12 refused recipients", 1000)
        .await
        .unwrap();
    let l = usage(format!("{PREFIX}l:{{{key}}}")).await;
    f.set_override(key, "12/1h, 100/24h", None, 1000)
        .await
        .unwrap();
    let o = usage(format!("{PREFIX}o:{{{key}}}")).await;
    eprintln!(
        "sends: 1 → {s1}, 12 → {s12}, 100 → {s100}, 128 → {s128}, 1000 → {s1000}; \
         1 reservation → {r1}; lock → {l}; override → {o}"
    );
    assert!(s12 < 500, "12 sends take {s12} bytes");
    assert!(s100 < 3000, "100 sends take {s100} bytes");
    assert!(s1000 < 150_000, "1000 sends take {s1000} bytes");
    assert!(r1 < 300 && l < 200 && o < 200, "{r1} {l} {o}");
}

#[tokio::test]
async fn redis_down_fails_fast_and_back_works_again() {
    let server = Server::start();
    let f = fleet(&server).await;
    let rates = [rate(2, 60)];
    send(&f, KEY, &rates, 1000).await;

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let result = f.reserve(KEY, &rates, 1001, "x").await;
        assert!(
            matches!(
                result,
                Err(FleetError::Redis { .. } | FleetError::Timeout { .. })
            ),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "failing took {:?}",
            started.elapsed()
        );
    }
    assert!(f.counts(KEY, &rates, 1001).await.is_err());

    // Back on the same port (empty: nothing was saved), same Fleet.
    server.launch();
    let reply = f.reserve(KEY, &rates, 1001, "x").await;
    assert_eq!(
        reply.unwrap(),
        FleetDecision::Reserved,
        "the first call after Redis is back succeeds"
    );
    send(&f, KEY, &rates, 1002).await;
    assert_eq!(f.counts(KEY, &rates, 1002).await.unwrap(), (vec![1], 1));
}

#[tokio::test]
async fn unreachable_redis_is_an_error_within_the_timeout() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let options = FleetOptions {
        timeout: Duration::from_millis(300),
        ..FleetOptions::default()
    };
    let started = Instant::now();
    let url = format!("redis://127.0.0.1:{port}");
    match Fleet::connect_with(&url, PREFIX, options).await {
        Err(e @ FleetError::Timeout { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("Redis at 127.0.0.1:{port}: connect did not finish within 300ms")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test]
async fn messages_never_show_the_password() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for url in [
        format!("redis://user:s3cret@127.0.0.1:{port}"),
        format!("redis://:s3cret@127.0.0.1:{port}/0"),
        "redis://:s3cret@[::1/".to_owned(),
        "s3cret".to_owned(),
    ] {
        let e = Fleet::connect(&url, PREFIX).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    assert!(matches!(
        Fleet::connect("redis://127.0.0.1:1", "mb{x}:").await,
        Err(FleetError::Prefix(_))
    ));
}
