//! Messages as PHP, PHPMailer and cron write them, and what is submitted.

use super::*;
use crate::sendmail::args::parse;

const CTX: Context = Context {
    login: "site1",
    domain: "host.test",
    full_name: None,
    date: "Tue, 01 Dec 2026 13:45:00 +0000",
    message_id: "1.2.3@host.test",
};

fn prepared(args: &[&str], input: &str) -> Message {
    let opts = parse(args.iter().copied()).unwrap();
    prepare(input.as_bytes(), &opts, &CTX).unwrap()
}

fn text(m: &Message) -> &str {
    std::str::from_utf8(&m.data).unwrap()
}

#[test]
fn php_mail_with_lf_line_ends() {
    let m = prepared(
        &["-t", "-i"],
        "To: bob@y.test\nSubject: hi\nFrom: site@x.test\n\nline one\n.\nlast\n",
    );
    assert_eq!(m.sender, "site1@host.test");
    assert_eq!(m.recipients, ["bob@y.test"]);
    assert_eq!(
        text(&m),
        "Date: Tue, 01 Dec 2026 13:45:00 +0000\r\nMessage-ID: <1.2.3@host.test>\r\n\
         To: bob@y.test\r\nSubject: hi\r\nFrom: site@x.test\r\n\r\nline one\r\n.\r\nlast\r\n",
        "a lone dot kept under -i, CRLF everywhere"
    );
}

#[test]
fn without_i_a_lone_dot_ends_the_input() {
    let m = prepared(
        &["bob@y.test"],
        "Subject: s\r\n\r\nkept\r\n.\r\nnot sent\r\n",
    );
    assert!(text(&m).ends_with("\r\nkept\r\n"), "{:?}", text(&m));
}

#[test]
fn recipients_from_to_cc_and_bcc_and_bcc_removed() {
    let m = prepared(
        &["-t", "-i", "-f", "bounce@x.test", "boss@x.test"],
        "From: Site <site@x.test>\r\nTo: \"Doe, John\" <john@y.test>, jane@y.test\r\n\
         Cc: team: a@y.test, (a comment) b@y.test;\r\nBcc: secret@z.test,\r\n hidden@z.test\r\n\
         Date: x\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n",
    );
    assert_eq!(m.sender, "bounce@x.test");
    assert_eq!(
        m.recipients,
        [
            "boss@x.test",
            "john@y.test",
            "jane@y.test",
            "a@y.test",
            "b@y.test",
            "secret@z.test",
            "hidden@z.test"
        ]
    );
    assert!(
        !text(&m).to_ascii_lowercase().contains("bcc"),
        "{}",
        text(&m)
    );
    assert!(!text(&m).contains("hidden"), "the folded line went with it");
    assert!(text(&m).starts_with("From: Site <site@x.test>\r\nTo: "));
}

#[test]
fn resent_headers_name_the_recipients_when_present() {
    let m = prepared(
        &["-t"],
        "To: old@y.test\nResent-To: new@y.test\nResent-Bcc: quiet@y.test\n\nb\n",
    );
    assert_eq!(m.recipients, ["new@y.test", "quiet@y.test"]);
    assert!(!text(&m).contains("quiet"));
}

#[test]
fn a_missing_from_is_added_with_the_full_name() {
    let m = prepared(
        &["-F", "Cron Daemon", "-i", "root"],
        "Subject: out\n\nran\n",
    );
    assert_eq!(
        m.recipients,
        ["root@host.test"],
        "a bare local part, as cron writes it, is this host's"
    );
    assert!(text(&m).starts_with("From: Cron Daemon <site1@host.test>\r\n"));
    // The null sender has no mailbox to name, whatever the full name.
    let m = prepared(&["-F", "Doe, John", "-f", "<>", "root"], "\n");
    assert!(
        text(&m).starts_with("From: MAILER-DAEMON\r\n"),
        "{}",
        text(&m)
    );
    assert_eq!(m.sender, "");
    let m = prepared(&["-f", "bounces", "a@x.test"], "\n");
    assert_eq!(
        m.sender, "bounces@host.test",
        "a bare sender is this host's too"
    );
}

#[test]
fn a_body_without_headers_gets_an_empty_line_after_the_added_ones() {
    let m = prepared(&["a@x.test"], "just text, no header\nsecond line");
    assert_eq!(
        text(&m),
        "From: site1@host.test\r\nDate: Tue, 01 Dec 2026 13:45:00 +0000\r\n\
         Message-ID: <1.2.3@host.test>\r\n\r\njust text, no header\r\nsecond line\r\n"
    );
}

