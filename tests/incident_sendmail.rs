//! The story's night on the road most hosting spam takes: a compromised
//! site's PHP calls `mail()` 25,000 times through `mailbrake sendmail`
//! (unscaled: four PHP processes of 6,250 calls each, as a botnet's requests
//! would run side by side), while another site sends its ordinary mail. The
//! runaway delivers its 12, is locked, and every later call fails at once;
//! the other site notices nothing.
//!
//! Needs root (to become other users) and php-cli, which `.ci/run`
//! installs; without them it fails loudly.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Instant;

use common::local::*;
use common::netns::require_root_and;
use common::upstream::{Opts, Upstream};
use common::*;

const RUNAWAY_PROCESSES: usize = 4;
const RUNAWAY_CALLS: usize = 6_250;
const ORDINARY_CALLS: usize = 10;

/// PHP as `uid` calling mail() `n` times, recipient `TAG-i@remote.test`;
/// prints how many calls returned true and how many false.
fn php_loop(uid: u32, path: &str, tag: &str, n: usize) -> std::process::Child {
    let code = format!(
        "$ok = 0; $failed = 0; \
         for ($i = 1; $i <= {n}; $i++) {{ \
           if (mail(\"{tag}-$i@remote.test\", \"offer $i\", \"buy now\\n\", \"From: {tag}@hosting.test\")) {{ $ok++; }} else {{ $failed++; }} \
         }} \
         echo \"$ok $failed\";"
    );
    as_user(uid, "/usr/bin/php")
        .args(["-d", &format!("sendmail_path=\"{path}\""), "-r", &code])
        .stdout(std::process::Stdio::piped())
        // A refusal's line per failed call: not kept.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// (true, false) counts a `php_loop` printed.
fn counts(child: std::process::Child) -> (usize, usize) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "php failed: {text}");
    let mut words = text.split_whitespace().map(|w| w.parse::<usize>().unwrap());
    (words.next().unwrap(), words.next().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_mail_loop_delivers_its_limit_and_is_locked() {
    require_root_and("THE SENDMAIL INCIDENT", &["setpriv", "php"]);
    let up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    let mut mb = Mailbrake::start(&socket_config(
        run.path(),
        &socket,
        up.addr,
        "default = \"12/1h\"\nlock_after_refusals = 50\nlock_duration = \"24h\"",
        "",
    ));
    let path = sendmail_path(&socket, "-t -i");

    let started = Instant::now();
    let runaway: Vec<_> = (0..RUNAWAY_PROCESSES)
        .map(|p| php_loop(NOBODY, &path, &format!("spam{p}"), RUNAWAY_CALLS))
        .collect();
    // The other site sends while the runaway runs.
    mb.wait_log("sender=user:nobody");
    let ordinary = php_loop(DAEMON, &path, "shop", ORDINARY_CALLS);
    let (runaway, ordinary) = tokio::task::spawn_blocking(move || {
        let runaway: Vec<_> = runaway.into_iter().map(counts).collect();
        (runaway, counts(ordinary))
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();

    let sent: usize = runaway.iter().map(|(ok, _)| ok).sum();
    let failed: usize = runaway.iter().map(|(_, f)| f).sum();
    assert_eq!(sent + failed, RUNAWAY_PROCESSES * RUNAWAY_CALLS);
    assert_eq!(
        sent, 12,
        "the runaway delivers exactly its limit: {runaway:?}"
    );
    assert_eq!(ordinary, (ORDINARY_CALLS, 0), "the other site is untouched");

    let messages = up.messages.lock().unwrap().clone();
    let from = |login: &str| format!("{login}@{}", mail_domain());
    let spam = messages.iter().filter(|m| m.from == from("nobody")).count();
    let shop = messages.iter().filter(|m| m.from == from("daemon")).count();
    assert_eq!(spam, 12, "the MTA got 12 of the runaway's messages");
    assert_eq!(shop, ORDINARY_CALLS);
    assert_eq!(messages.len(), 12 + ORDINARY_CALLS);

    let locked = mb.logged("locked");
    assert!(locked.contains("user:nobody"), "{locked}");
    let admin = admin_addr(&mut mb);
    let token = common::admin::generated_token(&run.path().join("state"));
    let (rc, out, err) = common::admin::cli(admin, &token, &["sender", "show", "user:nobody"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("locked"), "{out}");
    eprintln!(
        "{} mail() calls in {elapsed:.1?} ({:.2} ms each)",
        RUNAWAY_PROCESSES * RUNAWAY_CALLS + ORDINARY_CALLS,
        elapsed.as_secs_f64() * 1000.0 / (RUNAWAY_PROCESSES * RUNAWAY_CALLS) as f64
    );
}
