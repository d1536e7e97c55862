//! Hostile input, end to end through the mailbrake binary: NUL bytes and
//! invalid UTF-8 in commands and bodies, a giant AUTH blob, binary garbage
//! in place of commands, and a million pipelined RCPTs. Each gets a clear
//! reply or a clean close, the process never panics, and the next client is
//! served. (Smuggling, STARTTLS injection and overlong lines are in
//! `relay.rs`, a PROXY header from an untrusted address in `legs.rs`, random
//! walks and fuzzing over the session in `src/session/tests/chaos.rs` and
//! `fuzz/`.)

mod common;

use std::net::SocketAddr;

use common::upstream::{Opts, Upstream};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

fn config(up: SocketAddr) -> (String, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path()) + &listener("l", port, "none", None, &up.to_string(), "");
    (cfg, ([127, 0, 0, 1], port).into())
}

/// The 3-digit code of a reply; panics on anything else.
#[track_caller]
fn code(reply: &str) -> u16 {
    let code = reply.get(..3).and_then(|c| c.parse().ok());
    assert!(
        matches!(code, Some(200..=599)) && matches!(reply.as_bytes().get(3), Some(b' ' | b'-')),
        "not an SMTP reply: {reply:?}"
    );
    code.unwrap()
}

/// A fresh client is still greeted and served, and nothing panicked.
async fn still_serving(mb: &mut Mailbrake, addr: SocketAddr) {
    let mut c = Raw::connect(addr).await;
    expect(&c.reply().await.expect("no greeting"), "220");
    expect(&c.cmd("EHLO after.test").await, "250");
    expect(&c.cmd("QUIT").await, "221");
    assert_eq!(c.closed().await, "");
    assert!(!mb.logs().contains("panicked"), "{}", mb.logs());
    assert!(mb.child.try_wait().unwrap().is_none(), "mailbrake exited");
}

#[tokio::test]
async fn nul_bytes_and_invalid_utf8_in_commands_get_replies() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = config(up.addr);
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::connect(addr).await;
    expect(&c.reply().await.unwrap(), "220");
    expect(&c.cmd("EHLO client.test").await, "250");
    // What mailbrake cannot parse it answers itself; an 8-bit address it
    // can parse goes to the MTA, which decides (this one accepts).
    let hostile: [(&[u8], &str); 6] = [
        (b"MAIL FROM:<a\0b@x.test>\r\n", "501 5.1.7"),
        (b"\0\0\0\0\r\n", "502 5.5.2"),
        (b"MAIL FROM:<\xff\xfe@x.test>\r\n", "250"),
        (b"RCPT TO:<\xc3\x28@y.test>\r\n", "501 5.1.3"),
        (b"NOOP \xf0\x28\x8c\x28\r\n", "250"),
        (b"\xff\xff\xff\xff\xff\r\n", "502 5.5.2"),
    ];
    for (line, want) in hostile {
        c.send(line).await;
        let reply = c.reply().await.expect("closed instead of replying");
        code(&reply);
        assert!(
            reply.starts_with(want),
            "{:?}: want {want}, got {reply:?}",
            String::from_utf8_lossy(line)
        );
    }
    // The session is still usable after all of that.
    expect(&c.cmd("RSET").await, "250");
    expect(&c.cmd("QUIT").await, "221");
    still_serving(&mut mb, addr).await;
}

#[tokio::test]
async fn nul_bytes_and_8bit_in_a_body_are_relayed_byte_for_byte() {
    let mut up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = config(up.addr);
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(addr.port()).await;
    c.open_data().await;
    let body: &[u8] =
        b"Subject: \xff\xfe bytes\r\n\r\nnul \0 here\r\n\xc3\x28 \x80\x81\r\n..dot\r\n";
    c.send(body).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await.unwrap(), "250");
    let m = up.next_message().await;
    assert_eq!(
        m.wire, body,
        "the upstream got exactly what the client sent"
    );
    still_serving(&mut mb, addr).await;
}

