//! The client over a real Unix socket, against a scripted server: the exact
//! bytes it sends, and every way the server can fail it.

use std::time::Duration;

use super::*;
use crate::sendmail::dialogue::exit_status;
use crate::sendmail::fake_mta::{Answer, FakeMta, Heard, accepting, reply};
use crate::sendmail::sysexits::*;

fn msg(recipients: &[&str], data: &[u8]) -> Message {
    Message {
        sender: "site@hosting.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        data: data.to_vec(),
    }
}

fn settings(timeout: Duration) -> Settings<'static> {
    Settings {
        helo: "web1.test",
        timeout,
        wind_down: timeout,
    }
}

const LONG: Duration = Duration::from_secs(30);

fn send(mta: &FakeMta, m: &Message) -> Result<(), Failure> {
    submit(&mta.path, m, settings(LONG), None)
}

/// A server that refuses the recipients whose address contains `refused`.
fn refusing(refused: &'static str, answer: &'static str) -> impl FnMut(&Heard) -> Answer {
    move |heard| match heard {
        Heard::Command(c) if c.starts_with("RCPT") && c.contains(refused) => reply(answer),
        _ => accepting(heard),
    }
}

#[test]
fn the_bytes_of_a_submission() {
    let mta = FakeMta::start(accepting);
    let data = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\nmid.dle\r\n.\r\n";
    let m = msg(&["a@x.test", "b@y.test"], data);
    assert!(send(&mta, &m).is_ok());
    assert_eq!(
        mta.transcript_text(),
        "EHLO web1.test\r\n\
         MAIL FROM:<site@hosting.test> SIZE=45\r\n\
         RCPT TO:<a@x.test>\r\n\
         RCPT TO:<b@y.test>\r\n\
         DATA\r\n\
         Subject: dots\r\n\r\n..hidden\r\n...two\r\nmid.dle\r\n..\r\n.\r\n\
         QUIT\r\n"
    );
}

#[test]
fn a_refused_recipient_among_accepted_ones_sends_no_data() {
    for (answer, code) in [
        ("450 4.7.1 Recipient limit reached", EX_TEMPFAIL),
        ("550 5.1.1 No such user", EX_NOUSER),
    ] {
        let mta = FakeMta::start(refusing("b@", answer));
        let outcome = send(&mta, &msg(&["a@x.test", "b@y.test", "c@z.test"], b"hi\r\n"));
        assert_eq!(exit_status(&outcome), code, "{answer}");
        let transcript = mta.transcript_text();
        assert!(
            transcript.ends_with("RCPT TO:<c@z.test>\r\nRSET\r\nQUIT\r\n"),
            "{transcript}"
        );
        assert!(!transcript.contains("DATA"), "{transcript}");
        assert_eq!(
            outcome.unwrap_err().to_string(),
            format!("b@y.test: {answer}")
        );
    }
}

#[test]
fn a_message_refused_at_the_end_of_data() {
    let mta = FakeMta::start(|heard| match heard {
        Heard::Message(m) if m.starts_with(b"buy now") => {
            reply("554 5.7.1 Message rejected as spam")
        }
        _ => accepting(heard),
    });
    let outcome = send(&mta, &msg(&["a@x.test"], b"buy now\r\n"));
    assert_eq!(exit_status(&outcome), EX_DATAERR);
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "message refused: 554 5.7.1 Message rejected as spam"
    );
    assert!(mta.transcript_text().ends_with("buy now\r\n.\r\nQUIT\r\n"));
}

#[test]
fn the_server_closing_mid_dialogue() {
    for at in ["MAIL", "RCPT", "DATA", "<message>"] {
        let mta = FakeMta::start(move |heard| match heard {
            Heard::Command(c) if c.starts_with(at) => Answer::Close,
            Heard::Message(_) if at == "<message>" => Answer::Close,
            _ => accepting(heard),
        });
        let outcome = send(&mta, &msg(&["a@x.test"], b"hi\r\n"));
        assert_eq!(exit_status(&outcome), EX_TEMPFAIL, "closed at {at}");
        assert!(
            matches!(outcome, Err(Failure::Lost { .. })),
            "{at}: {outcome:?}"
        );
        mta.transcript();
    }
}

