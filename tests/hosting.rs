//! The README's hosting steps, end to end, with what it ships: mailbrake
//! running `config/transparent.toml` (its sendmail socket listener relaying
//! to a real Debian Postfix smtpd), PHP's `mail()` with the `sendmail_path`
//! of `config/php/mailbrake.ini`, and Postfix with `config/postfix-main.cf`
//! appended. Two site users: the runaway gets the example's 30 an hour and
//! then `mail()` is false, the other site's mail is queued by Postfix, and
//! the runaway calling Postfix's own sendmail is refused.
//!
//! Needs root, the Debian packages postfix, php-cli, util-linux and passwd
//! (two throwaway users, removed at the end). Without them the test fails
//! loudly; it is never skipped.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::local::{as_user, open_run_dir};
use common::netns::shipped_transparent;
use common::postfix::{Caller, Postfix, ThrowawayUser, eventually, queue, require, submit};
use common::*;

const SNIPPET: &str = include_str!("../config/postfix-main.cf");
const PHP_INI: &str = include_str!("../config/php/mailbrake.ini");
const FPM_POOL: &str = include_str!("../config/php/fpm-pool.conf");
/// Where the README installs the binary.
const SHIPPED_BIN: &str = "/usr/local/bin/mailbrake";
/// The example's limit: `default = ["30/1h", "200/24h"]`.
const EXAMPLE_LIMIT: usize = 30;

/// The value of the `sendmail_path` line in `text`, with its quotes.
fn sendmail_path_in(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line"));
    let value = line[key.len()..]
        .trim_start()
        .trim_start_matches('=')
        .trim();
    value.trim_matches('"').to_owned()
}

/// `config/transparent.toml` as shipped, with the state and the socket in
/// `state`, the sendmail listener's MTA at `mta`, and the TCP listeners and
/// the admin endpoint on ports of the kernel's choosing (tests run side by
/// side on this host's loopback).
fn example_config(state: &Path, mta: u16) -> String {
    let mut text = shipped_transparent(state, "");
    for (from, to) in [
        (
            "upstream = \"127.0.0.1:25\"",
            format!("upstream = \"127.0.0.1:{mta}\""),
        ),
        (
            "bind = \"127.0.0.1:9725\"",
            "bind = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "bind = \"127.0.0.1:10025\"",
            "bind = \"127.0.0.1:0\"".to_owned(),
        ),
        ("bind = \"[::1]:10025\"", "bind = \"[::1]:0\"".to_owned()),
        (
            "bind = \"127.0.0.1:10587\"",
            "bind = \"127.0.0.1:0\"".to_owned(),
        ),
        ("bind = \"[::1]:10587\"", "bind = \"[::1]:0\"".to_owned()),
    ] {
        assert_eq!(
            text.matches(from).count(),
            1,
            "config/transparent.toml: one {from}"
        );
        text = text.replace(from, &to);
    }
    text
}

/// PHP as `caller` calling mail() `n` times to `TAG-i@example.net` with
/// the shipped sendmail_path; what each call returned, e.g. "TTF".
fn php_mails(caller: &Caller, sendmail_path: &str, socket: &Path, tag: &str, n: usize) -> String {
    let code = format!(
        "for ($i = 1; $i <= {n}; $i++) {{ \
           echo mail(\"{tag}-$i@example.net\", \"t$i\", \"x\\n\", \"From: {tag}@hosting.test\") ? 'T' : 'F'; \
         }}"
    );
    let out = as_user(caller.uid, "/usr/bin/php")
        .args([
            "-d",
            &format!("sendmail_path=\"{sendmail_path}\""),
            "-r",
            &code,
        ])
        // The socket where the test's mailbrake listens; the shipped line
        // names none, so the command takes it from here.
        .env("MAILBRAKE_SUBMIT_SOCKET", socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "php as {caller:?}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        eprintln!("php as {}: {stderr}", caller.name);
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_hosting_steps_stop_a_runaway_site_and_close_the_side_door() {
    require(
        &[
            ("/usr/sbin/sendmail", "postfix"),
            ("/usr/bin/php", "php-cli"),
            ("/usr/bin/unshare", "util-linux"),
            ("/usr/bin/setpriv", "util-linux"),
            ("/usr/sbin/useradd", "passwd"),
        ],
        &[],
    );
    // The shipped PHP line, for php.ini and for PHP-FPM pools alike.
    let shipped = sendmail_path_in(PHP_INI, "sendmail_path");
    assert_eq!(
        sendmail_path_in(FPM_POOL, "php_admin_value[sendmail_path]"),
        shipped
    );
    assert!(shipped.starts_with(SHIPPED_BIN), "{shipped}");
    let sendmail_path = shipped.replacen(SHIPPED_BIN, env!("CARGO_BIN_EXE_mailbrake"), 1);

    let mut postfix = Postfix::create();
    let mta = free_port();
    postfix.configure(
        &format!(
            "mydestination =\n\
             local_transport = error:never delivers\n\
             # Remote mail is queued and held: smtp is never attempted.\n\
             default_transport = smtp\n\
             defer_transports = smtp\n\
             mynetworks = 127.0.0.0/8\n\
             # config/postfix-main.cf, verbatim:\n{SNIPPET}"
        ),
        &format!("127.0.0.1:{mta} inet n - n - - smtpd\n"),
    );
    postfix.start();

    let dir = tempfile::tempdir().unwrap();
    let state = open_run_dir(dir.path());
    let socket = state.join("submit.sock");
    let _mb = Mailbrake::start(&example_config(&state, mta));

    let runaway = ThrowawayUser::add("run", false);
    let other = ThrowawayUser::add("oth", false);
    let (r, o) = (runaway.0.clone(), other.0.clone());
    let (path, sock) = (sendmail_path.clone(), socket.clone());
    let (runaway_calls, other_calls) = tokio::task::spawn_blocking(move || {
        (
            php_mails(&r, &path, &sock, "run", EXAMPLE_LIMIT + 3),
            php_mails(&o, &path, &sock, "oth", 2),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        runaway_calls,
        "T".repeat(EXAMPLE_LIMIT) + "FFF",
        "the runaway: its limit, then mail() is false"
    );
    assert_eq!(other_calls, "TT", "the other site's mail flows");

    // Postfix queued exactly those (held: nothing leaves this machine).
    let mut expected: Vec<String> = (1..=EXAMPLE_LIMIT)
        .map(|i| format!("run-{i}@example.net"))
        .collect();
    expected.extend([
        "oth-1@example.net".to_owned(),
        "oth-2@example.net".to_owned(),
    ]);
    expected.sort();
    let queued = eventually(
        "Postfix's queue to hold the runaway's 30 and the other site's 2",
        || {
            let q: Vec<String> = queue(&postfix).into_keys().collect();
            (q.len() >= expected.len()).then_some(q)
        },
        || postfix.log(),
    );
    assert_eq!(queued, expected);

    // The side door: the runaway calling Postfix's own sendmail.
    let out = submit(
        &postfix,
        &runaway.0,
        &["/usr/sbin/sendmail", "-t", "-i"],
        b"From: run@hosting.test\nTo: door@example.net\nSubject: side door\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not allowed to submit mail"),
        "{out:?}"
    );
    assert!(!queue(&postfix).contains_key("door@example.net"));
}
