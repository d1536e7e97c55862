//! End to end with real peers on loopback: Postfix's `smtp-sink` as the
//! upstream, `swaks` and python's `smtplib` as clients, a mailbrake process in
//! between.
//!
//! The tools come from Debian packages (postfix, swaks, python3) that `.ci/run`
//! installs. A missing tool fails the test loudly; it is never skipped.
//!
//! What smtp-sink stores (`-d TEMPLATE`, one file per transaction, see
//! `man smtp-sink` and `data_read()` in Postfix's `smtp-sink.c`): the lines
//! `X-Client-Addr:`, `X-Client-Proto:`, `X-Helo-Args:` (if any), `X-Mail-Args:`,
//! one `X-Rcpt-Args:` per RCPT, a three-line `Received:` header, then the
//! message as received with every `\r` dropped and the first `.` of each line
//! that follows a CRLF dropped (dot-stuffing undone), then the `\n` of the
//! terminating `.\r\n`. The file is closed before the `250` to the final dot
//! goes out, so once a client has its `250`, the dump is complete.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::upstream::{Opts, Upstream};
use common::*;

/// A message with headers, 8-bit bytes, lines that need dot-stuffing (a lone
/// `.` among them) and SMTP commands in the body; no final CRLF, so the
/// clients (swaks, smtplib) each add exactly one.
const BODY: &[u8] = b"From: Alice <a@example.com>\r\n\
Subject: peers\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Line one\r\n\
.leading dot\r\n\
..two dots\r\n\
.\r\n\
...\r\n\
. space after a dot\r\n\
8-bit: caf\xc3\xa9 \xe2\x98\x83 \xff\xfe\x80\r\n\
MAIL FROM:<spoof@bank.example>\r\n\
\r\n\
last line, no newline";

/// The message content the server receives for `BODY` (dot-stuffing undone).
fn content() -> Vec<u8> {
    [BODY, b"\r\n"].concat()
}

/// `content` as smtp-sink writes it to its dump file (see the module doc).
fn as_sink_stores(content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = content.iter().copied().filter(|&b| b != b'\r').collect();
    out.push(b'\n');
    out
}

// === Tools ===

/// The path of `tool`, or a panic naming the Debian package that provides it.
fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed (Debian package `{package}`); the real-peer tests need it. \
                 .ci/run installs it"
            )
        })
}

fn swaks() -> Command {
    let mut cmd = Command::new(require("swaks", "swaks"));
    cmd.args(["--timeout", "20"]);
    cmd
}

fn python() -> Command {
    Command::new(require("python3", "python3"))
}

/// Runs `cmd` to completion (at most 60 s; killed by pid and the test failed
/// after that) and returns its output.
fn run(mut cmd: Command, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within 60 s (pid {pid} killed)");
        }
    }
}

/// `run` on a blocking thread, for async tests.
async fn run_blocking(cmd: Command, what: &'static str) -> Output {
    tokio::task::spawn_blocking(move || run(cmd, what))
        .await
        .unwrap()
}

/// Both output streams, for failure messages.
fn transcript(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether swaks's transcript shows a server reply starting with `code`
/// (swaks marks replies `<-`, `<~` under TLS, and adds `*` to failures).
fn replied(transcript: &str, code: &str) -> bool {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix('<'))
        .any(|l| l.trim_start_matches(['-', '~', '*', ' ']).starts_with(code))
}

fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    // Real, effective, saved, filesystem: smtp-sink checks the effective one.
    uid.split_whitespace().nth(1) == Some("0")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// === smtp-sink ===

