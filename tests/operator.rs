//! The operator's workflow end to end, through the running binary: raise,
//! exempt, clear, lock, unlock and reset change what the next RCPT gets;
//! overrides expire on their own; every change is in the audit trail; the
//! token is enforced; the CLI speaks to the API with meaningful exit codes.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::admin::{admin_call, cli, generated_token};
use common::upstream::{Opts, Upstream};
use common::*;
use serde_json::{Value, json};

fn change(reason: &str) -> Value {
    json!({"reason": reason, "who": "ops-test"})
}

/// A mailbrake with `12/1h`, plain AUTH, and the recording upstream.
struct Rig {
    mb: Mailbrake,
    admin: SocketAddr,
    port: u16,
    /// `[state] dir`, where mailbrake writes the token it makes.
    state: std::path::PathBuf,
    _up: Upstream,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A call to the admin API with the token mailbrake made.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = generated_token(&self.state);
        admin_call(self.admin, method, path, body, Some(&token)).await
    }

    /// A change to a sender through the API, for `reason`.
    async fn change_sender(&self, method: &str, path: &str, reason: &str) -> (u16, Value) {
        self.call(method, path, Some(change(reason))).await
    }
}

async fn rig(extra_limits: &str, admin_section: &str) -> Rig {
    let up = Upstream::start(Opts {
        any_user_password: Some("secret"),
        ..Opts::default()
    })
    .await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = format!(
        "{admin_section}[server]\nhostname = \"mb.test\"\n[state]\ndir = {state:?}\n\
         [limits]\ndefault = \"3/1h\"\nrotation = \"off\"\nlock_after_refusals = 0\n{extra_limits}\
         [protect]\nconnections_per_ip = \"off\"\n"
    ) + &plain_auth_listener("l", port, up.addr);
    let mut mb = Mailbrake::start(&cfg);
    let admin = admin_addr(&mut mb);
    Rig {
        mb,
        admin,
        port,
        state,
        _up: up,
        _dir: dir,
    }
}

/// Logs in as `user` and offers `n` recipients; how many got 250.
async fn accepted(port: u16, user: &str, n: usize) -> usize {
    use base64::Engine;
    let mut c = Raw::greeted(port).await;
    let blob = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
    expect(&c.cmd(&format!("AUTH PLAIN {blob}")).await, "235");
    expect(&c.cmd("MAIL FROM:<s@example.com>").await, "250");
    let mut ok = 0;
    for i in 0..n {
        if c.cmd(&format!("RCPT TO:<r{i}@example.net>"))
            .await
            .starts_with("250")
        {
            ok += 1;
        }
    }
    if ok > 0 {
        expect(&c.cmd("DATA").await, "354");
        c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n").await;
        expect(&c.reply().await.unwrap(), "250");
    }
    expect(&c.cmd("QUIT").await, "221");
    ok
}

const ALICE: &str = "/api/senders/auth%3Aalice";