#[tokio::test]
async fn a_giant_auth_blob_is_refused_without_reaching_the_upstream() {
    let mut up = Upstream::start(Opts {
        auth: true,
        ..Opts::default()
    })
    .await;
    let (cfg, addr) = config(up.addr);
    let cfg = cfg.replace(
        "tls = \"none\"",
        "tls = \"none\"\nallow_plaintext_auth = true",
    );
    let mut mb = Mailbrake::start(&cfg);
    let mut c = Raw::greeted(addr.port()).await;
    // 4 MB of base64 on one line: far over max_auth_line_length.
    let mut line = b"AUTH PLAIN ".to_vec();
    line.extend(std::iter::repeat_n(b'A', 4 << 20));
    line.extend_from_slice(b"\r\n");
    c.send(&line).await;
    let reply = c.reply().await.expect("closed instead of replying");
    assert!(
        code(&reply) >= 500,
        "a giant AUTH line gets a 5xx: {reply:?}"
    );
    // The exchange is over and the session goes on.
    expect(&c.cmd("NOOP").await, "250");
    expect(&c.cmd("QUIT").await, "221");
    still_serving(&mut mb, addr).await;
    drop(c);
    let seen = up.next_close().await;
    assert!(
        !String::from_utf8_lossy(&seen).contains("AUTH PLAIN AAAA"),
        "the blob went upstream"
    );
}

#[tokio::test]
async fn binary_garbage_instead_of_commands_ends_in_a_clean_close() {
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = config(up.addr);
    let mut mb = Mailbrake::start(&cfg);
    // A fixed pseudo-random stream (xorshift), 256 KiB, CR and LF included.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    // Written while replies are read: mailbrake answers as the garbage flows.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        // mailbrake may close mid-way: that is the clean close expected.
        let _ = w.write_all(&garbage).await;
        let _ = w.shutdown().await;
    });
    let mut seen = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), r.read_to_end(&mut seen));
    let _ = read.await.expect("mailbrake neither replied nor closed");
    writer.await.unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("220"), "{text:?}");
    for reply in text.lines() {
        code(reply);
    }
    assert!(
        text.contains("421 4.7.0"),
        "garbage ends with too many commands: {text:?}"
    );
    still_serving(&mut mb, addr).await;
}

#[tokio::test]
async fn a_million_pipelined_rcpts_each_get_a_reply_in_order() {
    const N: usize = 1_000_000;
    let up = Upstream::start(Opts::default()).await;
    let (cfg, addr) = config(up.addr);
    let mut mb = Mailbrake::start(&cfg);
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n")
            .await
            .unwrap();
        let mut batch = Vec::with_capacity(64 * 1024);
        for i in 0..N {
            batch.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
            if batch.len() > 60 * 1024 {
                w.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        batch.extend_from_slice(b"RSET\r\nQUIT\r\n");
        w.write_all(&batch).await.unwrap();
        w
    });
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut finals = Vec::new();
    let mut rcpt_ok = 0usize;
    loop {
        line.clear();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line),
        )
        .await
        .expect("stalled")
        .unwrap();
        if n == 0 {
            break;
        }
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        // Greeting, EHLO, MAIL, then one reply per RCPT, RSET, QUIT.
        if finals.len() >= 3 && finals.len() < 3 + N {
            if line.starts_with("250") {
                rcpt_ok += 1;
            }
            finals.push(String::new());
        } else {
            finals.push(line.clone());
        }
    }
    drop(writer.await.unwrap());
    assert_eq!(finals.len(), 3 + N + 2, "one reply per command, none lost");
    expect(&finals[0], "220");
    expect(&finals[1], "250");
    expect(&finals[2], "250");
    assert!(rcpt_ok > 0, "the upstream took recipients");
    expect(&finals[3 + N], "250"); // RSET
    expect(&finals[3 + N + 1], "221"); // QUIT
    still_serving(&mut mb, addr).await;
}
