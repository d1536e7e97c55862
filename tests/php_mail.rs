//! PHP on a hosting server, through `mailbrake sendmail` and the Unix
//! socket: Debian's php-cli calling `mail()`, and Debian's PHPMailer in its
//! "mail" and "sendmail" modes, each site a Unix user of its own (setpriv).
//! Each user has its own exact limit, `mail()` returns false past it, the
//! message the MTA receives is what PHP wrote plus what a sendmail adds, and
//! no Bcc reaches it.
//!
//! Needs root (to become other users) and the Debian packages php-cli and
//! libphp-phpmailer, which `.ci/run` installs. Without them the test fails
//! loudly: it never passes by skipping.

mod common;

use std::path::Path;

use common::local::*;
use common::netns::require_root_and;
use common::upstream::{Opts, Upstream};
use common::*;

const PHPMAILER: &str = "/usr/share/php/libphp-phpmailer/autoload.php";

fn require_php() {
    require_root_and("PHP MAIL()", &["setpriv", "php"]);
    assert!(
        Path::new(PHPMAILER).exists(),
        "PHP MAIL() TEST CANNOT RUN: {PHPMAILER} is missing (Debian package libphp-phpmailer; \
         .ci/run installs it). This is a failure, not a skip."
    );
}

/// Runs PHP `code` as `uid` with `sendmail_path`; its standard output. Its
/// standard error (where the sendmail command's refusals go) is shown.
fn php_as(uid: u32, sendmail_path: &str, code: &str) -> String {
    let out = as_user(uid, "/usr/bin/php")
        .args([
            "-d",
            &format!("sendmail_path=\"{sendmail_path}\""),
            "-r",
            code,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "php as uid {uid} failed: {stdout}{stderr}"
    );
    if !stderr.is_empty() {
        eprintln!("php as uid {uid}, stderr: {stderr}");
    }
    stdout
}

/// The header lines of `message` that start with `name:` (any case).
fn header<'a>(message: &'a [u8], name: &str) -> Vec<&'a str> {
    let text = std::str::from_utf8(message).unwrap_or("");
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter(|l| {
            l.len() > name.len()
                && l.as_bytes()[name.len()] == b':'
                && l[..name.len()].eq_ignore_ascii_case(name)
        })
        .collect()
}

/// `message` without its header lines named in `names`.
fn without(message: &[u8], names: &[&str]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let kept: Vec<&str> = head
        .split("\r\n")
        .filter(|l| {
            !names.iter().any(|n| {
                l.len() > n.len()
                    && l.as_bytes()[n.len()] == b':'
                    && l[..n.len()].eq_ignore_ascii_case(n)
            })
        })
        .collect();
    format!("{}\r\n\r\n{body}", kept.join("\r\n")).into_bytes()
}

struct Site {
    _run: tempfile::TempDir,
    socket: std::path::PathBuf,
    up: Upstream,
    mb: Mailbrake,
}

async fn site(limits: &str) -> Site {
    let up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    let mb = Mailbrake::start(&socket_config(run.path(), &socket, up.addr, limits, ""));
    Site {
        _run: run,
        socket,
        up,
        mb,
    }
}

