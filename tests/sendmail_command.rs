//! `mailbrake sendmail` as PHP's mail() and cron run it: the real binary,
//! as a subcommand and through a link named `sendmail`, against a scripted
//! SMTP server on a Unix socket. What it exits with, what it prints, and the
//! exact envelope and message the server got.

// Tests time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "../src/sendmail/fake_mta.rs"]
mod fake_mta;

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_mta::{Answer, FakeMta, Heard, accepting, reply};

const BIN: &str = env!("CARGO_BIN_EXE_mailbrake");

/// `mailbrake sendmail ARGS`, with no socket named by the environment.
fn subcommand(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("sendmail")
        .args(args)
        .env_remove("MAILBRAKE_SUBMIT_SOCKET")
        .env_remove("MAILBRAKE_SUBMIT_TIMEOUT");
    cmd
}

/// Runs `cmd` with `input` on its standard input: the exit status and stderr.
fn run(cmd: Command, input: &[u8]) -> (i32, String) {
    let ran = common::local::submit(cmd, input);
    (ran.code(), ran.stderr)
}

const PHP_MESSAGE: &[u8] = b"To: Alice <alice@example.test>\n\
    Cc: bob@example.test\n\
    Bcc: carol@example.test\n\
    Subject: Order confirmation\n\
    \n\
    Thank you.\n\
    .\n\
    The line above was a dot.\n";

#[test]
fn php_mail_through_the_subcommand() {
    let mta = FakeMta::start(accepting);
    let socket = mta.path.to_str().unwrap();
    let (status, stderr) = run(subcommand(&["--socket", socket, "-t", "-i"]), PHP_MESSAGE);
    assert_eq!((status, stderr.as_str()), (0, ""));

    let transcript = mta.transcript_text();
    let (envelope, rest) = transcript.split_once("DATA\r\n").expect(&transcript);
    let mut lines = envelope.lines();
    assert!(lines.next().unwrap().starts_with("EHLO "));
    let mail = lines.next().unwrap();
    assert!(
        mail.starts_with("MAIL FROM:<") && mail.contains('@') && mail.contains("> SIZE="),
        "{mail}"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        [
            "RCPT TO:<alice@example.test>",
            "RCPT TO:<bob@example.test>",
            "RCPT TO:<carol@example.test>",
        ]
    );
    // From, Date and Message-ID added; Bcc gone; the lone dot stuffed (-i).
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap();
    let names: Vec<&str> = headers
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(names, ["From", "Date", "Message-ID", "To", "Cc", "Subject"]);
    assert_eq!(
        body,
        "Thank you.\r\n..\r\nThe line above was a dot.\r\n.\r\nQUIT\r\n"
    );
}

#[test]
fn through_a_sendmail_link_a_refused_recipient_stops_the_message() {
    let mta = FakeMta::start(|heard| match heard {
        Heard::Command(c) if c.contains("bob@") => {
            reply("450 4.7.1 Recipient limit reached for site@hosting.test")
        }
        _ => accepting(heard),
    });
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut cmd = Command::new(&link);
    cmd.args(["-t", "-i", "-f", "site@hosting.test"])
        .env("MAILBRAKE_SUBMIT_SOCKET", &mta.path)
        .env_remove("MAILBRAKE_SUBMIT_TIMEOUT");

    let (status, stderr) = run(cmd, PHP_MESSAGE);
    assert_eq!(status, 75, "{stderr}");
    assert_eq!(
        stderr,
        "sendmail: bob@example.test: 450 4.7.1 Recipient limit reached for site@hosting.test\n"
    );
    let transcript = mta.transcript_text();
    assert!(
        transcript.contains("MAIL FROM:<site@hosting.test> SIZE="),
        "{transcript}"
    );
    assert!(
        transcript.ends_with("RCPT TO:<carol@example.test>\r\nRSET\r\nQUIT\r\n"),
        "{transcript}"
    );
    assert!(!transcript.contains("DATA"), "{transcript}");
}

