use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

// === helpers ===

/// The example file shipped in `config/`.
pub(super) const EXAMPLE: &str = include_str!("../../config/mailbrake.toml");

/// Placeholder certificate, key and CA files: validation only checks that
/// they can be opened, never what they contain.
pub(super) struct Files {
    pub(super) dir: tempfile::TempDir,
}

impl Files {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir certs");
        for name in [
            "mail.pem",
            "mail.key",
            "other.pem",
            "other.key",
            "internal-ca.pem",
        ] {
            std::fs::write(dir.path().join("certs").join(name), "placeholder").expect("write");
        }
        Files { dir }
    }

    /// Absolute path of `certs/NAME`.
    pub(super) fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join("certs").join(name)
    }

    /// `text` with every `"certs/…"` path made absolute inside the temp dir,
    /// so tests need not change the process's working directory.
    pub(super) fn rebase(&self, text: &str) -> String {
        text.replace(
            "\"certs/",
            &format!("\"{}/certs/", self.dir.path().display()),
        )
    }
}

/// A file with one listener made of `fields`.
pub(super) fn one_listener(fields: &str) -> String {
    format!("[[listener]]\n{fields}\n")
}

/// The keys every listener needs, for tests about the other keys.
pub(super) const BASE: &str =
    "name = \"l\"\nbind = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:10025\"";

/// The only listener of a file that must be valid.
pub(super) fn listener_ok(text: &str) -> ListenerConfig {
    let config = parse(text).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"));
    assert_eq!(config.listeners.len(), 1);
    config.listeners.into_iter().next().expect("one listener")
}

/// The problems reported for a file that must be invalid.
pub(super) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { path, errors }) => {
            assert_eq!(path, Path::new("<text>"));
            errors
        }
        other => panic!("expected Invalid, got {other:?}\n--- for ---\n{text}"),
    }
}

/// The single problem reported for a file that must be invalid.
pub(super) fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().expect("one error")
}

/// The message of a file that serde must reject.
pub(super) fn syntax_error(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Syntax { path, message }) => {
            assert_eq!(path, Path::new("<text>"));
            message
        }
        other => panic!("expected Syntax, got {other:?}\n--- for ---\n{text}"),
    }
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

pub(super) fn fixed(host: &str, port: u16) -> UpstreamTarget {
    UpstreamTarget::Fixed {
        host: host.to_owned(),
        port,
    }
}

// === the example file ===

#[test]
fn example_file_loads() {
    let files = Files::new();
    let path = files.dir.path().join("mailbrake.toml");
    std::fs::write(&path, files.rebase(EXAMPLE)).expect("write example");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.admin.bind, addr("127.0.0.1:9725"));
    assert_eq!(config.state.dir, Path::new("state"));
    assert_eq!(config.server.hostname, "mail.localhost");
    assert_eq!(config.server.log_format, LogFormat::Text);
    assert_eq!(config.session, SessionLimits::default());
    assert_eq!(config.timeouts, Timeouts::default());

    let summary: Vec<_> = config
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.bind.tcp().expect("TCP"),
                l.tls,
                l.certs.len(),
                l.upstream.clone(),
            )
        })
        .collect();
    let upstream = fixed("127.0.0.1", 10025);
    assert_eq!(
        summary,
        [
            (
                "smtp",
                addr("127.0.0.1:2525"),
                ClientTls::None,
                0,
                upstream.clone()
            ),
            (
                "submission",
                addr("127.0.0.1:2587"),
                ClientTls::StartTls,
                1,
                upstream.clone()
            ),
            (
                "submissions",
                addr("127.0.0.1:2465"),
                ClientTls::Implicit,
                1,
                upstream
            ),
        ]
    );
    let submission = &config.listeners[1];
    assert_eq!(
        submission.certs,
        [CertPair {
            cert: files.cert("mail.pem"),
            key: files.cert("mail.key")
        }]
    );
    for l in &config.listeners {
        assert_eq!(l.upstream_tls, UpstreamTls::None);
        assert!(!l.allow_plaintext_auth && !l.xclient && l.upstream_tls_verify);
        assert_eq!(l.max_sessions.get(), 1000);
    }
}