#[test]
fn a_server_that_never_answers_is_given_up_on_at_the_deadline() {
    for at in ["greeting", "DATA"] {
        let mta = FakeMta::start(move |heard| match heard {
            Heard::Connect if at == "greeting" => Answer::Silent,
            Heard::Command("DATA") => Answer::Silent,
            _ => accepting(heard),
        });
        let started = std::time::Instant::now();
        let outcome = submit(
            &mta.path,
            &msg(&["a@x.test"], b"hi\r\n"),
            settings(Duration::from_millis(300)),
            None,
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{at}");
        assert!(
            matches!(outcome, Err(Failure::Timeout { .. })),
            "{at}: {outcome:?}"
        );
        assert_eq!(exit_status(&outcome), EX_TEMPFAIL);
        mta.transcript();
    }
}

#[test]
fn a_server_slow_to_say_goodbye_does_not_hold_the_caller() {
    for (refused, at) in [("nobody", "QUIT"), ("b@", "RSET")] {
        let mta = FakeMta::start(move |heard| match heard {
            Heard::Command(c) if c.starts_with(at) => Answer::Silent,
            _ => refusing(refused, "550 5.1.1 No such user")(heard),
        });
        let short_wind_down = Settings {
            wind_down: Duration::from_millis(200),
            ..settings(LONG)
        };
        let started = std::time::Instant::now();
        let m = msg(&["a@x.test", "b@y.test"], b"hi\r\n");
        let outcome = submit(&mta.path, &m, short_wind_down, None);
        assert!(started.elapsed() < Duration::from_secs(10), "{at}");
        let expected = if at == "QUIT" { EX_OK } else { EX_NOUSER };
        assert_eq!(exit_status(&outcome), expected, "{at}: {outcome:?}");
        assert!(mta.transcript_text().ends_with(&format!("{at}\r\n")));
    }
}

#[test]
fn no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("submit.sock");
    let outcome = submit(&path, &msg(&["a@x.test"], b"hi\r\n"), settings(LONG), None);
    assert_eq!(exit_status(&outcome), EX_UNAVAILABLE);
    let line = outcome.unwrap_err().to_string();
    assert!(
        line.starts_with(&format!("cannot connect to {}: ", path.display())),
        "{line}"
    );
}

