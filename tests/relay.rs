//! End to end: a real SMTP client library (lettre) and raw clients through a
//! mailbrake process to a recording upstream, on loopback.

mod common;

use common::upstream::{Opts, Upstream};
use common::*;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

fn one_listener(
    tls: &str,
    certs: Option<&Certs>,
    upstream: std::net::SocketAddr,
    extra: &str,
) -> (String, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        base_config(dir.path()) + &listener("l", port, tls, certs, &upstream.to_string(), extra);
    (cfg, port)
}

fn message(body: &str) -> Message {
    Message::builder()
        .from("Alice <alice@example.com>".parse::<Mailbox>().unwrap())
        .to("bob@example.net".parse::<Mailbox>().unwrap())
        .to("carol@example.net".parse::<Mailbox>().unwrap())
        .subject("mailbrake test")
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .header(ContentTransferEncoding::EightBit)
                .body(body.to_string()),
        )
        .unwrap()
}

fn tls_params(certs: &Certs) -> TlsParameters {
    let pem = std::fs::read(&certs.cert).unwrap();
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build_rustls()
        .unwrap()
}

fn transport(port: u16, tls: Tls) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(tls)
}

const BODY: &str =
    "Line one\r\n.leading dot\r\n..two dots\r\n.\r\n8-bit: caf\u{e9} \u{2603}\r\nlast";

#[tokio::test]
async fn lettre_relays_over_plain_starttls_and_implicit_tls() {
    let certs = certs();
    for tls_mode in ["none", "starttls", "implicit"] {
        let mut up = Upstream::start(Opts::default()).await;
        let (cfg, port) = one_listener(tls_mode, Some(&certs), up.addr, "");
        let _mb = Mailbrake::start(&cfg);
        let tls = match tls_mode {
            "none" => Tls::None,
            "starttls" => Tls::Required(tls_params(&certs)),
            _ => Tls::Wrapper(tls_params(&certs)),
        };
        let t = transport(port, tls).build();
        let response = t.send(message(BODY)).await.unwrap();
        let queued = response.message().collect::<Vec<_>>().join(" ");
        assert!(queued.contains("queued as TEST"), "{tls_mode}: {queued}");
        let m = up.next_message().await;
        assert_eq!(m.from, "alice@example.com");
        assert_eq!(m.rcpts, vec!["bob@example.net", "carol@example.net"]);
        let content = String::from_utf8(m.content()).unwrap();
        assert!(content.contains("\r\n\r\nLine one\r\n.leading dot\r\n..two dots\r\n.\r\n8-bit: caf\u{e9} \u{2603}\r\nlast"), "{tls_mode}: {content:?}");
    }
}

#[tokio::test]
async fn auth_plain_and_login_success_and_failure() {
    let certs = certs();
    let mut up = Upstream::start(Opts {
        auth: true,
        ..Opts::default()
    })
    .await;
    let (cfg, port) = one_listener("starttls", Some(&certs), up.addr, "");
    let mut mb = Mailbrake::start(&cfg);
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let ok = transport(port, Tls::Required(tls_params(&certs)))
            .credentials(Credentials::new("alice".into(), "secret".into()))
            .authentication(vec![mech])
            .build();
        ok.send(message("hi")).await.unwrap();
        up.next_message().await;
        let line = mb.wait_log("authenticated");
        assert!(line.contains("alice"), "{line}");

        let bad = transport(port, Tls::Required(tls_params(&certs)))
            .credentials(Credentials::new("alice".into(), "wrong-password".into()))
            .authentication(vec![mech])
            .build();
        let err = bad.send(message("hi")).await.unwrap_err();
        assert!(
            err.to_string().contains("535") || err.is_permanent(),
            "{err}"
        );
        mb.wait_log("authentication failed");
    }
    let logs = mb.logs();
    assert!(
        !logs.contains("secret") && !logs.contains("wrong-password"),
        "a password reached the logs"
    );
    assert!(!logs.contains("AGFsaWNl"), "an AUTH blob reached the logs");
}

#[tokio::test]
async fn auth_before_tls_is_refused_and_hidden() {
    let certs = certs();
    let up = Upstream::start(Opts {
        auth: true,
        ..Opts::default()
    })
    .await;
    let (cfg, port) = one_listener("starttls", Some(&certs), up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    expect(&c.reply().await.unwrap(), "220 ");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("XFORWARD"), "{ehlo}");
    expect(&c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await, "530 5.7.0");
    expect(&c.cmd("STARTTLS").await, "220 ");
    c.tls(certs.client.clone()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN\r\n") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("-PLUS"), "{ehlo}");
    expect(&c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await, "235");
}

#[tokio::test]
async fn pipelined_batch_gets_replies_in_order() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    c.reply().await.unwrap();
    let ehlo = c.cmd("EHLO c").await;
    assert!(ehlo.contains("PIPELINING"));
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<reject@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n").await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(c.reply().await.unwrap()[..3].to_string());
    }
    assert_eq!(replies, ["250", "250", "550", "250", "354"]);
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    expect(&c.reply().await.unwrap(), "250 2.0.0 Ok: queued");
    expect(&c.reply().await.unwrap(), "221");
    let m = up.next_message().await;
    assert_eq!(m.rcpts, ["b@y.test", "c@y.test"]);
    assert_eq!(m.wire, b"Subject: p\r\n\r\nbody\r\n");
}

