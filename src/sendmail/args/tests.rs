//! The command lines real callers use, and the modes that are refused.

use super::*;

fn ok(args: &[&str]) -> Options {
    parse(args.iter().copied()).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn refused(args: &[&str]) -> UsageError {
    parse(args.iter().copied()).expect_err(&format!("{args:?} should be refused"))
}

fn to(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn what_real_callers_pass() {
    let php = Options {
        extract_recipients: true,
        dot_ends_input: false,
        ..Options::default()
    };
    let cases: &[(&str, &[&str], Options)] = &[
        // php.ini's default sendmail_path.
        ("php mail()", &["-t", "-i"], php.clone()),
        (
            "PHPMailer's sendmail mode",
            &["-oi", "-fbounce@site.test", "-t"],
            Options {
                sender: Some("bounce@site.test".into()),
                ..php.clone()
            },
        ),
        (
            "PHPMailer's mail mode, through mail()'s fifth parameter",
            &["-t", "-i", "-f", "wordpress@site.test"],
            Options {
                sender: Some("wordpress@site.test".into()),
                ..php.clone()
            },
        ),
        (
            "Debian's cron",
            &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            Options {
                dot_ends_input: false,
                full_name: Some("CronDaemon".into()),
                recipients: to(&["root"]),
                ..Options::default()
            },
        ),
        (
            "grouped flags, -r, -bm, -v, ignored -o and -O options",
            &[
                "-tiv",
                "-bm",
                "-r",
                "<a@x.test>",
                "-odb",
                "-O",
                "DeliveryMode=b",
                "-o7",
            ],
            Options {
                sender: Some("a@x.test".into()),
                verbose: true,
                ..php.clone()
            },
        ),
        (
            "recipients after --, one starting with a dash",
            &["-f", "<>", "--", "-odd@x.test", "b@y.test"],
            Options {
                dot_ends_input: true,
                sender: Some(String::new()),
                recipients: to(&["-odd@x.test", "b@y.test"]),
                ..Options::default()
            },
        ),
        (
            "the first word that is not an option ends them",
            &["a@x.test", "-t"],
            Options {
                dot_ends_input: true,
                recipients: to(&["a@x.test", "-t"]),
                ..Options::default()
            },
        ),
        (
            "-t with recipients on the command line adds to them",
            &["-t", "boss@x.test"],
            Options {
                extract_recipients: true,
                dot_ends_input: true,
                recipients: to(&["boss@x.test"]),
                ..Options::default()
            },
        ),
        (
            "ignored options with their arguments, attached or not",
            &[
                "-N", "never", "-R", "hdrs", "-C/etc/x", "-h", "17", "-V", "envid-1", "-XV", "-U",
                "a@x.test",
            ],
            Options {
                dot_ends_input: true,
                recipients: to(&["a@x.test"]),
                ..Options::default()
            },
        ),
    ];
    for (what, args, want) in cases {
        assert_eq!(&ok(args), want, "{what}: {args:?}");
    }
}

#[test]
fn v_and_x_as_postfix_reads_them() {
    let cases: &[(&[&str], &[&str])] = &[
        // -V takes the DSN envelope id, attached or the next word.
        (
            &["-V", "envid-123", "you@example.net"],
            &["you@example.net"],
        ),
        (&["-Venvid-123", "you@example.net"], &["you@example.net"]),
        // Before a two-character word, a lone -V is Postfix 2.2's VERP
        // (-XV now), and the word is not its argument.
        (&["-V", "-i", "you@example.net"], &["you@example.net"]),
        (&["-V", "xy", "you@example.net"], &["xy", "you@example.net"]),
        // VERP, with the default delimiters or two given: ignored.
        (&["-XV", "you@example.net"], &["you@example.net"]),
        (&["-XV-=", "you@example.net"], &["you@example.net"]),
        (&["-tXV+="], &[]),
    ];
    for (args, recipients) in cases {
        assert_eq!(ok(args).recipients, to(recipients), "{args:?}");
    }
    assert_eq!(
        refused(&["-X", "/tmp/traffic.log", "a@x.test"]).to_string(),
        "-X/tmp/traffic.log is not offered: there is no traffic log, and -X takes only V (VERP)"
    );
}

#[test]
fn a_lone_dot_ends_the_message_unless_i() {
    assert!(ok(&["a@x.test"]).dot_ends_input);
    assert!(!ok(&["-i", "a@x.test"]).dot_ends_input);
    assert!(!ok(&["-oi", "a@x.test"]).dot_ends_input);
    assert!(!ok(&["-o", "i", "a@x.test"]).dot_ends_input);
}

#[test]
fn modes_not_offered_are_usage_errors() {
    let cases: &[(&[&str], UsageError)] = &[
        (&["-bp"], UsageError::NotOffered("bp".into())),
        (&["-bs"], UsageError::NotOffered("bs".into())),
        (&["-bd"], UsageError::NotOffered("bd".into())),
        (&["-bi"], UsageError::NotOffered("bi".into())),
        (&["-bv", "a@x.test"], UsageError::NotOffered("bv".into())),
        (&["-I"], UsageError::NotOffered("I".into())),
        (&["-q"], UsageError::NotOffered("q".into())),
        (&["-q1h"], UsageError::NotOffered("q1h".into())),
        (&["-qRsite"], UsageError::NotOffered("qRsite".into())),
        (&["-n", "a@x.test"], UsageError::NotOffered("n".into())),
        (&["-B", "9BIT", "a@x.test"], UsageError::BodyType),
        (&["-oA", "a@x.test"], UsageError::AliasPath),
        (&["-f"], UsageError::MissingArgument('f')),
        (&["-t", "-F"], UsageError::MissingArgument('F')),
        (&["-Z", "a@x.test"], UsageError::Unknown('Z')),
        (&["-ti", "-Y"], UsageError::Unknown('Y')),
        (&[], UsageError::NoRecipients),
        (&["-i", "-f", "a@x.test"], UsageError::NoRecipients),
        (&["--"], UsageError::NoRecipients),
        (&["-t", "-V"], UsageError::MissingArgument('V')),
        // Sendmail's traffic log, and every -X but VERP's, as Postfix refuses them.
        (
            &["-X", "/tmp/log", "a@x.test"],
            UsageError::NotOfferedX("/tmp/log".into()),
        ),
        (
            &["-X/tmp/log", "a@x.test"],
            UsageError::NotOfferedX("/tmp/log".into()),
        ),
        (
            &["-X", "V", "a@x.test"],
            UsageError::NotOfferedX("V".into()),
        ),
        (
            &["-XVabc", "a@x.test"],
            UsageError::NotOfferedX("Vabc".into()),
        ),
        (&["-tXV"], UsageError::NotOfferedX("V".into())),
        // A full name that would break its From line.
        (
            &["-F", "Evil\r\nX-Injected: yes", "a@x.test"],
            UsageError::FullName("Evil\r\nX-Injected: yes".into()),
        ),
        (
            &["-FTab\there", "-t"],
            UsageError::FullName("Tab\there".into()),
        ),
        (&["-F", "Nul\0", "-t"], UsageError::FullName("Nul\0".into())),
    ];
    for (args, want) in cases {
        assert_eq!(&refused(args), want, "{args:?}");
    }
}

#[test]
fn usage_errors_say_what_to_do() {
    assert_eq!(
        refused(&["-bp"]).to_string(),
        "-bp is not offered: mailbrake sendmail only submits mail (-bm)"
    );
    assert_eq!(
        refused(&["-i"]).to_string(),
        "recipients must be given on the command line or with -t"
    );
}
