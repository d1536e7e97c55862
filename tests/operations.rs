//! End to end, the operator's view: session limits, reload on SIGHUP, drain
//! on SIGTERM, `check-config`, and timeouts on both legs.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::upstream::{Opts, Upstream};
use common::*;
use tokio::io::AsyncReadExt;

/// A config with one plaintext listener `l` relaying to `upstream`; `sections`
/// go between the top of the file and the listener, `extra` into the listener.
fn one_listener(upstream: SocketAddr, sections: &str, extra: &str) -> (String, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path())
        + sections
        + &listener("l", port, "none", None, &upstream.to_string(), extra);
    (cfg, ([127, 0, 0, 1], port).into())
}

/// Reads the greeting and says EHLO.
async fn greet(c: &mut Raw) {
    expect(&c.reply().await.expect("no greeting"), "220 ");
    expect(&c.cmd("EHLO client.test").await, "250");
}

/// Opens a transaction: MAIL and one RCPT.
async fn mail_rcpt(c: &mut Raw) {
    expect(&c.cmd("MAIL FROM:<a@x.test>").await, "250");
    expect(&c.cmd("RCPT TO:<b@y.test>").await, "250");
}

/// DATA with a short body; expects the upstream's 250.
async fn data(c: &mut Raw, subject: &str) {
    expect(&c.cmd("DATA").await, "354");
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes())
        .await;
    expect(&c.reply().await.unwrap(), "250 2.0.0 Ok: queued");
}

async fn quit(c: &mut Raw) {
    expect(&c.cmd("QUIT").await, "221");
    assert_eq!(c.closed().await, "");
}

/// NOOPs until the session is closed for too many commands; returns the 421.
async fn noop_until_closed(c: &mut Raw) -> String {
    for _ in 0..100 {
        let r = c.cmd("NOOP").await;
        if !r.starts_with("250") {
            assert_eq!(c.closed().await, "");
            return r;
        }
    }
    panic!("never closed for too many commands");
}

/// Connects and expects a greeting. The session limit's permit is released
/// just after the "session end" log line, so a connection racing that line
/// may still be refused: then it tries again, a bounded number of times.
async fn connect_served(addr: SocketAddr) -> Raw {
    for _ in 0..100 {
        let mut c = Raw::connect(addr).await;
        let r = c.reply().await.expect("closed without a reply");
        if r.starts_with("220 ") {
            return c;
        }
        expect(&r, "421 4.7.0");
        tokio::task::yield_now().await;
    }
    panic!("never served");
}

/// A connection attempt that must not be served: refused, or closed
/// without a byte.
async fn assert_not_served(addr: SocketAddr) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("connection neither served nor closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "served: {:?}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn max_sessions_refuses_one_more_until_one_ends() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "max_sessions = 2\n");
    let mut mb = Mailbrake::start(&cfg);
    let mut a = Raw::connect(addr).await;
    greet(&mut a).await;
    let mut b = Raw::connect(addr).await;
    greet(&mut b).await;

    let mut c = Raw::connect(addr).await;
    let refused = c.closed().await;
    assert_eq!(
        refused,
        "421 4.7.0 mb.test Error: too many connections, try again later\r\n"
    );

    quit(&mut a).await;
    mb.wait_log("session end");
    let mut d = connect_served(addr).await;
    expect(&d.cmd("EHLO client.test").await, "250");
    quit(&mut d).await;
    quit(&mut b).await;
}

