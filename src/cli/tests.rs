use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use clap::Parser;
use serde_json::json;

use super::*;

/// The CLI as `main` mounts it.
#[derive(Debug, Parser)]
struct TestCli {
    #[command(subcommand)]
    command: Command,
}

fn parse(args: &str) -> Result<Command, clap::Error> {
    TestCli::try_parse_from(std::iter::once("mailbrake").chain(args.split_whitespace()))
        .map(|c| c.command)
}

fn ok(args: &str) -> Command {
    parse(args).unwrap_or_else(|e| panic!("{args}: {e}"))
}

fn req(args: &str) -> Request {
    request(&ok(args), "alice")
}

/// A one-shot HTTP server: answers `status` and `body` to one request and
/// hands back the request it read (head, then body).
pub(super) fn fake_server(status: u16, body: &'static str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
            let end = line == "\r\n" || line.is_empty();
            head.push_str(&line);
            if end {
                break;
            }
        }
        let mut content = vec![0; length];
        reader.read_exact(&mut content).unwrap();
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(answer.as_bytes()).unwrap();
        head + &String::from_utf8(content).unwrap()
    });
    (base, handle)
}

// === arguments ===

#[test]
fn every_command_parses() {
    for args in [
        "status",
        "status --json -c /tmp/m.toml",
        "sender show auth:alice@example.com",
        "sender raise auth:a --to 500/1h --for 3d --reason ticket-1",
        "sender raise auth:a --to 500/1h --until 2026-12-04T18:00:00Z --reason r",
        "sender raise auth:a --to unlimited --reason r",
        "sender exempt vhost:shop --for 7d --reason r",
        "sender exempt vhost:shop --reason r",
        "sender clear auth:a --reason r",
        "sender lock ip:192.0.2.7 --for 1d --reason r",
        "sender lock ip:192.0.2.7 --reason r",
        "sender unlock ip:192.0.2.7 --reason r",
        "sender reset auth:a --reason r --who bob",
        "top",
        "top --limit 5",
        "audit --limit 10 --json",
        "report",
        "report --days 7 --csv",
        "report --days 7 --json",
        "reload --admin http://127.0.0.1:9025",
    ] {
        ok(args);
    }
}

#[test]
fn defaults() {
    let Command::Top { limit, opts } = ok("top") else {
        panic!()
    };
    assert_eq!(limit, 20);
    assert_eq!(opts.config, Path::new(DEFAULT_CONFIG));
    assert!(!opts.json && opts.admin.is_none() && opts.who.is_none());
    assert!(matches!(ok("audit"), Command::Audit { limit: 50, .. }));
    assert!(matches!(
        ok("report"),
        Command::Report {
            days: 30,
            csv: false,
            ..
        }
    ));
}

#[test]
fn options_go_before_or_after_the_sender_verb() {
    for args in [
        "sender --json -c /x.toml show auth:a",
        "sender show auth:a --json -c /x.toml",
        "sender show --json auth:a --config /x.toml",
    ] {
        let cmd = ok(args);
        assert!(cmd.options().json, "{args}");
        assert_eq!(cmd.options().config, Path::new("/x.toml"), "{args}");
    }
    let cmd = ok("sender --admin http://h:1 --who carol lock auth:a --reason r");
    assert_eq!(cmd.options().admin.as_deref(), Some("http://h:1"));
    assert_eq!(cmd.options().who.as_deref(), Some("carol"));
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        "",
        "sender",
        "sender show",
        "sender raise auth:a --to 500/1h",
        "sender raise auth:a --reason r",
        "sender raise auth:a --to 500/1h --reason",
        "sender lock auth:a --reason  --for 1d",
        "sender raise auth:a --to 500/1h --for 3d --until 2026-12-04T18:00:00Z --reason r",
        "sender lock auth:a --for soon --reason r",
        "sender lock auth:a --for 0s --reason r",
        "sender lock auth:a --until 2026-12-04 --reason r",
        "sender lock auth:a --until 2026-12-04T18:00:00+01:00 --reason r",
        "sender clear auth:a --for 1d --reason r",
        "sender show auth:a --reason r",
        "report --csv --json",
        "top --limit many",
        "status --who",
    ] {
        let err = parse(args).expect_err(args);
        assert_eq!(err.exit_code(), 2, "{args}: {err}");
    }
}

