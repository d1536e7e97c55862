//! The whole sendmail road, end to end: the real `mailbrake sendmail`,
//! run as a site's Unix user, submitting over the Unix socket to a running
//! mailbrake, which relays to the recording upstream. Each of sendmail's
//! options is checked against the envelope and the exact message the
//! upstream recorded, and the identity the kernel gives cannot be forged
//! from the command line, the message or the environment.
//!
//! Needs root (to become other users) and setpriv; without them the test
//! fails loudly, it never passes by skipping.

mod common;

use common::local::*;
use common::postfix::eventually;
use common::upstream::{Opts, dot_stuffed};

const R: &str = "r@remote.test";
const BOUNCE: &str = "bounce@hosting.test";
/// Headers a caller wrote, so that nothing needs adding.
const HEAD: &str = "From: Site <site@hosting.test>\nDate: Tue, 01 Dec 2026 13:45:00 +0000\n\
                    Message-ID: <road@hosting.test>\n";

/// HEAD without its Date.
const NO_DATE: &str = "From: Site <site@hosting.test>\nMessage-ID: <road@hosting.test>\n";
/// The Date and Message-ID the command adds, their values masked.
const ADDED: &str = "Date: *\nMessage-ID: *\n";
/// What Debian's cron writes to `sendmail -FCronDaemon -i -B8BITMIME -oem
/// MAILTO` (no Date, no Message-ID).
const CRON_MAIL: &str = "From: root (Cron Daemon)\nTo: root\nSubject: Cron <nobody@host> echo hi\n\
    MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
    X-Cron-Env: <SHELL=/bin/sh>\n\nhi\n.\n";

/// What one invocation must come to.
enum Want {
    /// Delivered: the envelope, and the message with every line ending in
    /// CRLF; the values of the header fields named in `generated` (added by
    /// the command, different each time) are written `*`.
    Sent {
        from: String,
        rcpts: Vec<String>,
        content: Vec<u8>,
        generated: &'static [&'static str],
    },
    /// Refused before anything is sent: the status and stderr's start.
    Refused(i32, String),
}

struct Case {
    what: &'static str,
    args: &'static [&'static str],
    input: Vec<u8>,
    /// Through a link named `sendmail`, the socket in the environment.
    link: bool,
    want: Want,
}

fn case(
    what: &'static str,
    args: &'static [&'static str],
    input: impl AsRef<[u8]>,
    want: Want,
) -> Case {
    Case {
        what,
        args,
        input: input.as_ref().to_vec(),
        link: false,
        want,
    }
}