/// Out of file descriptors (the operator's open-file limit is too low for
/// the load), a session that cannot reach its upstream gets a clear 421 and
/// is counted; nothing panics, and sessions are served again once some end.
#[tokio::test]
async fn out_of_open_files_is_a_clear_421_and_passes() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "");
    let mut mb = Mailbrake::start(&cfg);
    let admin = admin_addr(&mut mb);

    // Room for exactly three sessions (two descriptors each) and the client
    // side of a fourth: its upstream connection is what fails.
    leave_open_files(&mb, 3 * 2 + 1);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(addr).await;
        greet(&mut c).await;
        held.push(c);
    }
    let mut fourth = Raw::connect(addr).await;
    assert_eq!(
        fourth.closed().await,
        "421 4.3.2 mb.test too busy, try again later\r\n"
    );
    let line = mb.wait_log("out of open files");
    assert!(line.contains("Too many open files"), "{line}");
    assert!(
        line.contains("session{"),
        "the warning names its session: {line}"
    );

    for mut c in held {
        quit(&mut c).await;
    }
    let mut again = connect_served(addr).await;
    expect(&again.cmd("EHLO client.test").await, "250");
    quit(&mut again).await;
    let s = samples(&scrape(admin).await);
    assert_eq!(
        s[r#"mailbrake_connections_refused_total{listener="l",reason="out_of_files"}"#],
        1.0
    );
}

/// Lowers a running mailbrake's open-file limit so that exactly `free`
/// descriptors are left. The limit bounds descriptor numbers, so count the
/// free numbers below it.
fn leave_open_files(mb: &Mailbrake, free: usize) {
    let pid = mb.child.id();
    let open: std::collections::BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    let limit = (0..).filter(|fd| !open.contains(fd)).nth(free - 1).unwrap() + 1;
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) is needed");
    assert!(status.success());
}

/// With no descriptor left, a new connection waits in the listen queue
/// (mailbrake retries, logging once a second) and is served as soon as a
/// session ends.
#[tokio::test]
async fn out_of_open_files_at_accept_waits_then_serves() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "");
    let mut mb = Mailbrake::start(&cfg);
    leave_open_files(&mb, 2 * 2);
    let mut a = Raw::connect(addr).await;
    greet(&mut a).await;
    let mut b = Raw::connect(addr).await;
    greet(&mut b).await;

    let mut waiting = Raw::connect(addr).await;
    let line = mb.wait_log("accept failed");
    assert!(line.contains("Too many open files"), "{line}");
    quit(&mut a).await;
    expect(&waiting.reply().await.expect("never greeted"), "220 ");
    mb.wait_log("accepting again");
    expect(&waiting.cmd("EHLO client.test").await, "250");
    quit(&mut waiting).await;
    quit(&mut b).await;
}

/// A config whose hostname is `host`, at most three commands outside a
/// transaction, and `max_sessions` sessions.
fn reload_config(dir: &std::path::Path, port: u16, up: SocketAddr, host: &str) -> String {
    base_config(dir).replace("\"mb.test\"", &format!("{host:?}"))
        + "[session]\nmax_commands_without_mail = 3\n"
        + &listener("l", port, "none", None, &up.to_string(), "")
}

#[tokio::test]
async fn sighup_reloads_for_new_sessions_and_keeps_live_ones() {
    let mut up = Upstream::start(Opts::default()).await;
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = tempfile::tempdir().unwrap();
    let mut mb = Mailbrake::start(&reload_config(dir.path(), port, up.addr, "before.test"));
    let mut live = Raw::connect(addr).await;
    greet(&mut live).await;

    std::fs::write(
        &mb.config,
        reload_config(dir.path(), port, up.addr, "after.test"),
    )
    .unwrap();
    mb.signal("HUP");
    mb.wait_log("configuration reloaded");

    // The live session goes on, with the settings it started with.
    mail_rcpt(&mut live).await;
    data(&mut live, "across a reload").await;
    up.next_message().await;
    expect(
        &noop_until_closed(&mut live).await,
        "421 4.7.0 before.test Error: too many commands",
    );

    // A new session has the new hostname.
    let mut new = Raw::connect(addr).await;
    greet(&mut new).await;
    expect(
        &noop_until_closed(&mut new).await,
        "421 4.7.0 after.test Error: too many commands",
    );

    // A broken file changes nothing.
    std::fs::write(&mb.config, "[[listener]]\nname = \"l\"\ntls = \"bogus\"\n").unwrap();
    mb.signal("HUP");
    mb.wait_log("reload failed");
    let mut new = Raw::connect(addr).await;
    greet(&mut new).await;
    expect(
        &noop_until_closed(&mut new).await,
        "421 4.7.0 after.test Error: too many commands",
    );
    assert!(mb.child.try_wait().unwrap().is_none(), "mailbrake exited");
}

