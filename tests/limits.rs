//! Recipient limits end to end: the mailbrake binary between a raw SMTP
//! client and the recording upstream, on 127.0.0.1. What the client is told,
//! what reaches the upstream, what the log says, and what survives a restart.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use common::upstream::{Opts, Upstream};
use common::*;

/// The password the upstream accepts for every user.
const PASSWORD: &str = "secret";
/// A message whose body contains this is refused (554) by the upstream.
const REFUSE_MARK: &str = "X-Please-Refuse";
/// `[protect]` for tests about recipient limits only: every test opens
/// several connections.
const NO_PROTECT: &str = "connections_per_ip = \"off\"\n";

/// A whole config: `limits` is the body of `[limits]` (which may end with
/// `[[limits.override]]` tables), `protect` the body of `[protect]`.
fn config(state: &Path, port: u16, up: SocketAddr, limits: &str, protect: &str) -> String {
    format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [protect]\n{protect}\n[limits]\n{limits}\n",
        state.join("state")
    ) + &listener(
        "smtp",
        port,
        "none",
        None,
        &up.to_string(),
        "allow_plaintext_auth = true",
    )
}

/// One mailbrake with its recording upstream and state directory.
struct Rig {
    mb: Mailbrake,
    up: Upstream,
    port: u16,
    state: tempfile::TempDir,
}

impl Rig {
    async fn start(limits: &str, protect: &str) -> Rig {
        let up = Upstream::start(Opts {
            auth: true,
            any_user_password: Some(PASSWORD),
            refuse_data_containing: Some(REFUSE_MARK),
            ..Opts::default()
        })
        .await;
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let mb = Mailbrake::start(&config(state.path(), port, up.addr, limits, protect));
        Rig {
            mb,
            up,
            port,
            state,
        }
    }

    /// A new mailbrake on the same state directory and upstream.
    fn restart(&mut self, limits: &str) {
        self.port = free_port();
        let cfg = config(
            self.state.path(),
            self.port,
            self.up.addr,
            limits,
            NO_PROTECT,
        );
        self.mb = Mailbrake::start(&cfg);
    }

    /// A greeted session, authenticated as `user` if given.
    async fn session(&self, user: Option<&str>) -> Raw {
        let mut c = Box::pin(Raw::greeted(self.port)).await;
        if let Some(user) = user {
            auth(&mut c, user).await;
        }
        c
    }

    /// Waits for `n` log lines containing `needle`; returns them.
    fn wait_logs(&mut self, needle: &str, n: usize) -> Vec<String> {
        tokio::task::block_in_place(|| (0..n).map(|_| self.mb.wait_log(needle)).collect())
    }
}

// `Raw`'s reads keep a 64 KiB buffer in their futures: boxed here, so that
// a test's own future stays small enough for the test thread's stack.

async fn cmd(c: &mut Raw, line: &str) -> String {
    Box::pin(c.cmd(line)).await
}

async fn reply(c: &mut Raw) -> Option<String> {
    Box::pin(c.reply()).await
}

async fn closed(c: &mut Raw) -> String {
    Box::pin(c.closed()).await
}

/// AUTH PLAIN as `user` with the right password; expects 235.
async fn auth(c: &mut Raw, user: &str) {
    let blob = STANDARD.encode(format!("\0{user}\0{PASSWORD}"));
    expect(&cmd(c, &format!("AUTH PLAIN {blob}")).await, "235");
}

/// AUTH PLAIN as `user` with a wrong password; returns the reply.
async fn auth_wrong(c: &mut Raw, user: &str) -> String {
    let blob = STANDARD.encode(format!("\0{user}\0not-the-password"));
    cmd(c, &format!("AUTH PLAIN {blob}")).await
}

/// `n` recipient addresses starting with `prefix`.
fn rcpts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{prefix}{i}@remote.test"))
        .collect()
}