/// `input` relayed as it is, from nobody to `R`.
fn unchanged(what: &'static str, args: &'static [&'static str], input: impl AsRef<[u8]>) -> Case {
    let want = sent(&[R], &input);
    case(what, args, input, want)
}

/// Sent by nobody, its own address as the envelope sender.
fn sent(rcpts: &[&str], content: impl AsRef<[u8]>) -> Want {
    sent_from(&nobody(), rcpts, content)
}

fn sent_from(from: &str, rcpts: &[&str], content: impl AsRef<[u8]>) -> Want {
    Want::Sent {
        from: from.to_owned(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        content: crlf(content),
        generated: &[],
    }
}

impl Want {
    /// With the header fields `names` added by the command.
    fn adding(mut self, names: &'static [&'static str]) -> Want {
        if let Want::Sent { generated, .. } = &mut self {
            *generated = names;
        }
        self
    }
}

fn nobody() -> String {
    format!("nobody@{}", mail_domain())
}

fn cases() -> Vec<Case> {
    let plain = format!("{HEAD}Subject: s\n\nhello\n");
    let dotted = format!("{HEAD}Subject: s\n\na\n..lead\n.\nafter the dot\n");
    let long = "y".repeat(5000);
    let eight_bit = [
        format!("{HEAD}Subject: caf\u{e9}\nContent-Type: text/plain; charset=ISO-8859-1\n\n")
            .as_bytes(),
        b"na\xefve \xfcber \x80\xff\x01\n",
        format!("{long}\n.dot first\n..two dots\n.\nend\n").as_bytes(),
    ]
    .concat();
    let to = |m: &str| {
        format!(
            "{HEAD}To: A <to@remote.test>\n\
             Cc: cc@remote.test, \"Last, First\" <cc2@remote.test>\n{m}Subject: s\n\nhello\n"
        )
    };
    let resent = |m: &str| {
        format!(
            "{HEAD}To: old@remote.test\nResent-From: fwd@hosting.test\n\
             Resent-To: new@remote.test\n{m}Subject: s\n\nhello\n"
        )
    };
    let mut cases = vec![
        case(
            "recipients on the command line, in order; the message's To is not read",
            &["a@remote.test", "b@remote.test"],
            to(""),
            sent(&["a@remote.test", "b@remote.test"], to("")),
        ),
        case(
            "-t: To, Cc and Bcc after the command line's, Bcc removed",
            &["-t", "cmd@remote.test"],
            to("Bcc: hidden@remote.test\n"),
            sent(
                &[
                    "cmd@remote.test",
                    "to@remote.test",
                    "cc@remote.test",
                    "cc2@remote.test",
                    "hidden@remote.test",
                ],
                to(""),
            ),
        ),
        case(
            "-t with Resent- headers: theirs only, Resent-Bcc removed",
            &["-t"],
            resent("Resent-Bcc: rb@remote.test\n"),
            sent(&["new@remote.test", "rb@remote.test"], resent("")),
        ),
        unchanged("-i: a lone dot is kept", &["-i", R], &dotted),
        unchanged("-oi: a lone dot is kept", &["-oi", R], &dotted),
        unchanged(
            "grouped -ti",
            &["-ti"],
            format!("{HEAD}To: {R}\n\na\n.\nb\n"),
        ),
        case(
            "without -i a lone dot ends the input: what follows is not sent",
            &[R],
            &dotted,
            sent(&[R], format!("{HEAD}Subject: s\n\na\n..lead\n")),
        ),
        case(
            "-f '<>': the null sender",
            &["-f", "<>", R],
            &plain,
            sent_from("", &[R], &plain),
        ),
        case(
            "-F NAME: the From added carries it; Date and Message-ID are added",
            &["-F", "Jane Doe", R],
            "Subject: s\n\nhello\n",
            sent(
                &[R],
                format!(
                    "From: Jane Doe <{}>\n{ADDED}Subject: s\n\nhello\n",
                    nobody()
                ),
            )
            .adding(&["Date", "Message-ID"]),
        ),
        case(
            "only the header missing is added, the others kept",
            &[R],
            format!("{NO_DATE}Subject: s\n\nhello\n"),
            sent(&[R], format!("Date: *\n{NO_DATE}Subject: s\n\nhello\n")).adding(&["Date"]),
        ),
        case(
            "--: every word after it is a recipient, one starting with '-' too",
            &["-f", BOUNCE, "--", "-dash@remote.test", R],
            &plain,
            sent_from(BOUNCE, &["-dash@remote.test", R], &plain),
        ),
        unchanged("-bm: deliver, the only mode", &["-bm", R], &plain),
        unchanged("-v: the dialogue on stderr", &["-v", R], &plain),
        case(
            "cron's options: -FCronDaemon -i -B8BITMIME -oem",
            &[
                "-FCronDaemon",
                "-i",
                "-B8BITMIME",
                "-oem",
                "root@hosting.test",
            ],
            CRON_MAIL,
            sent(&["root@hosting.test"], format!("{ADDED}{CRON_MAIL}"))
                .adding(&["Date", "Message-ID"]),
        ),
        unchanged("input with LF line ends", &["-i", R], &dotted),
        case(
            "input with CRLF line ends: the same bytes recorded",
            &["-i", R],
            crlf(&dotted),
            sent(&[R], &dotted),
        ),
        unchanged(
            "an 8-bit body and a 5,000-byte line, byte for byte",
            &["-i", R],
            &eight_bit,
        ),
        case(
            "-t finding no recipient",
            &["-t"],
            &plain,
            Want::Refused(
                64,
                "sendmail: no recipient addresses found in the message's headers".into(),
            ),
        ),
    ];
    // The envelope sender: -f ADDR, -fADDR, -f <ADDR>, -r ADDR.
    let senders: [&'static [&'static str]; 4] = [
        &["-f", BOUNCE, R],
        &["-fbounce@hosting.test", R],
        &["-f", "<bounce@hosting.test>", R],
        &["-r", BOUNCE, R],
    ];
    for args in senders {
        let want = sent_from(BOUNCE, &[R], &plain);
        cases.push(case("the envelope sender", args, &plain, want));
    }
    // Modes not offered: the queue, SMTP on stdin, a queue run, newaliases.
    let modes: [&'static [&'static str]; 4] = [&["-bp"], &["-bs"], &["-q"], &["-bi"]];
    for args in modes {
        let stderr = format!("sendmail: {} is not offered", args[0]);
        cases.push(case(
            "a mode not offered",
            args,
            &plain,
            Want::Refused(64, stderr),
        ));
    }
    // -X is a traffic log in Sendmail; Postfix refuses it but for VERP's.
    cases.push(case(
        "-X, refused as Postfix does",
        &["-X", "/tmp/log", R],
        &plain,
        Want::Refused(
            64,
            "sendmail: -X/tmp/log is not offered: there is no traffic log, and -X takes only V \
             (VERP)"
                .to_owned(),
        ),
    ));
    // Accepted and ignored, as Postfix's sendmail does.
    let ignored: [&'static [&'static str]; 12] = [
        &["-oem", R],
        &["-odb", R],
        &["-oQ/x", R],
        &["-B8BITMIME", R],
        &["-N", "never", R],
        &["-R", "hdrs", R],
        &["-XV", R],
        &["-C", "/etc/x", R],
        &["-h", "5", R],
        &["-Venvid", R],
        &["-V", "-U", R],
        &["-U", R],
    ];
    for args in ignored {
        cases.push(unchanged("an option ignored", args, &plain));
    }
    let mut link = unchanged(
        "through a link named sendmail, the socket from MAILBRAKE_SUBMIT_SOCKET",
        &["-t", "-i"],
        format!("{HEAD}To: {R}\n\nhello\n"),
    );
    link.link = true;
    cases.push(link);
    cases
}