#[test]
fn durations_and_times() {
    assert_eq!(parse_for(" 3d ").unwrap(), "3d");
    assert_eq!(parse_for("12h 30min").unwrap(), "12h 30min");
    assert!(parse_for("3 days later").is_err());
    assert_eq!(parse_until("2026-12-04T18:00:00Z").unwrap(), 1_796_407_200);
    assert_eq!(parse_until("1970-01-01T00:00:00Z").unwrap(), 0);
    assert!(parse_until("2026-12-04 18:00").is_err());
}

// === requests ===

#[test]
fn reads_are_gets() {
    for (args, path) in [
        ("status", "/api/status"),
        (
            "sender show auth:alice@example.com",
            "/api/senders/auth%3Aalice%40example.com",
        ),
        (
            "sender show ip:2001:db8::/64",
            "/api/senders/ip%3A2001%3Adb8%3A%3A%2F64",
        ),
        ("top --limit 5", "/api/top?limit=5"),
        ("audit", "/api/audit?limit=50"),
        ("report --days 7 --csv", "/api/report?days=7"),
    ] {
        assert_eq!(req(args), Request::get(path), "{args}");
    }
}

#[test]
fn changes_carry_reason_who_and_term() {
    let key = "/api/senders/auth%3Aa%40b";
    for (args, method, path, body) in [
        (
            "sender raise auth:a@b --to 500/1h --for 3d --reason more",
            Method::Put,
            format!("{key}/override"),
            json!({"limit": "500/1h", "for": "3d", "reason": "more", "who": "alice"}),
        ),
        (
            "sender raise auth:a@b --to 12/1h,100/1d --to 1000/7d --until 2026-12-04T18:00:00Z --reason r",
            Method::Put,
            format!("{key}/override"),
            json!({"limit": "12/1h, 100/1d, 1000/7d", "until": 1_796_407_200, "reason": "r", "who": "alice"}),
        ),
        (
            "sender exempt auth:a@b --reason r",
            Method::Post,
            format!("{key}/exempt"),
            json!({"reason": "r", "who": "alice"}),
        ),
        (
            "sender clear auth:a@b --reason r",
            Method::Delete,
            format!("{key}/override"),
            json!({"reason": "r", "who": "alice"}),
        ),
        (
            "sender lock auth:a@b --for 1d --reason spam",
            Method::Post,
            format!("{key}/lock"),
            json!({"for": "1d", "reason": "spam", "who": "alice"}),
        ),
        (
            "sender unlock auth:a@b --reason r",
            Method::Post,
            format!("{key}/unlock"),
            json!({"reason": "r", "who": "alice"}),
        ),
        (
            "sender reset auth:a@b --reason r",
            Method::Post,
            format!("{key}/reset"),
            json!({"reason": "r", "who": "alice"}),
        ),
        (
            "reload",
            Method::Post,
            "/api/reload".to_owned(),
            json!({"who": "alice"}),
        ),
    ] {
        assert_eq!(req(args), Request::with_body(method, path, body), "{args}");
    }
}

#[test]
fn who_is_the_flag_then_sudo_user_then_user() {
    let env = |sudo: Option<&str>, user: Option<&str>| Env {
        admin_token: None,
        sudo_user: sudo.map(Into::into),
        user: user.map(Into::into),
    };
    assert_eq!(
        env(Some("root-by-bob"), Some("root")).who(Some("carol")),
        "carol"
    );
    assert_eq!(env(Some("bob"), Some("root")).who(None), "bob");
    assert_eq!(env(Some(""), Some("root")).who(None), "root");
    assert_eq!(env(None, Some("dave")).who(None), "dave");
    assert_eq!(env(None, None).who(None), "unknown");
}

// === the target ===

#[test]
fn wildcard_binds_are_reached_on_loopback() {
    for (bind, url) in [
        ("0.0.0.0:9025", "http://127.0.0.1:9025"),
        ("[::]:9025", "http://[::1]:9025"),
        ("127.0.0.1:9025", "http://127.0.0.1:9025"),
        ("192.0.2.1:80", "http://192.0.2.1:80"),
        ("[2001:db8::1]:9025", "http://[2001:db8::1]:9025"),
    ] {
        assert_eq!(admin_url(bind.parse().unwrap()), url);
    }
}