#[tokio::test(flavor = "multi_thread")]
async fn raise_exempt_clear_lock_unlock_reset_change_the_next_rcpt() {
    let r = rig("", "").await;
    assert_eq!(accepted(r.port, "alice", 5).await, 3, "the default 3/1h");

    let (code, body) = r.call("GET", ALICE, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["limit"]["source"], "default");
    assert_eq!(body["windows"][0]["recipients"], 3);
    assert!(body["next_free"].is_u64(), "{body}");

    // Raise: 3 more fit under 6/1h.
    let mut raise = change("campaign, ticket 42");
    raise["limit"] = json!("6/1h");
    let (code, body) = r
        .call("PUT", &format!("{ALICE}/override"), Some(raise))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(accepted(r.port, "alice", 5).await, 3);

    // Exempt: no limit.
    let (code, _) = r
        .change_sender("POST", &format!("{ALICE}/exempt"), "mailing list")
        .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(r.port, "alice", 10).await, 10);
    let (_, body) = r.call("GET", ALICE, None).await;
    assert_eq!(body["limit"]["source"], "exempt");

    // Clear: back to the default, with 6 counted in the window.
    let (code, _) = r
        .change_sender("DELETE", &format!("{ALICE}/override"), "list moved")
        .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(r.port, "alice", 1).await, 0);

    // Reset: the window is forgotten.
    let (code, _) = r
        .change_sender("POST", &format!("{ALICE}/reset"), "cleaned up")
        .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(r.port, "alice", 5).await, 3);

    // Lock, then unlock.
    let (code, _) = r
        .change_sender("POST", "/api/senders/auth%3Abob/lock", "abuse report")
        .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(r.port, "bob", 1).await, 0);
    let (code, _) = r
        .change_sender(
            "POST",
            "/api/senders/auth%3Abob/unlock",
            "customer fixed it",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(accepted(r.port, "bob", 1).await, 1);
    let (code, body) = r
        .change_sender("POST", "/api/senders/auth%3Abob/unlock", "again")
        .await;
    assert_eq!(code, 409, "unlocking a sender that is not locked: {body}");

    // Every change is in the audit trail, newest first, with who and why.
    let (_, body) = r.call("GET", "/api/audit?limit=20", None).await;
    let actions: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["unlock", "lock", "reset", "clear", "exempt", "raise"]
    );
    let raise = &body["entries"][5];
    assert_eq!(raise["who"], "ops-test");
    assert_eq!(raise["reason"], "campaign, ticket 42");
    assert_eq!(raise["old"], "3/1h (default)");
    assert_eq!(raise["new"], "6/1h");

    // Bad input gets a clear 400.
    let (code, body) = r
        .call(
            "PUT",
            &format!("{ALICE}/override"),
            Some(json!({"limit": "6/hour", "reason": "x"})),
        )
        .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let (code, _) = r
        .call("POST", &format!("{ALICE}/lock"), Some(json!({"who": "x"})))
        .await;
    assert_eq!(code, 400, "a change without a reason");
    let (code, _) = r.call("GET", "/api/senders/nobody", None).await;
    assert_eq!(code, 400, "not a key");
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_expire_and_survive_restarts() {
    let mut r = rig("", "").await;
    let mut raise = change("short raise");
    raise["limit"] = json!("unlimited");
    raise["for"] = json!("2s");
    let (code, body) = r
        .call("PUT", &format!("{ALICE}/override"), Some(raise))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(accepted(r.port, "alice", 5).await, 5);
    // The state thread expires overrides every second; this is the feature
    // under test, so time has to pass.
    let line = tokio::task::block_in_place(|| r.mb.wait_log("override expired"));
    assert!(line.contains("auth:alice"), "{line}");
    // Back to 3/1h. What was sent while unlimited was not counted (unlimited
    // and exempt senders are not counted), so 3 fit.
    assert_eq!(accepted(r.port, "alice", 5).await, 3, "back to 3/1h");
    let (_, body) = r.call("GET", "/api/audit", None).await;
    assert_eq!(body["entries"][0]["action"], "expire");

    // A lasting override survives a restart.
    let mut raise = change("lasting");
    raise["limit"] = json!("100/1h");
    r.call("PUT", "/api/senders/auth%3Acarol/override", Some(raise))
        .await;
    r.mb.signal("TERM");
    assert!(r.mb.wait_exit().success());
    let cfg = std::fs::read_to_string(&r.mb.config).unwrap();
    let mut again = Mailbrake::start(&cfg);
    let admin = admin_addr(&mut again);
    // A new token for the new process, in the same place.
    let token = generated_token(&r.state);
    let (_, body) = admin_call(
        admin,
        "GET",
        "/api/senders/auth%3Acarol",
        None,
        Some(&token),
    )
    .await;
    assert_eq!(body["limit"]["source"], "override", "{body}");
    assert_eq!(body["override"]["limit"], "100/1h");
    assert_eq!(accepted(r.port, "carol", 10).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let admin_section = format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = {token:?}\n");
    let r = rig("", &admin_section).await;
    for path in ["/api/status", "/metrics"] {
        for wrong in [None, Some("wrong")] {
            let (code, _) = admin_call(r.admin, "GET", path, None, wrong).await;
            assert_eq!(code, 401, "{path} with {wrong:?}");
        }
        let (code, body) = admin_call(r.admin, "GET", path, None, Some("s3cret-token")).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (_, body) = admin_call(r.admin, "GET", "/api/status", None, Some("s3cret-token")).await;
    assert_eq!(body["default_limit"], "3/1h");
    assert!(
        !r.state.join("admin.token").exists(),
        "a token of the operator's choosing: mailbrake makes none"
    );
    assert!(
        !r.mb.logs().contains("s3cret-token"),
        "the token reached the logs"
    );
}

#[test]
fn an_admin_listener_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[admin]\nbind = \"0.0.0.0:{}\"\n[state]\ndir = {:?}\n",
        free_port(),
        dir.path().join("state")
    ) + &listener("l", free_port(), "none", None, "127.0.0.1:1", "");
    let path = dir.path().join("mb.toml");
    std::fs::write(&path, cfg).unwrap();
    // Neither check-config nor run accepts it: a token made at start could
    // not be handed to callers elsewhere.
    for command in ["check-config", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mailbrake"))
            .args([command, "-c"])
            .arg(&path)
            .env_remove("MAILBRAKE_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("admin.token_file"), "{command}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mailbrake"))
        .args(["check-config", "-c"])
        .arg(&path)
        .env("MAILBRAKE_ADMIN_TOKEN", "chosen")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_the_api() {
    let r = rig("", "").await;
    assert_eq!(accepted(r.port, "alice", 3).await, 3);
    let (a, t) = (r.admin, generated_token(&r.state));
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(a, &t, &["sender", "show", "auth:alice"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("auth:alice") && out.contains("3/1h"), "{out}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            a,
            &t,
            &[
                "sender",
                "raise",
                "auth:alice",
                "--to",
                "10/1h",
                "--for",
                "1d",
                "--reason",
                "ticket 7",
            ],
        )
    });
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(accepted(r.port, "alice", 3).await, 3);
    let (code, out, _) = tokio::task::block_in_place(|| cli(a, &t, &["audit", "--json"]));
    assert_eq!(code, 0);
    let audit: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(audit["entries"][0]["who"], "cli-test");
    assert_eq!(audit["entries"][0]["reason"], "ticket 7");
    // Meaningful exit codes.
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(a, &t, &["sender", "unlock", "auth:alice", "--reason", "x"])
    });
    assert_eq!(code, 1, "not locked: {err}");
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            a,
            &t,
            &[
                "sender",
                "raise",
                "auth:alice",
                "--to",
                "ten",
                "--reason",
                "x",
            ],
        )
    });
    assert!(code == 1 || code == 2, "a malformed limit: {code} {err}");
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (code, _, err) = tokio::task::block_in_place(|| cli(dead, &t, &["status"]));
    assert_eq!(code, 3, "nothing listening: {err}");
    let (code, out, _) = tokio::task::block_in_place(|| cli(a, &t, &["top", "--json"]));
    assert_eq!(code, 0);
    let top: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(top["senders"][0]["key"], "auth:alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_finds_the_token_mailbrake_made_through_the_configuration() {
    let admin = format!("[admin]\nbind = \"127.0.0.1:{}\"\n", free_port());
    let r = rig("", &admin).await;
    assert_eq!(accepted(r.port, "alice", 4).await, 3);
    let config = r.mb.config.clone();
    let run = |args: &[&str], env_token: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mailbrake"));
        c.args(args).arg("-c").arg(&config);
        match env_token {
            Some(t) => c.env("MAILBRAKE_ADMIN_TOKEN", t),
            None => c.env_remove("MAILBRAKE_ADMIN_TOKEN"),
        };
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    // One command, no flag: the token comes from [state] dir.
    let exempt = ["sender", "exempt", "auth:alice", "--reason", "list"];
    let (code, text) = tokio::task::block_in_place(|| run(&exempt, None));
    assert_eq!(code, 0, "{text}");
    assert_eq!(accepted(r.port, "alice", 4).await, 4, "exempt");
    // The environment's token wins, and a wrong one is exit 4.
    let (code, text) = tokio::task::block_in_place(|| run(&exempt, Some("wrong")));
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("MAILBRAKE_ADMIN_TOKEN"), "{text}");
    let token = generated_token(&r.state);
    assert!(!r.mb.logs().contains(&token), "the token reached the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_matches_the_traffic_in_observe_mode() {
    let r = rig("action = \"observe\"\n", "").await;
    assert_eq!(
        accepted(r.port, "alice", 5).await,
        5,
        "observe mode accepts everything"
    );
    assert_eq!(accepted(r.port, "bob", 2).await, 2);
    // Hourly totals are written with the journal, every second: poll the
    // report (bounded) until they are in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let (code, report) = r.call("GET", "/api/report?days=30", None).await;
        assert_eq!(code, 200, "{report}");
        if report["summary"]["senders"] == 2 {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the report never saw the traffic: {report}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let sender = |key: &str| {
        report["senders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("{key} not in {report}"))
            .clone()
    };
    let alice = sender("auth:alice");
    assert_eq!(alice["total"], 5);
    assert_eq!(alice["peak_hour"], 5);
    assert_eq!(
        alice["observed"], 2,
        "2 over 3/1h, accepted in observe mode"
    );
    assert_eq!(alice["hours_over_limit"], 1);
    assert_eq!(alice["limit"], "3/1h");
    let bob = sender("auth:bob");
    assert_eq!(
        (bob["total"].clone(), bob["hours_over_limit"].clone()),
        (json!(2), json!(0))
    );
    // The CLI prints the same report as text and CSV.
    let (a, t) = (r.admin, generated_token(&r.state));
    let (code, out, err) = tokio::task::block_in_place(|| cli(a, &t, &["report", "--days", "30"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 senders") && out.contains("auth:alice"),
        "{out}"
    );
    let (code, csv, _) = tokio::task::block_in_place(|| cli(a, &t, &["report", "--csv"]));
    assert_eq!(code, 0);
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains("key") && header.contains("peak"),
        "{header}"
    );
    assert_eq!(
        csv.lines().count(),
        3,
        "a header and one row per sender: {csv}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mailbrake_reload_applies_the_file_and_keeps_counts() {
    let r = rig("", "").await;
    assert_eq!(accepted(r.port, "alice", 3).await, 3);
    // A live session across the reload.
    let mut live = Raw::greeted(r.port).await;
    let cfg = std::fs::read_to_string(&r.mb.config).unwrap();
    std::fs::write(
        &r.mb.config,
        cfg.replace("default = \"3/1h\"", "default = \"5/1h\""),
    )
    .unwrap();
    let (a, t) = (r.admin, generated_token(&r.state));
    let (code, out, err) = tokio::task::block_in_place(|| cli(a, &t, &["reload"]));
    assert_eq!(code, 0, "{out}{err}");
    // Counts kept: 3 of the new 5 used.
    assert_eq!(accepted(r.port, "alice", 5).await, 2);
    expect(&live.cmd("NOOP").await, "250");
    // A broken file is refused with every error, and the old policy stays.
    std::fs::write(&r.mb.config, "[limits]\ndefault = \"five\"\n").unwrap();
    let (code, _, err) = tokio::task::block_in_place(|| cli(a, &t, &["reload"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("limits.default"), "{err}");
    let (_, body) = r.call("GET", "/api/status", None).await;
    assert_eq!(body["default_limit"], "5/1h");
}