/// `content` with the values of the header fields `names` written `*`,
/// each checked first to look like what the command adds.
fn masked(content: &[u8], names: &[&str]) -> Vec<u8> {
    let end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header and a body");
    let head = std::str::from_utf8(&content[..end]).expect("an ASCII header");
    let mut out = Vec::new();
    for line in head.split("\r\n") {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        if !names.contains(&name) {
            out.extend_from_slice(format!("{line}\r\n").as_bytes());
            continue;
        }
        let looks_right = match name {
            "Date" => value.len() == 31 && value.ends_with(" +0000") && value.as_bytes()[3] == b',',
            _ => value.starts_with('<') && value.ends_with(&format!("@{}>", mail_domain())),
        };
        assert!(looks_right, "an added {name}: {value:?}");
        out.extend_from_slice(format!("{name}: *\r\n").as_bytes());
    }
    out.extend_from_slice(&content[end + 2..]);
    out
}

/// The `-v` transcript: the dialogue, client and server lines, the
/// message only counted.
fn check_transcript(stderr: &str) {
    let from = format!(">>> MAIL FROM:<{}>", nobody());
    for line in [
        ">>> EHLO ",
        from.as_str(),
        ">>> RCPT TO:<r@remote.test>",
        ">>> DATA",
        "<<< 354 ",
        ">>> QUIT",
        "<<< 221 ",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "-v: no {line:?} in\n{stderr}"
        );
    }
    assert!(stderr.contains("bytes of message, not shown)"), "{stderr}");
    assert!(
        !stderr.contains("hello") && !stderr.contains("Subject"),
        "-v shows the message:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_option_end_to_end() {
    let (mut up, mb) = road(Opts::default(), UNLIMITED).await;
    let link_dir = tempfile::tempdir().unwrap();
    let link = open_run_dir(link_dir.path()).join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mailbrake"), &link).unwrap();

    let mut connecting = 0;
    for c in cases() {
        let what = format!("{}: {:?}", c.what, c.args);
        let before = up.messages.lock().unwrap().len();
        let cmd = if c.link {
            let mut cmd = as_user(NOBODY, link.to_str().unwrap());
            cmd.args(c.args).env("MAILBRAKE_SUBMIT_SOCKET", &mb.socket);
            cmd
        } else {
            sendmail_as(NOBODY, &mb.socket, c.args)
        };
        let ran = run_sendmail(cmd, &c.input).await;
        let new: Vec<_> = up.messages.lock().unwrap()[before..].to_vec();
        match c.want {
            Want::Refused(status, stderr) => {
                assert_eq!(ran.code(), status, "{what}: {}", ran.stderr);
                assert!(ran.stderr.starts_with(&stderr), "{what}: {}", ran.stderr);
                assert!(new.is_empty(), "{what}: {new:?}");
            }
            Want::Sent {
                from,
                rcpts,
                content,
                generated,
            } => {
                connecting += 1;
                assert_eq!(ran.code(), 0, "{what}: {}", ran.stderr);
                if c.args.contains(&"-v") {
                    check_transcript(&ran.stderr);
                } else {
                    assert_eq!(ran.stderr, "", "{what}");
                }
                assert_eq!(new.len(), 1, "{what}: one message recorded");
                let m = &new[0];
                assert_eq!((&m.from, &m.rcpts), (&from, &rcpts), "{what}");
                let got = m.content();
                let masked = masked(&got, generated);
                assert!(
                    masked == content,
                    "{what}\n got: {:?}\nwant: {:?}",
                    String::from_utf8_lossy(&masked),
                    String::from_utf8_lossy(&content)
                );
                assert_eq!(m.wire, dot_stuffed(&got), "{what}: dot-stuffed on the wire");
            }
        }
    }
    // A refused invocation never connected: mailbrake saw one session per
    // message, and the upstream one connection each.
    for _ in 0..connecting {
        up.next_close().await;
    }
    let log = &mb.mb;
    eventually(
        "a session end logged for each message",
        || (log.logs().matches("session end").count() >= connecting).then_some(()),
        || log.logs(),
    );
    let sessions = log.logs().matches("session start").count();
    assert_eq!(sessions, connecting, "{}", log.logs());
}

