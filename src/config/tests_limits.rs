//! `[limits]` and `[protect]`, and the rate and limit parsers (overrides
//! and `[[vhost]]` in `tests_senders.rs`).

use std::time::Duration;

use ipnet::IpNet;

use super::tests::{
    BASE, EXAMPLE, Files, error, errors, one_listener, syntax_error, uncommented_example,
};
use super::*;

// === helpers ===

/// `sections` followed by a valid listener.
pub(super) fn with_listener(sections: &str) -> String {
    format!("{sections}\n{}", one_listener(BASE))
}

/// The configuration of `sections` (plus a listener), which must be valid.
pub(super) fn config_ok(sections: &str) -> Config {
    let text = with_listener(sections);
    parse(&text).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
}

/// The problems reported for `sections` (plus a listener).
pub(super) fn problems(sections: &str) -> Vec<String> {
    errors(&with_listener(sections))
}

/// The single problem reported for `sections` (plus a listener).
pub(super) fn problem(sections: &str) -> String {
    error(&with_listener(sections))
}

/// Each problem starts with the expected text, in order.
pub(super) fn assert_problems(got: &[String], want: &[&str]) {
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (got, want) in got.iter().zip(want) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}…");
    }
}

pub(super) fn rate(count: u32, secs: u64) -> Rate {
    Rate {
        count,
        window: Duration::from_secs(secs),
    }
}

pub(super) fn rates(list: &[(u32, u64)]) -> Limit {
    Limit::Rates(list.iter().map(|&(c, s)| rate(c, s)).collect())
}

pub(super) fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

pub(super) const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

// === parse_rate and parse_limit ===

#[test]
fn rates_parse() {
    for (text, count, window) in [
        ("12/1h", 12, Duration::from_secs(HOUR)),
        ("1/1s", 1, Duration::from_secs(1)),
        ("1000000/31d", 1_000_000, Duration::from_secs(31 * DAY)),
        ("100/24h", 100, Duration::from_secs(DAY)),
        (" 5 / 1h 30m ", 5, Duration::from_secs(5400)),
        ("3/1500ms", 3, Duration::from_millis(1500)),
        ("60/1m", 60, Duration::from_secs(60)),
    ] {
        assert_eq!(parse_rate(text), Ok(Rate { count, window }), "{text:?}");
    }
}

#[test]
fn bad_rates() {
    let form = "is not a rate; write N/DURATION like \"12/1h\"";
    for (text, want) in [
        ("12/hour", format!("\"12/hour\" {form}")),
        ("12", format!("\"12\" {form}")),
        ("", format!("\"\" {form}")),
        ("/1h", format!("\"/1h\" {form}")),
        ("12/", format!("\"12/\" {form}")),
        ("twelve/1h", format!("\"twelve/1h\" {form}")),
        ("-1/1h", format!("\"-1/1h\" {form}")),
        ("+1/1h", format!("\"+1/1h\" {form}")),
        ("1.5/1h", format!("\"1.5/1h\" {form}")),
        ("12/1h/2", format!("\"12/1h/2\" {form}")),
        ("unlimited", format!("\"unlimited\" {form}")),
        (
            "0/1h",
            "\"0/1h\": the count must be from 1 to 1000000".to_owned(),
        ),
        (
            "1000001/1h",
            "\"1000001/1h\": the count must be from 1 to 1000000".to_owned(),
        ),
        (
            "99999999999/1h",
            "\"99999999999/1h\": the count must be from 1 to 1000000".to_owned(),
        ),
        (
            "5/500ms",
            "\"5/500ms\": the window must be from \"1s\" to \"31d\"".to_owned(),
        ),
        (
            "5/0s",
            "\"5/0s\": the window must be from \"1s\" to \"31d\"".to_owned(),
        ),
        (
            "5/32d",
            "\"5/32d\": the window must be from \"1s\" to \"31d\"".to_owned(),
        ),
    ] {
        assert_eq!(parse_rate(text), Err(want), "{text:?}");
    }
}

#[test]
fn limits_parse() {
    for (text, want) in [
        ("unlimited", Limit::Unlimited),
        (" unlimited ", Limit::Unlimited),
        ("12/1h", rates(&[(12, HOUR)])),
        ("12/1h, 100/24h", rates(&[(12, HOUR), (100, DAY)])),
        ("100/24h,12/1h", rates(&[(100, DAY), (12, HOUR)])),
    ] {
        assert_eq!(parse_limit(text), Ok(want), "{text:?}");
    }
}

