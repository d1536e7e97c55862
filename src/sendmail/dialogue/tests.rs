//! The dialogue against scripted replies: what it sends, in what order, and
//! the outcome and exit status of every way a submission can end.

use super::*;
use crate::sendmail::reply;

fn msg(recipients: &[&str]) -> Message {
    Message {
        sender: "site@hosting.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        data: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
    }
}

fn parsed(text: &str) -> Reply {
    let wire = text.replace('\n', "\r\n") + "\r\n";
    reply::parse(wire.as_bytes()).unwrap().unwrap().0
}

const EHLO: &str = "250-fake.test\n250-8BITMIME\n250 SIZE 1000";

/// Feeds `replies` in order. Returns what the client sent (`<message>` for
/// the message) and the outcome: the connection is lost where the replies
/// run out before the client closes.
fn converse(msg: &Message, replies: &[&str]) -> (Vec<String>, Result<(), Failure>) {
    let mut dialogue = Dialogue::new(msg, "web1.test");
    let mut sent = Vec::new();
    for text in replies {
        match dialogue.on_reply(parsed(text)) {
            Action::Send(command) => sent.push(command),
            Action::SendMessage => sent.push("<message>".into()),
            Action::Close => return (sent, dialogue.outcome()),
        }
    }
    let step = dialogue.step();
    (sent, dialogue.interrupted(Failure::Lost { step }))
}

#[test]
fn a_message_to_two_recipients() {
    let m = msg(&["a@x.test", "b@y.test"]);
    let replies = [
        "220 hi",
        EHLO,
        "250 ok",
        "250 ok",
        "250 ok",
        "354 go",
        "250 queued",
        "221 bye",
    ];
    let (sent, outcome) = converse(&m, &replies);
    assert_eq!(
        sent,
        [
            "EHLO web1.test",
            "MAIL FROM:<site@hosting.test> SIZE=22",
            "RCPT TO:<a@x.test>",
            "RCPT TO:<b@y.test>",
            "DATA",
            "<message>",
            "QUIT",
        ]
    );
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn a_refused_recipient_stops_the_message_for_all() {
    let m = msg(&["a@x.test", "b@y.test", "c@z.test"]);
    let cases: &[(&str, &str, u8)] = &[
        ("450 4.7.1 Recipient limit reached", "250 ok", EX_TEMPFAIL),
        ("550 5.1.1 No such user", "250 ok", EX_NOUSER),
        ("550 5.1.1 No such user", "451 4.3.0 Try later", EX_TEMPFAIL),
        ("550 5.1.1 No such user", "553 5.7.1 Not allowed", EX_NOUSER),
    ];
    for (second, third, code) in cases {
        let replies = [
            "220 hi",
            EHLO,
            "250 ok",
            "250 ok",
            second,
            third,
            "250 reset",
            "221 bye",
        ];
        let (sent, outcome) = converse(&m, &replies);
        assert_eq!(
            sent[3..],
            ["RCPT TO:<b@y.test>", "RCPT TO:<c@z.test>", "RSET", "QUIT"],
            "{second} / {third}"
        );
        assert_eq!(exit_status(&outcome), *code, "{second} / {third}");
        let Err(Failure::Recipients(refused)) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(refused[0].recipient, "b@y.test");
        assert_eq!(refused[0].reply.to_string(), *second);
    }
}

#[test]
fn the_recipient_lines_printed() {
    let m = msg(&["a@x.test", "b@y.test"]);
    let replies = [
        "220 hi",
        EHLO,
        "250 ok",
        "450-4.7.1 Recipient limit reached\n450 4.7.1 for site@hosting.test",
        "550 5.1.1 No such user",
        "250 reset",
        "221 bye",
    ];
    let (_, outcome) = converse(&m, &replies);
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "a@x.test: 450 4.7.1 Recipient limit reached 4.7.1 for site@hosting.test\n\
         b@y.test: 550 5.1.1 No such user"
    );
}

#[test]
fn refusals_before_and_after_the_recipients() {
    let m = msg(&["a@x.test"]);
    let upto = |n: usize, last: &'static str| {
        let mut r = vec!["220 hi", EHLO, "250 ok", "250 ok", "354 go"][..n].to_vec();
        r.extend([last, "221 bye"]);
        r
    };
    let cases = [
        (
            upto(0, "554 5.3.2 Not now"),
            EX_UNAVAILABLE,
            "greeting refused: 554 5.3.2 Not now",
        ),
        (
            upto(0, "421 4.3.2 Busy"),
            EX_TEMPFAIL,
            "greeting refused: 421 4.3.2 Busy",
        ),
        (
            upto(1, "502 5.5.1 No EHLO"),
            EX_UNAVAILABLE,
            "EHLO refused: 502 5.5.1 No EHLO",
        ),
        (
            upto(2, "553 5.7.1 Not yours"),
            EX_UNAVAILABLE,
            "MAIL FROM refused: 553 5.7.1 Not yours",
        ),
        (
            upto(2, "452 4.3.1 Full"),
            EX_TEMPFAIL,
            "MAIL FROM refused: 452 4.3.1 Full",
        ),
        (
            upto(4, "554 5.5.1 No valid recipients"),
            EX_UNAVAILABLE,
            "DATA refused: 554 5.5.1 No valid recipients",
        ),
        (
            upto(4, "451 4.3.0 Later"),
            EX_TEMPFAIL,
            "DATA refused: 451 4.3.0 Later",
        ),
        (
            upto(5, "554 5.7.1 Spam"),
            EX_DATAERR,
            "message refused: 554 5.7.1 Spam",
        ),
        (
            upto(5, "452 4.3.1 Full"),
            EX_TEMPFAIL,
            "message refused: 452 4.3.1 Full",
        ),
        (
            upto(4, "250 ok"),
            EX_TEMPFAIL,
            "unexpected reply to DATA: 250 ok",
        ),
        (
            upto(3, "354 go"),
            EX_TEMPFAIL,
            "unexpected reply to RCPT TO: 354 go",
        ),
    ];
    for (replies, code, line) in cases {
        let (sent, outcome) = converse(&m, &replies);
        assert_eq!(sent.last().map(String::as_str), Some("QUIT"), "{line}");
        assert!(!sent.contains(&"<message>".into()) || line.starts_with("message"));
        let failure = outcome.expect_err(line);
        assert_eq!(
            (failure.exit_code(), failure.to_string()),
            (code, line.into())
        );
    }
}

