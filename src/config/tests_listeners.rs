//! `[[listener]]`: upstream targets and addresses, names, certificates and
//! upstream TLS options.

use ipnet::IpNet;

use super::tests::*;
use super::*;

// === upstream and addresses ===

#[test]
fn upstream_forms() {
    for (value, want) in [
        ("original-destination", UpstreamTarget::OriginalDestination),
        ("127.0.0.1:25", fixed("127.0.0.1", 25)),
        ("mta.internal:10587", fixed("mta.internal", 10587)),
        ("localhost:65535", fixed("localhost", 65535)),
        ("[::1]:10025", fixed("::1", 10025)),
        ("[2001:db8::1]:25", fixed("2001:db8::1", 25)),
    ] {
        let fields = format!("name = \"l\"\nbind = \"127.0.0.1:2525\"\nupstream = \"{value}\"");
        assert_eq!(
            listener_ok(&one_listener(&fields)).upstream,
            want,
            "{value}"
        );
    }
}

#[test]
fn bad_upstreams() {
    for (value, want) in [
        ("original_destination", "has no port"),
        ("127.0.0.1", "has no port"),
        (":25", "has no host"),
        ("mta:0", "is not a number from 1 to 65535"),
        ("mta:65536", "is not a number from 1 to 65535"),
        ("mta:smtp", "is not a number from 1 to 65535"),
        ("::1:25", "an IPv6 address needs brackets"),
        ("[::1]", "is not HOST:PORT"),
        ("[mta]:25", "in brackets is not an IPv6 address"),
        ("bad host:25", "is not a valid host name"),
    ] {
        let fields = format!("name = \"l\"\nbind = \"127.0.0.1:2525\"\nupstream = \"{value}\"");
        let e = error(&one_listener(&fields));
        assert!(e.starts_with("listener[l].upstream: "), "{e}");
        assert!(e.contains(want), "{value}: {e}");
    }
}

#[test]
fn ipv6_bind_and_upstream() {
    let l = listener_ok(&one_listener(
        "name = \"v6\"\nbind = \"[::]:2587\"\nupstream = \"[::1]:10025\"",
    ));
    assert_eq!(l.bind, Bind::Tcp(addr("[::]:2587")));
    assert_eq!(l.upstream, fixed("::1", 10025));

    let e = error(&one_listener(
        "name = \"v6\"\nbind = \"::1:2587\"\nupstream = \"[::1]:10025\"",
    ));
    assert!(
        e.starts_with("listener[v6].bind: \"::1:2587\" is not an IP:PORT address"),
        "{e}"
    );
}

#[test]
fn binds_must_be_unique_except_port_zero() {
    let two = |a: &str, b: &str| {
        format!(
            "{}{}",
            one_listener(&format!(
                "name = \"a\"\nbind = \"{a}\"\nupstream = \"127.0.0.1:25\""
            )),
            one_listener(&format!(
                "name = \"b\"\nbind = \"{b}\"\nupstream = \"127.0.0.1:25\""
            ))
        )
    };
    assert_eq!(
        error(&two("127.0.0.1:2525", "127.0.0.1:2525")),
        "listener[b].bind: 127.0.0.1:2525 is already the address of listener[a]; addresses must \
         be unique"
    );
    parse(&two("127.0.0.1:0", "127.0.0.1:0")).expect("port 0 twice is fine");
    parse(&two("127.0.0.1:2525", "[::1]:2525")).expect("different addresses");

    let admin = format!("[admin]\nbind = \"127.0.0.1:2525\"\n{}", one_listener(BASE));
    assert_eq!(
        error(&admin),
        "listener[l].bind: 127.0.0.1:2525 is also admin.bind; use another address"
    );
}

#[test]
fn upstream_pointing_at_a_listener_is_a_loop() {
    for (bind, upstream) in [
        ("127.0.0.1:2525", "127.0.0.1:2525"),
        ("0.0.0.0:2525", "127.0.0.1:2525"),
        ("[::]:2525", "[::1]:2525"),
    ] {
        let fields = format!("name = \"l\"\nbind = \"{bind}\"\nupstream = \"{upstream}\"");
        let e = error(&one_listener(&fields));
        assert!(
            e.contains("is served by listener[l]: mailbrake would connect to itself"),
            "{e}"
        );
    }
}

