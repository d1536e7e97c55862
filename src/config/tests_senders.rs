//! `[limits.overrides]` and `[[vhost]]`: the config that names senders.

use super::tests_limits::{HOUR, assert_problems, config_ok, net, problem, problems, rates};
use super::*;

// === overrides ===

#[test]
fn override_keys() {
    for (key, canonical) in [
        ("auth:lists@example.net", "auth:lists@example.net"),
        ("auth:a:b", "auth:a:b"),
        ("vhost:shop-42", "vhost:shop-42"),
        ("ip:192.0.2.1", "ip:192.0.2.1"),
        ("ip:192.0.2.1/32", "ip:192.0.2.1"),
        ("ip:10.1.2.3/8", "ip:10.0.0.0/8"),
        ("ip:2001:DB8::1", "ip:2001:db8::1"),
        ("ip:::ffff:192.0.2.1", "ip:192.0.2.1"),
        ("ip:2001:db8::1/64", "ip:2001:db8::/64"),
        ("ip:2001:db8:0:0::/64", "ip:2001:db8::/64"),
    ] {
        let config = config_ok(&format!(
            "[[limits.override]]\nkey = \"{key}\"\nlimit = \"500/1h\"\n\
             [[vhost]]\nname = \"shop-42\"\nuids = [1042]\n"
        ));
        assert_eq!(
            config.limits.overrides,
            [Override {
                key: canonical.to_owned(),
                limit: rates(&[(500, HOUR)]),
            }],
            "{key}"
        );
    }
}

#[test]
fn bad_override_keys() {
    let form = "write \"auth:LOGIN\", \"vhost:NAME\", \"user:UNIX-USER\", \"uid:N\" or \
                \"ip:ADDRESS\" (or a network, e.g. \"ip:2001:db8::/64\")";
    for (key, want) in [
        (
            "lists@example.net",
            format!("\"lists@example.net\" is not a sender key; {form}"),
        ),
        (
            "group:staff",
            format!(
                "\"group:staff\" does not start with auth:, vhost:, user:, uid: or ip:; {form}"
            ),
        ),
        (
            "AUTH:alice",
            format!("\"AUTH:alice\" does not start with auth:, vhost:, user:, uid: or ip:; {form}"),
        ),
        (
            "uid:alice",
            "\"alice\" after \"uid:\" is not a number from 0 to 4294967295".to_owned(),
        ),
        (
            "user:two words",
            "\"two words\" is not a Unix user name (printable, no ':' or spaces, not empty)"
                .to_owned(),
        ),
        (
            "auth:",
            format!("\"auth:\" has nothing after \"auth:\"; {form}"),
        ),
        ("ip:", format!("\"ip:\" has nothing after \"ip:\"; {form}")),
        (
            "vhost:",
            format!("\"vhost:\" has nothing after \"vhost:\"; {form}"),
        ),
        (
            "ip:mail.example.net",
            "\"mail.example.net\" after \"ip:\" is neither an address nor a network; write e.g. \
             \"ip:192.0.2.1\" or \"ip:2001:db8::/64\""
                .to_owned(),
        ),
        (
            "ip:10.0.0.0/33",
            "\"10.0.0.0/33\" after \"ip:\" is neither".to_owned(),
        ),
        (
            "vhost:nope",
            "\"nope\" is not the name of any [[vhost]]".to_owned(),
        ),
    ] {
        let got = problem(&format!(
            "[[limits.override]]\nkey = \"{key}\"\nlimit = \"unlimited\"\n"
        ));
        let want = format!("limits.override[#1].key: {want}");
        assert!(
            got.starts_with(&want),
            "{key}\ngot  {got:?}\nwant {want:?}…"
        );
    }
}

#[test]
fn overrides_need_unique_keys_a_key_and_a_limit() {
    let got = problems(
        "[[limits.override]]\nkey = \"ip:192.0.2.1/32\"\nlimit = \"1/1h\"\n\
         [[limits.override]]\nkey = \"auth:a\"\nlimit = \"2/1h\"\n\
         [[limits.override]]\nkey = \"ip:192.0.2.1\"\nlimit = \"3/1h\"\n\
         [[limits.override]]\nlimit = \"4/1h\"\n\
         [[limits.override]]\nkey = \"auth:b\"\n\
         [[limits.override]]\nkey = \"auth:c\"\nlimit = \"5/hour\"\n",
    );
    assert_problems(
        &got,
        &[
            "limits.override[ip:192.0.2.1].key: \"ip:192.0.2.1\" is already the key of \
             override #1; keys must be unique",
            "limits.override[#4].key: required; write \"auth:LOGIN\"",
            "limits.override[auth:b].limit: required; write N/DURATION like \"12/1h\", a list \
             of them, or \"unlimited\"",
            "limits.override[auth:c].limit: \"5/hour\" is not a rate",
        ],
    );
}

