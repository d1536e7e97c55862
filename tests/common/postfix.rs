//! A private Postfix instance for the end-to-end tests: its own config,
//! queue, data and log directories under one temporary directory, listening
//! on 127.0.0.1 only and relaying nowhere (the remote transports are
//! `error:`). Each test adds its own main.cf and master.cf lines.
//!
//! Needs root (Postfix starts as root and drops to its `postfix` user) and
//! the Debian package postfix, which `.ci/run` installs. Without them the
//! test fails loudly; it is never skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::User;

/// Fails the test, saying why it could not run at all.
#[track_caller]
pub fn cannot_run(why: &str) -> ! {
    panic!("POSTFIX TEST CANNOT RUN: {why}")
}

/// Fails the test unless it runs as root, with every `(tool, Debian
/// package)` installed and every Unix user in `users` present.
pub fn require(tools: &[(&str, &str)], users: &[&str]) {
    if !nix::unistd::Uid::effective().is_root() {
        cannot_run(&format!(
            "it must run as root (Postfix starts as root), not uid {}",
            nix::unistd::Uid::effective()
        ));
    }
    for (tool, package) in tools {
        if !Path::new(tool).is_file() {
            cannot_run(&format!(
                "{tool} is missing (Debian package {package}; .ci/run installs it)"
            ));
        }
    }
    for user in users {
        if !matches!(nix::unistd::User::from_name(user), Ok(Some(_))) {
            cannot_run(&format!("no Unix user {user} (the packages create it)"));
        }
    }
}

/// Runs `program args`, panicking with its output unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| cannot_run(&format!("{program}: {e}")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// Polls `read` until it returns something (20 s at most): the MTA's logs,
/// queue and deliveries are written by other processes, in their own time.
pub fn eventually<T>(
    what: &str,
    mut read: impl FnMut() -> Option<T>,
    show: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = read() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what} within 20 s; got:\n{}", show());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemons every instance runs (master.cf lines), the mail system's
/// own plumbing; a test adds its listeners and delivery agents.
const SERVICES: [&str; 19] = [
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
];

/// A Postfix instance under one temporary directory: `conf/` (main.cf,
/// master.cf), `queue/`, `data/`, `log/postfix.log`. Dropping it stops
/// Postfix, also when the test failed halfway.
pub struct Postfix {
    dir: tempfile::TempDir,
    started: bool,
}

impl Postfix {
    /// Checks that the test can run (root, Postfix's tools, its users) and
    /// makes the directories; nothing is written or started yet.
    pub fn create() -> Postfix {
        require(
            &[
                ("/usr/sbin/postfix", "postfix"),
                ("/usr/sbin/postconf", "postfix"),
                ("/usr/sbin/postqueue", "postfix"),
            ],
            &["postfix", "nobody"],
        );
        let postfix = Postfix {
            dir: tempfile::tempdir().unwrap(),
            started: false,
        };
        for sub in ["conf", "queue", "data", "log"] {
            std::fs::create_dir_all(postfix.path(sub)).unwrap();
        }
        // Postfix's processes run as postfix and nobody: they must reach in.
        run("chmod", &["0755", postfix.dir().to_str().unwrap()]);
        run(
            "chown",
            &["postfix", postfix.path("data").to_str().unwrap()],
        );
        postfix
    }

    /// The temporary directory everything is under.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The config directory, for `postfix -c` and `postqueue -c`.
    pub fn conf(&self) -> String {
        self.path("conf").to_str().unwrap().to_owned()
    }

