//! End to end, around the two legs: TLS towards the upstream (STARTTLS,
//! implicit, opportunistic, verification), XCLIENT, the PROXY protocol in
//! both directions, and certificate selection by SNI towards the client.

mod common;

use std::net::SocketAddr;

use common::upstream::{Opts, Upstream};
use common::*;

/// The name the test clients give in EHLO.
const HELO: &str = "client.test";

/// A config with one plaintext listener `l` relaying to `upstream`, with
/// `extra` lines in the listener table; returns it and the listener's address.
fn one_listener(upstream: SocketAddr, extra: &str) -> (String, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        base_config(dir.path()) + &listener("l", port, "none", None, &upstream.to_string(), extra);
    (cfg, ([127, 0, 0, 1], port).into())
}

/// `upstream_tls = MODE`, verified against the test certificate.
fn upstream_tls(mode: &str, certs: &Certs) -> String {
    format!("upstream_tls = {mode:?}\nupstream_ca = {:?}\n", certs.cert)
}

/// Reads the greeting and says EHLO; returns the EHLO reply.
async fn greet(c: &mut Raw) -> String {
    expect(&c.reply().await.expect("no greeting"), "220 ");
    ehlo(c).await
}

async fn ehlo(c: &mut Raw) -> String {
    let reply = c.cmd(&format!("EHLO {HELO}")).await;
    expect(&reply, "250");
    reply
}