#[tokio::test]
async fn max_sessions_counts_sessions_opened_before_a_reload() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "max_sessions = 1\n");
    let mut mb = Mailbrake::start(&cfg);
    let mut live = Raw::connect(addr).await;
    greet(&mut live).await;

    // Same file: nothing changes, and the live session still holds the only slot.
    mb.signal("HUP");
    mb.wait_log("configuration reloaded");
    let mut c = Raw::connect(addr).await;
    let r = c.closed().await;
    expect(&r, "421 4.7.0 mb.test Error: too many connections");
    quit(&mut live).await;
}

#[tokio::test]
async fn reload_raises_and_lowers_max_sessions() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "max_sessions = 1\n");
    let mut mb = Mailbrake::start(&cfg);
    let mut a = Raw::connect(addr).await;
    greet(&mut a).await;

    // 1 → 2: one more besides the live session, not two more.
    std::fs::write(
        &mb.config,
        cfg.replace("max_sessions = 1", "max_sessions = 2"),
    )
    .unwrap();
    mb.signal("HUP");
    mb.wait_log("configuration reloaded");
    let mut b = Raw::connect(addr).await;
    greet(&mut b).await;
    let mut c = Raw::connect(addr).await;
    expect(&c.closed().await, "421 4.7.0");

    // 2 → 1 with two live sessions: nobody new until both have ended.
    std::fs::write(&mb.config, &cfg).unwrap();
    mb.signal("HUP");
    mb.wait_log("configuration reloaded");
    let mut c = Raw::connect(addr).await;
    expect(&c.closed().await, "421 4.7.0");
    quit(&mut a).await;
    mb.wait_log("session end");
    let mut c = Raw::connect(addr).await;
    expect(&c.closed().await, "421 4.7.0");
    quit(&mut b).await;
    mb.wait_log("session end");
    let mut d = connect_served(addr).await;
    quit(&mut d).await;
}

#[tokio::test]
async fn sigterm_drains_live_sessions_then_exits() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "", "");
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    greet(&mut c).await;
    mail_rcpt(&mut c).await;

    mb.signal("TERM");
    mb.wait_log("stopped accepting");
    assert_not_served(addr).await;

    data(&mut c, "during the drain").await;
    assert_eq!(up.next_message().await.rcpts, ["b@y.test"]);
    quit(&mut c).await;
    let status = mb.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(!mb.logs().contains("drain timeout"), "{}", mb.logs());
}

#[tokio::test]
async fn drain_timeout_closes_idle_sessions() {
    let up = Upstream::start(Opts::default()).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path()).replace("drain_timeout = \"5s\"", "drain_timeout = \"1s\"")
        + &listener("l", port, "none", None, &up.addr.to_string(), "");
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    greet(&mut c).await;

    let signalled = Instant::now();
    mb.signal("TERM");
    expect(&c.closed().await, "421 4.3.2 mb.test shutting down");
    let status = mb.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    mb.wait_log("drain timeout");
}

#[tokio::test]
async fn reload_applies_a_new_drain_timeout() {
    let up = Upstream::start(Opts::default()).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |drain: &str| {
        base_config(dir.path()).replace(
            "drain_timeout = \"5s\"",
            &format!("drain_timeout = {drain:?}"),
        ) + &listener("l", port, "none", None, &up.addr.to_string(), "")
    };
    let mut mb = Mailbrake::start(&cfg("1h"));
    std::fs::write(&mb.config, cfg("1s")).unwrap();
    mb.signal("HUP");
    mb.wait_log("configuration reloaded");
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    greet(&mut c).await;

    mb.signal("TERM");
    let closed = tokio::time::timeout(Duration::from_secs(10), c.closed())
        .await
        .expect("idle session still open 10 s after SIGTERM: the reloaded drain_timeout = \"1s\" was not applied");
    expect(&closed, "421 4.3.2");
    assert!(mb.wait_exit().success());
}

