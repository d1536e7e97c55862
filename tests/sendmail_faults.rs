//! The sendmail road when something on it fails: mailbrake down, the MTA
//! down or refusing halfway, a 50 MB message, the command killed while
//! reading its input or while sending, and an MTA that never answers the
//! end of data. Each ends in the exit status a caller reads (sysexits), and
//! the MTA behind mailbrake never records an incomplete message.
//!
//! The real stack: `mailbrake sendmail` as another Unix user, the Unix
//! socket, mailbrake, the recording upstream. Needs root and setpriv; fails
//! loudly without them.

// Tests time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::hash::{DefaultHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::local::*;
use common::netns::require_root_and;
use common::postfix::eventually;
use common::upstream::{Event, Opts, Upstream, dot_stuffed};

const R: &str = "r@remote.test";
const SMALL: &[u8] = b"From: site@hosting.test\nSubject: s\n\nhello\n";

const UNLIMITED: &str = "default = \"unlimited\"";

fn recorded(up: &Upstream) -> usize {
    up.messages.lock().unwrap().len()
}

/// mailbrake stopped (its socket file removed) or killed (the file left,
/// nobody listening): the command cannot connect, and says where.
#[tokio::test(flavor = "multi_thread")]
async fn mailbrake_down_is_unavailable() {
    for (stop, error) in [
        ("TERM", "No such file or directory"),
        ("KILL", "Connection refused"),
    ] {
        let (up, mut mb) = road(Opts::default(), UNLIMITED).await;
        mb.mb.signal(stop);
        mb.mb.wait_exit();
        assert_eq!(
            mb.socket.exists(),
            stop == "KILL",
            "kill -{stop}: the socket file"
        );
        let ran = run_sendmail(sendmail_as(NOBODY, &mb.socket, &[R]), SMALL).await;
        let named = format!(
            "sendmail: cannot connect to {}: {error}",
            mb.socket.display()
        );
        assert_eq!(ran.code(), 69, "kill -{stop}: {}", ran.stderr);
        assert!(
            ran.stderr.starts_with(&named),
            "kill -{stop}: {}",
            ran.stderr
        );
        assert_eq!(recorded(&up), 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mta_down_is_a_temporary_failure() {
    require_root_and("THE SENDMAIL ROAD", &["setpriv"]);
    let closed: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let mb = SocketMailbrake::start(closed, UNLIMITED, "");
    let ran = run_sendmail(sendmail_as(NOBODY, &mb.socket, &[R]), SMALL).await;
    assert_eq!(
        (ran.code(), ran.stderr.as_str()),
        (
            75,
            "sendmail: greeting refused: 421 4.4.1 mb.test mail server unreachable, try again later\n"
        ),
        "mailbrake answers 4xx for the MTA"
    );
}

/// How far a refused transaction got at the MTA.
#[derive(Debug, Clone, Copy)]
enum Reached {
    /// The whole message and its final dot.
    TheEnd,
    /// Never DATA: all recipients or none.
    NoData,
    /// Part of the body, no final dot.
    PartOfTheBody,
}

/// An MTA refusing at some point of a transaction.
struct Refusing {
    opts: Opts,
    rcpts: &'static [&'static str],
    status: i32,
    /// The lines stderr may hold.
    stderr: &'static [&'static str],
    reached: Reached,
}

/// The MTA refusing at some point of the transaction: the status, the line
/// on stderr, and what the MTA's connection received.
#[tokio::test(flavor = "multi_thread")]
async fn the_mta_refusing_halfway_records_nothing() {
    // A megabyte: more than the MTA reads at once.
    let line = format!("{}\n", "x".repeat(69));
    let body = format!("Subject: s\n\n{}REFUSE-ME\n", line.repeat(15_000));
    let cases = [
        Refusing {
            opts: Opts {
                refuse_data_containing: Some("REFUSE-ME"),
                ..Opts::default()
            },
            rcpts: &[R],
            status: 65,
            stderr: &["sendmail: message refused: 554 5.7.1 Message refused\n"],
            reached: Reached::TheEnd,
        },
        Refusing {
            opts: Opts::default(),
            rcpts: &["ok@remote.test", "defer@remote.test"],
            status: 75,
            stderr: &["sendmail: defer@remote.test: 451 4.3.0 Try again later\n"],
            reached: Reached::NoData,
        },
        Refusing {
            opts: Opts {
                hang_up_after_body_bytes: Some(1000),
                ..Opts::default()
            },
            rcpts: &[R],
            status: 75,
            // mailbrake's 421, or, when it closes while the command is still
            // writing, the connection lost.
            stderr: &[
                "sendmail: message refused: 421 4.4.2 mb.test lost the connection to the mail \
                 server, try again later\n",
                "sendmail: connection lost during message: whether the message was accepted is \
                 unknown\n",
            ],
            reached: Reached::PartOfTheBody,
        },
    ];
    for c in cases {
        let reached = c.reached;
        let (mut up, mb) = road(c.opts, UNLIMITED).await;
        let cmd = sendmail_as(NOBODY, &mb.socket, c.rcpts);
        let ran = run_sendmail(cmd, body.as_bytes()).await;
        assert_eq!(ran.code(), c.status, "{reached:?}: {}", ran.stderr);
        assert!(
            c.stderr.contains(&ran.stderr.as_str()),
            "{reached:?}: {}",
            ran.stderr
        );
        let seen = String::from_utf8_lossy(&up.next_close().await).into_owned();
        assert_eq!(recorded(&up), 0, "{reached:?}");
        let (data, end) = (seen.contains("\r\nDATA\r\n"), seen.contains("\r\n.\r\n"));
        let right = match reached {
            Reached::TheEnd => data && seen.contains("REFUSE-ME\r\n.\r\n"),
            Reached::NoData => !data,
            Reached::PartOfTheBody => data && !end && seen.len() < body.len(),
        };
        assert!(right, "{reached:?}: the MTA got {} bytes", seen.len());
    }
}

/// About 50 MB of lines up to 998 bytes, 8-bit, some starting with a dot
/// and some a dot alone, after headers that need nothing added.
fn big_message() -> Vec<u8> {
    let mut out = b"From: site@hosting.test\nDate: Tue, 01 Dec 2026 13:45:00 +0000\n\
                    Message-ID: <big@hosting.test>\nSubject: big\n\n"
        .to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut line = 0u64;
    while out.len() < 50_000_000 {
        line += 1;
        match line % 50 {
            0 => out.push(b'.'),
            n if n % 7 == 0 => out.extend_from_slice(b".."),
            _ => {}
        }
        let len = (next() % 990) as usize;
        for _ in 0..len {
            // 0x20..=0xff but DEL, and tabs: no CR, no LF.
            let b = 0x20 + (next() % 0xe0) as u8;
            out.push(if b == 0x7f { b'\t' } else { b });
        }
        out.push(b'\n');
    }
    out
}

fn digest(bytes: &[u8]) -> (usize, u64) {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    (bytes.len(), h.finish())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_byte_for_byte() {
    let (up, mb) = road(Opts::default(), UNLIMITED).await;
    let input = big_message();
    let content = crlf(&input);
    let want = (digest(&content), digest(&dot_stuffed(&content)));
    drop(content);
    let started = Instant::now();
    let ran = run_sendmail(sendmail_as(NOBODY, &mb.socket, &["-i", R]), &input).await;
    assert_eq!((ran.code(), ran.stderr.as_str()), (0, ""));
    eprintln!("50 MB through the road in {:?}", started.elapsed());
    let m = up.messages.lock().unwrap()[0].clone();
    assert_eq!(
        (digest(&m.content()), digest(&m.wire)),
        want,
        "(length, hash) of the message, and of it dot-stuffed on the wire"
    );
}

/// The command as nobody, its input still to be written.
fn spawn(socket: &std::path::Path, args: &[&str]) -> Child {
    sendmail_as(NOBODY, socket, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_killed(child: &mut Child) {
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_writing_its_message_sends_nothing() {
    let (up, mut mb) = road(Opts::default(), UNLIMITED).await;
    let mut child = spawn(&mb.socket, &["-i", R]);
    let mut stdin = child.stdin.take().unwrap();
    // A pipe holds 64 KiB: once a megabyte is written, the command was
    // reading it.
    let mut part = SMALL.to_vec();
    part.extend_from_slice(format!("{}\n", "x".repeat(999)).repeat(1000).as_bytes());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        stdin.write_all(&part).unwrap();
        child.kill().unwrap();
        assert_killed(&mut child);
    })
    .await
    .unwrap();
    // The next submission is the first session mailbrake and the MTA see.
    let ran = run_sendmail(sendmail_as(NOBODY, &mb.socket, &[R]), SMALL).await;
    assert_eq!((ran.code(), ran.stderr.as_str()), (0, ""));
    assert_eq!(recorded(&up), 1);
    mb.mb.wait_log("session end");
    assert_eq!(
        mb.mb.logs().matches("session start").count(),
        1,
        "{}",
        mb.mb.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_sending_its_message_delivers_nothing() {
    let slow = Opts {
        body_read_pause: Some(Duration::from_millis(5)),
        ..Opts::default()
    };
    let (mut up, mut mb) = road(slow, UNLIMITED).await;
    let mut child = spawn(&mb.socket, &["-i", R]);
    let mut stdin = child.stdin.take().unwrap();
    let input = big_message();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input)
    });
    loop {
        if let Event::BodyBegun = up.next_event().await {
            break;
        }
    }
    child.kill().unwrap();
    tokio::task::spawn_blocking(move || assert_killed(&mut child))
        .await
        .unwrap();
    writer
        .join()
        .unwrap()
        .expect("the command read all its input");
    let seen = up.next_close().await;
    assert!(
        seen.len() < 40_000_000,
        "the message was cut short: {}",
        seen.len()
    );
    assert!(
        !seen.ends_with(b"\r\n.\r\n"),
        "no final dot reached the MTA"
    );
    assert_eq!(recorded(&up), 0);
    let cut = mb
        .mb
        .logged("client disconnected in the middle of a message");
    assert!(cut.contains("sender=user:nobody"), "{cut}");
    mb.mb.logged("session end");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mta_that_never_answers_the_end_of_data_meets_the_deadline() {
    require_root_and("THE SENDMAIL ROAD", &["setpriv"]);
    let mut up = Upstream::start(Opts {
        stall_on: Some("."),
        ..Opts::default()
    })
    .await;
    // mailbrake waits for the MTA's verdict after its client has gone (to
    // count and log it), for a while.
    let waits = "[timeouts]\nupstream_data_end = \"3s\"";
    let mb = SocketMailbrake::start(up.addr, UNLIMITED, waits);
    let mut cmd = sendmail_as(NOBODY, &mb.socket, &[R]);
    cmd.env("MAILBRAKE_SUBMIT_TIMEOUT", "2");
    let started = Instant::now();
    let ran = run_sendmail(cmd, SMALL).await;
    let took = started.elapsed();
    assert_eq!(
        (ran.code(), ran.stderr.as_str()),
        (
            75,
            "sendmail: timed out during message: whether the message was accepted is unknown\n"
        )
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let seen = up.next_close().await;
    assert!(seen.ends_with(b"\r\n.\r\n"), "the whole message was sent");
    assert_eq!(recorded(&up), 0);
    let log = &mb.mb;
    eventually(
        "the session's end logged",
        || log.logs().contains("session end").then_some(()),
        || log.logs(),
    );
}