    /// Writes main.cf (the shared settings, then `main`) and master.cf (the
    /// shared daemons, then `master`), and runs `postfix check`, which also
    /// creates the queue directories.
    pub fn configure(&self, main: &str, master: &str) {
        let d = self.dir().to_str().unwrap();
        let shared = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file = {d}/log/postfix.log\n\
             maillog_file_prefixes = {d}/log\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.example.test\n\
             relayhost =\n\
             default_transport = error:never relays\n\
             relay_transport = error:never relays\n\
             alias_maps =\n\
             alias_database =\n\
             biff = no\n"
        );
        std::fs::write(self.path("conf/main.cf"), shared + main).unwrap();
        let mut services = SERVICES.join("\n");
        services.push('\n');
        std::fs::write(self.path("conf/master.cf"), services + master).unwrap();
        run("/usr/sbin/postfix", &["-c", &self.conf(), "check"]);
    }

    /// `postfix start`; panics with Postfix's log if it does not start.
    pub fn start(&mut self) {
        self.started = true;
        let out = Command::new("/usr/sbin/postfix")
            .args(["-c", &self.conf(), "start"])
            .output()
            .unwrap();
        if !out.status.success() {
            panic!("postfix did not start: {out:?}\nits log:\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log/postfix.log")).unwrap_or_default()
    }

    /// Postfix's log lines containing `needle`, once there are `n` of them.
    pub fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        eventually(
            &format!("{n} Postfix log lines with {needle:?}"),
            || {
                let lines: Vec<String> = self
                    .log()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect();
                (lines.len() >= n).then_some(lines)
            },
            || self.log(),
        )
    }

    /// `postfix stop`, waiting until the master has exited; once.
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.started) {
            return;
        }
        let master_pid = std::fs::read_to_string(self.path("queue/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let _ = Command::new("/usr/sbin/postfix")
            .args(["-c", &self.conf(), "stop"])
            .output();
        // Postfix's daemons exit after `stop` returns: wait for the
        // master, so that the directory is removed under no one.
        if let Some(pid) = master_pid {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who runs a command: a uid and gid, with no supplementary groups.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The login name Postfix matches (`unknown` without a passwd entry).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A Unix user made for this test with useradd and removed when dropped.
pub struct ThrowawayUser(pub Caller);

impl ThrowawayUser {
    /// `system`: a system account (uid below 1000) rather than an
    /// account-sized one like a Plesk or cPanel site's.
    pub fn add(tag: &str, system: bool) -> ThrowawayUser {
        let name = format!("mbsd{}{tag}", std::process::id());
        let mut args = vec![
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ];
        if system {
            args.push("--system");
        }
        args.push(&name);
        run("/usr/sbin/useradd", &args);
        let user = User::from_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("useradd made no {name}"));
        ThrowawayUser(Caller {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/userdel").arg(&self.0.name).status();
    }
}

/// The mount namespace that gives a command the test's config directory as
/// /etc/postfix; `$0` is that directory, the rest the command to run.
const WITH_TEST_CONFIG: &str = "mount --bind \"$0\" /etc/postfix && exec \"$@\"";

/// Runs `argv` as `caller`, with `stdin`, in a mount namespace where
/// /etc/postfix is `postfix`'s config directory, and with an environment
/// holding only PATH (no MAIL_CONFIG from the test's own).
pub fn submit(postfix: &Postfix, caller: &Caller, argv: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(WITH_TEST_CONFIG)
        .arg(postfix.conf())
        .arg("/usr/bin/setpriv")
        .arg(format!("--reuid={}", caller.uid))
        .arg(format!("--regid={}", caller.gid))
        .arg("--clear-groups")
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused command may exit without reading: fine, it fits the pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// Recipient → queue name of every message in Postfix's queue (`postqueue
/// -j`, run as root, who may name a config directory).
pub fn queue(postfix: &Postfix) -> BTreeMap<String, String> {
    let json = run("/usr/sbin/postqueue", &["-c", &postfix.conf(), "-j"]);
    let mut out = BTreeMap::new();
    // Warnings (a test's main.cf overriding a shared line) are not records.
    for line in json
        .lines()
        .filter(|l| !l.starts_with("postqueue: warning:"))
    {
        let message: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("postqueue -j printed {line:?}: {e}"));
        let name = message["queue_name"].as_str().unwrap().to_owned();
        for rcpt in message["recipients"].as_array().unwrap() {
            let address = rcpt["address"].as_str().unwrap().to_owned();
            out.insert(address, name.clone());
        }
    }
    out
}

/// The files in the maildrop directory, where postdrop writes.
pub fn maildrop(postfix: &Postfix) -> Vec<String> {
    std::fs::read_dir(postfix.path("queue/maildrop"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}