/// Postfix's smtp-sink on a free loopback port, dumping every transaction to
/// its own file; killed on drop.
struct SmtpSink {
    child: Child,
    port: u16,
    dumps: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One transaction as smtp-sink dumped it.
#[derive(Debug)]
struct Dump {
    helo_args: Option<String>,
    mail_args: String,
    rcpt_args: Vec<String>,
    /// The message, in smtp-sink's form (see `as_sink_stores`).
    message: Vec<u8>,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let bin = require("smtp-sink", "postfix");
        let dir = tempfile::tempdir().unwrap();
        // As root, smtp-sink must drop privileges (-u); the dump directory
        // must then be reachable and writable by that user.
        let dumps = dir.path().join("dumps");
        std::fs::create_dir(&dumps).unwrap();
        chmod(dir.path(), 0o755);
        chmod(&dumps, 0o777);
        let log = dir.path().join("smtp-sink.log");
        let port = free_port();
        let mut cmd = Command::new(bin);
        if running_as_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(dumps.join("msg."))
            .args(["-h", "sink.test", &format!("127.0.0.1:{port}"), "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let child = cmd.spawn().expect("cannot start smtp-sink");
        let mut sink = SmtpSink {
            child,
            port,
            dumps,
            log,
            _dir: dir,
        };
        sink.wait_listening();
        sink
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connects until smtp-sink greets (bounded attempts), failing early if it exited.
    fn wait_listening(&mut self) {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "smtp-sink exited ({status}) before listening:\n{}",
                    self.log_text()
                );
            }
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut greeting = String::new();
                BufReader::new(&s).read_line(&mut greeting).unwrap();
                assert!(
                    greeting.starts_with("220 sink.test"),
                    "not smtp-sink on {}: {greeting:?}",
                    self.port
                );
                let _ = (&s).write_all(b"QUIT\r\n");
                return;
            }
            // A refused connect returns at once: pace the attempts.
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "smtp-sink not listening on {} after 500 attempts:\n{}",
            self.port,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The one transaction with a recipient `<rcpt>`, polling (up to 20 s) for its dump file.
    fn dump_for(&self, rcpt: &str) -> Dump {
        let needle = format!("\nX-Rcpt-Args: <{rcpt}>");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Vec<u8>> = std::fs::read_dir(&self.dumps)
                .unwrap()
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .filter(|d| String::from_utf8_lossy(d).contains(&needle))
                .collect();
            match found.as_slice() {
                [one] => return parse_dump(one),
                [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                [] => panic!(
                    "no smtp-sink dump for <{rcpt}> within 20 s; log:\n{}",
                    self.log_text()
                ),
                many => panic!("{} smtp-sink dumps for <{rcpt}>, expected one", many.len()),
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_dump(bytes: &[u8]) -> Dump {
    let mut dump = Dump {
        helo_args: None,
        mail_args: String::new(),
        rcpt_args: Vec::new(),
        message: Vec::new(),
    };
    let mut rest = bytes;
    let mut next_line = || {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("dump ends inside its headers");
        let line = String::from_utf8_lossy(&rest[..nl]).into_owned();
        rest = &rest[nl + 1..];
        line
    };
    loop {
        let line = next_line();
        if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            dump.helo_args = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            dump.mail_args = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            dump.rcpt_args.push(v.to_string());
        } else if line.starts_with("Received: ") {
            let by = next_line();
            assert!(by.starts_with("\tby sink.test (smtp-sink) with "), "{by:?}");
            next_line(); // the date
            break;
        } else {
            assert!(
                line.starts_with("X-Client-"),
                "unexpected dump header {line:?}"
            );
        }
    }
    dump.message = rest.to_vec();
    dump
}

// === mailbrake in front ===

struct Ports {
    plain: u16,
    starttls: u16,
    implicit: u16,
}

/// mailbrake with a plaintext, a STARTTLS and an implicit-TLS listener, all
/// relaying to `upstream`.
fn mailbrake(certs: &Certs, upstream: &str) -> (Mailbrake, Ports, tempfile::TempDir) {
    let ports = Ports {
        plain: free_port(),
        starttls: free_port(),
        implicit: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path())
        + &listener("plain", ports.plain, "none", None, upstream, "")
        + &listener(
            "starttls",
            ports.starttls,
            "starttls",
            Some(certs),
            upstream,
            "",
        )
        + &listener(
            "implicit",
            ports.implicit,
            "implicit",
            Some(certs),
            upstream,
            "",
        );
    (Mailbrake::start(&cfg), ports, dir)
}

fn body_file(dir: &Path) -> PathBuf {
    let path = dir.join("body.eml");
    std::fs::write(&path, BODY).unwrap();
    path
}

// === The tests ===

#[test]
fn swaks_through_mailbrake_to_smtp_sink_is_byte_exact() {
    let sink = SmtpSink::start();
    let certs = certs();
    let (mb, ports, dir) = mailbrake(&certs, &sink.addr());
    let body = body_file(dir.path());
    let cases: [(&str, u16, &[&str]); 5] = [
        ("plain", ports.plain, &[]),
        ("starttls", ports.starttls, &["--tls"]),
        ("implicit", ports.implicit, &["--tlsc"]),
        ("pipeline", ports.plain, &["--pipeline"]),
        (
            "pipeline-starttls",
            ports.starttls,
            &["--tls", "--pipeline"],
        ),
    ];
    for (case, port, flags) in cases {
        let rcpt = format!("{case}@example.net");
        let mut cmd = swaks();
        cmd.args(["--server", &format!("127.0.0.1:{port}")])
            .args([
                "--from",
                "a@example.com",
                "--to",
                &rcpt,
                "--helo",
                &format!("swaks-{case}"),
            ])
            .args(flags)
            .arg("--data")
            .arg(format!("@{}", body.display()));
        let out = run(cmd, "swaks");
        assert!(
            out.status.success(),
            "{case}: swaks failed\n{}\nmailbrake log:\n{}",
            transcript(&out),
            mb.logs()
        );
        if flags.contains(&"--tls") || flags.contains(&"--tlsc") {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("=== TLS started"), "{case}: no TLS\n{said}");
        }
        let dump = sink.dump_for(&rcpt);
        // mailbrake relays the client's EHLO name.
        assert_eq!(
            dump.helo_args.as_deref(),
            Some(format!("swaks-{case}").as_str()),
            "{case}"
        );
        assert_eq!(dump.rcpt_args, [format!("<{rcpt}>")], "{case}");
        assert!(
            dump.mail_args.starts_with("<a@example.com>"),
            "{case}: {:?}",
            dump.mail_args
        );
        assert_eq!(
            String::from_utf8_lossy(&dump.message),
            String::from_utf8_lossy(&as_sink_stores(&content())),
            "{case}: the message smtp-sink stored differs"
        );
        assert_eq!(
            dump.message,
            as_sink_stores(&content()),
            "{case}: bytes differ"
        );
    }
}

/// Sends `BODY` with smtplib: argv = port, "plain" | "starttls", body file, recipients...
const SMTPLIB: &str = r#"
import smtplib, ssl, sys
port, mode, path, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
body = open(path, "rb").read()
with smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20) as s:
    s.ehlo()
    if mode == "starttls":
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo()
    refused = s.sendmail("a@example.com", rcpts, body, mail_options=["BODY=8BITMIME"])
    if refused:
        sys.exit("refused: %r" % refused)
print("sent")
"#;

fn smtplib(port: u16, mode: &str, body: &Path, rcpts: &[&str]) -> Command {
    let mut cmd = python();
    cmd.args(["-c", SMTPLIB, &port.to_string(), mode])
        .arg(body)
        .args(rcpts);
    cmd
}

#[test]
fn smtplib_several_recipients_through_mailbrake_to_smtp_sink() {
    let sink = SmtpSink::start();
    let certs = certs();
    let (mb, ports, dir) = mailbrake(&certs, &sink.addr());
    let body = body_file(dir.path());
    for (mode, port) in [("plain", ports.plain), ("starttls", ports.starttls)] {
        let rcpts = [
            format!("b-{mode}@example.net"),
            format!("c-{mode}@example.net"),
            format!("d-{mode}@example.org"),
        ];
        let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let out = run(smtplib(port, mode, &body, &rcpt_refs), "python3 smtplib");
        assert!(
            out.status.success(),
            "{mode}: smtplib failed\n{}\nmailbrake log:\n{}",
            transcript(&out),
            mb.logs()
        );
        let dump = sink.dump_for(&rcpts[0]);
        let expected: Vec<String> = rcpts.iter().map(|r| format!("<{r}>")).collect();
        assert_eq!(dump.rcpt_args, expected, "{mode}");
        assert_eq!(dump.helo_args.as_deref(), Some("py.test"), "{mode}");
        assert!(
            dump.mail_args.starts_with("<a@example.com>"),
            "{mode}: {:?}",
            dump.mail_args
        );
        assert!(
            dump.mail_args.contains("BODY=8BITMIME"),
            "{mode}: {:?}",
            dump.mail_args
        );
        assert_eq!(
            dump.message,
            as_sink_stores(&content()),
            "{mode}: the message smtp-sink stored differs"
        );
    }
}

/// The same client against the recording upstream, which keeps the wire
/// bytes (CRs and dot-stuffing intact) that smtp-sink normalises away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_over_starttls_reaches_the_upstream_byte_exact() {
    let mut up = Upstream::start(Opts::default()).await;
    let certs = certs();
    let (mb, ports, dir) = mailbrake(&certs, &up.addr.to_string());
    let body = body_file(dir.path());
    let rcpts = ["b@example.net", "c@example.net", "d@example.org"];
    let out = run_blocking(
        smtplib(ports.starttls, "starttls", &body, &rcpts),
        "python3 smtplib",
    )
    .await;
    assert!(
        out.status.success(),
        "smtplib failed\n{}\nmailbrake log:\n{}",
        transcript(&out),
        mb.logs()
    );
    let m = up.next_message().await;
    assert_eq!(m.from, "a@example.com");
    assert_eq!(m.rcpts, rcpts);
    // smtplib stuffs a dot before every line that starts with one.
    let stuffed = content()
        .split_inclusive(|&b| b == b'\n')
        .flat_map(|line| {
            if line.starts_with(b".") {
                [b".", line].concat()
            } else {
                line.to_vec()
            }
        })
        .collect::<Vec<u8>>();
    assert_eq!(m.wire, stuffed, "wire bytes differ");
    assert_eq!(m.content(), content());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_auth_plain_and_login_through_mailbrake() {
    let mut up = Upstream::start(Opts {
        auth: true,
        ..Opts::default()
    })
    .await;
    let certs = certs();
    let (mut mb, ports, _dir) = mailbrake(&certs, &up.addr.to_string());
    let server = format!("127.0.0.1:{}", ports.starttls);
    let auth = |mech: &str, password: &str| {
        let mut cmd = swaks();
        cmd.args([
            "--server",
            &server,
            "--tls",
            "--from",
            "alice@example.com",
            "--to",
            "b@example.net",
        ])
        .args([
            "--auth",
            mech,
            "--auth-user",
            "alice",
            "--auth-password",
            password,
        ]);
        cmd
    };
    for mech in ["PLAIN", "LOGIN"] {
        let out = run_blocking(auth(mech, "secret"), "swaks").await;
        assert!(
            out.status.success(),
            "{mech}: swaks failed\n{}\nmailbrake log:\n{}",
            transcript(&out),
            mb.logs()
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("~> AUTH {mech}")) && replied(&said, "235"),
            "{mech}:\n{said}"
        );
        let m = up.next_message().await;
        assert_eq!(
            (m.from.as_str(), m.rcpts.as_slice()),
            ("alice@example.com", &["b@example.net".to_string()][..])
        );
        let line = mb.wait_log("authenticated");
        assert!(line.contains("alice") && line.contains(mech), "{line}");

        let out = run_blocking(auth(mech, "wrong-password"), "swaks").await;
        // 28: swaks's status for a failed AUTH.
        assert_eq!(
            out.status.code(),
            Some(28),
            "{mech}: a wrong password was not refused\n{}",
            transcript(&out)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(replied(&said, "535"), "{mech}: no 535\n{said}");
        mb.wait_log("authentication failed");
    }
    assert_eq!(
        up.messages.lock().unwrap().len(),
        2,
        "a failed login delivered a message"
    );
    let logs = mb.logs();
    let b64 = base64::engine::general_purpose::STANDARD;
    let secrets = [
        "secret".to_string(),
        "wrong-password".to_string(),
        b64.encode("secret"),
        b64.encode("wrong-password"),
        b64.encode("\0alice\0secret"),
        b64.encode("alice\0alice\0secret"),
        b64.encode("\0alice\0wrong-password"),
        b64.encode("alice\0alice\0wrong-password"),
    ];
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "mailbrake logged {s:?}:\n{logs}"
        );
    }
}

#[test]
#[should_panic(expected = ".ci/run installs it")]
fn a_missing_tool_fails_the_test_loudly() {
    require("mailbrake-no-such-tool", "none");
}