#[test]
fn trusted_networks_accept_bare_addresses() {
    let l = listener_ok(&one_listener(&format!(
        "{BASE}\nproxy_protocol_trusted = [\"10.0.0.0/8\", \"192.0.2.1\", \"2001:db8::1\", \
         \"2001:db8::/32\", \"10.1.2.3/8\"]"
    )));
    let want: Vec<IpNet> = [
        "10.0.0.0/8",
        "192.0.2.1/32",
        "2001:db8::1/128",
        "2001:db8::/32",
        "10.0.0.0/8",
    ]
    .iter()
    .map(|s| s.parse().expect("net"))
    .collect();
    assert_eq!(l.proxy_protocol_trusted, want);

    let errors = errors(&one_listener(&format!(
        "{BASE}\nproxy_protocol_trusted = [\"10.0.0.0/33\", \"ok.example\", \"192.0.2.1\"]"
    )));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("listener[l].proxy_protocol_trusted[0]: \"10.0.0.0/33\""));
    assert!(errors[1].starts_with("listener[l].proxy_protocol_trusted[1]: \"ok.example\""));
}

// === names ===

#[test]
fn listener_names() {
    for (name_line, want) in [
        ("", "listener[#1].name: required"),
        ("name = \"\"", "listener[#1].name: must not be empty"),
        (
            "name = \"my listener\"",
            "listener[#1].name: \"my listener\" is not allowed",
        ),
    ] {
        let e = error(&one_listener(&format!(
            "{name_line}\nbind = \"127.0.0.1:2525\"\nupstream = \"127.0.0.1:25\""
        )));
        assert!(e.starts_with(want), "{e}");
    }
}

// === certificates ===

#[test]
fn tls_requires_readable_cert_and_key() {
    let files = Files::new();
    let missing = files.dir.path().join("certs/nope.pem");
    for (fields, want) in [
        (
            "tls = \"implicit\"".to_owned(),
            vec![
                "listener[l].cert: required when tls is not \"none\"",
                "listener[l].key: required when tls is not \"none\"",
            ],
        ),
        (
            files.rebase("tls = \"starttls\"\ncert = \"certs/mail.pem\""),
            vec!["listener[l].key: required"],
        ),
        (
            files.rebase(&format!(
                "tls = \"starttls\"\ncert = \"{}\"\nkey = \"certs/mail.key\"",
                missing.display()
            )),
            vec!["listener[l].cert: cannot read "],
        ),
        (
            files.rebase(&format!(
                "tls = \"starttls\"\ncert = \"{}\"\nkey = \"certs/mail.key\"",
                files.dir.path().display()
            )),
            vec!["is not a regular file"],
        ),
        (
            files.rebase(
                "tls = \"starttls\"\ncert = \"certs/mail.pem\"\nkey = \"certs/mail.key\"\n\
                 extra_certs = [{ cert = \"certs/other.pem\" }, { cert = \"\", key = \"certs/other.key\" }]",
            ),
            vec![
                "listener[l].extra_certs[0].key: required",
                "listener[l].extra_certs[1].cert: must not be empty",
            ],
        ),
    ] {
        let errors = errors(&one_listener(&format!("{BASE}\n{fields}")));
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(want) {
            assert!(got.starts_with(want) || got.contains(want), "got {got:?}, want {want:?}");
        }
    }
}

#[test]
fn extra_certs_follow_the_default_pair() {
    let files = Files::new();
    let l = listener_ok(&one_listener(&files.rebase(&format!(
        "{BASE}\ntls = \"starttls\"\ncert = \"certs/mail.pem\"\nkey = \"certs/mail.key\"\n\
         extra_certs = [{{ cert = \"certs/other.pem\", key = \"certs/other.key\" }}]"
    ))));
    assert_eq!(
        l.certs,
        [
            CertPair {
                cert: files.cert("mail.pem"),
                key: files.cert("mail.key")
            },
            CertPair {
                cert: files.cert("other.pem"),
                key: files.cert("other.key")
            },
        ]
    );
}

#[test]
fn certs_are_ignored_without_tls() {
    let l = listener_ok(&one_listener(&format!(
        "{BASE}\ntls = \"none\"\ncert = \"/nonexistent/mail.pem\"\n\
         extra_certs = [{{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }}]"
    )));
    assert!(l.certs.is_empty());
}

// === upstream TLS options ===

