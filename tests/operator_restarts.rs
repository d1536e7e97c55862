//! Every operator action on a sender's state — reset, lock, unlock, raise,
//! exempt, clear — survives a restart of the binary, graceful (SIGTERM) or
//! not (kill -9 once the state thread has written it), with the local
//! database and in fleet mode: what the client is told after the restart,
//! and what `mailbrake sender show` says.
//!
//! Each test acts on alice, stops mailbrake with SIGTERM and starts it
//! again; then acts on bob, waits until the change is on disk (the state
//! thread writes every second: the test polls the database, or Redis for
//! a fleet's sends), kills mailbrake with SIGKILL and starts it again.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use common::admin::{cli, generated_token};
use common::redis::Redis;
use common::upstream::{Opts, Upstream};
use common::*;
use serde_json::{Value, json};

/// How mailbrake is stopped before it starts again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: drain, write what is left, exit.
    Term,
    /// SIGKILL: nothing more is written.
    Kill,
}

/// One mailbrake (`3/1h`, plain AUTH) on a state directory that outlives
/// it, and its recording upstream; in fleet mode, its own redis-server.
struct Rig {
    mb: Mailbrake,
    admin: SocketAddr,
    port: u16,
    /// `[state] dir`: the database and the token mailbrake makes.
    state: PathBuf,
    redis: Option<Redis>,
    _up: Upstream,
    _dir: tempfile::TempDir,
}

/// The prefix of a fleet's keys in Redis.
const PREFIX: &str = "restarts:";

impl Rig {
    async fn start(fleet: bool) -> Rig {
        let up = Upstream::start(Opts {
            any_user_password: Some("secret"),
            ..Opts::default()
        })
        .await;
        let redis = fleet.then(Redis::start);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let backend = match &redis {
            Some(r) => format!(
                "backend = \"redis\"\nredis_url = {:?}\nredis_prefix = {PREFIX:?}\n",
                r.url()
            ),
            None => String::new(),
        };
        let port = free_port();
        let cfg = format!(
            "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n\
             [state]\ndir = {state:?}\n{backend}\
             [limits]\ndefault = \"3/1h\"\nrotation = \"off\"\nlock_after_refusals = 0\n\
             [protect]\nconnections_per_ip = \"off\"\n"
        ) + &plain_auth_listener("l", port, up.addr);
        let mut mb = Mailbrake::start(&cfg);
        if fleet {
            mb.logged("fleet state in Redis: connected");
        }
        let admin = admin_addr(&mut mb);
        Rig {
            mb,
            admin,
            port,
            state,
            redis,
            _up: up,
            _dir: dir,
        }
    }

    /// Stops mailbrake as `stop` says and starts it again on the same
    /// configuration, state directory and Redis.
    fn restart(&mut self, stop: Stop) {
        tokio::task::block_in_place(|| {
            match stop {
                Stop::Term => {
                    self.mb.signal("TERM");
                    assert!(self.mb.wait_exit().success(), "{}", self.mb.logs());
                }
                Stop::Kill => {
                    self.mb.child.kill().unwrap();
                    self.mb.child.wait().unwrap();
                }
            }
            let cfg = std::fs::read_to_string(&self.mb.config).unwrap();
            self.mb = Mailbrake::start(&cfg);
            if self.redis.is_some() {
                self.mb.logged("fleet state in Redis: connected");
            }
            self.admin = admin_addr(&mut self.mb);
        });
    }

