//! Postfix's own side door, closed: a site's script that calls Postfix's
//! `/usr/sbin/sendmail` or `/usr/sbin/postdrop` instead of `mailbrake
//! sendmail`, directly or through PHP's `mail()`, is refused and nothing
//! reaches the queue, while root's mail is still queued. The Postfix here
//! gets the shipped `config/postfix-main.cf` appended to its main.cf
//! verbatim, so this proves the snippet itself.
//!
//! The commands run as they do on a server: plain `/usr/sbin/sendmail`, no
//! `-C` and no MAIL_CONFIG, reading /etc/postfix/main.cf. Each one runs in a
//! mount namespace of its own (`unshare --mount`), where the test's config
//! directory is bind-mounted on /etc/postfix. The machine's /etc/postfix is
//! never changed, so there is nothing to restore, even after a crash. A
//! non-root caller cannot simply point at a private config directory:
//! postdrop is set-gid, and takes `-c` or MAIL_CONFIG from such a caller
//! only for a directory that the default main.cf lists in
//! `alternate_config_directories`. To check, it reads that main.cf, so on a
//! machine without one, postdrop (and `sendmail -C`) die with `open file
//! /etc/postfix/main.cf`: a refusal for the wrong reason. Listing the
//! directory there would mean editing the machine's main.cf.
//!
//! Nothing leaves the machine. No smtpd is configured, every transport is
//! `error:`, and `defer_transports = error` keeps root's mail in the
//! deferred queue, where the test finds it.
//!
//! Needs root, the Debian packages postfix, php-cli, util-linux (unshare,
//! setpriv) and passwd (useradd, which makes two throwaway users, removed at
//! the end). Without them the test fails loudly; it is never skipped.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use nix::unistd::{Uid, User};

use common::postfix::{
    Caller, Postfix, ThrowawayUser, cannot_run, eventually, maildrop, queue, require, submit,
};

/// The snippet operators append to /etc/postfix/main.cf.
const SNIPPET: &str = include_str!("../config/postfix-main.cf");

/// A uid with no passwd entry, which Postfix calls `unknown`.
fn unknown_caller() -> Caller {
    let uid = (4_000_000..)
        .find(|&u| matches!(User::from_uid(Uid::from_raw(u)), Ok(None)))
        .unwrap();
    Caller {
        name: "unknown".into(),
        uid,
        gid: uid,
    }
}

fn root() -> Caller {
    Caller {
        name: "root".into(),
        uid: 0,
        gid: 0,
    }
}

/// A message for `sendmail -t`, addressed to `to`.
fn message(to: &str) -> Vec<u8> {
    format!("From: site@example.test\nTo: {to}\nSubject: side door\n\nhello\n").into_bytes()
}

