//! The limits database on a full disk, for real: the state directory is a
//! small tmpfs that the test mounts and fills to the last page while
//! mailbrake runs. Writes fail and are counted, the changes stay in memory,
//! mail is deferred once too much is unsaved, and when space is back every
//! change is written: a restart finds every recipient.
//!
//! Needs root to mount (CI runs as root). Without it the tests fail loudly:
//! they never pass by skipping.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::upstream::{Opts, Upstream};
use common::*;

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "FULL-DISK TEST CANNOT RUN: it needs root to mount a tmpfs (CI runs as root). \
             This is a failure, not a skip."
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("FULL-DISK TEST CANNOT RUN: `mount` is missing (util-linux)");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a file until the file system has no page left.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let error = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(
            error.raw_os_error(),
            Some(nix::errno::Errno::ENOSPC as i32),
            "{error}"
        );
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a mailbrake still running must not keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// mailbrake under `12/1h` with its state on `disk`.
fn start(disk: &Tmpfs, up: &Upstream, state: &str) -> (Mailbrake, u16) {
    let port = free_port();
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n\
         [state]\ndir = {:?}\n{state}\n\
         [limits]\ndefault = \"12/1h\"\nlock_after_refusals = 0\nrotation = \"off\"\n\
         [protect]\nconnections_per_ip = \"off\"\n",
        disk.path()
    ) + &listener("l", port, "none", None, &up.addr.to_string(), "");
    let mut mb = Mailbrake::start(&cfg);
    mb.logged("limits restored");
    (mb, port)
}

/// One message to `n` recipients `TAG-i@remote.test`; the RCPT replies and
/// whether it was delivered.
async fn send(port: u16, tag: &str, n: usize) -> (Vec<String>, bool) {
    let (mut c, greeting) = Client::connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    expect(&greeting, "220");
    expect(&c.cmd("EHLO c").await.unwrap(), "250");
    let rcpts: Vec<String> = (1..=n).map(|i| format!("{tag}-{i}@remote.test")).collect();
    let t = c
        .transaction("site@example.com", &rcpts, "Subject: x\r\n\r\nhello")
        .await
        .unwrap();
    let _ = c.cmd("QUIT").await;
    (t.rcpts.clone(), t.delivered())
}

fn accepted(replies: &[String]) -> usize {
    replies.iter().filter(|r| r.starts_with("250")).count()
}

/// `mailbrake_state_write_errors_total` now.
async fn write_errors(admin: std::net::SocketAddr) -> f64 {
    samples(&scrape(admin).await)["mailbrake_state_write_errors_total"]
}

/// Stops mailbrake gracefully and starts it again on the same state.
fn restart(mb: &mut Mailbrake, disk: &Tmpfs, up: &Upstream) -> (Mailbrake, u16) {
    mb.signal("TERM");
    assert!(tokio::task::block_in_place(|| mb.wait_exit()).success());
    let (mut again, port) = start(disk, up, "");
    let restored = again.logged("limits restored");
    assert!(restored.contains("keys=1"), "{restored}");
    (again, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_writes_are_retried_until_space_returns_and_nothing_is_lost() {
    let disk = Tmpfs::mount("4m");
    let mut up = Upstream::start(Opts::default()).await;
    let (mut mb, port) = start(&disk, &up, "");
    let admin = admin_addr(&mut mb);
    assert_eq!(
        write_errors(admin).await,
        0.0,
        "exported at zero from start-up"
    );

    disk.fill();
    let (replies, delivered) = send(port, "full", 10).await;
    assert!(delivered && accepted(&replies) == 10, "{replies:#?}");
    assert_eq!(up.next_message().await.rcpts.len(), 10);
    let warning = tokio::task::block_in_place(|| mb.wait_log("cannot write the limits database"));
    assert!(
        warning.contains("WARN") && warning.contains("events=10") && warning.contains("full"),
        "{warning}"
    );
    // Retried every second, each failure counted; warned once for the streak.
    let deadline = Instant::now() + Duration::from_secs(20);
    while write_errors(admin).await < 3.0 {
        assert!(Instant::now() < deadline, "{}", mb.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warnings = mb
        .logs()
        .matches("cannot write the limits database")
        .count();
    assert_eq!(warnings, 1, "{}", mb.logs());

    disk.free();
    let saved = tokio::task::block_in_place(|| mb.wait_log("limits database written again"));
    assert!(saved.contains("events=10"), "{saved}");
    let errors = write_errors(admin).await;
    assert!(errors >= 3.0, "{errors}");

    // Every recipient sent on the full disk is in the window after a restart.
    let (_mb, port) = restart(&mut mb, &disk, &up);
    let (replies, delivered) = send(port, "after", 5).await;
    assert!(delivered && accepted(&replies) == 2, "{replies:#?}");
    for r in &replies[2..] {
        assert!(
            r.starts_with("450 4.7.1 Recipient limit reached for ") && r.contains(" (12/1h)"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_is_deferred_while_too_many_changes_are_unsaved() {
    let disk = Tmpfs::mount("4m");
    let mut up = Upstream::start(Opts::default()).await;
    let (mut mb, port) = start(&disk, &up, "max_unsaved_changes = 5");

    disk.fill();
    let (replies, delivered) = send(port, "full", 10).await;
    assert!(delivered && accepted(&replies) == 10, "{replies:#?}");
    assert_eq!(up.next_message().await.rcpts.len(), 10);
    let line = tokio::task::block_in_place(|| mb.wait_log("too many changes unsaved"));
    assert!(
        line.contains("unsaved=10") && line.contains("max_unsaved_changes=5"),
        "{line}"
    );

    // Not counted in a window a restart would lose: deferred, never relayed.
    let (replies, delivered) = send(port, "deferred", 2).await;
    assert!(!delivered, "{replies:#?}");
    for r in &replies {
        assert!(
            r.starts_with("451 4.3.0 Recipient limits cannot be saved right now; try again later"),
            "{r}"
        );
    }

    disk.free();
    tokio::task::block_in_place(|| mb.wait_log("limits saved: recipients accepted again"));
    let (replies, delivered) = send(port, "again", 1).await;
    assert!(delivered && accepted(&replies) == 1, "{replies:#?}");
    let msg = up.next_message().await;
    assert_eq!(
        msg.rcpts,
        ["again-1@remote.test"],
        "the deferred ones never reached it"
    );

    // 10 + 1 sent: one left after a restart.
    let (_mb, port) = restart(&mut mb, &disk, &up);
    let (replies, _) = send(port, "after", 3).await;
    assert_eq!(accepted(&replies), 1, "{replies:#?}");
}
