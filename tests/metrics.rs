//! Metrics end to end: scripted traffic through the mailbrake binary (relays,
//! deferrals, an AUTH failure, a lock), then a real scrape of `/metrics` on
//! the `[admin] bind` address, with exact values.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::upstream::{Opts, Upstream};
use common::*;

/// The value of one series; `labels` in any order.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    let key = if l.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", l.join(","))
    };
    samples.get(&key).copied()
}

async fn login(port: u16, user: &str, password: &str) -> (Raw, String) {
    let mut c = Raw::greeted(port).await;
    let blob = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let reply = c.cmd(&format!("AUTH PLAIN {blob}")).await;
    (c, reply)
}

async fn send_data(c: &mut Raw) {
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: m\r\n\r\nhi\r\n.\r\n").await;
    expect(&c.reply().await.unwrap(), "250");
}

/// alice sends 2 recipients; bob fails AUTH; carol sends 6 under 3/1h (3
/// deferred, locked at the third refusal) and meets the lock with a 7th.
async fn traffic(port: u16, up: &mut Upstream) {
    // alice: two recipients, one message.
    let (mut alice, reply) = login(port, "alice", "secret").await;
    expect(&reply, "235");
    let r = alice.recipients(2).await;
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    send_data(&mut alice).await;
    up.next_message().await;
    expect(&alice.cmd("QUIT").await, "221");

    // bob: a wrong password.
    let (mut bob, reply) = login(port, "bob", "wrong").await;
    expect(&reply, "535");
    expect(&bob.cmd("QUIT").await, "221");

    // carol: 6 recipients under 3/1h: 3 accepted, 3 deferred, and the third
    // refusal (more than 2) locks her; a 7th recipient meets the lock.
    let (mut carol, reply) = login(port, "carol", "secret").await;
    expect(&reply, "235");
    let r = carol.recipients(6).await;
    assert_eq!(
        r.iter().filter(|r| r.starts_with("250")).count(),
        3,
        "{r:?}"
    );
    assert_eq!(
        r.iter()
            .filter(|r| r.starts_with("450 4.7.1 Recipient limit"))
            .count(),
        3,
        "{r:?}"
    );
    send_data(&mut carol).await;
    up.next_message().await;
    let r = carol.recipients(1).await;
    assert!(
        r[0].starts_with("450 4.7.1 Sender auth:carol is locked"),
        "{r:?}"
    );
    expect(&carol.cmd("RSET").await, "250");
    expect(&carol.cmd("QUIT").await, "221");
}