#[test]
fn a_connection_lost_is_a_temporary_failure_until_the_outcome_is_known() {
    let m = msg(&["a@x.test"]);
    let all = [
        "220 hi",
        EHLO,
        "250 ok",
        "250 ok",
        "354 go",
        "250 queued",
        "221 bye",
    ];
    for n in 0..all.len() {
        let (_, outcome) = converse(&m, &all[..n]);
        if n < 6 {
            assert_eq!(exit_status(&outcome), EX_TEMPFAIL, "lost after {n} replies");
        } else {
            assert!(outcome.is_ok(), "lost after the end of data was accepted");
        }
    }
    let (_, outcome) = converse(&m, &all[..5]);
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "connection lost during message: whether the message was accepted is unknown"
    );
    // Lost while the refusal is being wound down: the refusal stands.
    let replies = ["220 hi", EHLO, "250 ok", "550 5.1.1 No such user"];
    let (sent, outcome) = converse(&m, &replies);
    assert_eq!(sent.last().map(String::as_str), Some("RSET"));
    assert_eq!(exit_status(&outcome), EX_NOUSER);
}

#[test]
fn mail_from_parameters() {
    let all = Extensions {
        eight_bit_mime: true,
        size: true,
        smtp_utf8: true,
    };
    let ascii = msg(&["a@x.test"]);
    let eight_bit = Message {
        data: "Subject: café\r\n\r\n".into(),
        ..ascii.clone()
    };
    let utf8_rcpt = Message {
        recipients: vec!["josé@x.test".into()],
        ..ascii.clone()
    };
    let null_sender = Message {
        sender: String::new(),
        ..ascii.clone()
    };
    let cases = [
        (
            &ascii,
            Extensions::default(),
            "MAIL FROM:<site@hosting.test>",
        ),
        (&ascii, all, "MAIL FROM:<site@hosting.test> SIZE=22"),
        (
            &eight_bit,
            all,
            "MAIL FROM:<site@hosting.test> BODY=8BITMIME SIZE=18",
        ),
        (
            &eight_bit,
            Extensions::default(),
            "MAIL FROM:<site@hosting.test>",
        ),
        (
            &utf8_rcpt,
            all,
            "MAIL FROM:<site@hosting.test> SIZE=22 SMTPUTF8",
        ),
        (&null_sender, Extensions::default(), "MAIL FROM:<>"),
    ];
    for (m, ext, expected) in cases {
        assert_eq!(mail_from(m, ext), expected);
    }
}

#[test]
fn addresses_that_would_break_a_command_are_refused() {
    for (sender, rcpt) in [
        ("site@hosting.test", "a@x.test>\r\nRCPT TO:<b@y.test"),
        ("site@hosting.test\n", "a@x.test"),
        ("site@hosting.test", "a\0@x.test"),
    ] {
        let m = Message {
            sender: sender.into(),
            ..msg(&["ok@x.test", rcpt])
        };
        let failure = check_addresses(&m).expect_err(rcpt);
        assert_eq!(failure.exit_code(), EX_USAGE);
    }
    assert!(check_addresses(&msg(&["josé@x.test", "a@x.test"])).is_ok());
}

#[test]
fn connecting_and_breaking_off() {
    let io = |kind: std::io::ErrorKind| Failure::Connect {
        path: "/run/mailbrake/submit.sock".into(),
        error: kind.into(),
    };
    let garbled = Failure::Garbled {
        step: Step::Ehlo,
        error: reply::Garbled::NoCode,
    };
    let cases = [
        (io(std::io::ErrorKind::NotFound), EX_UNAVAILABLE),
        (io(std::io::ErrorKind::ConnectionRefused), EX_UNAVAILABLE),
        (io(std::io::ErrorKind::PermissionDenied), EX_UNAVAILABLE),
        // The listener's backlog stayed full until the deadline.
        (io(std::io::ErrorKind::WouldBlock), EX_TEMPFAIL),
        (
            Failure::Timeout {
                step: Step::Rcpt(0),
            },
            EX_TEMPFAIL,
        ),
        (garbled, EX_TEMPFAIL),
    ];
    for (failure, code) in cases {
        assert_eq!(failure.exit_code(), code, "{failure}");
    }
}
