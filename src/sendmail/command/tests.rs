//! Which invocations are sendmail's, where the socket is, and the command
//! run on given input against a scripted server.

use super::*;
use crate::sendmail::fake_mta::{FakeMta, accepting};

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn invocations() {
    let link = |args: &[&str]| Invocation {
        socket_option: false,
        args: os(args),
    };
    let sub = |args: &[&str]| Invocation::subcommand(os(args));
    let cases = [
        (
            &["/usr/sbin/sendmail", "-t", "-i"][..],
            Some(link(&["-t", "-i"])),
        ),
        (
            &["sendmail", "--socket", "x"],
            Some(link(&["--socket", "x"])),
        ),
        (&["mailbrake", "sendmail", "-t"], Some(sub(&["-t"]))),
        (&["/usr/bin/mailbrake", "sendmail"], Some(sub(&[]))),
        (&["mailbrake", "run"], None),
        (&["mailbrake", "--help"], None),
        (&["mailbrake"], None),
        (&["/usr/sbin/sendmail.postfix", "-t"], None),
        (&["mailbrake", "-t", "sendmail"], None),
    ];
    for (argv, expected) in cases {
        assert_eq!(invocation(&os(argv)), expected, "{argv:?}");
    }
}

#[test]
fn where_the_socket_is() {
    let env = |socket: Option<&str>| Env {
        socket: socket.map(OsString::from),
        timeout: None,
    };
    let sub = |args: &[&str]| Invocation::subcommand(os(args));
    let cases = [
        (sub(&["-t"]), env(None), SOCKET),
        (sub(&["-t"]), env(Some("")), SOCKET),
        (sub(&["-t"]), env(Some("/tmp/e.sock")), "/tmp/e.sock"),
        (
            sub(&["--socket", "/tmp/f.sock", "-t"]),
            env(Some("/tmp/e.sock")),
            "/tmp/f.sock",
        ),
        (
            sub(&["--socket=/tmp/f.sock", "-t"]),
            env(None),
            "/tmp/f.sock",
        ),
        (
            sub(&["--socket=/a", "--socket", "/b", "-t"]),
            env(None),
            "/b",
        ),
    ];
    for (invocation, env, expected) in cases {
        let (socket, _, opts) = setup(&invocation, &env).unwrap();
        assert_eq!(socket, Path::new(expected), "{invocation:?}");
        assert!(opts.extract_recipients);
    }
    // Through a link, --socket is sendmail's (and unknown to it).
    let link = invocation(&os(&["sendmail", "--socket", "/b", "-t"])).unwrap();
    assert_eq!(
        setup(&link, &env(None)).unwrap_err(),
        SetupError::Usage(args::UsageError::Unknown('-'))
    );
    // After the first sendmail argument, --socket is a recipient's place.
    let late = sub(&["-t", "--socket", "/b"]);
    assert!(setup(&late, &env(None)).is_err());
    for args in [&["--socket"][..], &["--socket="], &["--socket", "/b"]] {
        let error = setup(&sub(args), &env(None)).unwrap_err();
        assert!(
            matches!(error, SetupError::SocketPath | SetupError::Usage(_)),
            "{args:?}: {error:?}"
        );
    }
}

#[test]
fn the_submission_time_from_the_environment() {
    let with = |t: &str| Env {
        socket: None,
        timeout: Some(t.into()),
    };
    let invocation = Invocation::subcommand(os(&["a@x.test"]));
    let time = |env: &Env| setup(&invocation, env).map(|(_, t, _)| t);
    assert_eq!(time(&Env::default()), Ok(TIMEOUT));
    assert_eq!(time(&with("5")), Ok(Duration::from_secs(5)));
    assert_eq!(time(&with("86400")), Ok(Duration::from_secs(86_400)));
    let huge = "18446744073709551615";
    for bad in [
        "",
        "0",
        "-1",
        "1.5",
        "soon",
        "86401",
        huge,
        "99999999999999999999",
    ] {
        assert_eq!(time(&with(bad)), Err(SetupError::Timeout(bad.into())));
    }
    assert_eq!(
        time(&with(huge)).unwrap_err().to_string(),
        "MAILBRAKE_SUBMIT_TIMEOUT must be a whole number of seconds from 1 to 86400, \
         not \"18446744073709551615\""
    );
}

/// Runs the command on `input` (not a terminal); returns the status and stderr.
fn execute_on(args: &[&str], env: &Env, input: &[u8]) -> (u8, String) {
    let mut stderr = Vec::new();
    let invocation = Invocation::subcommand(os(args));
    let status = execute(&invocation, env, &mut &input[..], false, &mut stderr);
    (status, String::from_utf8(stderr).unwrap())
}

#[test]
fn a_message_with_t_and_v() {
    let mta = FakeMta::start(accepting);
    let env = Env {
        socket: Some(mta.path.clone().into()),
        timeout: None,
    };
    let input = b"To: a@x.test\nBcc: hidden@y.test\nSubject: hi\n\nhello\n";
    let (status, stderr) = execute_on(&["-t", "-i", "-v", "-fsite@hosting.test"], &env, input);
    assert_eq!(status, EX_OK, "{stderr}");
    assert!(stderr.contains(">>> RCPT TO:<hidden@y.test>\n"), "{stderr}");
    assert!(!stderr.contains("hello"), "{stderr}");
    let transcript = mta.transcript_text();
    assert!(transcript.contains("MAIL FROM:<site@hosting.test> SIZE="));
    assert!(transcript.contains("RCPT TO:<a@x.test>\r\nRCPT TO:<hidden@y.test>\r\nDATA\r\n"));
    assert!(!transcript.contains("Bcc"), "{transcript}");
    assert!(transcript.contains("\r\nTo: a@x.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n"));
}

#[test]
fn failures_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = Env {
        socket: Some(dir.path().join("none.sock").into()),
        timeout: None,
    };
    struct Unreadable;
    impl Read for Unreadable {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }
    let cases: &[(&[&str], &[u8], u8, &str)] = &[
        (&["-bp"], b"", EX_USAGE, "sendmail: -bp is not offered"),
        (
            &["-t"],
            b"Subject: no one\n\n",
            EX_USAGE,
            "sendmail: no recipient addresses",
        ),
        (
            &["a@x.test\r\nRSET"],
            b"hi\n",
            EX_USAGE,
            "sendmail: invalid address",
        ),
        (
            &["-F", "Evil\r\nX-Injected: yes", "a@x.test"],
            b"hi\n",
            EX_USAGE,
            "sendmail: invalid full name \"Evil\\r\\nX-Injected: yes\"",
        ),
        (
            &["a@x.test"],
            b"hi\n",
            EX_UNAVAILABLE,
            "sendmail: cannot connect to ",
        ),
    ];
    for (args, input, code, start) in cases {
        let (status, stderr) = execute_on(args, &nowhere, input);
        assert_eq!(status, *code, "{args:?}: {stderr}");
        assert!(stderr.starts_with(start), "{args:?}: {stderr}");
    }
    let mut stderr = Vec::new();
    let invocation = Invocation::subcommand(os(&["a@x.test"]));
    let status = execute(&invocation, &nowhere, &mut Unreadable, false, &mut stderr);
    assert_eq!(status, EX_IOERR);
    assert!(
        String::from_utf8(stderr)
            .unwrap()
            .starts_with("sendmail: cannot read standard input")
    );
}