/// One message from a@x.test to b@y.test, then QUIT.
async fn send_message(c: &mut Raw, subject: &str) {
    expect(&c.cmd("MAIL FROM:<a@x.test>").await, "250");
    expect(&c.cmd("RCPT TO:<b@y.test>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes())
        .await;
    expect(&c.reply().await.unwrap(), "250 2.0.0 Ok: queued");
    expect(&c.cmd("QUIT").await, "221");
    assert_eq!(c.closed().await, "");
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &str) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// The command lines an upstream connection received, without CRLF.
fn lines(seen: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(seen)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn starttls_to_the_upstream_is_verified_with_upstream_ca() {
    let certs = certs();
    let mut up = Upstream::start(Opts {
        starttls: Some(certs.server.clone()),
        ..Opts::default()
    })
    .await;
    let (cfg, addr) = one_listener(up.addr, &upstream_tls("starttls", &certs));
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    greet(&mut c).await;
    mb.wait_log("upstream TLS established");
    send_message(&mut c, "over TLS").await;
    assert_eq!(up.next_message().await.rcpts, ["b@y.test"]);
    // The recorder switches to TLS at STARTTLS, so everything after it
    // arrived encrypted (and is recorded decrypted).
    let seen = up.next_close().await;
    let starttls = find(&seen, "STARTTLS\r\n").expect("no STARTTLS sent upstream");
    let client_ehlo = find(&seen, &format!("EHLO {HELO}\r\n")).expect("no client EHLO");
    assert!(
        starttls < client_ehlo,
        "the client's EHLO went before STARTTLS: {:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(
        lines(&seen)[..3],
        ["EHLO mb.test", "STARTTLS", "EHLO client.test"]
    );
}

#[tokio::test]
async fn upstream_certificate_is_verified_unless_verification_is_off() {
    let certs = certs();
    let mut up = Upstream::start(Opts {
        starttls: Some(certs.server.clone()),
        ..Opts::default()
    })
    .await;

    // No upstream_ca: the system roots, which do not trust the test certificate.
    let (cfg, addr) = one_listener(up.addr, "upstream_tls = \"starttls\"\n");
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    let rest = c.closed().await;
    expect(&rest, "421 4.7.0 mb.test ");
    assert_eq!(rest.lines().count(), 1, "{rest:?}");
    let seen = up.next_close().await;
    assert!(find(&seen, "STARTTLS\r\n").is_some());
    assert!(find(&seen, HELO).is_none(), "the client got through");
    mb.wait_log("TLS to the upstream failed");
    assert!(up.messages.lock().unwrap().is_empty());
    drop(mb);

    let (cfg, addr) = one_listener(
        up.addr,
        "upstream_tls = \"starttls\"\nupstream_tls_verify = false\n",
    );
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    greet(&mut c).await;
    send_message(&mut c, "unverified").await;
    up.next_message().await;
    mb.wait_log("upstream TLS established");
}

#[tokio::test]
async fn implicit_tls_to_the_upstream() {
    let certs = certs();
    let mut up = Upstream::start(Opts {
        implicit_tls: Some(certs.server.clone()),
        ..Opts::default()
    })
    .await;
    let (cfg, addr) = one_listener(up.addr, &upstream_tls("implicit", &certs));
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    greet(&mut c).await;
    send_message(&mut c, "implicit").await;
    up.next_message().await;
    mb.wait_log("upstream TLS established");
    // The recorder speaks TLS from its first byte: no probe, no STARTTLS.
    let seen = lines(&up.next_close().await);
    assert_eq!(seen[0], "EHLO client.test", "{seen:?}");
    assert!(!seen.iter().any(|l| l == "STARTTLS"), "{seen:?}");
}

#[tokio::test]
async fn opportunistic_tls_uses_starttls_only_when_offered() {
    let certs = certs();
    let mut plain = Upstream::start(Opts::default()).await;
    let mut tls = Upstream::start(Opts {
        starttls: Some(certs.server.clone()),
        ..Opts::default()
    })
    .await;
    let (plain_port, tls_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let extra = upstream_tls("opportunistic", &certs);
    let cfg = base_config(dir.path())
        + &listener(
            "plain",
            plain_port,
            "none",
            None,
            &plain.addr.to_string(),
            &extra,
        )
        + &listener("tls", tls_port, "none", None, &tls.addr.to_string(), &extra);
    let mut mb = Mailbrake::start(&cfg);

    let mut c = Raw::connect(([127, 0, 0, 1], plain_port).into()).await;
    greet(&mut c).await;
    send_message(&mut c, "plaintext").await;
    plain.next_message().await;
    let seen = lines(&plain.next_close().await);
    assert_eq!(seen[..2], ["EHLO mb.test", "EHLO client.test"]);
    assert!(!seen.iter().any(|l| l == "STARTTLS"), "{seen:?}");
    mb.wait_log("session end");
    assert!(!mb.logs().contains("upstream TLS established"));

    let mut c = Raw::connect(([127, 0, 0, 1], tls_port).into()).await;
    greet(&mut c).await;
    send_message(&mut c, "encrypted").await;
    tls.next_message().await;
    let seen = lines(&tls.next_close().await);
    assert_eq!(seen[..3], ["EHLO mb.test", "STARTTLS", "EHLO client.test"]);
    let line = mb.wait_log("upstream TLS established");
    assert!(line.contains("listener=tls"), "{line}");
}

#[tokio::test]
async fn xclient_names_the_real_client_and_stays_hidden_from_it() {
    let mut up = Upstream::start(Opts {
        xclient: true,
        ..Opts::default()
    })
    .await;
    let (cfg, addr) = one_listener(up.addr, "xclient = true\n");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    let port = c.local_addr().port();
    let ehlo = greet(&mut c).await;
    // The recorder advertises both.
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    expect(&c.cmd("XCLIENT ADDR=10.0.0.1").await, "502 ");
    send_message(&mut c, "xclient").await;
    up.next_message().await;

    let seen = lines(&up.next_close().await);
    assert_eq!(seen[0], "EHLO mb.test", "{seen:?}");
    let xclient = &seen[1];
    assert!(
        xclient.starts_with(&format!("XCLIENT ADDR=127.0.0.1 PORT={port} "))
            && xclient.ends_with(&format!(" HELO={HELO}")),
        "{seen:?}"
    );
    assert_eq!(seen[2], "EHLO client.test", "{seen:?}");
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("XCLIENT")).count(),
        1,
        "the client's XCLIENT reached the upstream: {seen:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("10.0.0.1")), "{seen:?}");
}

#[tokio::test]
async fn proxy_protocol_header_towards_the_upstream() {
    for version in ["v1", "v2"] {
        let mut up = Upstream::start(Opts {
            proxy_header: true,
            ..Opts::default()
        })
        .await;
        let (cfg, addr) =
            one_listener(up.addr, &format!("upstream_proxy_protocol = {version:?}\n"));
        let _mb = Mailbrake::start(&cfg);
        let mut c = Raw::connect(addr).await;
        let client_port = c.local_addr().port();
        greet(&mut c).await;
        send_message(&mut c, version).await;
        up.next_message().await;
        let seen = up.next_close().await;

        let header = if version == "v1" {
            format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\n",
                addr.port()
            )
            .into_bytes()
        } else {
            let signature = b"\r\n\r\n\0\r\nQUIT\n";
            assert!(seen.starts_with(signature), "{version}: {seen:?}");
            let mut h = signature.to_vec();
            h.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
            h.extend([127, 0, 0, 1, 127, 0, 0, 1]);
            h.extend(client_port.to_be_bytes());
            h.extend(addr.port().to_be_bytes());
            h
        };
        assert!(
            seen.starts_with(&header),
            "{version}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        assert!(
            seen[header.len()..].starts_with(format!("EHLO {HELO}\r\n").as_bytes()),
            "{version}: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
}

#[tokio::test]
async fn inbound_proxy_header_only_from_trusted_peers() {
    let mut up = Upstream::start(Opts {
        xclient: true,
        ..Opts::default()
    })
    .await;
    let (trusted, untrusted) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let target = up.addr.to_string();
    let cfg = base_config(dir.path())
        + &listener(
            "trusted",
            trusted,
            "none",
            None,
            &target,
            "xclient = true\nproxy_protocol_trusted = [\"127.0.0.1\"]\n",
        )
        + &listener(
            "untrusted",
            untrusted,
            "none",
            None,
            &target,
            "xclient = true\n",
        );
    let mut mb = Mailbrake::start(&cfg);
    let proxy_line = b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 25\r\n";

    // Trusted: the header names the client.
    let mut c = Raw::connect(([127, 0, 0, 1], trusted).into()).await;
    c.send(proxy_line).await;
    greet(&mut c).await;
    send_message(&mut c, "proxied").await;
    up.next_message().await;
    let seen = lines(&up.next_close().await);
    assert!(
        seen[1].starts_with("XCLIENT ADDR=192.0.2.9 PORT=5555 "),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.starts_with("PROXY")), "{seen:?}");
    let line = mb.wait_log("PROXY header accepted");
    assert!(line.contains("proxied_client=192.0.2.9:5555"), "{line}");
    let line = mb.wait_log("session start");
    assert!(line.contains("client=192.0.2.9:5555"), "{line}");

    // Untrusted: the same line is just an unknown SMTP command.
    let mut c = Raw::connect(([127, 0, 0, 1], untrusted).into()).await;
    let port = c.local_addr().port();
    c.send(proxy_line).await;
    expect(&c.reply().await.unwrap(), "220 ");
    expect(&c.reply().await.unwrap(), "502 5.5.2");
    ehlo(&mut c).await;
    send_message(&mut c, "not proxied").await;
    up.next_message().await;
    let seen = lines(&up.next_close().await);
    assert!(
        seen[1].starts_with(&format!("XCLIENT ADDR=127.0.0.1 PORT={port} ")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("PROXY") || l.contains("192.0.2.9")),
        "{seen:?}"
    );
    let line = mb.wait_log("session start");
    assert!(
        line.contains("listener=untrusted") && !line.contains("192.0.2.9"),
        "{line}"
    );
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let default = certs();
    let other = certs_for(&["other.test"]);
    let up = Upstream::start(Opts::default()).await;
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "extra_certs = [{{ cert = {:?}, key = {:?} }}]\n",
        other.cert, other.key
    );
    let cfg = base_config(dir.path())
        + &listener(
            "l",
            port,
            "implicit",
            Some(&default),
            &up.addr.to_string(),
            &extra,
        );
    let mut mb = Mailbrake::start(&cfg);

    // Each client trusts one certificate only: its handshake succeeds only
    // if that certificate was served.
    let mut c = Raw::try_connect_tls_as(addr, other.client.clone(), "other.test")
        .await
        .expect("SNI other.test did not get the other.test certificate");
    expect(&c.reply().await.unwrap(), "220 ");
    let line = mb.wait_log("client TLS established");
    assert!(line.contains("other.test"), "{line}");

    let mut c = Raw::try_connect_tls_as(addr, default.client.clone(), "localhost")
        .await
        .expect("SNI localhost did not get the default certificate");
    expect(&c.reply().await.unwrap(), "220 ");
    assert!(
        Raw::try_connect_tls_as(addr, other.client.clone(), "localhost")
            .await
            .is_err(),
        "SNI localhost got the other.test certificate"
    );
}