#[test]
fn the_environments_token_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, "  from-file\n").unwrap();
    let config = Path::new("/etc/mailbrake/mailbrake.toml");

    let configured = TokenFile::Configured(file.clone());
    let (token, hint) = pick_token(Token::new("from-env", TOKEN_ENV), &configured, config);
    assert_eq!(token.unwrap().origin(), TOKEN_ENV);
    assert!(
        hint.contains(TOKEN_ENV) && hint.contains("admin.token"),
        "{hint}"
    );

    let (token, _) = pick_token(None, &configured, config);
    let token = token.unwrap();
    assert_eq!(token.origin(), file.display().to_string());
    assert!(format!("{:?}", Some(token)).contains("redacted"));

    let missing = TokenFile::Configured(dir.path().join("missing"));
    let (token, hint) = pick_token(None, &missing, config);
    assert!(token.is_none());
    assert!(hint.contains("could not be read"), "{hint}");
}

#[test]
fn without_token_file_the_generated_one_is_read_from_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::config::parse(&format!(
        "[state]\ndir = {:?}\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:2525\"\n\
         tls = \"none\"\nupstream = \"127.0.0.1:10025\"\n",
        dir.path()
    ))
    .unwrap();
    let (url, file) = admin_target(&cfg);
    assert_eq!(url, "http://127.0.0.1:9725");
    let generated = dir.path().join("admin.token");
    assert_eq!(file, TokenFile::Generated(generated.clone()));
    let config = Path::new("/etc/mailbrake/mailbrake.toml");

    // Not there (mailbrake not started, or not readable): the 401 will say
    // where it is and that root can read it.
    let (token, hint) = pick_token(None, &file, config);
    assert!(token.is_none());
    assert!(
        hint.contains(&generated.display().to_string()) && hint.contains("run as root (sudo)"),
        "{hint}"
    );

    std::fs::write(&generated, "made-at-start\n").unwrap();
    let (token, _) = pick_token(None, &file, config);
    assert_eq!(token.unwrap().origin(), generated.display().to_string());
    let (token, _) = pick_token(Token::new("from-env", TOKEN_ENV), &file, config);
    assert_eq!(token.unwrap().origin(), TOKEN_ENV);
}

#[test]
fn without_a_configuration_say_what_to_pass() {
    let Err(e) = connect(
        ok("status -c /nonexistent/mailbrake.toml").options(),
        &Env::default(),
    ) else {
        panic!("connected without a configuration");
    };
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    assert!(text.contains("/nonexistent/mailbrake.toml"), "{text}");
    assert!(text.contains("pass -c FILE, or --admin"), "{text}");

    let Err(e) = connect(
        ok("status --admin https://mx:9025").options(),
        &Env::default(),
    ) else {
        panic!("accepted https");
    };
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn the_configuration_names_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbrake.toml");
    let minimal = "[admin]\nbind = \"0.0.0.0:9325\"\n\n\
                   [[listener]]\nname = \"sub\"\nbind = \"127.0.0.1:10587\"\nupstream = \"127.0.0.1:587\"\n";
    std::fs::write(&path, minimal).unwrap();
    let cfg = match crate::config::load(&path) {
        Ok(cfg) => cfg,
        // The minimal file is the config module's business; skip if it wants more.
        Err(e) => return eprintln!("skipped: {e}"),
    };
    assert_eq!(admin_target(&cfg).0, "http://127.0.0.1:9325");
}

// === whole commands against a fake server ===

fn run_against(
    args: &str,
    status: u16,
    answer: &'static str,
) -> (Result<String, CliError>, String) {
    let (base, server) = fake_server(status, answer);
    let command = ok(&format!("{args} --admin {base}"));
    let env = Env {
        admin_token: Some("tok".into()),
        sudo_user: Some("bob".into()),
        user: None,
    };
    let client = connect(command.options(), &env).unwrap();
    let out = execute(&command, &client, &env, NOW);
    (out, server.join().unwrap())
}