#[test]
fn eight_bit_bodies_and_long_lines_are_kept_byte_for_byte() {
    let long = "x".repeat(5000);
    let input = format!("Subject: \u{e9}t\u{e9}\n\n\u{fc}ber {long}\n");
    let m = prepared(&["a@x.test"], &input);
    assert!(text(&m).ends_with(&format!("\r\n\r\n\u{fc}ber {long}\r\n")));
    assert!(text(&m).contains("Subject: \u{e9}t\u{e9}\r\n"));
}

#[test]
fn no_recipients_anywhere_is_an_error() {
    let opts = parse(["-t"]).unwrap();
    assert_eq!(
        prepare(b"Subject: x\n\nb\n", &opts, &CTX),
        Err(MessageError::NoRecipients)
    );
    let opts = parse(["-t"]).unwrap();
    assert_eq!(
        prepare(b"To: undisclosed-recipients:;\n\nb\n", &opts, &CTX),
        Err(MessageError::NoRecipients)
    );
}

#[test]
fn address_lists() {
    let cases: &[(&str, &[&str])] = &[
        ("a@x", &["a@x"]),
        (" Name <a@x> , b@y ", &["a@x", "b@y"]),
        ("\"Last, First\" <a@x>", &["a@x"]),
        ("\"quoted local\"@x", &["\"quoted local\"@x"]),
        ("a@x (Alice, the admin)", &["a@x"]),
        ("g: a@x, b@y;, c@z", &["a@x", "b@y", "c@z"]),
        ("undisclosed-recipients:;", &[]),
        ("u@[IPv6:2001:db8::1]", &["u@[IPv6:2001:db8::1]"]),
        ("root", &["root"]),
        ("", &[]),
        (",,", &[]),
    ];
    for (list, want) in cases {
        assert_eq!(addresses(list), *want, "{list:?}");
    }
}

#[test]
fn recipients_are_each_named_once() {
    let m = prepared(
        &["-t", "a@x.test"],
        "To: A@x.test, b@y.test\nCc: b@y.test\n\n",
    );
    assert_eq!(m.recipients, ["a@x.test", "b@y.test"]);
}

#[test]
fn space_before_a_colon_still_makes_a_header() {
    // RFC 5322 §4.5's obsolete syntax, which Postfix's is_header_buf reads:
    // the fields after it stay fields, so the Bcc is taken and removed.
    let m = prepared(
        &["-t", "-i"],
        "To: you@example.net\nSubject : hi\nBcc: hidden@example.org\n\nbody\n",
    );
    assert_eq!(m.recipients, ["you@example.net", "hidden@example.org"]);
    assert!(!text(&m).contains("hidden"), "{}", text(&m));
    assert!(text(&m).contains("\r\nSubject : hi\r\n\r\nbody\r\n"));
    let m = prepared(&["-t"], "Subject\t:x\nBCC \t: quiet@y.test\nFrom : a@x\n\n");
    assert_eq!(m.recipients, ["quiet@y.test"], "the name trimmed");
    assert!(!text(&m).contains("quiet"), "{}", text(&m));
    assert!(!text(&m).contains("From: "), "From is there: {}", text(&m));
}

#[test]
fn header_names() {
    let cases: &[(&str, Option<&str>)] = &[
        ("Subject: x", Some("Subject")),
        ("Subject:", Some("Subject")),
        ("Subject :x", Some("Subject")),
        ("Subject \t : x", Some("Subject")),
        ("X-8:", Some("X-8")),
        (": x", None),
        (" Subject: x", None),
        ("Two words: x", None),
        ("From someone@x.test Tue Dec  1 14:00:00 2026", None),
        ("Sub\u{e9}ject: x", None),
        ("no colon", None),
    ];
    for (line, want) in cases {
        assert_eq!(field_name(line.as_bytes()).as_deref(), *want, "{line:?}");
    }
}