#[tokio::test]
async fn bdat_is_relayed_exactly() {
    let mut up = Upstream::start(Opts {
        chunking: true,
        ..Opts::default()
    })
    .await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    c.reply().await.unwrap();
    assert!(c.cmd("EHLO c").await.contains("CHUNKING"));
    let chunk1 = b"Subject: b\r\n\r\n.not stuffed\r\nRCPT TO:<x>\r\n";
    let chunk2 = b"\x00binary\xff\r\n.\r\n";
    let mut batch = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n".to_vec();
    batch.extend(format!("BDAT {}\r\n", chunk1.len()).as_bytes());
    batch.extend(chunk1);
    batch.extend(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes());
    batch.extend(chunk2);
    c.send(&batch).await;
    for code in ["250", "250", "250", "250 2.0.0 Ok: queued"] {
        expect(&c.reply().await.unwrap(), code);
    }
    let m = up.next_message().await;
    assert_eq!(m.wire, [&chunk1[..], &chunk2[..]].concat());
}

#[tokio::test]
async fn smuggling_sequences_deliver_nothing() {
    let sequences: &[&[u8]] = &[b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r"];
    for seq in sequences {
        let mut up = Upstream::start(Opts::default()).await;
        let (cfg, port) = one_listener("none", None, up.addr, "");
        let _mb = Mailbrake::start(&cfg);
        let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
        c.reply().await.unwrap();
        c.cmd("EHLO c").await;
        c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
            .await;
        for _ in 0..3 {
            c.reply().await.unwrap();
        }
        let mut body = b"Subject: one\r\n\r\nfirst".to_vec();
        body.extend_from_slice(seq);
        body.extend_from_slice(b"MAIL FROM:<spoof@bank.example>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n");
        c.send(&body).await;
        let rest = c.closed().await;
        assert!(rest.starts_with("554 5.5.2"), "{seq:?}: {rest:?}");
        let seen = up.next_close().await;
        assert!(
            up.messages.lock().unwrap().is_empty(),
            "{seq:?}: a message was delivered"
        );
        assert!(!String::from_utf8_lossy(&seen).contains("spoof"), "{seq:?}");
    }
}

#[tokio::test]
async fn starttls_injection_is_discarded() {
    let certs = certs();
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, port) = one_listener("starttls", Some(&certs), up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(port).await;
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil>\r\n").await;
    expect(&c.reply().await.unwrap(), "220 2.0.0");
    c.tls(certs.client.clone()).await;
    expect(&c.cmd("MAIL FROM:<a@x>").await, "503 5.5.1");
    c.cmd("EHLO c").await;
    expect(&c.cmd("MAIL FROM:<a@x>").await, "250");
    expect(&c.cmd("QUIT").await, "221");
    let seen = String::from_utf8_lossy(&up.next_close().await).into_owned();
    assert!(!seen.contains("injected"), "{seen}");
}

#[tokio::test]
async fn client_gone_mid_data_stores_nothing() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(port).await;
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        c.reply().await.unwrap();
    }
    c.send(b"Subject: cut\r\n\r\nhalf a message\r\n.").await;
    c.shutdown().await;
    let seen = up.next_close().await;
    assert!(
        seen.ends_with(b"half a message\r\n."),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(up.messages.lock().unwrap().is_empty());
}

#[tokio::test]
async fn upstream_down_gives_421() {
    let port = free_port();
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path())
        + "[timeouts]\nconnect = \"2s\"\n"
        + &listener("l", port, "none", None, &format!("127.0.0.1:{dead}"), "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
    let r = c.closed().await;
    expect(&r, "421 4.4.1");
}

#[tokio::test]
async fn upstream_closing_mid_session_gives_421() {
    let up = Upstream::start(Opts {
        hang_up_on: Some("RCPT"),
        ..Opts::default()
    })
    .await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(port).await;
    expect(&c.cmd("MAIL FROM:<a@x>").await, "250");
    c.send(b"RCPT TO:<b@y>\r\n").await;
    expect(&c.closed().await, "421 4.4.2");
}

#[tokio::test]
async fn overlong_lines_are_refused_and_the_session_continues() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(port).await;
    let long = format!("MAIL FROM:<{}@x>", "a".repeat(10_000));
    expect(&c.cmd(&long).await, "500 5.5.2");
    expect(&c.cmd("NOOP").await, "250");
}

#[tokio::test]
async fn ten_megabyte_message_is_byte_exact() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, port) = one_listener("none", None, up.addr, "");
    let _mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(port).await;
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        c.reply().await.unwrap();
    }
    // 10 MB of 8-bit lines, some dot-stuffed, generated deterministically.
    let mut body = Vec::with_capacity(10_500_000);
    let mut x: u32 = 12345;
    while body.len() < 10_000_000 {
        if x.is_multiple_of(7) {
            body.extend_from_slice(b"..stuffed");
        }
        for i in 0..(x % 200) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = (x >> 16) as u8;
            // No line breaks inside a line, no unstuffed dot at a line start.
            let plain = b == b'\r' || b == b'\n' || (i == 0 && b == b'.');
            body.push(if plain { b'x' } else { b });
        }
        body.extend_from_slice(b"\r\n");
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
    }
    c.send(&body).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await.unwrap(), "250 2.0.0 Ok: queued");
    let m = up.next_message().await;
    assert_eq!(m.wire.len(), body.len());
    assert!(m.wire == body, "body differs");
}