/// The example file with every commented-out example line uncommented, but
/// the alternative upstream (checked on its own), and with the example vhost
/// user replaced by one every system has.
pub(super) fn uncommented_example(files: &Files) -> String {
    let uncommented: Vec<&str> = EXAMPLE
        .lines()
        .map(|line| {
            let is_example = (line.starts_with('#') && !line.starts_with("# ") && line != "#")
                || line.starts_with("#    {");
            if is_example { &line[1..] } else { line }
        })
        .filter(|line| !line.starts_with("upstream = \"original-destination\""))
        .collect();
    let text = uncommented.join("\n");
    assert!(
        text.contains("users = [\"shop42\"]"),
        "example vhost user moved"
    );
    files.rebase(&text.replace("users = [\"shop42\"]", "users = [\"root\"]"))
}

/// The commented-out examples in the file are valid too.
#[test]
fn example_file_commented_examples_load() {
    let files = Files::new();
    let config = parse(&uncommented_example(&files)).unwrap_or_else(|e| panic!("{e}"));

    let submission = &config.listeners[1];
    assert_eq!(submission.certs.len(), 2);
    assert_eq!(submission.certs[1].cert, files.cert("other.pem"));
    assert_eq!(submission.upstream_tls, UpstreamTls::StartTls);
    assert_eq!(submission.upstream_ca, Some(files.cert("internal-ca.pem")));
    assert_eq!(
        submission.upstream_tls_name.as_deref(),
        Some("mta.internal")
    );
    assert_eq!(submission.upstream_proxy_protocol, Some(ProxyVersion::V2));
    assert!(submission.xclient);
    assert_eq!(submission.proxy_protocol_trusted.len(), 3);

    let transparent = EXAMPLE
        .replace("upstream = \"127.0.0.1:10025\"\n#upstream", "#upstream")
        .replace(
            "#upstream = \"original-destination\"",
            "upstream = \"original-destination\"",
        );
    let config = parse(&files.rebase(&transparent)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.listeners[0].upstream,
        UpstreamTarget::OriginalDestination
    );
}

// === defaults ===

#[test]
fn defaults_apply() {
    let config = parse(&one_listener(BASE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.admin.bind, addr("127.0.0.1:9725"));
    assert_eq!(config.state.dir, Path::new("/var/lib/mailbrake"));
    assert_eq!(config.state.max_unsaved_changes.get(), 100_000);
    assert!(!config.server.hostname.is_empty());
    assert_eq!(config.server.drain_timeout, Duration::from_secs(60));
    assert_eq!(config.server.log_format, LogFormat::Text);
    assert_eq!(config.session, SessionLimits::default());
    assert_eq!(config.timeouts, Timeouts::default());

    let l = &config.listeners[0];
    assert_eq!(l.name, "l");
    assert_eq!(l.tls, ClientTls::None);
    assert!(l.certs.is_empty());
    assert!(!l.allow_plaintext_auth);
    assert_eq!(l.upstream, fixed("127.0.0.1", 10025));
    assert_eq!(l.upstream_tls, UpstreamTls::None);
    assert!(l.upstream_tls_verify);
    assert_eq!(l.upstream_ca, None);
    assert_eq!(l.upstream_tls_name, None);
    assert_eq!(l.upstream_proxy_protocol, None);
    assert!(!l.xclient);
    assert!(l.proxy_protocol_trusted.is_empty());
    assert_eq!(l.max_sessions.get(), 1000);
}

#[test]
fn explicit_values_override_defaults() {
    let text = format!(
        "[admin]\nbind = \"[::1]:9000\"\n[state]\nmax_unsaved_changes = 5\n\
         [server]\nhostname = \"[IPv6:2001:db8::1]\"\ndrain_timeout = \"1h 30m\"\nlog_format = \"json\"\nthreads = 3\n\
         [session]\nmax_line_length = 512\nmax_auth_line_length = 512\n\
         max_commands_without_mail = 1\nmax_reply_bytes = 4096\n\
         [timeouts]\nconnect = \"1s\"\nupstream_data_end = \"500ms\"\n{}",
        one_listener(BASE)
    );
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.admin.bind, addr("[::1]:9000"));
    assert_eq!(config.state.max_unsaved_changes.get(), 5);
    assert_eq!(config.server.hostname, "[IPv6:2001:db8::1]");
    assert_eq!(config.server.drain_timeout, Duration::from_secs(5400));
    assert_eq!(config.server.log_format, LogFormat::Json);
    assert_eq!(config.server.threads.get(), 3);
    assert_eq!(config.session.max_line_length.get(), 512);
    assert_eq!(config.session.max_auth_line_length.get(), 512);
    assert_eq!(config.session.max_commands_without_mail.get(), 1);
    assert_eq!(config.session.max_reply_bytes.get(), 4096);
    assert_eq!(config.timeouts.connect, Duration::from_secs(1));
    assert_eq!(
        config.timeouts.upstream_data_end,
        Duration::from_millis(500)
    );
    assert_eq!(config.timeouts.client_data, Timeouts::default().client_data);
}