#[test]
fn bad_limits() {
    for (text, want) in [
        (
            "12/hour",
            "\"12/hour\" is not a rate; write N/DURATION like \"12/1h\", a list of them, or \
             \"unlimited\"",
        ),
        (
            "",
            "\"\" is not a rate; write N/DURATION like \"12/1h\", a list of them, or \"unlimited\"",
        ),
        (
            "12/1h,",
            "\"\" is not a rate; write N/DURATION like \"12/1h\", a list of them, or \"unlimited\"",
        ),
        (
            "12/1h, 20/60m",
            "two rates share the window 1h (12 and 20); give at most one rate per window length",
        ),
        (
            "12/1h, unlimited",
            "\"12/1h, unlimited\": \"unlimited\" cannot be combined with rates; write it alone",
        ),
        (
            "12/1h, 0/1d",
            "\"0/1d\": the count must be from 1 to 1000000",
        ),
    ] {
        assert_eq!(parse_limit(text), Err(want.to_owned()), "{text:?}");
    }
}

// === defaults ===

#[test]
fn sections_default_when_absent_or_empty() {
    for sections in ["", "[limits]\n[protect]\n"] {
        let config = config_ok(sections);
        let (l, d) = (&config.limits, LimitsConfig::default());
        assert_eq!(l.default, rates(&[(12, HOUR)]));
        assert_eq!(l.default, d.default);
        assert_eq!(l.action, LimitAction::Defer);
        assert_eq!(
            l.identity,
            [
                IdentitySource::Auth,
                IdentitySource::Vhost,
                IdentitySource::User,
                IdentitySource::Ip,
            ]
        );
        assert_eq!(l.ipv6_prefix, 64);
        assert!(l.overrides.is_empty());
        assert!(l.exempt_users.is_empty() && l.exempt_vhosts.is_empty());
        assert!(l.exempt_networks.is_empty());
        assert_eq!(l.rotation, Some(rate(20, HOUR)));
        assert_eq!(l.lock_after_refusals, Some(50));
        assert_eq!(l.lock_window, Duration::from_secs(HOUR));
        assert_eq!(l.lock_duration, Some(Duration::from_secs(DAY)));
        assert_eq!(l.contact, None);

        assert!(config.vhosts.is_empty());
        assert_eq!(config.protect, ProtectConfig::default());
        assert_eq!(config.protect.connections_per_ip, Some(rate(60, 60)));
        assert_eq!(config.protect.auth_failures_per_ip, Some(rate(10, 600)));
        assert_eq!(config.protect.auth_failures_per_user, Some(rate(10, 600)));
        assert_eq!(config.protect.rcpt_pace, None);
    }
}

#[test]
fn explicit_values_replace_defaults() {
    let config = config_ok(
        "[limits]\n\
         default = [\"12/1h\", \"100/24h\"]\n\
         action = \"observe\"\n\
         identity = [\"ip\", \"auth\"]\n\
         ipv6_prefix = 48\n\
         exempt_users = [\"lists@example.net\"]\n\
         exempt_vhosts = [\"newsletter\"]\n\
         exempt_networks = [\"192.0.2.0/24\", \"2001:db8::1\", \"198.51.100.7\"]\n\
         rotation = \"off\"\n\
         lock_after_refusals = 0\n\
         lock_window = \"30m\"\n\
         lock_duration = \"until-unlocked\"\n\
         contact = \"abuse@example.net, +1 555 0100\"\n\
         [[vhost]]\n\
         name = \"newsletter\"\n\
         uids = [1100]\n\
         [protect]\n\
         connections_per_ip = \"off\"\n\
         auth_failures_per_ip = \"5/1m\"\n\
         auth_failures_per_user = \"off\"\n\
         rcpt_pace = \"10/1s\"\n",
    );
    let l = &config.limits;
    assert_eq!(l.default, rates(&[(12, HOUR), (100, DAY)]));
    assert_eq!(l.action, LimitAction::Observe);
    assert_eq!(l.identity, [IdentitySource::Ip, IdentitySource::Auth]);
    assert_eq!(l.ipv6_prefix, 48);
    assert_eq!(l.exempt_users, ["lists@example.net"]);
    assert_eq!(l.exempt_vhosts, ["newsletter"]);
    assert_eq!(
        l.exempt_networks,
        [
            net("192.0.2.0/24"),
            net("2001:db8::1/128"),
            net("198.51.100.7/32")
        ]
    );
    assert_eq!(l.rotation, None);
    assert_eq!(l.lock_after_refusals, None);
    assert_eq!(l.lock_window, Duration::from_secs(1800));
    assert_eq!(l.lock_duration, None);
    assert_eq!(l.contact.as_deref(), Some("abuse@example.net, +1 555 0100"));
    assert_eq!(
        config.protect,
        ProtectConfig {
            connections_per_ip: None,
            auth_failures_per_ip: Some(rate(5, 60)),
            auth_failures_per_user: None,
            rcpt_pace: Some(rate(10, 1)),
        }
    );
}