/// A message as Postfix's sendmail hands it to postdrop, so that a caller
/// can skip sendmail's own check. It is a run of typed records (Postfix's
/// rec_type.h): `S` sender, `R` recipient, `M` start of content, one `N`
/// per line, `X` start of the extracted segment, `E` end. Each record is
/// its type byte, its length in 7-bit groups (low group first, the high bit
/// set on all but the last), then its bytes.
fn postdrop_records(sender: &str, rcpt: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let lines = ["Subject: side door", "", "hello"];
    let records = [('S', sender), ('R', rcpt), ('M', "")]
        .into_iter()
        .chain(lines.map(|l| ('N', l)))
        .chain([('X', ""), ('E', "")]);
    for (kind, data) in records {
        out.push(kind as u8);
        let mut len = data.len();
        loop {
            let low = (len & 0x7f) as u8;
            len >>= 7;
            out.push(if len > 0 { low | 0x80 } else { low });
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(data.as_bytes());
    }
    out
}

/// `php -r` calling `mail()` to `to` with Postfix's sendmail as
/// sendmail_path, as a site's php.ini would have it without mailbrake.
fn php_mail(to: &str) -> Vec<String> {
    let code =
        format!("var_dump(mail({to:?}, \"side door\", \"hello\", \"From: site@example.test\"));");
    [
        "/usr/bin/php",
        "-d",
        "sendmail_path=/usr/sbin/sendmail -t -i",
        "-r",
        &code,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Asserts that `out`, from running `what` as `caller`, carries Postfix's
/// refusal on stderr and exit code `code` (PHP exits 0 whatever `mail()`
/// returns), and that nothing is in the maildrop or the queue.
#[track_caller]
fn refused(postfix: &Postfix, out: &Output, what: &str, caller: &Caller, code: i32) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!(
        "User {}({}) is not allowed to submit mail",
        caller.name, caller.uid
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what} as {caller:?}: {out:?}"
    );
    assert!(
        stderr.contains(&said),
        "{what} as {caller:?} should say {said:?}; stderr: {stderr}"
    );
    assert_eq!(
        maildrop(postfix),
        Vec::<String>::new(),
        "{what} as {caller:?}"
    );
    assert_eq!(queue(postfix), BTreeMap::new(), "{what} as {caller:?}");
}

#[test]
fn only_root_submits_through_postfixs_own_sendmail() {
    require(
        &[
            ("/usr/sbin/sendmail", "postfix"),
            ("/usr/sbin/postdrop", "postfix"),
            ("/usr/bin/php", "php-cli"),
            ("/usr/bin/unshare", "util-linux"),
            ("/usr/bin/setpriv", "util-linux"),
            ("/usr/sbin/useradd", "passwd"),
            ("/usr/sbin/userdel", "passwd"),
        ],
        &[],
    );
    if !std::path::Path::new("/etc/postfix").is_dir() {
        cannot_run("no /etc/postfix to mount the test's config on (Debian package postfix)");
    }
    let probe = Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .unwrap();
    if !probe.status.success() {
        cannot_run(&format!(
            "no mount namespace (unshare --mount needs CAP_SYS_ADMIN): {probe:?}"
        ));
    }

    let mut postfix = Postfix::create();
    postfix.configure(
        &format!(
            "mydestination =\n\
             local_transport = error:never delivers\n\
             defer_transports = error\n\
             # config/postfix-main.cf, verbatim:\n{SNIPPET}"
        ),
        "",
    );
    postfix.start();

    let site = ThrowawayUser::add("web", false);
    let daemon = ThrowawayUser::add("sys", true);
    assert!(site.0.uid >= 1000, "a site account: {:?}", site.0);
    assert!(daemon.0.uid < 1000, "a system account: {:?}", daemon.0);
    let refused_callers = [site.0.clone(), daemon.0.clone(), unknown_caller()];

    // Postfix's sendmail, postdrop fed what sendmail would feed it, and
    // PHP's mail(): each refused, for every user the snippet does not name.
    for caller in &refused_callers {
        let tag = &caller.name;
        let out = submit(
            &postfix,
            caller,
            &["/usr/sbin/sendmail", "-t", "-i"],
            &message(&format!("{tag}-sendmail@example.net")),
        );
        refused(&postfix, &out, "sendmail -t -i", caller, 75);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("sendmail: fatal: User"),
            "sendmail itself refuses: {out:?}"
        );

        let records = postdrop_records("site@example.test", &format!("{tag}-postdrop@example.net"));
        let out = submit(&postfix, caller, &["/usr/sbin/postdrop"], &records);
        refused(&postfix, &out, "postdrop", caller, 1);

        let php = php_mail(&format!("{tag}-php@example.net"));
        let php: Vec<&str> = php.iter().map(String::as_str).collect();
        let out = submit(&postfix, caller, &php, b"");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "bool(false)",
            "PHP's mail() as {caller:?}: {out:?}"
        );
        refused(&postfix, &out, "PHP's mail()", caller, 0);
    }
    // Postfix's log has postdrop's refusals only. With maillog_file, as
    // here, sendmail (not set-gid) cannot reach postlogd's socket, and its
    // refusals reach no one but the caller. (With syslog, Debian's default,
    // sendmail logs them too; that is not tested here.)
    let logged = postfix.wait_log("is not allowed to submit mail", refused_callers.len());
    assert_eq!(logged.len(), refused_callers.len(), "{logged:?}");
    for (line, caller) in logged.iter().zip(&refused_callers) {
        assert!(
            line.contains("postfix/postdrop[")
                && line.contains(&format!("User {}({})", caller.name, caller.uid)),
            "{logged:?}"
        );
    }

    // Root, the same three ways: queued, and deferred (the error transport
    // is deferred), so the mail stays here.
    let root = root();
    let out = submit(
        &postfix,
        &root,
        &["/usr/sbin/sendmail", "-t", "-i"],
        &message("root-sendmail@example.net"),
    );
    assert!(out.status.success(), "root's sendmail: {out:?}");
    // Records built like the refused ones are a good submission: those
    // refusals were not about the format.
    let records = postdrop_records("root@example.test", "root-postdrop@example.net");
    let out = submit(&postfix, &root, &["/usr/sbin/postdrop"], &records);
    assert!(out.status.success(), "root's postdrop: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("queue_id"),
        "postdrop names the queue file: {out:?}"
    );
    let php = php_mail("root-php@example.net");
    let php: Vec<&str> = php.iter().map(String::as_str).collect();
    let out = submit(&postfix, &root, &php, b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bool(true)",
        "PHP's mail() as root: {out:?}"
    );

    let expected: BTreeMap<String, String> = ["sendmail", "postdrop", "php"]
        .iter()
        .map(|how| (format!("root-{how}@example.net"), "deferred".to_owned()))
        .collect();
    eventually(
        "root's three messages deferred in the queue, and nothing else",
        || (queue(&postfix) == expected).then_some(()),
        || format!("{:?}\n{}", queue(&postfix), postfix.log()),
    );
    assert_eq!(maildrop(&postfix), Vec::<String>::new());
    // pickup took mail from root alone.
    let picked = postfix.wait_log("postfix/pickup", 3);
    assert!(
        picked.iter().all(|l| l.contains(": uid=0 from=<")),
        "{picked:?}"
    );
    assert_eq!(picked.len(), 3, "{picked:?}");
}