// === errors together ===

#[test]
fn several_errors_are_reported_together() {
    let text = "\
        [state]\n\
        max_unsaved_changes = 0\n\
        [server]\n\
        drain_timeout = \"soon\"\n\
        log_format = \"xml\"\n\
        threads = 5000\n\
        [session]\n\
        max_line_length = 100\n\
        [timeouts]\n\
        connect = \"0s\"\n\
        [[listener]]\n\
        name = \"a\"\n\
        bind = \"localhost:25\"\n\
        tls = \"ssl\"\n\
        [[listener]]\n\
        name = \"a\"\n\
        bind = \"127.0.0.1:2525\"\n\
        tls = \"starttls\"\n\
        upstream = \"127.0.0.1:0\"\n\
        proxy_protocol_trusted = [\"10.0.0.0/33\"]\n";
    let errors = errors(text);
    let expected = [
        "state.max_unsaved_changes: 0 is too small; give at least 1 (changes)",
        "server.drain_timeout: \"soon\" is not a duration",
        "server.log_format: \"xml\" is not allowed; use one of \"text\", \"json\"",
        "server.threads: 5000 is too many; give at most 1024",
        "session.max_line_length: 100 is too small; give at least 512",
        "timeouts.connect: must not be zero",
        "listener[a].bind: \"localhost:25\" is not an IP:PORT address",
        "listener[a].tls: \"ssl\" is not allowed; use one of \"none\", \"starttls\", \"implicit\"",
        "listener[a].upstream: required",
        "listener[a].name: \"a\" is already the name of listener #1",
        "listener[a].cert: required when tls is not \"none\"",
        "listener[a].key: required when tls is not \"none\"",
        "listener[a].upstream: port \"0\" in \"127.0.0.1:0\" is not a number from 1 to 65535",
        "listener[a].proxy_protocol_trusted[0]: \"10.0.0.0/33\" is neither",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
    }

    let shown = parse(text).expect_err("invalid").to_string();
    assert!(
        shown.starts_with("14 error(s) in <text>:\n  - state.max_unsaved_changes: "),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 15, "{shown}");
}

#[test]
fn no_listener_is_an_error() {
    assert_eq!(
        error(""),
        "listener: at least one [[listener]] table is required"
    );
}