#[test]
fn actions_and_identities() {
    for (word, action) in [
        ("defer", LimitAction::Defer),
        ("reject", LimitAction::Reject),
        ("observe", LimitAction::Observe),
    ] {
        let config = config_ok(&format!("[limits]\naction = \"{word}\""));
        assert_eq!(config.limits.action, action);
    }
    let config = config_ok("[limits]\nidentity = [\"vhost\"]");
    assert_eq!(config.limits.identity, [IdentitySource::Vhost]);
}

// === limit values in the file ===

#[test]
fn limit_forms_in_the_file() {
    for (value, want) in [
        ("\"unlimited\"", Limit::Unlimited),
        ("\"500/1h\"", rates(&[(500, HOUR)])),
        ("[\"500/1h\"]", rates(&[(500, HOUR)])),
        ("[\"12/1h\", \"100/24h\"]", rates(&[(12, HOUR), (100, DAY)])),
        ("\"12/1h, 100/24h\"", rates(&[(12, HOUR), (100, DAY)])),
    ] {
        let config = config_ok(&format!(
            "[limits]\ndefault = {value}\n\
             [[limits.override]]\nkey = \"auth:a\"\nlimit = {value}\n"
        ));
        assert_eq!(config.limits.default, want, "{value}");
        assert_eq!(config.limits.overrides[0].limit, want, "{value}");
    }
}

#[test]
fn bad_limit_forms_in_the_file() {
    let alternatives = "write N/DURATION like \"12/1h\", a list of them, or \"unlimited\"";
    for (value, want) in [
        (
            "\"12/hour\"",
            vec![format!(
                "limits.default: \"12/hour\" is not a rate; {alternatives}"
            )],
        ),
        (
            "12",
            vec![format!("limits.default: 12 is not a limit; {alternatives}")],
        ),
        (
            "[]",
            vec![format!("limits.default: must not be empty; {alternatives}")],
        ),
        (
            "[\"12/1h\", 5]",
            vec![
                "limits.default[1]: 5 is not a string; write N/DURATION like \"12/1h\"".to_owned(),
            ],
        ),
        (
            "[\"12/1h\", \"unlimited\"]",
            vec![
                "limits.default[1]: \"unlimited\" cannot be combined with rates; write it \
                 alone, not in a list"
                    .to_owned(),
            ],
        ),
        (
            "[\"12/1h\", \"20/60m\"]",
            vec![
                "limits.default: two rates share the window 1h (12 and 20); give at most one \
                 rate per window length"
                    .to_owned(),
            ],
        ),
        (
            "[\"12/hour\", \"0/1h\", \"5/40d\"]",
            vec![
                "limits.default[0]: \"12/hour\" is not a rate; write N/DURATION like \"12/1h\""
                    .to_owned(),
                "limits.default[1]: \"0/1h\": the count must be from 1 to 1000000".to_owned(),
                "limits.default[2]: \"5/40d\": the window must be from \"1s\" to \"31d\""
                    .to_owned(),
            ],
        ),
    ] {
        assert_eq!(problems(&format!("[limits]\ndefault = {value}")), want);
    }
}