const UNLIMITED: &str = "default = \"unlimited\"";

#[tokio::test(flavor = "multi_thread")]
async fn the_kernels_word_cannot_be_forged() {
    let (up, mut mb) = road(
        Opts::default(),
        "default = \"1/1h\"\nlock_after_refusals = 0",
    )
    .await;
    let link_dir = tempfile::tempdir().unwrap();
    let link = open_run_dir(link_dir.path()).join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mailbrake"), &link).unwrap();
    // Everything a script controls says root, or another user.
    let forged = |uid| {
        let mut cmd = as_user(uid, link.to_str().unwrap());
        cmd.args(["-t", "-i", "-f", &format!("root@{}", mail_domain())])
            .env("MAILBRAKE_SUBMIT_SOCKET", &mb.socket)
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env_remove("MAILBRAKE_SUBMIT_TIMEOUT");
        cmd
    };
    let message = "From: daemon@hosting.test\nSender: root@hosting.test\n\
                   To: a@remote.test, b@remote.test\nSubject: x\n\nx\n";
    let ran = run_sendmail(forged(NOBODY), message.as_bytes()).await;
    assert_eq!(ran.code(), 75, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with(
            "sendmail: b@remote.test: 450 4.7.1 Recipient limit reached for user:nobody (1/1h)"
        ),
        "the refusal names the real user: {}",
        ran.stderr
    );
    let refused = mb.mb.logged("recipient refused");
    assert!(
        refused.contains("sender=user:nobody") && refused.contains("b@remote.test"),
        "{refused}"
    );
    assert!(
        !mb.mb.logs().contains("sender=user:root"),
        "{}",
        mb.mb.logs()
    );
    assert!(
        up.messages.lock().unwrap().is_empty(),
        "all or nothing: a@ was not sent alone"
    );
    // Another user sending the same has a limit of its own.
    let ran = run_sendmail(forged(DAEMON), "To: c@remote.test\n\nx\n".as_bytes()).await;
    assert_eq!((ran.code(), ran.stderr.as_str()), (0, ""));
    let sent = up.messages.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].rcpts, ["c@remote.test"]);
    assert_eq!(
        sent[0].from,
        format!("root@{}", mail_domain()),
        "-f is the envelope, not the identity"
    );
    mb.mb.wait_log("sender=user:daemon");
}