#[test]
fn unknown_keys_are_rejected() {
    for (text, unknown) in [
        ("[server]\nhostnme = \"x\"\n".to_owned(), "hostnme"),
        ("[timeouts]\ndata = \"1m\"\n".to_owned(), "data"),
        ("[listeners]\n".to_owned(), "listeners"),
        (
            one_listener(&format!("{BASE}\nupstream_tsl = \"none\"")),
            "upstream_tsl",
        ),
        (
            one_listener(&format!(
                "{BASE}\nextra_certs = [{{ cert = \"a\", kee = \"b\" }}]"
            )),
            "kee",
        ),
    ] {
        let message = syntax_error(&text);
        assert!(
            message.contains(&format!("unknown field `{unknown}`")),
            "{message}"
        );
    }
}

#[test]
fn syntax_and_type_errors() {
    for text in [
        "[server\n".to_owned(),
        one_listener(&format!("{BASE}\nmax_sessions = \"ten\"")),
        one_listener(&format!("{BASE}\nxclient = \"yes\"")),
        "[listener]\nname = \"l\"\n".to_owned(),
    ] {
        let message = syntax_error(&text);
        assert!(message.contains("line"), "no position in {message}");
    }
    let shown = parse("[server\n").expect_err("invalid").to_string();
    assert!(shown.starts_with("<text>: invalid TOML: "), "{shown}");
}

#[test]
fn load_reports_unreadable_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.toml");
    match load(&path) {
        Err(e @ ConfigError::Read { .. }) => {
            assert!(
                e.to_string()
                    .starts_with(&format!("cannot read {}: ", path.display()))
            );
        }
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "").expect("write");
    let shown = load(&path).expect_err("invalid").to_string();
    assert!(shown.starts_with(&format!(
        "1 error(s) in {}:\n  - listener: ",
        path.display()
    )));
}

// === enums ===

#[test]
fn client_tls_values() {
    let files = Files::new();
    let certs = files.rebase("cert = \"certs/mail.pem\"\nkey = \"certs/mail.key\"");
    for (value, want) in [
        ("none", ClientTls::None),
        ("starttls", ClientTls::StartTls),
        ("implicit", ClientTls::Implicit),
    ] {
        let l = listener_ok(&one_listener(&format!(
            "{BASE}\ntls = \"{value}\"\n{certs}"
        )));
        assert_eq!(l.tls, want, "{value}");
    }
    for value in ["StartTLS", "tls", "ssl", ""] {
        let e = error(&one_listener(&format!(
            "{BASE}\ntls = \"{value}\"\n{certs}"
        )));
        assert_eq!(
            e,
            format!(
                "listener[l].tls: \"{value}\" is not allowed; use one of \"none\", \"starttls\", \
                 \"implicit\""
            )
        );
    }
}

#[test]
fn upstream_tls_values() {
    for (value, want) in [
        ("none", UpstreamTls::None),
        ("starttls", UpstreamTls::StartTls),
        ("implicit", UpstreamTls::Implicit),
        ("opportunistic", UpstreamTls::Opportunistic),
    ] {
        let l = listener_ok(&one_listener(&format!(
            "{BASE}\nupstream_tls = \"{value}\""
        )));
        assert_eq!(l.upstream_tls, want, "{value}");
    }
    let e = error(&one_listener(&format!(
        "{BASE}\nupstream_tls = \"required\""
    )));
    assert!(
        e.ends_with("use one of \"none\", \"starttls\", \"implicit\", \"opportunistic\""),
        "{e}"
    );
}

#[test]
fn upstream_proxy_protocol_values() {
    for (value, want) in [
        ("none", None),
        ("v1", Some(ProxyVersion::V1)),
        ("v2", Some(ProxyVersion::V2)),
    ] {
        let l = listener_ok(&one_listener(&format!(
            "{BASE}\nupstream_proxy_protocol = \"{value}\""
        )));
        assert_eq!(l.upstream_proxy_protocol, want, "{value}");
    }
    let e = error(&one_listener(&format!(
        "{BASE}\nupstream_proxy_protocol = \"2\""
    )));
    assert_eq!(
        e,
        "listener[l].upstream_proxy_protocol: \"2\" is not allowed; use one of \"none\", \"v1\", \
         \"v2\""
    );
}