#[test]
fn bad_limits_values() {
    for (line, want) in [
        (
            "action = \"refuse\"",
            "limits.action: \"refuse\" is not allowed; use one of \"defer\", \"reject\", \"observe\"",
        ),
        (
            "identity = []",
            "limits.identity: must not be empty; list one or more of \"auth\", \"vhost\", \"user\", \"ip\"",
        ),
        (
            "identity = [\"auth\", \"uid\"]",
            "limits.identity[1]: \"uid\" is not allowed; use one of \"auth\", \"vhost\", \"user\", \"ip\"",
        ),
        (
            "identity = [\"ip\", \"auth\", \"ip\"]",
            "limits.identity[2]: \"ip\" is listed twice; name each source at most once",
        ),
        (
            "ipv6_prefix = 0",
            "limits.ipv6_prefix: 0 is out of range; give a prefix length from 1 to 128 (bits)",
        ),
        (
            "ipv6_prefix = 129",
            "limits.ipv6_prefix: 129 is out of range",
        ),
        (
            "ipv6_prefix = -64",
            "limits.ipv6_prefix: -64 is out of range",
        ),
        (
            "rotation = \"20/hour\"",
            "limits.rotation: \"20/hour\" is not a rate; write N/DURATION like \"12/1h\", or \"off\"",
        ),
        (
            "rotation = \"0/1h\"",
            "limits.rotation: \"0/1h\": the count must be",
        ),
        (
            "lock_after_refusals = -1",
            "limits.lock_after_refusals: -1 is out of range; give a number of refusals from 1 \
             to 4294967295, or 0 to never lock",
        ),
        (
            "lock_window = \"0s\"",
            "limits.lock_window: must not be zero",
        ),
        (
            "lock_window = \"500ms\"",
            "limits.lock_window: \"500ms\" is out of range; give a window from \"1s\" to \"31d\"",
        ),
        (
            "lock_window = \"32days\"",
            "limits.lock_window: \"32days\" is out of range",
        ),
        (
            "lock_duration = \"0s\"",
            "limits.lock_duration: must not be zero; write e.g. \"24h\" or \"7d\", or \
             \"until-unlocked\"",
        ),
        (
            "lock_duration = \"forever\"",
            "limits.lock_duration: \"forever\" is not a duration",
        ),
        (
            "contact = \"\"",
            "limits.contact: must not be empty; remove the key for no contact",
        ),
        (
            "contact = \"abuse@example.net\\r\\n250 OK\"",
            "limits.contact: must be one line of printable ASCII (no CR, LF",
        ),
        ("contact = \"café\"", "limits.contact: must be one line"),
        (
            "exempt_users = [\"a\", \"\"]",
            "limits.exempt_users[1]: must not be empty; give an AUTH login",
        ),
        (
            "exempt_networks = [\"192.0.2.0/24\", \"10.0.0.0/33\"]",
            "limits.exempt_networks[1]: \"10.0.0.0/33\" is neither a network nor an address",
        ),
        (
            "exempt_vhosts = [\"newsleter\"]",
            "limits.exempt_vhosts[0]: \"newsleter\" is not the name of any [[vhost]]; define \
             it, or fix the name",
        ),
    ] {
        let got = problem(&format!("[limits]\n{line}"));
        assert!(
            got.starts_with(want),
            "{line}\ngot  {got:?}\nwant {want:?}…"
        );
    }
    // A bad source does not hide a repeated one.
    assert_problems(
        &problems("[limits]\nidentity = [\"auth\", \"who\", \"auth\"]"),
        &[
            "limits.identity[1]: \"who\" is not allowed",
            "limits.identity[2]: \"auth\" is listed twice",
        ],
    );
    let long = "x".repeat(201);
    assert_eq!(
        problem(&format!("[limits]\ncontact = \"{long}\"")),
        "limits.contact: is longer than 200 characters; it must fit in one SMTP reply line"
    );
    let config = config_ok(&format!("[limits]\ncontact = \"{}\"", &long[1..]));
    assert_eq!(config.limits.contact.map(|c| c.len()), Some(200));
}

#[test]
fn bad_protect_values() {
    for (line, want) in [
        (
            "connections_per_ip = \"60/minute\"",
            "protect.connections_per_ip: \"60/minute\" is not a rate; write N/DURATION like \
             \"12/1h\", or \"off\"",
        ),
        (
            "auth_failures_per_ip = \"0/10m\"",
            "protect.auth_failures_per_ip: \"0/10m\": the count must be from 1 to 1000000",
        ),
        (
            "auth_failures_per_user = \"unlimited\"",
            "protect.auth_failures_per_user: \"unlimited\" is not a rate",
        ),
        (
            "rcpt_pace = \"10/100ms\"",
            "protect.rcpt_pace: \"10/100ms\": the window must be from \"1s\" to \"31d\"",
        ),
    ] {
        let got = problem(&format!("[protect]\n{line}"));
        assert!(
            got.starts_with(want),
            "{line}\ngot  {got:?}\nwant {want:?}…"
        );
    }
}

// === everything together ===