#[test]
fn a_lock_goes_out_and_comes_back_as_text() {
    let (out, seen) = run_against(
        "sender lock auth:a@b --for 2h --reason spam",
        200,
        r#"{"key":"auth:a@b","lock":{"until":1796407200,"reason":"operator: spam"}}"#,
    );
    assert_eq!(
        out.unwrap(),
        "auth:a@b: locked until 2026-12-04 18:00 UTC (in 2 h)\n"
    );
    assert!(
        seen.starts_with("POST /api/senders/auth%3Aa%40b/lock HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.to_ascii_lowercase()
            .contains("authorization: bearer tok\r\n"),
        "{seen}"
    );
    let (_, body) = seen.split_once("\r\n\r\n").unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body, json!({"for": "2h", "reason": "spam", "who": "bob"}));
}

#[test]
fn json_prints_the_answer_as_it_came() {
    let (out, _) = run_against(
        "sender unlock auth:a --reason r --json",
        200,
        r#"{"key":"auth:a"}"#,
    );
    assert_eq!(out.unwrap(), "{\n  \"key\": \"auth:a\"\n}\n");
}

#[test]
fn refusals_and_bad_answers_exit_1() {
    let (out, _) = run_against(
        "sender unlock auth:a --reason r",
        409,
        r#"{"error":"auth:a is not locked"}"#,
    );
    let e = out.unwrap_err();
    assert_eq!(
        (e.exit_code(), e.to_string()),
        (1, "mailbrake refused (409): auth:a is not locked".into())
    );

    let (out, _) = run_against("top", 200, r#"{"senders": 3}"#);
    let e = out.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(
        e.to_string()
            .starts_with("unexpected answer from mailbrake at http://127.0.0.1:"),
        "{e}"
    );
}

// === views ===

/// 2026-12-04 16:00 UTC.
const NOW: u64 = 1_796_400_000;

#[test]
fn status_view() {
    let answer = json!({
        "version": "0.1.0", "uptime_seconds": 273_600,
        "listeners": [
            {"name": "submission", "bind": "127.0.0.1:10587", "sessions_active": 3},
            {"name": "mx", "bind": "[::]:10025", "sessions_active": 120}
        ],
        "senders_resident": 1234, "senders_locked": 2,
        "default_limit": "12/1h, 100/1day", "action": "refuse"
    });
    assert_eq!(
        views::status(&answer).unwrap(),
        "version        0.1.0\n\
         up             3 d 4 h\n\
         senders        1234 resident, 2 locked\n\
         default limit  12/1h, 100/1day\n\
         over a limit   refuse\n\
         \n\
         LISTENER    BIND             SESSIONS\n\
         submission  127.0.0.1:10587         3\n\
         mx          [::]:10025            120\n"
    );
}

#[test]
fn sender_view() {
    let answer = json!({
        "key": "auth:alice@example.com", "class": "auth",
        "limit": {"rates": ["12/1h", "100/1day"], "unlimited": false, "source": "override"},
        "windows": [
            {"rate": "12/1h", "recipients": 4, "pending": 1},
            {"rate": "100/1day", "recipients": 30, "pending": 0}
        ],
        "next_free": NOW + 720,
        "lock": {"until": null, "reason": "operator: spam run"},
        "override": {"key": "auth:alice@example.com", "exempt": false, "limit": "12/1h, 100/1day",
                     "until": NOW + 3 * 86_400, "reason": "ticket 42", "who": "bob", "at": NOW - 3600}
    });
    assert_eq!(
        views::sender(&answer, NOW).unwrap(),
        "sender     auth:alice@example.com (auth)\n\
         limit      12/1h, 100/1day (override)\n\
         counts     4/12 in the last 1h (+1 pending)\n\
         \x20          30/100 in the last 1day\n\
         next free  2026-12-04 16:12 UTC (in 12 min)\n\
         lock       locked until unlocked: operator: spam run\n\
         override   12/1h, 100/1day until 2026-12-07 16:00 UTC (in 3 d); set by bob at 2026-12-04 15:00 UTC: ticket 42\n"
    );

    let free = json!({
        "key": "vhost:bulk", "class": "vhost",
        "limit": {"rates": [], "unlimited": true, "source": "exempt"},
        "windows": [], "next_free": null, "lock": null, "override": null
    });
    assert_eq!(
        views::sender(&free, NOW).unwrap(),
        "sender     vhost:bulk (vhost)\n\
         limit      unlimited (exempt)\n\
         next free  now (no limit)\n\
         lock       not locked\n\
         override   none\n"
    );
}

#[test]
fn change_views() {
    let o = |limit: &str, exempt: bool, until: Option<u64>| {
        json!({"key": "auth:a", "exempt": exempt, "limit": limit, "until": until,
               "reason": "r", "who": "bob", "at": NOW})
    };
    let raised = json!({"key": "auth:a", "override": o("500/1h", false, Some(NOW + 3 * 86_400)),
                        "previous": o("200/1h", false, None)});
    assert_eq!(
        views::override_set(&raised, NOW).unwrap(),
        "auth:a: 500/1h until 2026-12-07 16:00 UTC (in 3 d); replaces 200/1h lasting\n"
    );
    let exempted =
        json!({"key": "auth:a", "override": o("unlimited", true, None), "previous": null});
    assert_eq!(
        views::override_set(&exempted, NOW).unwrap(),
        "auth:a: exempt lasting\n"
    );
    let cleared = json!({"key": "auth:a", "removed": o("500/1h", false, None)});
    assert_eq!(
        views::override_cleared(&cleared, NOW).unwrap(),
        "auth:a: override 500/1h lasting removed; back to the file's policy\n"
    );
    let locked = json!({"key": "auth:a", "lock": {"until": null, "reason": "r"}});
    assert_eq!(
        views::locked(&locked, NOW).unwrap(),
        "auth:a: locked until unlocked\n"
    );
    assert_eq!(
        views::done(&json!({"key": "auth:a"}), "unlocked").unwrap(),
        "auth:a: unlocked\n"
    );
    assert_eq!(
        views::reloaded(&json!({"result": "reloaded"})).unwrap(),
        "configuration reloaded\n"
    );
    assert!(views::override_set(&json!({"key": "auth:a"}), NOW).is_err());
}

#[test]
fn top_view() {
    let answer = json!({"senders": [
        {"key": "ip:192.0.2.7", "usage": 1.0, "recipients": 12, "locked": true},
        {"key": "auth:alice@example.com", "usage": 0.8333, "recipients": 10, "locked": false}
    ]});
    assert_eq!(
        views::top(&answer).unwrap(),
        "SENDER                  USAGE  RECIPIENTS  LOCKED\n\
         ip:192.0.2.7            100 %          12  locked\n\
         auth:alice@example.com   83 %          10\n"
    );
    assert_eq!(
        views::top(&json!({"senders": []})).unwrap(),
        "no sender has recipients counted right now\n"
    );
}

#[test]
fn audit_view_shows_times_in_utc() {
    let answer = json!({"entries": [
        {"at": NOW, "who": "bob", "action": "raise", "key": "auth:a",
         "old": "12/1h (default)", "new": "500/1h until 1796407200", "reason": "ticket 42"},
        {"at": NOW - 60, "who": "root", "action": "reload", "key": "",
         "old": null, "new": null, "reason": "reload"}
    ]});
    assert_eq!(
        views::audit(&answer).unwrap(),
        "AT (UTC)          WHO   ACTION  SENDER  BEFORE           AFTER                          REASON\n\
         2026-12-04 16:00  bob   raise   auth:a  12/1h (default)  500/1h until 2026-12-04 18:00  ticket 42\n\
         2026-12-04 15:59  root  reload  -       -                -                              reload\n"
    );
    assert_eq!(
        views::audit(&json!({"entries": []})).unwrap(),
        "no changes recorded\n"
    );
}

#[test]
fn report_views_are_the_reports_own() {
    use crate::limits::policy::Source;
    let report = crate::report::build(&[], &|_| (Vec::new(), Source::Default), 7, 1_796_400_000);
    let answer = serde_json::to_value(&report).unwrap();
    assert_eq!(views::report_text(&answer).unwrap(), report.to_text());
    assert_eq!(views::report_csv(&answer).unwrap(), report.to_csv());
    assert!(views::report_text(&json!({"days": 7})).is_err());
}
