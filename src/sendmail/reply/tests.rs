//! Replies whole, in pieces and garbled.

use super::*;

fn reply(code: u16, lines: &[&str]) -> Reply {
    Reply {
        code,
        lines: lines.iter().map(|l| l.to_string()).collect(),
    }
}

#[test]
fn whole_replies() {
    let cases: &[(&[u8], Reply, usize)] = &[
        (b"220 mx.test ESMTP\r\n", reply(220, &["mx.test ESMTP"]), 19),
        (b"250\r\n", reply(250, &[""]), 5),
        (b"354 go ahead\n", reply(354, &["go ahead"]), 13),
        (
            b"250-mx.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
            reply(250, &["mx.test", "SIZE 1000", "8BITMIME"]),
            42,
        ),
        // What follows the reply is left for the next one.
        (b"250 ok\r\n221 bye\r\n", reply(250, &["ok"]), 8),
        (b"450 a\x1b[31mb\r\n", reply(450, &["a?[31mb"]), 13),
    ];
    for (input, expected, used) in cases {
        let got = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got, Some((expected.clone(), *used)), "{input:?}");
    }
}

#[test]
fn every_prefix_of_a_reply_is_incomplete() {
    let input = b"250-mx.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
    for i in 0..input.len() {
        assert_eq!(parse(&input[..i]), Ok(None), "prefix of {i} bytes");
    }
    assert!(parse(input).unwrap().is_some());
}

#[test]
fn garbled_replies_are_refused() {
    let long_line = [b"250 ".as_slice(), &[b'x'; MAX_LINE]].concat();
    let long_reply = b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n".repeat(MAX_REPLY / 40);
    let cases: &[(&[u8], Garbled)] = &[
        (b"hello\r\n", Garbled::NoCode),
        (b"25\r\n", Garbled::NoCode),
        (b"2x0 ok\r\n", Garbled::NoCode),
        (b"150 ok\r\n", Garbled::NoCode),
        (b"650 ok\r\n", Garbled::NoCode),
        (b"250+ok\r\n", Garbled::NoCode),
        (b"250-a\r\n251 b\r\n", Garbled::MixedCodes),
        (&long_line, Garbled::LineTooLong),
        // Without its end, too: the reader stops waiting.
        (&long_line[..MAX_LINE], Garbled::LineTooLong),
        (&long_reply, Garbled::ReplyTooLong),
    ];
    for (input, expected) in cases {
        let shown = String::from_utf8_lossy(&input[..input.len().min(20)]);
        assert_eq!(parse(input), Err(*expected), "{shown}");
    }
}

#[test]
fn a_line_of_the_longest_length_is_taken() {
    let mut line = b"250 ".to_vec();
    line.resize(MAX_LINE - 2, b'x');
    line.extend_from_slice(b"\r\n");
    let (got, used) = parse(&line).unwrap().unwrap();
    assert_eq!((got.code, used), (250, MAX_LINE));
}

#[test]
fn shown_as_one_line() {
    let r = reply(450, &["4.7.1 Recipient limit reached", "4.7.1 try later"]);
    assert_eq!(
        r.to_string(),
        "450 4.7.1 Recipient limit reached 4.7.1 try later"
    );
    assert_eq!(reply(250, &[""]).to_string(), "250");
}

#[test]
fn classes() {
    let classes = |code| {
        let r = reply(code, &[]);
        (
            r.is_positive(),
            r.is_transient(),
            r.is_permanent(),
            r.is_negative(),
        )
    };
    assert_eq!(classes(250), (true, false, false, false));
    assert_eq!(classes(354), (false, false, false, false));
    assert_eq!(classes(450), (false, true, false, true));
    assert_eq!(classes(554), (false, false, true, true));
}

#[test]
fn extensions_from_ehlo() {
    let ehlo = reply(
        250,
        &[
            "mx.test greets you",
            "size 10240000",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
        ],
    );
    assert_eq!(
        Extensions::of(&ehlo),
        Extensions {
            eight_bit_mime: true,
            size: true,
            smtp_utf8: true
        }
    );
    // The greeting line names the host, not an extension.
    let only_name = reply(250, &["8BITMIME"]);
    assert_eq!(Extensions::of(&only_name), Extensions::default());
}