#[test]
fn what_becomes_of_the_message_after_its_final_dot() {
    type Script = fn(&Heard) -> Answer;
    let cases: [(Script, i32, &str); 3] = [
        (|_| reply("250 2.0.0 Ok: queued"), 0, ""),
        (
            |_| reply("554 5.7.1 Message rejected as spam"),
            65,
            "sendmail: message refused: 554 5.7.1 Message rejected as spam\n",
        ),
        (
            |_| Answer::Close,
            75,
            "sendmail: connection lost during message: whether the message was accepted is unknown\n",
        ),
    ];
    for (at_end, code, expected) in cases {
        let mta = FakeMta::start(move |heard| match heard {
            Heard::Message(m) if m.ends_with(b"\r\nbuy now\r\n") => at_end(heard),
            _ => accepting(heard),
        });
        let cmd = subcommand(&["--socket", mta.path.to_str().unwrap(), "a@example.test"]);
        let (status, stderr) = run(cmd, b"Subject: offer\n\nbuy now\n");
        assert_eq!((status, stderr.as_str()), (code, expected));
        assert!(mta.transcript_text().contains("\r\nbuy now\r\n.\r\n"));
    }
}

#[test]
fn a_usage_error_connects_to_nothing() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["-bp"], None, "sendmail: -bp is not offered"),
        (
            &["a@example.test"],
            Some("18446744073709551615"),
            "sendmail: MAILBRAKE_SUBMIT_TIMEOUT must be a whole number",
        ),
    ];
    for (args, timeout, start) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("submit.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut cmd = subcommand(args);
        cmd.env("MAILBRAKE_SUBMIT_SOCKET", &path);
        if let Some(timeout) = timeout {
            cmd.env("MAILBRAKE_SUBMIT_TIMEOUT", timeout);
        }
        let (status, stderr) = run(cmd, b"Subject: x\n\nx\n");
        assert_eq!(status, 64, "{args:?}: {stderr}");
        assert!(stderr.starts_with(start), "{args:?}: {stderr}");
        listener.set_nonblocking(true).unwrap();
        let accepted = listener.accept().map(|_| ()).map_err(|e| e.kind());
        assert_eq!(accepted, Err(std::io::ErrorKind::WouldBlock), "{args:?}");
    }
}

#[test]
fn no_socket_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let cmd = subcommand(&["--socket", path.to_str().unwrap(), "a@example.test"]);
    let (status, stderr) = run(cmd, b"Subject: x\n\nx\n");
    assert_eq!(status, 69);
    let expected = format!("sendmail: cannot connect to {}: ", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn a_server_that_never_answers_is_given_up_on_at_the_deadline() {
    let mta = FakeMta::start(|heard| match heard {
        Heard::Connect => Answer::Silent,
        _ => accepting(heard),
    });
    let mut cmd = subcommand(&["-v", "a@example.test"]);
    cmd.env("MAILBRAKE_SUBMIT_SOCKET", &mta.path)
        .env("MAILBRAKE_SUBMIT_TIMEOUT", "1");
    let started = Instant::now();
    let (status, stderr) = run(cmd, b"Subject: x\n\nx\n");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        (status, stderr.as_str()),
        (75, "sendmail: timed out during greeting\n")
    );
    assert_eq!(mta.transcript(), b"");
}

#[test]
fn a_message_of_50_megabytes() {
    let mta = FakeMta::start(accepting);
    let line = format!("{}\n", "x".repeat(998));
    let mut input = b"Subject: big\n\n".to_vec();
    while input.len() < 50_000_000 {
        input.extend_from_slice(line.as_bytes());
    }
    let cmd = subcommand(&["--socket", mta.path.to_str().unwrap(), "a@example.test"]);
    let (status, stderr) = run(cmd, &input);
    assert_eq!((status, stderr.as_str()), (0, ""));
    let transcript = mta.transcript();
    // Every line end became CRLF, and headers were added.
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    assert!(
        transcript.len() > input.len() + lines,
        "{}",
        transcript.len()
    );
    assert!(transcript.ends_with(b"xx\r\n.\r\nQUIT\r\n"));
}

#[test]
fn the_help_lists_sendmail() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("sendmail ")),
        "{help}"
    );
}

/// The link's name is what counts, wherever it is.
#[test]
fn only_a_link_named_sendmail_is_sendmail() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("mailq");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link).arg("-t").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage error, not sendmail's"
    );
}