#[test]
fn log_format_values() {
    for (value, want) in [("text", LogFormat::Text), ("json", LogFormat::Json)] {
        let text = format!("[server]\nlog_format = \"{value}\"\n{}", one_listener(BASE));
        assert_eq!(parse(&text).expect("valid").server.log_format, want);
    }
}

// === numbers and durations ===

#[test]
fn numbers_must_be_in_range() {
    for (section, want) in [
        (
            "[session]\nmax_line_length = 511",
            "session.max_line_length: 511 is too small; give at least 512",
        ),
        (
            "[session]\nmax_reply_bytes = 0",
            "session.max_reply_bytes: 0 is too small; give at least 512",
        ),
        (
            "[session]\nmax_commands_without_mail = -1",
            "session.max_commands_without_mail: -1 is too small; give at least 1",
        ),
        (
            "[session]\nmax_line_length = 4096\nmax_auth_line_length = 2048",
            "session.max_auth_line_length: 2048 is less than session.max_line_length (4096)",
        ),
    ] {
        let e = error(&format!("{section}\n{}", one_listener(BASE)));
        assert!(e.starts_with(want), "got {e:?}\nwant {want:?}");
    }
    let e = error(&one_listener(&format!("{BASE}\nmax_sessions = 0")));
    assert!(
        e.starts_with("listener[l].max_sessions: 0 is too small; give at least 1"),
        "{e}"
    );
}

#[test]
fn durations() {
    for (value, want) in [
        ("45s", Ok(Duration::from_secs(45))),
        ("5 minutes", Ok(Duration::from_secs(300))),
        ("250ms", Ok(Duration::from_millis(250))),
        ("0s", Err("must not be zero")),
        ("30", Err("\"30\" is not a duration")),
        ("soon", Err("\"soon\" is not a duration")),
    ] {
        let text = format!(
            "[timeouts]\nclient_command = \"{value}\"\n{}",
            one_listener(BASE)
        );
        match want {
            Ok(d) => assert_eq!(parse(&text).expect("valid").timeouts.client_command, d),
            Err(msg) => {
                let e = error(&text);
                assert!(
                    e.starts_with(&format!("timeouts.client_command: {msg}")),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn hostnames() {
    for (value, ok) in [
        ("mx.example", true),
        ("localhost", true),
        ("[192.0.2.1]", true),
        ("[IPv6:::1]", true),
        ("", false),
        ("mx example", false),
        ("-mx.example", false),
        ("mx..example", false),
        ("[::1]", false),
    ] {
        let text = format!("[server]\nhostname = \"{value}\"\n{}", one_listener(BASE));
        match parse(&text) {
            Ok(_) => assert!(ok, "{value:?} accepted"),
            Err(e) => assert!(!ok, "{value:?} rejected: {e}"),
        }
        if ok {
            assert_eq!(parse(&text).expect("valid").server.hostname, value);
        } else {
            assert!(error(&text).starts_with("server.hostname: "));
        }
    }
}

#[test]
fn the_token_group_is_resolved_and_only_for_the_generated_token() {
    let with = |admin: &str| format!("[admin]\n{admin}\n{}", one_listener(BASE));
    let config = parse(&with("token_group = \"root\"")).unwrap_or_else(|e| panic!("{e}"));
    let group = config.admin.token_group.expect("resolved");
    assert_eq!((group.name.as_str(), group.gid), ("root", 0));
    let file = tempfile::NamedTempFile::new().unwrap();
    for (admin, error) in [
        ("token_group = \"no-such-group-here\"", "no group named"),
        (
            &format!("token_file = {:?}\ntoken_group = \"root\"", file.path()),
            "applies only to the token mailbrake makes",
        ),
    ] {
        let errors = errors(&with(admin));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("admin.token_group: "), "{errors:?}");
        assert!(errors[0].contains(error), "{errors:?}");
    }
}