#[test]
fn garbled_replies() {
    for garbage in [
        "hello there\r\n",
        "250-fake.test\r\n251 mixed\r\n",
        "250 fake.test\r\n250 and one more\r\n",
        &format!("250 {}\r\n", "x".repeat(reply::MAX_LINE)),
    ] {
        let garbage = garbage.to_owned();
        let mta = FakeMta::start(move |heard| match heard {
            Heard::Command(c) if c.starts_with("EHLO") => Answer::Send(garbage.clone()),
            _ => accepting(heard),
        });
        let outcome = send(&mta, &msg(&["a@x.test"], b"hi\r\n"));
        assert!(
            matches!(
                outcome,
                Err(Failure::Garbled {
                    step: Step::Ehlo,
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert_eq!(exit_status(&outcome), EX_TEMPFAIL);
        mta.transcript();
    }
}

#[test]
fn eight_bit_data_is_declared() {
    let mta = FakeMta::start(accepting);
    let m = msg(&["josé@x.test"], "Subject: café\r\n\r\n".as_bytes());
    assert!(send(&mta, &m).is_ok());
    assert!(
        mta.transcript_text()
            .contains("MAIL FROM:<site@hosting.test> BODY=8BITMIME SIZE=18 SMTPUTF8\r\n")
    );
}

#[test]
fn the_trace_shows_the_dialogue_but_not_the_message() {
    let mta = FakeMta::start(accepting);
    let mut trace = Vec::new();
    let m = msg(&["a@x.test"], b"Subject: secret\r\n\r\nsecret body\r\n");
    assert!(submit(&mta.path, &m, settings(LONG), Some(&mut trace)).is_ok());
    let trace = String::from_utf8(trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines[0], "<<< 220 fake.test ESMTP");
    assert_eq!(lines[1], ">>> EHLO web1.test");
    assert_eq!(lines[2], "<<< 250-fake.test");
    assert!(lines.contains(&">>> RCPT TO:<a@x.test>"), "{trace}");
    assert!(
        lines.contains(&">>> (32 bytes of message, not shown)"),
        "{trace}"
    );
    assert_eq!(lines.last(), Some(&"<<< 221 2.0.0 Bye"));
    assert!(!trace.contains("secret"), "{trace}");
    mta.transcript();
}

#[test]
fn dot_stuffing() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"..\r\n", b"...\r\n.\r\n"),
        (b"a\r\n.b\r\n.\r\nc.\r\n", b"a\r\n..b\r\n..\r\nc.\r\n.\r\n"),
        (b" .\r\n", b" .\r\n.\r\n"),
        // Without its last line end, one is added before the dot.
        (b"a\r\n.b", b"a\r\n..b\r\n.\r\n"),
    ];
    for (data, wire) in cases {
        let mut got: Vec<u8> = dot_stuffed(data).flatten().copied().collect();
        got.extend_from_slice(end_of_data(data));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(wire),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
}

/// What goes on the wire after DATA for a message prepared from `input`.
fn wire_of(args: &[&str], input: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use crate::sendmail::{args::parse, message};
    let ctx = message::Context {
        login: "site7",
        domain: "hosting.test",
        full_name: None,
        date: "Tue, 1 Dec 2026 14:00:00 +0000",
        message_id: "x.1@hosting.test",
    };
    let opts = parse(args.iter().copied()).unwrap();
    let data = message::prepare(input, &opts, &ctx).unwrap().data;
    let mut wire: Vec<u8> = dot_stuffed(&data).flatten().copied().collect();
    wire.extend_from_slice(end_of_data(&data));
    (data, wire)
}

/// Every CR followed by LF, every LF after a CR.
fn only_crlf(data: &[u8]) -> bool {
    data.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => data.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && data[i - 1] == b'\r',
        _ => true,
    })
}

#[test]
fn mailbrakes_data_scanner_ends_every_message_where_it_ends() {
    use crate::session::data::{DataScanner, Scan};
    // What Postfix delivers, mailbrake's proxy must not take for smuggling.
    let mut inputs: Vec<Vec<u8>> = vec![b"line one\r.\nline two\n".to_vec()];
    // And every short input of the bytes that make lines and dots.
    let alphabet = [b'\r', b'\n', b'.', b'a'];
    for len in 0..=6u32 {
        for n in 0..alphabet.len().pow(len) {
            let input = (0..len).map(|k| alphabet[n / alphabet.len().pow(k) % alphabet.len()]);
            inputs.push(input.collect());
        }
    }
    for input in &inputs {
        for args in [&["a@x.test"][..], &["-i", "a@x.test"]] {
            let (data, wire) = wire_of(args, input);
            let shown = String::from_utf8_lossy(input);
            assert!(only_crlf(&data), "{args:?} {shown:?}: {data:?}");
            assert_eq!(
                DataScanner::new().scan(&wire),
                Scan::End { end: wire.len() },
                "{args:?} {shown:?}: {:?}",
                String::from_utf8_lossy(&wire)
            );
        }
    }
}

#[test]
fn a_time_past_what_the_clock_holds_is_not_a_panic() {
    let mta = FakeMta::start(accepting);
    let m = msg(&["a@x.test"], b"Subject: s\r\n\r\nb\r\n");
    let forever = Settings {
        helo: "web1.test",
        timeout: Duration::MAX,
        wind_down: Duration::MAX,
    };
    assert!(submit(&mta.path, &m, forever, None).is_ok());
}
