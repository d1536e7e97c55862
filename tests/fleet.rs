//! Fleet mode for real: two mailbrake processes share one limit through a
//! real redis-server started by the test; Redis stopped and restarted
//! mid-test behaves as `redis_failure` says, and recovers by itself.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::admin::{admin_call, generated_token};
use common::redis::Redis;
use common::upstream::{Opts, Upstream};
use common::*;

/// One mailbrake of the fleet.
struct Node {
    mb: Mailbrake,
    port: u16,
    admin: SocketAddr,
    /// The admin token this node made.
    token: String,
    _dir: tempfile::TempDir,
}

fn node(redis: &Redis, up: &Upstream, failure: &str) -> Node {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\n\
         [state]\ndir = {:?}\nbackend = \"redis\"\nredis_url = {:?}\nredis_prefix = \"fleettest:\"\nredis_failure = {failure:?}\n\
         [limits]\ndefault = \"12/1h\"\nrotation = \"off\"\nlock_after_refusals = 0\n\
         [protect]\nconnections_per_ip = \"off\"\n",
        dir.path().join("state"),
        redis.url()
    ) + &plain_auth_listener("l", port, up.addr);
    let mut mb = Mailbrake::start(&cfg);
    mb.logged("fleet state in Redis: connected");
    let admin = admin_addr(&mut mb);
    Node {
        mb,
        port,
        admin,
        token: generated_token(&dir.path().join("state")),
        _dir: dir,
    }
}

/// Logs in as `user`, pipelines `n` RCPTs, sends the message if any was
/// accepted; the RCPT replies.
async fn send(port: u16, user: &str, n: usize) -> Vec<String> {
    let mut c = Raw::greeted(port).await;
    let blob = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
    expect(&c.cmd(&format!("AUTH PLAIN {blob}")).await, "235");
    let replies = c.recipients(n).await;
    if replies.iter().any(|r| r.starts_with("250")) {
        expect(&c.cmd("DATA").await, "354");
        c.send(b"Subject: f\r\n\r\nhi\r\n.\r\n").await;
        expect(&c.reply().await.unwrap(), "250");
    }
    expect(&c.cmd("QUIT").await, "221");
    replies
}

fn accepted(replies: &[String]) -> usize {
    replies.iter().filter(|r| r.starts_with("250")).count()
}

async fn upstream() -> Upstream {
    Upstream::start(Opts {
        any_user_password: Some("secret"),
        ..Opts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_enforce_one_limit_exactly() {
    let redis = Redis::start();
    let up = upstream().await;
    let (a, b) = (node(&redis, &up, "open"), node(&redis, &up, "open"));
    // Ten sessions at once, half through each process, 3 recipients each:
    // 30 offered, exactly 12 accepted between them.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        tasks.push(tokio::spawn(send(port, "alice", 3)));
    }
    let mut total = 0;
    let mut deferred = Vec::new();
    for t in tasks {
        let replies = t.await.unwrap();
        total += accepted(&replies);
        deferred.extend(replies.into_iter().filter(|r| !r.starts_with("250")));
    }
    assert_eq!(total, 12, "the fleet let {total} through");
    assert!(
        deferred
            .iter()
            .all(|r| r.starts_with("450 4.7.1 Recipient limit reached for auth:alice (12/1h)")),
        "{deferred:?}"
    );
    // Another sender has its own 12, on either process.
    assert_eq!(accepted(&send(b.port, "bob", 15).await), 12);

    // An override set through one process's API holds on the other.
    let raise = serde_json::json!({"limit": "20/1h", "reason": "fleet test", "who": "t"});
    let (code, body) = admin_call(
        a.admin,
        "PUT",
        "/api/senders/auth%3Acarol/override",
        Some(raise),
        Some(&a.token),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(accepted(&send(b.port, "carol", 25).await), 20);
    // So does a lock.
    let lock = serde_json::json!({"reason": "fleet test", "who": "t"});
    let (code, _) = admin_call(
        b.admin,
        "POST",
        "/api/senders/auth%3Adave/lock",
        Some(lock.clone()),
        Some(&b.token),
    )
    .await;
    assert_eq!(code, 200);
    let replies = send(a.port, "dave", 1).await;
    assert!(
        replies[0].starts_with("450 4.7.1 Sender auth:dave is locked"),
        "{replies:?}"
    );
    let (code, _) = admin_call(
        a.admin,
        "POST",
        "/api/senders/auth%3Adave/unlock",
        Some(lock),
        Some(&a.token),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(&send(b.port, "dave", 1).await), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_away_fails_open_or_closed_and_recovers() {
    let mut redis = Redis::start();
    let up = upstream().await;
    let mut open = node(&redis, &up, "open");
    let closed = node(&redis, &up, "closed");
    assert_eq!(accepted(&send(open.port, "erin", 15).await), 12);

    redis.stop();
    // Fail open: mail flows, unlimited, and it is logged and counted.
    assert_eq!(accepted(&send(open.port, "erin", 5).await), 5);
    tokio::task::block_in_place(|| open.mb.wait_log("fleet state unavailable"));
    let metrics = samples(&scrape(open.admin).await);
    let errors = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("mailbrake_fleet_errors_total{op=\"reserve\"}"))
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(errors >= 5.0, "reserve errors counted: {errors}");
    // Fail closed: deferred with a temporary error.
    let replies = send(closed.port, "erin", 2).await;
    assert!(
        replies
            .iter()
            .all(|r| r.starts_with("451 4.3.0 Recipient limits are temporarily unavailable")),
        "{replies:?}"
    );

    // Redis back (empty: it keeps nothing on disk here): both recover by
    // themselves and enforce the limit again.
    redis.run();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let replies = send(closed.port, "frank", 1).await;
        if accepted(&replies) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {replies:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        accepted(&send(open.port, "frank", 15).await),
        11,
        "one of 12 already sent"
    );
}