/// Pipelines `MAIL FROM` and one `RCPT TO` per address in one write; returns
/// the RCPT replies in order.
async fn mail_rcpt(c: &mut Raw, to: &[String]) -> Vec<String> {
    let mut cmds = String::from("MAIL FROM:<sender@example.net>\r\n");
    for rcpt in to {
        cmds += &format!("RCPT TO:<{rcpt}>\r\n");
    }
    c.send(cmds.as_bytes()).await;
    expect(&reply(c).await.expect("closed after MAIL"), "250");
    let mut replies = Vec::new();
    for _ in to {
        replies.push(reply(c).await.expect("closed after RCPT"));
    }
    replies
}

/// DATA with `body`; returns the end-of-data reply.
async fn data(c: &mut Raw, body: &str) -> String {
    expect(&cmd(c, "DATA").await, "354");
    cmd(c, &format!("Subject: test\r\n\r\n{body}\r\n.")).await
}

/// A whole message: MAIL and RCPTs pipelined, then DATA (expecting 250) if
/// any recipient was accepted, else RSET. Returns the RCPT replies.
async fn send_message(c: &mut Raw, to: &[String]) -> Vec<String> {
    let replies = mail_rcpt(c, to).await;
    if accepted(&replies) > 0 {
        expect(&data(c, "hello").await, "250");
    } else {
        expect(&cmd(c, "RSET").await, "250");
    }
    replies
}

fn accepted(replies: &[String]) -> usize {
    replies.iter().filter(|r| r.starts_with("250")).count()
}

/// Asserts an over-the-limit refusal: `code`, the key and the rate.
#[track_caller]
fn assert_limit_refusal(reply: &str, code: &str, key: &str, rate: &str) {
    assert!(
        reply.starts_with(code)
            && reply.contains(&format!("Recipient limit reached for {key} ({rate});")),
        "expected {code} naming {key} and {rate}, got {reply:?}"
    );
}

/// The RCPT replies are `ok` times 250, then refusals over the limit.
#[track_caller]
fn assert_split(replies: &[String], ok: usize, code: &str, key: &str, rate: &str) {
    assert_eq!(accepted(&replies[..ok]), ok, "{replies:#?}");
    for r in &replies[ok..] {
        assert_limit_refusal(r, code, key, rate);
    }
}