/// Runs `mailbrake check-config -c FILE`.
fn check_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbrake.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_mailbrake"))
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_reports_every_mistake() {
    let certs = certs();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let bad = base_config(dir.path())
        + &listener("a", 2525, "tls13", None, "127.0.0.1:10025", "")
        + &format!(
            "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:2587\"\ntls = \"starttls\"\n\
             cert = {missing:?}\nkey = {:?}\nupstream = \"127.0.0.1:10025\"\n",
            certs.key
        )
        + &listener("c", 2465, "none", None, "mta.internal", "");
    let out = check_config(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    for needle in [
        "listener[a].tls: \"tls13\" is not allowed",
        &format!("listener[b].cert: cannot read {}", missing.display()),
        "listener[c].upstream: \"mta.internal\" has no port",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }

    let good = base_config(dir.path())
        + &listener("a", 2525, "none", None, "127.0.0.1:10025", "")
        + &listener("b", 2587, "starttls", Some(&certs), "127.0.0.1:10025", "");
    let out = check_config(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[tokio::test]
async fn idle_client_times_out() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "[timeouts]\nclient_command = \"1s\"\n", "");
    let _mb = Mailbrake::start(&cfg);
    let connected = Instant::now();
    let mut c = Raw::connect(addr).await;
    expect(&c.reply().await.unwrap(), "220 ");
    let rest = c.closed().await;
    assert_eq!(rest, "421 4.4.2 mb.test Error: timeout exceeded\r\n");
    assert!(connected.elapsed() >= Duration::from_secs(1));
    // The upstream leg is closed too, having seen nothing from the client.
    assert_eq!(up.next_close().await, b"");
}

#[tokio::test]
async fn silent_upstream_times_out() {
    let mut up = Upstream::start(Opts {
        stall_on: Some("MAIL"),
        ..Opts::default()
    })
    .await;
    let (cfg, addr) = one_listener(up.addr, "[timeouts]\nupstream_command = \"1s\"\n", "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    greet(&mut c).await;
    let sent = Instant::now();
    c.send(b"MAIL FROM:<a@x.test>\r\n").await;
    let rest = c.closed().await;
    assert_eq!(
        rest,
        "421 4.4.2 mb.test mail server timed out, try again later\r\n"
    );
    assert!(sent.elapsed() >= Duration::from_secs(1));
    let seen = up.next_close().await;
    assert!(
        seen.ends_with(b"MAIL FROM:<a@x.test>\r\n"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_never_reads_is_closed() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = one_listener(up.addr, "[timeouts]\nclient_command = \"1s\"\n", "");
    let mut mb = Mailbrake::start(&cfg);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Pipeline NOOPs inside a transaction (so no command limit applies) and
    // never read a reply: mailbrake's writes to this client stall.
    let batch = b"EHLO c\r\nMAIL FROM:<a@x>\r\n"
        .iter()
        .copied()
        .chain(b"NOOP\r\n".repeat(10_000))
        .collect::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut written = 0usize;
        // Bounded: at most 1 GB, stops at the first error (mailbrake closed).
        while written < 1 << 30 {
            if stream.write_all(&batch).await.is_err() {
                break;
            }
            written += batch.len();
        }
        written
    });
    let line = tokio::task::block_in_place(|| mb.wait_log("client not reading"));
    assert!(line.contains("closing"), "{line}");
    up.next_close().await;
    let written = writer.await.unwrap();
    assert!(
        written < 1 << 30,
        "mailbrake kept reading a client that never reads"
    );
}