#[test]
fn upstream_tls_options_need_upstream_tls() {
    let files = Files::new();
    let ca = files.cert("internal-ca.pem");
    let options = format!(
        "upstream_ca = \"{}\"\nupstream_tls_name = \"mta.internal\"",
        ca.display()
    );

    let errors = errors(&one_listener(&format!("{BASE}\n{options}")));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0]
            .starts_with("listener[l].upstream_ca: has no effect with upstream_tls = \"none\"")
    );
    assert!(errors[1].starts_with("listener[l].upstream_tls_name: has no effect"));

    let l = listener_ok(&one_listener(&format!(
        "{BASE}\nupstream_tls = \"opportunistic\"\nupstream_tls_verify = false\n{options}"
    )));
    assert_eq!(l.upstream_ca, Some(ca));
    assert_eq!(l.upstream_tls_name.as_deref(), Some("mta.internal"));
    assert!(!l.upstream_tls_verify);

    let e = error(&one_listener(&format!(
        "{BASE}\nupstream_tls = \"implicit\"\nupstream_ca = \"/nonexistent/ca.pem\""
    )));
    assert!(
        e.starts_with("listener[l].upstream_ca: cannot read /nonexistent/ca.pem: "),
        "{e}"
    );

    let e = error(&one_listener(&format!(
        "{BASE}\nupstream_tls = \"implicit\"\nupstream_tls_name = \"not a name\""
    )));
    assert!(
        e.starts_with("listener[l].upstream_tls_name: \"not a name\" is neither"),
        "{e}"
    );
}

// === Unix socket listeners ===

#[test]
fn a_unix_socket_listener_and_its_file() {
    let l = listener_ok(&one_listener(
        "name = \"sendmail\"\nbind = \"unix:/run/mailbrake/submit.sock\"\nupstream = \"127.0.0.1:25\"",
    ));
    let want = UnixBind {
        path: "/run/mailbrake/submit.sock".into(),
        mode: 0o666,
        owner: None,
        group: None,
    };
    assert_eq!(l.bind, Bind::Unix(want.clone()));
    assert_eq!(l.bind.to_string(), "unix:/run/mailbrake/submit.sock");
    assert_eq!(l.bind.tcp(), None);

    let l = listener_ok(&one_listener(
        "name = \"sendmail\"\nbind = \"unix:/run/mailbrake/submit.sock\"\n\
         socket_mode = \"0660\"\nsocket_owner = \"root\"\nsocket_group = \"root\"\n\
         upstream = \"127.0.0.1:25\"",
    ));
    let want = UnixBind {
        mode: 0o660,
        owner: Some("root".into()),
        group: Some("root".into()),
        ..want
    };
    assert_eq!(l.bind, Bind::Unix(want));
}

#[test]
fn what_a_unix_socket_listener_cannot_be_asked() {
    let unix = "name = \"s\"\nbind = \"unix:/run/mb.sock\"\n";
    let files = Files::new();
    let tls =
        files.rebase("tls = \"starttls\"\ncert = \"certs/mail.pem\"\nkey = \"certs/mail.key\"");
    for (fields, want) in [
        (
            "name = \"s\"\nbind = \"unix:run/mb.sock\"\nupstream = \"127.0.0.1:25\"".to_owned(),
            "listener[s].bind: \"unix:run/mb.sock\" needs an absolute path to the socket file",
        ),
        (
            "name = \"s\"\nbind = \"127.0.0.1:2525\"\nsocket_mode = \"0600\"\nupstream = \"127.0.0.1:25\""
                .to_owned(),
            "listener[s].socket_mode: only a Unix socket listener (bind = \"unix:PATH\") has a socket file",
        ),
        (
            format!("{unix}socket_mode = \"rw-\"\nupstream = \"127.0.0.1:25\""),
            "listener[s].socket_mode: \"rw-\" is not a file mode; write octal digits",
        ),
        (
            format!("{unix}socket_mode = \"1777\"\nupstream = \"127.0.0.1:25\""),
            "listener[s].socket_mode: \"1777\" is not a file mode",
        ),
        (
            format!("{unix}socket_group = \"no-such-group-here\"\nupstream = \"127.0.0.1:25\""),
            "listener[s].socket_group: no group \"no-such-group-here\" on this system",
        ),
        (
            format!("{unix}socket_owner = \"no-such-user-here\"\nupstream = \"127.0.0.1:25\""),
            "listener[s].socket_owner: no user \"no-such-user-here\" on this system",
        ),
        (
            format!("{unix}{tls}\nupstream = \"127.0.0.1:25\""),
            "listener[s].tls: a Unix socket listener takes no TLS",
        ),
        (
            format!("{unix}proxy_protocol_trusted = [\"127.0.0.1\"]\nupstream = \"127.0.0.1:25\""),
            "listener[s].proxy_protocol_trusted: a Unix socket's clients are named by the kernel",
        ),
        (
            format!("{unix}upstream = \"original-destination\""),
            "listener[s].upstream: a Unix socket's connections were not REDIRECTed",
        ),
    ] {
        let e = error(&one_listener(&fields));
        assert!(e.starts_with(want), "{fields}\ngot  {e:?}\nwant {want:?}…");
    }
    // Two listeners on one socket file.
    let two = format!(
        "{}{}",
        one_listener(&format!("{unix}upstream = \"127.0.0.1:25\"")),
        one_listener("name = \"t\"\nbind = \"unix:/run/mb.sock\"\nupstream = \"127.0.0.1:25\"")
    );
    assert_eq!(
        error(&two),
        "listener[t].bind: unix:/run/mb.sock is already the address of listener[s]; addresses \
         must be unique"
    );
}