/// How many `RCPT TO` commands reached the upstream on one connection.
fn rcpt_commands(seen: &[u8]) -> usize {
    String::from_utf8_lossy(seen).matches("RCPT TO:").count()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks `... next recipient accepted in N min (HH:MM UTC)` for a slot that
/// frees `wait` seconds from about now.
#[track_caller]
fn assert_next_free(reply: &str, wait: u64) {
    let rest = reply
        .trim_end()
        .split_once("next recipient accepted in ")
        .unwrap_or_else(|| panic!("no next-recipient time in {reply:?}"))
        .1;
    let (minutes, clock) = rest
        .split_once(" min (")
        .unwrap_or_else(|| panic!("no minutes in {reply:?}"));
    let minutes: u64 = minutes.parse().unwrap();
    assert!(
        (wait / 60 - 1..=wait / 60).contains(&minutes),
        "{minutes} min in {reply:?}"
    );
    let clock = clock.strip_suffix(" UTC)").expect("HH:MM UTC)");
    let (h, m) = clock.split_once(':').unwrap();
    let at = (h.parse::<u64>().unwrap() * 60 + m.parse::<u64>().unwrap()) * 60;
    let expected = (now_unix() + wait) % 86_400;
    let diff = (at + 86_400 - expected + 43_200) % 86_400;
    assert!(
        diff.abs_diff(43_200) <= 180,
        "{clock} is not about {wait} s from now: {reply:?}"
    );
}

// === Counting per sender key ===

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_recipients_are_deferred_and_never_reach_the_upstream() {
    let mut rig = Rig::start(
        "default = \"12/1h\"\naction = \"defer\"\nlock_after_refusals = 0\n",
        NO_PROTECT,
    )
    .await;
    let to = rcpts("a", 15);
    let mut c = rig.session(Some("alice")).await;
    let replies = send_message(&mut c, &to).await;
    assert_split(&replies, 12, "450 4.7.1", "auth:alice", "12/1h");
    // While the 12 are still pending, no time can be promised yet.
    assert!(
        replies[12].contains("next recipient accepted when messages in progress are sent"),
        "{}",
        replies[12]
    );
    let m = rig.up.next_message().await;
    assert_eq!(m.rcpts, to[..12], "delivered to exactly the first 12");

    // Once sent, the next slot frees when the first of them leaves the hour.
    let replies = send_message(&mut c, &rcpts("later", 1)).await;
    assert_limit_refusal(&replies[0], "450 4.7.1", "auth:alice", "12/1h");
    assert_next_free(&replies[0], 3600);
    expect(&cmd(&mut c, "QUIT").await, "221");
    let seen = rig.up.next_close().await;
    assert_eq!(
        rcpt_commands(&seen),
        12,
        "refused RCPTs must not be forwarded:\n{}",
        String::from_utf8_lossy(&seen)
    );

    // Another user has a window of its own, even while alice's is full.
    let mut c = rig.session(Some("carol")).await;
    let replies = send_message(&mut c, &rcpts("c", 15)).await;
    assert_split(&replies, 12, "450 4.7.1", "auth:carol", "12/1h");
    assert_eq!(rig.up.next_message().await.rcpts, rcpts("c", 12));

    let lines = rig.wait_logs("recipient refused", 3);
    assert!(lines.iter().all(|l| l.contains("auth:alice")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exempt_users_are_not_limited_and_overrides_raise_the_limit() {
    let mut rig = Rig::start(
        "default = \"12/1h\"\nexempt_users = [\"lists@example.net\"]\n\
         [[limits.override]]\nkey = \"auth:bob\"\nlimit = \"20/1h\"\n",
        NO_PROTECT,
    )
    .await;
    let mut c = rig.session(Some("lists@example.net")).await;
    let to = rcpts("l", 30);
    let replies = send_message(&mut c, &to).await;
    assert_eq!(accepted(&replies), 30, "{replies:#?}");
    assert_eq!(rig.up.next_message().await.rcpts, to);
    // And it stays unlimited once sent.
    let replies = send_message(&mut c, &rcpts("l2-", 5)).await;
    assert_eq!(accepted(&replies), 5, "{replies:#?}");
    rig.up.next_message().await;

    let mut c = rig.session(Some("bob")).await;
    let replies = send_message(&mut c, &rcpts("b", 25)).await;
    assert_split(&replies, 20, "450 4.7.1", "auth:bob", "20/1h");
    assert_eq!(rig.up.next_message().await.rcpts, rcpts("b", 20));

    // The default still applies to everyone else.
    let mut c = rig.session(Some("alice")).await;
    let replies = send_message(&mut c, &rcpts("a", 13)).await;
    assert_split(&replies, 12, "450 4.7.1", "auth:alice", "12/1h");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_the_key_is_the_client_address() {
    // The test's client is on this host, so by default it would be its Unix
    // user (tests/unix_socket.rs, tests/uids.rs): the order here leaves that
    // source out, as an operator who counts by address would.
    let mut rig = Rig::start(
        "default = \"2/1h\"\nidentity = [\"auth\", \"vhost\", \"ip\"]\n",
        NO_PROTECT,
    )
    .await;
    let mut c = rig.session(None).await;
    let replies = send_message(&mut c, &rcpts("x", 3)).await;
    assert_split(&replies, 2, "450 4.7.1", "ip:127.0.0.1", "2/1h");
    assert_eq!(rig.up.next_message().await.rcpts, rcpts("x", 2));
    // A second connection from the same address shares the key; with every
    // recipient refused, DATA is refused without asking the upstream.
    let mut c = rig.session(None).await;
    let replies = mail_rcpt(&mut c, &rcpts("y", 1)).await;
    assert_split(&replies, 0, "450 4.7.1", "ip:127.0.0.1", "2/1h");
    expect(&cmd(&mut c, "DATA").await, "554 5.5.1");
    expect(&cmd(&mut c, "QUIT").await, "221");
    // The first session is still open: this is the second one's connection.
    let seen = String::from_utf8_lossy(&rig.up.next_close().await).into_owned();
    assert!(!seen.contains("RCPT") && !seen.contains("DATA"), "{seen}");
}

// === Actions ===

#[tokio::test(flavor = "multi_thread")]
async fn reject_action_refuses_permanently() {
    let mut rig = Rig::start("default = \"12/1h\"\naction = \"reject\"\n", NO_PROTECT).await;
    let mut c = rig.session(Some("alice")).await;
    let replies = send_message(&mut c, &rcpts("a", 15)).await;
    assert_split(&replies, 12, "550 5.7.1", "auth:alice", "12/1h");
    assert_eq!(rig.up.next_message().await.rcpts.len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_action_accepts_everything_and_logs_what_it_would_refuse() {
    let mut rig = Rig::start("default = \"12/1h\"\naction = \"observe\"\n", NO_PROTECT).await;
    let mut c = rig.session(Some("alice")).await;
    let to = rcpts("a", 15);
    let replies = send_message(&mut c, &to).await;
    assert_eq!(accepted(&replies), 15, "{replies:#?}");
    assert_eq!(rig.up.next_message().await.rcpts, to);
    let lines = rig.wait_logs("observe mode", 3);
    for l in &lines {
        assert!(
            l.contains("would_reply")
                && l.contains("450 4.7.1 Recipient limit reached for auth:alice (12/1h)"),
            "{l}"
        );
    }
    assert!(!rig.mb.logs().contains("recipient refused"));
}

// === State across restarts ===

const RESTART_LIMITS: &str = "default = \"12/1h\"\n";

/// Sends 10 recipients as alice and waits until they are delivered.
async fn send_ten(rig: &mut Rig) {
    let mut c = rig.session(Some("alice")).await;
    let replies = send_message(&mut c, &rcpts("a", 10)).await;
    assert_eq!(accepted(&replies), 10);
    rig.up.next_message().await;
    expect(&cmd(&mut c, "QUIT").await, "221");
}

/// After a restart, alice has 2 left of her 12.
async fn only_two_left(rig: &mut Rig) {
    let logs = rig.mb.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("limits restored") && l.contains("keys=1")),
        "{logs}"
    );
    let mut c = rig.session(Some("alice")).await;
    let replies = send_message(&mut c, &rcpts("r", 5)).await;
    assert_split(&replies, 2, "450 4.7.1", "auth:alice", "12/1h");
    assert_eq!(rig.up.next_message().await.rcpts, rcpts("r", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_graceful_restart() {
    let mut rig = Rig::start(RESTART_LIMITS, NO_PROTECT).await;
    send_ten(&mut rig).await;
    rig.mb.signal("TERM");
    assert!(tokio::task::block_in_place(|| rig.mb.wait_exit()).success());
    rig.restart(RESTART_LIMITS);
    only_two_left(&mut rig).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_kill_9_after_the_flush_interval() {
    let mut rig = Rig::start(RESTART_LIMITS, NO_PROTECT).await;
    send_ten(&mut rig).await;
    // The feature is "a crash loses at most FLUSH_INTERVAL": let two pass.
    tokio::time::sleep(mailbrake::state::FLUSH_INTERVAL * 2).await;
    rig.mb.child.kill().unwrap();
    rig.mb.child.wait().unwrap();
    rig.restart(RESTART_LIMITS);
    only_two_left(&mut rig).await;
}

// === Concurrency and transactions ===

#[tokio::test(flavor = "multi_thread")]
async fn parallel_pipelined_sessions_share_one_window() {
    let rig = Rig::start("default = \"12/1h\"\nlock_after_refusals = 0\n", NO_PROTECT).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(rig.session(Some("alice")).await);
    }
    // All five authenticated first, then released together.
    let start = Arc::new(tokio::sync::Barrier::new(5));
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let replies = send_message(&mut c, &rcpts(&format!("s{i}-"), 5)).await;
                expect(&cmd(&mut c, "QUIT").await, "221");
                replies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(accepted(&all), 12, "{all:#?}");
    for r in all.iter().filter(|r| !r.starts_with("250")) {
        assert_limit_refusal(r, "450 4.7.1", "auth:alice", "12/1h");
    }
    // Every session waited for its DATA reply: all messages are recorded.
    let delivered: usize = rig
        .up
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.rcpts.len())
        .sum();
    assert_eq!(delivered, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn recipients_of_transactions_that_are_not_sent_are_not_counted() {
    let mut rig = Rig::start("default = \"12/1h\"\nlock_after_refusals = 0\n", NO_PROTECT).await;
    let mut c = rig.session(Some("alice")).await;

    // 12 recipients, then RSET: nothing was sent.
    let replies = mail_rcpt(&mut c, &rcpts("rset", 12)).await;
    assert_eq!(accepted(&replies), 12, "{replies:#?}");
    expect(&cmd(&mut c, "RSET").await, "250");

    // 12 more, but the upstream refuses the message: nothing was sent.
    let replies = mail_rcpt(&mut c, &rcpts("refused", 12)).await;
    assert_eq!(accepted(&replies), 12, "{replies:#?}");
    expect(&data(&mut c, REFUSE_MARK).await, "554");

    // Recipients the upstream refuses are not sent either.
    expect(&cmd(&mut c, "MAIL FROM:<sender@example.net>").await, "250");
    for i in 1..=3 {
        expect(
            &cmd(&mut c, &format!("RCPT TO:<reject{i}@remote.test>")).await,
            "550 5.1.1",
        );
    }
    expect(&cmd(&mut c, "RSET").await, "250");

    // So the whole hour is still free: 12 go, the 13th is over the limit.
    let to = rcpts("sent", 13);
    let replies = send_message(&mut c, &to).await;
    assert_split(&replies, 12, "450 4.7.1", "auth:alice", "12/1h");
    assert_eq!(rig.up.next_message().await.rcpts, to[..12]);
    assert_eq!(rig.up.messages.lock().unwrap().len(), 1);
}

// === Locks ===

#[tokio::test(flavor = "multi_thread")]
async fn too_many_refusals_lock_the_sender() {
    let mut rig = Rig::start(
        "default = \"12/1h\"\nlock_after_refusals = 3\nlock_duration = \"24h\"\n\
         contact = \"abuse@example.net\"\n",
        NO_PROTECT,
    )
    .await;
    let mut c = rig.session(Some("alice")).await;
    let replies = mail_rcpt(&mut c, &rcpts("a", 17)).await;
    assert_split(&replies[..16], 12, "450 4.7.1", "auth:alice", "12/1h");
    let locked = &replies[16];
    assert!(
        locked.starts_with(
            "450 4.7.1 Sender auth:alice is locked (4 refused recipients) for 24 h (until "
        ) && locked.contains("contact abuse@example.net"),
        "{locked:?}"
    );
    expect(&data(&mut c, "hello").await, "250");
    assert_eq!(rig.up.next_message().await.rcpts.len(), 12);
    let line = rig.wait_logs("sender locked", 1).remove(0);
    assert!(line.contains("auth:alice"), "{line}");

    // Locked for every session, whatever the window says.
    let mut c = rig.session(Some("alice")).await;
    let replies = mail_rcpt(&mut c, &rcpts("later", 1)).await;
    assert!(
        replies[0].starts_with("450 4.7.1 Sender auth:alice is locked"),
        "{replies:?}"
    );
    // Other senders are not.
    let mut c = rig.session(Some("carol")).await;
    assert_eq!(accepted(&mail_rcpt(&mut c, &rcpts("c", 1)).await), 1);
}

// === Short-term protection ===

#[tokio::test(flavor = "multi_thread")]
async fn connections_too_fast_from_one_address_get_421() {
    let rig = Rig::start(
        "default = \"unlimited\"\n",
        "connections_per_ip = \"3/1m\"\n",
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(rig.session(None).await);
    }
    let mut fourth = Raw::connect(([127, 0, 0, 1], rig.port).into()).await;
    let reply = reply(&mut fourth).await.expect("no reply");
    assert!(
        reply.starts_with("421 4.7.0") && reply.contains("too many connections"),
        "{reply:?}"
    );
    assert_eq!(closed(&mut fourth).await, "");
    // The three admitted sessions still work.
    for c in &mut open {
        expect(&cmd(c, "NOOP").await, "250");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_auth_failures_from_one_address_get_421() {
    let mut rig = Rig::start(
        "default = \"unlimited\"\n",
        "connections_per_ip = \"off\"\nauth_failures_per_ip = \"2/10m\"\n",
    )
    .await;
    let mut c = rig.session(None).await;
    for _ in 0..3 {
        expect(&auth_wrong(&mut c, "alice").await, "535");
    }
    let reply = auth_wrong(&mut c, "alice").await;
    assert!(
        reply.starts_with("421 4.7.0") && reply.contains("too many failed authentications"),
        "{reply:?}"
    );
    assert_eq!(closed(&mut c).await, "");
    rig.wait_logs("too many failed AUTH", 1);
    let seen = rig.up.next_close().await;
    assert_eq!(
        String::from_utf8_lossy(&seen).matches("AUTH PLAIN").count(),
        3,
        "the refused attempt must not reach the upstream"
    );

    // The address is refused even with the right password, even as another user.
    let mut c = Box::pin(Raw::greeted(rig.port)).await;
    let blob = STANDARD.encode(format!("\0carol\0{PASSWORD}"));
    expect(
        &cmd(&mut c, &format!("AUTH PLAIN {blob}")).await,
        "421 4.7.0",
    );
}

// === Overrides by network ===

/// The config check accepts an `ip:` override naming an IPv4 network, so it
/// must either be refused there (naming the override) or raise or lower the
/// limit of the addresses in it; it may not be silently ignored.
#[tokio::test(flavor = "multi_thread")]
async fn an_ipv4_network_override_is_applied_or_refused_never_ignored() {
    // Counted by address (a client on this host is otherwise its user).
    let limits = "default = \"12/1h\"\nidentity = [\"auth\", \"vhost\", \"ip\"]\n\
                  [[limits.override]]\nkey = \"ip:127.0.0.0/8\"\nlimit = \"3/1h\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbrake.toml");
    let up_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    std::fs::write(
        &path,
        config(dir.path(), free_port(), up_addr, limits, NO_PROTECT),
    )
    .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_mailbrake"))
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    if !check.status.success() {
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(err.contains("limits.override[ip:127.0.0.0/8]"), "{err}");
        return;
    }
    let rig = Rig::start(limits, NO_PROTECT).await;
    let mut c = rig.session(None).await;
    let replies = send_message(&mut c, &rcpts("n", 4)).await;
    assert_eq!(
        accepted(&replies),
        3,
        "127.0.0.1 is in the override's network 127.0.0.0/8 (3/1h), yet: {replies:#?}"
    );
    assert!(
        replies[3].starts_with("450 4.7.1") && replies[3].contains("(3/1h)"),
        "{:?}",
        replies[3]
    );
}