#[test]
fn a_leading_mbox_from_line_is_dropped() {
    // procmail and formail write one; Postfix's sendmail drops it.
    let m = prepared(
        &["-i", "you@example.net"],
        "From site7@hosting.test Tue Dec  1 14:00:00 2026\nTo: you@example.net\n\
         Bcc: hidden@example.org\nSubject: hi\n\nbody\n",
    );
    assert!(!text(&m).contains("hidden"), "{}", text(&m));
    assert!(!text(&m).contains("From site7"), "{}", text(&m));
    assert!(text(&m).ends_with("\r\nTo: you@example.net\r\nSubject: hi\r\n\r\nbody\r\n"));
    // `>From ` lines too, as many as lead; a later one is body.
    let m = prepared(
        &["-t"],
        "From a@x.test Mon\r\n>From b@y.test Sun\r\n>>From c\r\nTo: d@z.test\r\n\r\n\
         From here on\r\n>From there\r\n",
    );
    assert_eq!(m.recipients, ["d@z.test"]);
    assert!(
        text(&m).ends_with(
            "Message-ID: <1.2.3@host.test>\r\nTo: d@z.test\r\n\r\nFrom here on\r\n>From there\r\n"
        ),
        "{}",
        text(&m)
    );
    // Only `From ` with its space: a From header is a header.
    let m = prepared(&["-t"], "From: me@x.test\nTo: d@z.test\n\n");
    assert!(text(&m).starts_with("Date: "), "{}", text(&m));
    assert!(text(&m).contains("\r\nFrom: me@x.test\r\nTo: d@z.test\r\n"));
}

#[test]
fn a_full_name_never_breaks_its_from_line() {
    let opts = parse(["-i", "a@x.test"]).unwrap();
    let ctx = Context {
        full_name: Some("Evil\r\nX-Injected: yes"),
        ..CTX
    };
    let m = prepare(b"Subject: s\n\nb\n", &opts, &ctx).unwrap();
    assert!(
        text(&m).starts_with("From: \"EvilX-Injected: yes\" <site1@host.test>\r\nDate: "),
        "{}",
        text(&m)
    );
}

#[test]
fn line_ends() {
    // A bare CR ends a line as LF does; the CRs before a LF belong to it.
    let cases: &[(&[u8], bool, &[&str])] = &[
        (b"a\nb\r\nc", false, &["a", "b", "c"]),
        (b"a\rb\r", false, &["a", "b"]),
        (b"a\r\r\nb\r\r\r\n", false, &["a", "b"]),
        (b"a\r\rb", false, &["a", "", "b"]),
        (b"a\r\n\r\nb", false, &["a", "", "b"]),
        (b"\r", false, &[""]),
        (b"\r\n\r", false, &["", ""]),
        (
            b"line one\r.\nline two\n",
            false,
            &["line one", ".", "line two"],
        ),
        // A lone '.' ends the input only as a whole line between LFs.
        (
            b"line one\r.\nline two\n",
            true,
            &["line one", ".", "line two"],
        ),
        (b"a\n.\rb", true, &["a", ".", "b"]),
        (b"a\n.\nb", true, &["a"]),
        (
            b"price 5\r.\rstill body\n",
            true,
            &["price 5", ".", "still body"],
        ),
        (b"a\r..\rb", true, &["a", "..", "b"]),
        (b"From x\r>From y\rTo: z\r", true, &["To: z"]),
    ];
    for (input, dot_ends, want) in cases {
        let got: Vec<String> = lines(input, *dot_ends)
            .iter()
            .map(|l| String::from_utf8_lossy(l.text).into_owned())
            .collect();
        assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn a_bare_cr_between_fields_does_not_hide_a_bcc() {
    let m = prepared(&["-t"], "To: a@x.test\rBcc: b@y.test\rSubject: s\r\rbody\r");
    assert_eq!(m.recipients, ["a@x.test", "b@y.test"]);
    assert!(text(&m).ends_with("\r\nTo: a@x.test\r\nSubject: s\r\n\r\nbody\r\n"));
}

#[test]
fn a_bare_cr_inside_a_header_value_does_not_end_the_headers() {
    let m = prepared(
        &["-t", "-i"],
        "From: Evil\rName <site@x.test>\nTo: bob@y.test\nContent-Type: text/html\n\n<p>hi</p>\n",
    );
    assert_eq!(m.recipients, ["bob@y.test"]);
    let t = text(&m);
    assert!(
        t.contains("From: Evil\r\n Name <site@x.test>\r\nTo: bob@y.test\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"),
        "{t}"
    );
    assert!(
        !t.contains("From: site1@host.test"),
        "the From is the input's: {t}"
    );
}