// === Where the road parts from Postfix's sendmail ===
// Each of these fails: a bug in src/sendmail, reported rather than fixed here.

/// Submits `input` as nobody with `args` through a fresh road; the one
/// message the upstream recorded, once the command said it was sent.
async fn sent_one(args: &[&str], input: &[u8]) -> common::upstream::Message {
    let (up, mb) = road(Opts::default(), UNLIMITED).await;
    let ran = run_sendmail(sendmail_as(NOBODY, &mb.socket, args), input).await;
    assert_eq!((ran.code(), ran.stderr.as_str()), (0, ""), "{args:?}");
    let sent = up.messages.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{args:?}");
    sent[0].clone()
}

/// Debian's cron mails a job's output to a bare login (`root`, or MAILTO);
/// Postfix qualifies it with `@$myorigin`. The command passes `root` as it
/// is, mailbrake refuses `RCPT TO:<root>` with 501, and the output is lost
/// (exit 67).
#[tokio::test(flavor = "multi_thread")]
async fn crons_mail_to_a_bare_login_is_delivered() {
    let args = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"];
    let m = sent_one(&args, CRON_MAIL.as_bytes()).await;
    assert_eq!(m.rcpts, [format!("root@{}", mail_domain())]);
}

/// Postfix's `-V` takes the next word as the DSN envelope id unless that
/// word has two characters (then it is the old VERP flag); the command
/// never takes it, so the envelope id becomes a recipient: refused (501),
/// and nothing is sent (exit 67).
#[tokio::test(flavor = "multi_thread")]
async fn dash_v_takes_its_envelope_id_as_postfix_does() {
    let input = format!("{HEAD}Subject: s\n\nhello\n");
    let m = sent_one(&["-V", "envid-0001", R], input.as_bytes()).await;
    assert_eq!(m.rcpts, [R]);
}

/// With the null sender and no From in the message, Postfix's cleanup adds
/// `From: MAILER-DAEMON` (and no full name); the command adds `From: NAME
/// <>`, or `From: ` without a full name: no mailbox at all, where RFC 5322
/// section 3.6.2 requires one.
#[tokio::test(flavor = "multi_thread")]
async fn the_null_sender_gets_a_from_with_a_mailbox() {
    let m = sent_one(&["-f", "<>", R], b"Subject: bounce\n\nundeliverable\n").await;
    assert_eq!(m.from, "");
    let content = String::from_utf8_lossy(&m.content()).into_owned();
    let from = content
        .lines()
        .find(|l| l.starts_with("From:"))
        .expect("a From added");
    let addr = from["From:".len()..].trim();
    assert!(
        !addr.is_empty() && !addr.ends_with("<>"),
        "the added From names no mailbox: {from:?}"
    );
}