#[test]
fn a_unix_socket_takes_no_login_and_passes_on_no_address() {
    let unix = "name = \"s\"\nbind = \"unix:/run/mb.sock\"\nupstream = \"127.0.0.1:25\"\n";
    for (extra, want) in [
        (
            "allow_plaintext_auth = true",
            "listener[s].allow_plaintext_auth: a Unix socket listener offers no AUTH",
        ),
        (
            "xclient = true",
            "listener[s].xclient: a Unix socket's clients have no address to pass on",
        ),
        (
            "upstream_proxy_protocol = \"v2\"",
            "listener[s].upstream_proxy_protocol: a Unix socket's clients have no address",
        ),
    ] {
        let e = error(&one_listener(&format!("{unix}{extra}")));
        assert!(e.starts_with(want), "{extra}\ngot  {e:?}\nwant {want:?}…");
    }
    let long = format!("/run/{}", "x".repeat(120));
    let e = error(&one_listener(&format!(
        "name = \"s\"\nbind = \"unix:{long}\"\nupstream = \"127.0.0.1:25\""
    )));
    assert!(
        e.starts_with(&format!(
            "listener[s].bind: \"unix:{long}\" is too long for a Unix socket"
        )),
        "{e}"
    );
    // One path is one socket, whatever the mode each listener asks for.
    let two = format!(
        "{}{}",
        one_listener(unix),
        one_listener(
            "name = \"t\"\nbind = \"unix:/run/mb.sock\"\nsocket_mode = \"0600\"\nupstream = \"127.0.0.1:25\""
        )
    );
    assert_eq!(
        error(&two),
        "listener[t].bind: unix:/run/mb.sock is already the address of listener[s]; addresses \
         must be unique"
    );
}

#[test]
fn sessions_per_user_on_a_unix_socket_only() {
    let unix = "name = \"s\"\nbind = \"unix:/run/mb.sock\"\nupstream = \"127.0.0.1:25\"\n";
    let per_user = |extra: &str| {
        listener_ok(&one_listener(&format!("{unix}{extra}")))
            .max_sessions_per_user
            .get()
    };
    assert_eq!(per_user(""), 50);
    assert_eq!(per_user("max_sessions = 8"), 8, "never above max_sessions");
    assert_eq!(per_user("max_sessions_per_user = 3"), 3);
    for (extra, want) in [
        (
            format!("{unix}max_sessions_per_user = 0"),
            "listener[s].max_sessions_per_user: 0 is too small; give at least 1",
        ),
        (
            format!("{unix}max_sessions = 4\nmax_sessions_per_user = 5"),
            "listener[s].max_sessions_per_user: 5 is more than max_sessions (4); give at most 4",
        ),
        (
            format!("{BASE}\nmax_sessions_per_user = 5").replace("name = \"l\"", "name = \"s\""),
            "listener[s].max_sessions_per_user: only a Unix socket listener",
        ),
    ] {
        let e = error(&one_listener(&extra));
        assert!(e.starts_with(want), "{extra}\ngot  {e:?}\nwant {want:?}…");
    }
}