#[test]
fn an_exempt_key_may_have_an_override() {
    let config = config_ok(
        "[limits]\nexempt_users = [\"lists@example.net\"]\nexempt_vhosts = [\"shop\"]\n\
         [[limits.override]]\nkey = \"auth:lists@example.net\"\nlimit = \"unlimited\"\n\
         [[limits.override]]\nkey = \"vhost:shop\"\nlimit = \"1/1h\"\n\
         [[vhost]]\nname = \"shop\"\nnetworks = [\"192.0.2.0/24\"]\n",
    );
    assert_eq!(config.limits.overrides.len(), 2);
    assert_eq!(config.limits.overrides[0].limit, Limit::Unlimited);
}

// === vhosts ===

#[test]
fn vhost_users_resolve_to_uids() {
    let config = config_ok(
        "[[vhost]]\nname = \"shop-42\"\nnetworks = [\"192.0.2.42\", \"2001:db8:42::/48\"]\n\
         uids = [1042]\nusers = [\"root\"]\n\
         [[vhost]]\nname = \"Lists_2.x\"\nuids = [7, 7]\nnetworks = [\"::1\", \"::1/128\"]\n",
    );
    assert_eq!(
        config.vhosts,
        [
            VhostConfig {
                name: "shop-42".to_owned(),
                networks: vec![net("192.0.2.42/32"), net("2001:db8:42::/48")],
                uids: vec![1042, 0],
            },
            VhostConfig {
                name: "Lists_2.x".to_owned(),
                networks: vec![net("::1/128")],
                uids: vec![7],
            },
        ]
    );
    // A uid given both ways in one vhost counts once.
    let config = config_ok("[[vhost]]\nname = \"admin\"\nuids = [0]\nusers = [\"root\"]\n");
    assert_eq!(config.vhosts[0].uids, [0]);
}

#[test]
fn unknown_vhost_user_is_an_error() {
    assert_eq!(
        problem("[[vhost]]\nname = \"shop\"\nusers = [\"root\", \"mailbrake-no-such-user\"]\n"),
        "vhost[shop].users[1]: no user \"mailbrake-no-such-user\" on this system; create it, \
         or give its uid in uids"
    );
}

#[test]
fn bad_vhosts() {
    let got = problems(
        "[[vhost]]\n\
         [[vhost]]\nname = \"a b\"\nuids = [1]\n\
         [[vhost]]\nname = \"shop\"\nnetworks = [\"192.0.2.0/24\", \"192.0.2.300\"]\n\
         uids = [-1, 4294967296]\nusers = [\"\"]\n\
         [[vhost]]\nname = \"shop\"\nuids = [2]\n\
         [[vhost]]\nname = \"other\"\nnetworks = [\"192.0.2.7/24\"]\nuids = [1]\n\
         [[vhost]]\nname = \"\"\nnetworks = []\n",
    );
    assert_problems(
        &got,
        &[
            "vhost[#1].name: required; use letters, digits, '-', '_' and '.', e.g. \"shop-42\"",
            "vhost[#1]: needs at least one of networks, uids and users to recognise its \
             connections",
            "vhost[#2].name: \"a b\" is not allowed; use letters",
            "vhost[shop].networks[1]: \"192.0.2.300\" is neither a network nor an address",
            "vhost[shop].uids[0]: -1 is not a uid; give a number from 0 to 4294967295",
            "vhost[shop].uids[1]: 4294967296 is not a uid",
            "vhost[shop].users[0]: must not be empty; give a Unix user name",
            "vhost[shop].name: \"shop\" is already the name of vhost #3; names must be unique",
            "vhost[other].networks[0]: 192.0.2.0/24 is already a network of vhost[shop]",
            "vhost[other].uids[0]: uid 1 already belongs to vhost[#2]",
            "vhost[#6].name: must not be empty",
            "vhost[#6]: needs at least one of networks, uids and users",
        ],
    );
}