#[test]
fn several_policy_errors_are_reported_together() {
    let text = "\
        [limits]\n\
        default = \"12/hour\"\n\
        action = \"drop\"\n\
        identity = [\"auth\", \"auth\"]\n\
        exempt_vhosts = [\"ghost\"]\n\
        lock_duration = \"never\"\n\
        [[limits.override]]\n\
        key = \"customer:42\"\n\
        limit = \"500/1h\"\n\
        [[vhost]]\n\
        name = \"shop\"\n\
        users = [\"mailbrake-no-such-user\"]\n\
        [protect]\n\
        rcpt_pace = \"fast\"\n\
        [[listener]]\n\
        name = \"l\"\n\
        bind = \"127.0.0.1:2525\"\n";
    let got = errors(text);
    assert_problems(
        &got,
        &[
            "listener[l].upstream: required",
            "limits.default: \"12/hour\" is not a rate; write N/DURATION like \"12/1h\", a list \
             of them, or \"unlimited\"",
            "limits.action: \"drop\" is not allowed",
            "limits.identity[1]: \"auth\" is listed twice",
            "limits.override[#1].key: \"customer:42\" does not start with auth:, vhost:, user:, uid: or ip:",
            "limits.exempt_vhosts[0]: \"ghost\" is not the name of any [[vhost]]",
            "limits.lock_duration: \"never\" is not a duration",
            "vhost[shop].users[0]: no user \"mailbrake-no-such-user\" on this system",
            "protect.rcpt_pace: \"fast\" is not a rate; write N/DURATION like \"12/1h\", or \"off\"",
        ],
    );
    let shown = parse(text).expect_err("invalid").to_string();
    assert!(shown.starts_with("9 error(s) in <text>:\n"), "{shown}");
}

#[test]
fn unknown_policy_keys_are_rejected() {
    for (text, unknown) in [
        ("[limits]\ndefalt = \"1/1h\"\n", "defalt"),
        (
            "[[limits.override]]\nkey = \"auth:a\"\nrate = \"1/1h\"\n",
            "rate",
        ),
        ("[[vhost]]\nname = \"a\"\nuser = [\"root\"]\n", "user"),
        ("[protect]\nconnections = \"1/1s\"\n", "connections"),
        ("[vhosts]\n", "vhosts"),
    ] {
        let message = syntax_error(&with_listener(text));
        assert!(
            message.contains(&format!("unknown field `{unknown}`")),
            "{message}"
        );
    }
    let message = syntax_error(&with_listener(
        "[[vhost]]\nname = \"a\"\nuids = [\"1042\"]\n",
    ));
    assert!(message.contains("line"), "{message}");
}

// === the example file ===

#[test]
fn example_file_keeps_the_policy_defaults() {
    let files = Files::new();
    let config = parse(&files.rebase(EXAMPLE)).unwrap_or_else(|e| panic!("{e}"));
    let (l, d) = (&config.limits, LimitsConfig::default());
    assert_eq!(l.default, d.default);
    assert_eq!(l.action, d.action);
    assert_eq!(l.identity, d.identity);
    assert_eq!(l.ipv6_prefix, d.ipv6_prefix);
    assert_eq!(l.rotation, d.rotation);
    assert_eq!(l.lock_after_refusals, d.lock_after_refusals);
    assert_eq!(l.lock_window, d.lock_window);
    assert_eq!(l.lock_duration, d.lock_duration);
    assert!(l.overrides.is_empty() && l.exempt_users.is_empty() && l.contact.is_none());
    assert!(config.vhosts.is_empty());
    assert_eq!(config.protect, ProtectConfig::default());
}

#[test]
fn example_file_policy_examples_load() {
    let files = Files::new();
    let config = parse(&uncommented_example(&files)).unwrap_or_else(|e| panic!("{e}"));
    let l = &config.limits;
    assert_eq!(l.default, rates(&[(12, HOUR)]));
    assert_eq!(l.exempt_users, ["lists@example.net"]);
    assert_eq!(l.exempt_vhosts, ["lists"]);
    assert_eq!(
        l.exempt_networks,
        [net("192.0.2.0/24"), net("2001:db8::1/128")]
    );
    assert_eq!(l.contact.as_deref(), Some("abuse@example.net"));
    assert_eq!(
        l.overrides,
        [
            Override {
                key: "vhost:shop-42".to_owned(),
                limit: rates(&[(500, HOUR)]),
            },
            Override {
                key: "auth:newsletter@example.net".to_owned(),
                limit: rates(&[(200, HOUR), (1000, DAY)]),
            },
        ]
    );
    let names: Vec<&str> = config.vhosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["shop-42", "lists"]);
    // `users = ["shop42"]` became `["root"]` for the test.
    assert_eq!(config.vhosts[0].uids, [1042, 0]);
    assert_eq!(config.vhosts[1].networks, [net("198.51.100.25/32")]);
}