    /// The CLI with the token this process made; (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let token = generated_token(&self.state);
        tokio::task::block_in_place(|| cli(self.admin, &token, args))
    }

    /// `mailbrake sender ACTION KEY [EXTRA…] --reason …`, which must succeed.
    fn act(&self, action: &str, key: &str, extra: &[&str]) {
        let mut args = vec!["sender", action, key];
        args.extend(extra);
        args.extend(["--reason", "restart test"]);
        let (code, out, err) = self.cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }

    /// `mailbrake sender show KEY --json`.
    fn show(&self, key: &str) -> Value {
        let (code, out, err) = self.cli(&["sender", "show", key, "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Logs in as `user` and offers `n` recipients in one message; how many
    /// were accepted (the message is sent if any was), and the first
    /// refusal.
    async fn send(&self, user: &str, n: usize) -> (usize, Option<String>) {
        let mut c = Raw::greeted(self.port).await;
        let blob = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
        expect(&c.cmd(&format!("AUTH PLAIN {blob}")).await, "235");
        let replies = c.recipients(n).await;
        let ok = replies.iter().filter(|r| r.starts_with("250")).count();
        if ok > 0 {
            expect(&c.cmd("DATA").await, "354");
            c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n").await;
            expect(&c.reply().await.unwrap(), "250");
        } else {
            expect(&c.cmd("RSET").await, "250");
        }
        expect(&c.cmd("QUIT").await, "221");
        (ok, replies.into_iter().find(|r| !r.starts_with("250")))
    }

    /// How many of `n` recipients `user` may send now.
    async fn accepted(&self, user: &str, n: usize) -> usize {
        self.send(user, n).await.0
    }

    /// One query on the database mailbrake writes (read beside it, as WAL allows).
    fn query<T: rusqlite::types::FromSql>(&self, sql: &str, key: &str) -> Option<T> {
        let db = rusqlite::Connection::open(self.state.join("mailbrake.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = db.prepare(sql).unwrap();
        let mut rows = stmt.query([key]).unwrap();
        rows.next().unwrap().map(|row| row.get(0).unwrap())
    }

    /// `key`'s sends kept for its window: rows in the database, or in fleet
    /// mode the sends in Redis.
    fn sends_kept(&self, key: &str) -> u64 {
        match &self.redis {
            Some(r) => r
                .cli(&["ZCARD", &format!("{PREFIX}s:{{{key}}}")])
                .parse()
                .unwrap(),
            None => self
                .query::<i64>(
                    "SELECT COALESCE(SUM(count), 0) FROM sent WHERE key = ?1",
                    key,
                )
                .map_or(0, |n| n as u64),
        }
    }

    /// The reason of `key`'s lock in the database.
    fn lock_kept(&self, key: &str) -> Option<String> {
        self.query("SELECT reason FROM locks WHERE key = ?1", key)
    }

    /// `key`'s override in the database, as written ("exempt" for an exemption).
    fn override_kept(&self, key: &str) -> Option<String> {
        self.query(
            "SELECT CASE exempt WHEN 1 THEN 'exempt' ELSE limits END FROM overrides WHERE key = ?1",
            key,
        )
    }
}

/// Polls `read` until it gives `want` (every 20 ms, at most 20 s): what the
/// state thread writes once a second, or a commit on its way to Redis.
#[track_caller]
fn await_kept<T: PartialEq + std::fmt::Debug>(what: &str, read: impl Fn() -> T, want: T) {
    let deadline = Instant::now() + Duration::from_secs(20);
    tokio::task::block_in_place(|| {
        loop {
            let got = read();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {got:?}, never {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Recipients counted in `show`'s first (only) window.
fn recipients(show: &Value) -> u64 {
    show["windows"][0]["recipients"].as_u64().unwrap()
}

/// What an operator set on a sender, as `sender show` has it: its limit
/// and where it comes from, its lock, its override.
fn set(show: &Value) -> Value {
    json!({"limit": show["limit"], "lock": show["lock"], "override": show["override"]})
}

/// A unix time about a day from now, as `--for 1d` sets it.
#[track_caller]
fn about_a_day_ahead(t: &Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = t.as_u64().unwrap_or_else(|| panic!("not a time: {t}"));
    assert!((now + 86_000..=now + 86_400).contains(&t), "{t} at {now}");
}

impl Rig {
    /// Whether `user`'s next recipient is refused because it is locked.
    async fn locked(&self, user: &str) -> bool {
        match self.send(user, 1).await {
            (0, Some(r)) => {
                assert!(
                    r.starts_with(&format!("450 4.7.1 Sender auth:{user} is locked")),
                    "{r}"
                );
                true
            }
            (1, None) => false,
            other => panic!("{other:?}"),
        }
    }
}

const ALICE: &str = "auth:alice";
const BOB: &str = "auth:bob";

// === reset ===

async fn reset_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    for (user, key) in [("alice", ALICE), ("bob", BOB)] {
        assert_eq!(r.accepted(user, 5).await, 3, "the default 3/1h");
        // Written before the reset, as in the report: 5/5 on disk, reset.
        await_kept(&format!("{key}'s sends"), || r.sends_kept(key), 3);
    }

    r.act("reset", ALICE, &[]);
    assert_eq!(recipients(&r.show(ALICE)), 0);
    r.restart(Stop::Term);
    assert_eq!(recipients(&r.show(ALICE)), 0, "the reset came back undone");
    assert_eq!(recipients(&r.show(BOB)), 3, "only alice was reset");
    assert_eq!(r.accepted("alice", 5).await, 3);
    assert_eq!(r.accepted("bob", 1).await, 0);

    // Sends after a reset count, and survive a kill once written.
    await_kept("alice's sends after her reset", || r.sends_kept(ALICE), 3);
    r.act("reset", BOB, &[]);
    await_kept("bob's reset", || r.sends_kept(BOB), 0);
    r.restart(Stop::Kill);
    assert_eq!(recipients(&r.show(BOB)), 0, "the reset came back undone");
    assert_eq!(recipients(&r.show(ALICE)), 3, "sent after her reset");
    assert_eq!(r.accepted("bob", 5).await, 3);
    assert_eq!(r.accepted("alice", 1).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_survives_restarts() {
    reset_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_survives_restarts_in_fleet_mode() {
    reset_survives_restarts(true).await;
}

// === lock ===

async fn lock_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    r.act("lock", ALICE, &[]);
    let before = set(&r.show(ALICE));
    r.restart(Stop::Term);
    assert!(
        r.locked("alice").await,
        "the lock was lost; mailbrake logged:\n{}",
        r.mb.logs()
    );
    assert_eq!(set(&r.show(ALICE)), before);
    assert!(
        before["lock"]["reason"]
            .as_str()
            .unwrap()
            .contains("restart test")
    );
    assert!(
        !r.locked("bob").await,
        "only alice was locked; mailbrake logged:\n{}",
        r.mb.logs()
    );

    r.act("lock", BOB, &["--for", "1d"]);
    let before = set(&r.show(BOB));
    await_kept("bob's lock", || r.lock_kept(BOB).is_some(), true);
    r.restart(Stop::Kill);
    assert!(
        r.locked("bob").await,
        "the lock was lost; mailbrake logged:\n{}",
        r.mb.logs()
    );
    assert_eq!(set(&r.show(BOB)), before);
    about_a_day_ahead(&before["lock"]["until"]);
    assert!(
        r.locked("alice").await,
        "locked or not as before; mailbrake logged:\n{}",
        r.mb.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_survives_restarts() {
    lock_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_survives_restarts_in_fleet_mode() {
    lock_survives_restarts(true).await;
}

// === unlock ===

async fn unlock_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    for key in [ALICE, BOB] {
        r.act("lock", key, &[]);
        // On disk before the unlock: a lost unlock would bring it back.
        await_kept(
            &format!("{key}'s lock"),
            || r.lock_kept(key).is_some(),
            true,
        );
    }

    r.act("unlock", ALICE, &[]);
    r.restart(Stop::Term);
    assert!(
        !r.locked("alice").await,
        "the unlock was lost; mailbrake logged:\n{}",
        r.mb.logs()
    );
    assert_eq!(r.show(ALICE)["lock"], Value::Null);
    assert!(
        r.locked("bob").await,
        "only alice was unlocked; mailbrake logged:\n{}",
        r.mb.logs()
    );

    r.act("unlock", BOB, &[]);
    await_kept("bob's unlock", || r.lock_kept(BOB), None);
    r.restart(Stop::Kill);
    assert!(
        !r.locked("bob").await,
        "the unlock was lost; mailbrake logged:\n{}",
        r.mb.logs()
    );
    assert_eq!(r.show(BOB)["lock"], Value::Null);
    assert!(
        !r.locked("alice").await,
        "locked or not as before; mailbrake logged:\n{}",
        r.mb.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlock_survives_restarts() {
    unlock_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlock_survives_restarts_in_fleet_mode() {
    unlock_survives_restarts(true).await;
}

// === raise ===

async fn raise_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    r.act("raise", ALICE, &["--to", "6/1h"]);
    let before = set(&r.show(ALICE));
    r.restart(Stop::Term);
    assert_eq!(set(&r.show(ALICE)), before);
    assert_eq!(before["override"]["limit"], "6/1h");
    assert_eq!(before["limit"]["source"], "override");
    assert_eq!(r.accepted("alice", 8).await, 6, "6/1h after the restart");

    r.act("raise", BOB, &["--to", "5/1h", "--for", "1d"]);
    let before = set(&r.show(BOB));
    assert_eq!(r.accepted("bob", 2).await, 2);
    await_kept(
        "bob's override",
        || r.override_kept(BOB),
        Some("5/1h".into()),
    );
    // The sends under the raise, too: all six of alice's count after it.
    await_kept("bob's sends", || r.sends_kept(BOB), 2);
    await_kept("alice's sends", || r.sends_kept(ALICE), 6);
    r.restart(Stop::Kill);
    assert_eq!(set(&r.show(BOB)), before);
    about_a_day_ahead(&before["override"]["until"]);
    assert_eq!(recipients(&r.show(BOB)), 2);
    assert_eq!(r.accepted("bob", 8).await, 3);
    assert_eq!(recipients(&r.show(ALICE)), 6);
    assert_eq!(
        r.accepted("alice", 1).await,
        0,
        "6 of 6 sent before the kill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raise_survives_restarts() {
    raise_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raise_survives_restarts_in_fleet_mode() {
    raise_survives_restarts(true).await;
}

// === exempt ===

async fn exempt_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    assert_eq!(r.accepted("alice", 5).await, 3, "the default 3/1h");
    r.act("exempt", ALICE, &[]);
    let before = set(&r.show(ALICE));
    r.restart(Stop::Term);
    assert_eq!(set(&r.show(ALICE)), before);
    assert_eq!(before["limit"]["source"], "exempt");
    assert_eq!(
        r.accepted("alice", 10).await,
        10,
        "exempt after the restart"
    );

    r.act("exempt", BOB, &["--for", "1d"]);
    let before = set(&r.show(BOB));
    await_kept(
        "bob's exemption",
        || r.override_kept(BOB),
        Some("exempt".into()),
    );
    r.restart(Stop::Kill);
    assert_eq!(set(&r.show(BOB)), before);
    about_a_day_ahead(&before["override"]["until"]);
    assert_eq!(r.accepted("bob", 10).await, 10);
    assert_eq!(r.accepted("alice", 10).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exemption_survives_restarts() {
    exempt_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exemption_survives_restarts_in_fleet_mode() {
    exempt_survives_restarts(true).await;
}

// === clear ===

async fn clear_survives_restarts(fleet: bool) {
    let mut r = Rig::start(fleet).await;
    r.act("exempt", ALICE, &[]);
    r.act("raise", BOB, &["--to", "6/1h"]);
    assert_eq!(r.accepted("alice", 5).await, 5, "exempt: not counted");
    assert_eq!(r.accepted("bob", 2).await, 2, "under 6/1h: counted");
    await_kept("bob's sends", || r.sends_kept(BOB), 2);

    r.act("clear", ALICE, &[]);
    r.restart(Stop::Term);
    let alice = r.show(ALICE);
    assert_eq!(alice["limit"]["source"], "default", "{alice}");
    assert_eq!(alice["override"], Value::Null);
    assert_eq!(
        recipients(&alice),
        0,
        "sent while exempt: not counted, as before"
    );
    assert_eq!(r.accepted("alice", 5).await, 3);
    assert_eq!(
        r.show(BOB)["override"]["limit"],
        "6/1h",
        "only alice was cleared"
    );

    r.act("clear", BOB, &[]);
    await_kept("bob's clear", || r.override_kept(BOB), None);
    await_kept("alice's sends", || r.sends_kept(ALICE), 3);
    r.restart(Stop::Kill);
    let bob = r.show(BOB);
    assert_eq!(bob["limit"]["source"], "default", "{bob}");
    assert_eq!(bob["override"], Value::Null);
    assert_eq!(recipients(&bob), 2, "sent under the raise: counted");
    assert_eq!(r.accepted("bob", 5).await, 1, "back to 3/1h");
    assert_eq!(r.accepted("alice", 1).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_survives_restarts() {
    clear_survives_restarts(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_survives_restarts_in_fleet_mode() {
    clear_survives_restarts(true).await;
}