fn check_expected(s: &BTreeMap<String, f64>) {
    /// (metric, labels, value)
    type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let expected: &[Expected] = &[
        (
            "mailbrake_connections_accepted_total",
            &[("listener", "plain")],
            3.0,
        ),
        (
            "mailbrake_connections_refused_total",
            &[("listener", "plain"), ("reason", "max_sessions")],
            0.0,
        ),
        (
            "mailbrake_auth_attempts_total",
            &[("mechanism", "PLAIN"), ("result", "success")],
            2.0,
        ),
        (
            "mailbrake_auth_attempts_total",
            &[("mechanism", "PLAIN"), ("result", "failure")],
            1.0,
        ),
        (
            "mailbrake_recipients_total",
            &[("class", "auth"), ("outcome", "accepted")],
            5.0,
        ),
        (
            "mailbrake_recipients_total",
            &[("class", "auth"), ("outcome", "deferred")],
            4.0,
        ),
        (
            "mailbrake_recipients_total",
            &[("class", "auth"), ("outcome", "rejected")],
            0.0,
        ),
        (
            "mailbrake_limit_decisions_total",
            &[("result", "accepted")],
            5.0,
        ),
        (
            "mailbrake_limit_decisions_total",
            &[("result", "over_limit")],
            3.0,
        ),
        (
            "mailbrake_limit_decisions_total",
            &[("result", "locked")],
            1.0,
        ),
        (
            "mailbrake_messages_total",
            &[("listener", "plain"), ("result", "accepted")],
            2.0,
        ),
        (
            "mailbrake_messages_total",
            &[("listener", "plain"), ("result", "refused")],
            0.0,
        ),
        (
            "mailbrake_end_of_data_seconds_count",
            &[("listener", "plain")],
            2.0,
        ),
        (
            "mailbrake_upstream_connect_seconds_count",
            &[("listener", "plain")],
            3.0,
        ),
        ("mailbrake_locks_total", &[("reason", "refusals")], 1.0),
        ("mailbrake_senders_locked", &[], 1.0),
        (
            "mailbrake_sender_locked",
            &[("class", "auth"), ("sender", "auth:carol")],
            1.0,
        ),
        (
            "mailbrake_sender_window_usage_ratio",
            &[("class", "auth"), ("sender", "auth:carol")],
            1.0,
        ),
        (
            "mailbrake_sender_window_recipients",
            &[("class", "auth"), ("sender", "auth:carol")],
            3.0,
        ),
        (
            "mailbrake_tls_handshakes_total",
            &[("leg", "client"), ("result", "ok"), ("version", "TLSv1.3")],
            0.0,
        ),
        (
            "mailbrake_config_reloads_total",
            &[("result", "success")],
            0.0,
        ),
    ];
    for (name, labels, v) in expected {
        assert_eq!(value(s, name, labels), Some(*v), "{name} {labels:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_traffic_gives_exact_metrics() {
    let mut up = Upstream::start(Opts {
        any_user_password: Some("secret"),
        ..Opts::default()
    })
    .await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\n[state]\ndir = {:?}\n\
         [limits]\ndefault = \"3/1h\"\nlock_after_refusals = 2\nrotation = \"off\"\n\
         [protect]\nconnections_per_ip = \"off\"\n",
        dir.path().join("state")
    ) + &plain_auth_listener("plain", port, up.addr);
    let mut mb = Mailbrake::start(&cfg);
    let admin = admin_addr(&mut mb);

    // Before any traffic, every series is there at zero.
    let before = samples(&scrape(admin).await);
    for (name, labels) in [
        (
            "mailbrake_connections_accepted_total",
            vec![("listener", "plain")],
        ),
        (
            "mailbrake_recipients_total",
            vec![("class", "auth"), ("outcome", "deferred")],
        ),
        ("mailbrake_locks_total", vec![("reason", "refusals")]),
        (
            "mailbrake_upstream_connect_failures_total",
            vec![("listener", "plain"), ("reason", "unreachable")],
        ),
        (
            "mailbrake_end_of_data_seconds_count",
            vec![("listener", "plain")],
        ),
        ("mailbrake_senders_locked", vec![]),
    ] {
        assert_eq!(
            value(&before, name, &labels),
            Some(0.0),
            "{name} {labels:?} at start-up"
        );
    }
    assert_eq!(
        value(
            &before,
            "mailbrake_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    Box::pin(traffic(port, &mut up)).await;
    mb.wait_log("sender locked");

    // Locks are counted as the journal is written (every second) and
    // sessions as they end: scrape until both are in (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = samples(&scrape(admin).await);
        let settled = value(&s, "mailbrake_locks_total", &[("reason", "refusals")]) == Some(1.0)
            && value(&s, "mailbrake_sessions_active", &[("listener", "plain")]) == Some(0.0)
            && value(
                &s,
                "mailbrake_session_duration_seconds_count",
                &[("listener", "plain")],
            ) == Some(3.0);
        if settled {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never settled: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    check_expected(&s);
    // alice used 2 of 3 (67 %): below the 80 % threshold, so no series of her own.
    assert!(
        !s.keys().any(|k| k.contains("auth:alice")),
        "a calm sender has per-sender series"
    );
    // Bytes went both ways.
    let sent = value(
        &s,
        "mailbrake_relayed_bytes_total",
        &[("direction", "client_to_upstream"), ("listener", "plain")],
    );
    assert!(sent.unwrap() > 100.0, "{sent:?}");
}

#[tokio::test]
async fn exposition_passes_promtool_lint() {
    let promtool = std::process::Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        promtool,
        "METRICS LINT CANNOT RUN: promtool is missing (.ci/run installs the Debian package prometheus)"
    );
    let up = Upstream::start(Opts::default()).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        base_config(dir.path()) + &listener("plain", port, "none", None, &up.addr.to_string(), "");
    let mut mb = Mailbrake::start(&cfg);
    let admin = admin_addr(&mut mb);
    let text = scrape(admin).await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metric has a HELP and a TYPE line.
    for name in samples(&text)
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
    {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# HELP {base} ")),
            "no HELP for {base}"
        );
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "no TYPE for {base}"
        );
    }
}