/// Calls mail() `n` times as `uid`, one recipient `TAG-i@remote.test`
/// each; what each call returned, e.g. "TTTFF".
fn mails(uid: u32, socket: &Path, tag: &str, n: usize) -> String {
    let code = format!(
        "for ($i = 1; $i <= {n}; $i++) {{ \
           echo mail(\"{tag}-$i@remote.test\", \"note $i\", \"hello $i\\n\", \"From: {tag}@hosting.test\") ? 'T' : 'F'; \
         }}"
    );
    php_as(uid, &sendmail_path(socket, "-t -i"), &code)
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_returns_false_past_each_users_own_limit() {
    require_php();
    let mut s = site("default = \"3/1h\"\nlock_after_refusals = 0").await;
    let socket = s.socket.clone();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            mails(NOBODY, &socket, "a", 5),
            mails(DAEMON, &socket, "b", 3),
        )
    })
    .await
    .unwrap();
    assert_eq!(a, "TTTFF", "nobody: three, then mail() fails");
    assert_eq!(b, "TTT", "daemon has a limit of its own");
    let mut delivered = Vec::new();
    for _ in 0..6 {
        delivered.extend(s.up.next_message().await.rcpts);
    }
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "a-1@remote.test",
            "a-2@remote.test",
            "a-3@remote.test",
            "b-1@remote.test",
            "b-2@remote.test",
            "b-3@remote.test"
        ]
    );
    let refused = s.mb.logged("recipient refused");
    assert!(
        refused.contains("sender=user:nobody") && refused.contains("a-4@remote.test"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_message_is_what_php_wrote_plus_what_a_sendmail_adds() {
    require_php();
    let mut s = site("default = \"unlimited\"").await;
    let dir = tempfile::tempdir().unwrap();
    let written = open_run_dir(dir.path()).join("php.out");
    std::fs::write(&written, b"").unwrap();
    std::os::unix::fs::chown(&written, Some(NOBODY), Some(NOBODY)).unwrap();
    // What PHP writes, kept by tee on its way to mailbrake sendmail.
    let path = format!(
        "tee {} | {}",
        written.display(),
        sendmail_path(&s.socket, "-t -i")
    );
    let long = "x".repeat(1500);
    let code = format!(
        "var_dump(mail('to@remote.test, Other <other@remote.test>', 'Caf\\xc3\\xa9 menu', \
         \"line one\\n.\\n..two dots\\n.lead\\nn\\xc3\\xa4\\xc3\\xafve 8-bit\\n{long}\\nlast\\n\", \
         \"From: Site <site@hosting.test>\\r\\nCc: cc@remote.test\\r\\nBcc: hidden@remote.test\\r\\nMIME-Version: 1.0\"));"
    );
    let out = tokio::task::spawn_blocking(move || php_as(NOBODY, &path, &code))
        .await
        .unwrap();
    assert_eq!(out.trim(), "bool(true)");
    let m = s.up.next_message().await;
    assert_eq!(m.from, format!("nobody@{}", mail_domain()));
    assert_eq!(
        m.rcpts,
        [
            "to@remote.test",
            "other@remote.test",
            "cc@remote.test",
            "hidden@remote.test"
        ]
    );
    let php = std::fs::read(&written).unwrap();
    assert!(!header(&crlf(&php), "Bcc").is_empty(), "PHP wrote a Bcc");
    let got = m.content();
    assert!(header(&got, "Bcc").is_empty(), "no Bcc reaches the MTA");
    // What a sendmail adds when PHP did not write them.
    assert_eq!(
        header(&got, "Date").len(),
        1,
        "{}",
        String::from_utf8_lossy(&got)
    );
    let id = header(&got, "Message-ID");
    assert_eq!(id.len(), 1);
    assert!(id[0].contains('@') && id[0].contains('<'), "{id:?}");
    assert_eq!(
        String::from_utf8_lossy(&without(&got, &["Date", "Message-ID"])),
        String::from_utf8_lossy(&without(&crlf(&php), &["Bcc"])),
        "the message is PHP's, line ends made CRLF"
    );
    // Dot-stuffed on the wire, and the lone dot kept (-i).
    let wire = String::from_utf8_lossy(&m.wire);
    assert!(
        wire.contains("\r\n..\r\n...two dots\r\n..lead\r\n"),
        "{wire}"
    );
}

/// PHPMailer sending as `uid` in `mode` ("isMail" or "isSendmail"): one
/// message to `to` and, blind, `bcc`; what send() returned and its error.
fn phpmailer(uid: u32, socket: &Path, mode: &str, to: &str, bcc: &str) -> String {
    let code = format!(
        "require '{PHPMAILER}'; \
         $m = new PHPMailer\\PHPMailer\\PHPMailer(); $m->{mode}(); \
         $m->setFrom('shop@hosting.test', 'The Shop'); $m->addAddress('{to}'); $m->addBCC('{bcc}'); \
         $m->Subject = 'Order {to}'; $m->Body = \"Thanks.\\n.\\nBye.\\n\"; \
         echo $m->send() ? 'sent' : 'failed: ' . $m->ErrorInfo;"
    );
    php_as(uid, &sendmail_path(socket, "-t -i"), &code)
}

#[tokio::test(flavor = "multi_thread")]
async fn phpmailer_in_mail_and_sendmail_modes_as_two_users() {
    require_php();
    let mut s = site("default = \"3/1h\"\nlock_after_refusals = 0").await;
    for (uid, mode, user) in [
        (NOBODY, "isMail", "nobody"),
        (DAEMON, "isSendmail", "daemon"),
    ] {
        let socket = s.socket.clone();
        let (first, second) = tokio::task::spawn_blocking(move || {
            (
                phpmailer(uid, &socket, mode, "c1@remote.test", "b1@remote.test"),
                phpmailer(uid, &socket, mode, "c2@remote.test", "b2@remote.test"),
            )
        })
        .await
        .unwrap();
        assert_eq!(first, "sent", "{mode} as {user}");
        // Two more recipients would be four of three: the whole message is
        // refused, none of it delivered.
        assert!(second.starts_with("failed: "), "{mode}: {second}");
        let m = s.up.next_message().await;
        assert_eq!(
            m.from, "shop@hosting.test",
            "{mode}: -f from PHPMailer's Sender"
        );
        assert_eq!(m.rcpts, ["c1@remote.test", "b1@remote.test"], "{mode}");
        let got = m.content();
        assert!(
            header(&got, "Bcc").is_empty(),
            "{mode}: no Bcc reaches the MTA"
        );
        assert_eq!(header(&got, "To"), ["To: c1@remote.test"], "{mode}");
        assert!(
            String::from_utf8_lossy(&got).contains("\r\n\r\nThanks.\r\n.\r\nBye.\r\n"),
            "{mode}: {}",
            String::from_utf8_lossy(&got)
        );
        let refused = s.mb.wait_log("recipient refused");
        assert!(
            refused.contains(&format!("sender=user:{user}")) && refused.contains("b2@remote.test"),
            "{mode}: {refused}"
        );
    }
}
