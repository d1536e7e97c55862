//! mailbrake in front of the MTA a hosting provider runs: a real Postfix
//! smtpd asking a real Dovecot auth server (passwd-file, PLAIN scheme), both
//! started here with their own directories on 127.0.0.1, nothing relayed
//! anywhere. The user mailbrake counts under must be the user Postfix and
//! Dovecot logged in, whatever the mechanism or the base64 spelling.
//!
//! The Debian build of Dovecot 2.3 has no NTLM (`auth: Fatal: Unknown
//! authentication mechanism 'NTLM'`), so ANONYMOUS, which Postfix offers
//! once `smtpd_sasl_security_options` is empty, stands for the mechanism
//! mailbrake cannot read a user from.
//!
//! Needs root (Postfix starts as root and drops to its `postfix` user) and
//! the Debian packages postfix and dovecot-core, which `.ci/run` installs.
//! Without them the test fails loudly; it is never skipped.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use common::postfix::{Postfix, cannot_run, eventually, require, run};
use common::*;

const ALICE_PASSWORD: &str = "alice-secret";
const BOB_PASSWORD: &str = "bob-secret";
/// What Dovecot offers; `ANONYMOUS` is the one mailbrake must remove.
const DOVECOT_MECHANISMS: &str = "plain login digest-md5 cram-md5 anonymous";
/// What mailbrake may offer of them: the ones it reads a user from.
const READABLE: [&str; 4] = ["PLAIN", "LOGIN", "DIGEST-MD5", "CRAM-MD5"];

// === the MTA: Postfix and Dovecot ===

/// A Postfix instance with an smtpd on 127.0.0.1 and its Dovecot auth
/// server, both under one temporary directory (config, queue, data, logs,
/// deliveries). Dropping it stops both, also when the test failed halfway.
struct Mta {
    postfix: Postfix,
    /// Postfix's smtpd port on 127.0.0.1.
    port: u16,
    dovecot: Option<Child>,
}

impl Mta {
    fn start() -> Mta {
        let postfix = Postfix::create();
        require(
            &[("/usr/sbin/dovecot", "dovecot-core")],
            &["dovecot", "dovenull"],
        );
        let mut mta = Mta {
            postfix,
            port: free_port(),
            dovecot: None,
        };
        mta.write_files();
        mta.start_dovecot();
        mta.start_postfix();
        mta
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.postfix.path(rel)
    }

    /// Postfix's config, with `postfix check` run (it creates the private
    /// queue, where Dovecot's socket goes), and Dovecot's.
    fn write_files(&self) {
        let d = self.postfix.dir().to_str().unwrap();
        for sub in ["mail", "dovecot"] {
            std::fs::create_dir_all(self.path(sub)).unwrap();
        }
        run("chown", &["nobody", &format!("{d}/mail")]);
        let main = "mydestination = example.test, example.net, localhost\n\
             mynetworks = 127.0.0.0/8\n\
             defer_transports = smtp\n\
             local_recipient_maps =\n\
             local_transport = deliver\n\
             deliver_destination_recipient_limit = 1\n\
             smtpd_sasl_type = dovecot\n\
             smtpd_sasl_path = private/auth\n\
             smtpd_sasl_security_options =\n\
             smtpd_tls_security_level = none\n";
        // One file per delivered recipient, named after it.
        let master = format!(
            "127.0.0.1:{} inet n - n - - smtpd\n  -o smtpd_sasl_auth_enable=yes\n\
             deliver unix - n n - - pipe\n  flags=q user=nobody argv=/bin/sh {d}/deliver.sh ${{recipient}}\n",
            self.port
        );
        self.postfix.configure(main, &master);
        std::fs::write(
            self.path("deliver.sh"),
            format!("cat > \"{d}/mail/$1.$$\"\n"),
        )
        .unwrap();
        std::fs::write(
            self.path("dovecot/users"),
            format!("alice:{{PLAIN}}{ALICE_PASSWORD}\nbob:{{PLAIN}}{BOB_PASSWORD}\n"),
        )
        .unwrap();
        let dovecot = format!(
            "base_dir = {d}/dovecot/run\n\
             state_dir = {d}/dovecot/state\n\
             log_path = {d}/dovecot/dovecot.log\n\
             protocols =\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = {DOVECOT_MECHANISMS}\n\
             auth_anonymous_username = anonymous\n\
             auth_verbose = yes\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/dovecot/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}}\n\
             service auth {{\n  unix_listener {d}/queue/private/auth {{\n    \
             mode = 0660\n    user = postfix\n    group = postfix\n  }}\n}}\n"
        );
        std::fs::write(self.path("dovecot/dovecot.conf"), dovecot).unwrap();
    }

    fn start_dovecot(&mut self) {
        let conf = self.path("dovecot/dovecot.conf");
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| cannot_run(&format!("dovecot: {e}")));
        self.dovecot = Some(child);
    }

    fn start_postfix(&mut self) {
        self.postfix.start();
        let socket = self.path("queue/private/auth");
        eventually(
            "Dovecot's auth socket in Postfix's queue",
            || socket.exists().then_some(()),
            || self.dovecot_log(),
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        eventually(
            "Postfix's smtpd listening",
            || std::net::TcpStream::connect(addr).ok(),
            || self.postfix.log(),
        );
    }

    fn log(&self) -> String {
        self.postfix.log()
    }

    fn dovecot_log(&self) -> String {
        std::fs::read_to_string(self.path("dovecot/dovecot.log")).unwrap_or_default()
    }

    /// Postfix's log lines containing `needle`, once there are `n` of them.
    fn wait_log(&self, needle: &str, n: usize) -> Vec<String> {
        self.postfix.wait_log(needle, n)
    }

    /// Waits until Postfix has finished with queue file `id` (every
    /// recipient delivered or bounced).
    fn wait_done(&self, id: &str) {
        self.wait_log(&format!("{id}: removed"), 1);
    }

    /// Delivered files per recipient.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.path("mail")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let (rcpt, _pid) = name.rsplit_once('.').unwrap();
            *out.entry(rcpt.to_owned()).or_default() += 1;
        }
        out
    }
}

impl Drop for Mta {
    fn drop(&mut self) {
        // Postfix first: its smtpd and the auth socket go before Dovecot.
        self.postfix.stop();
        if let Some(mut child) = self.dovecot.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === SMTP helpers ===

/// The mechanisms of the `AUTH` line of an EHLO reply.
fn mechanisms(ehlo: &str) -> Vec<String> {
    ehlo.lines()
        .map(|l| l.get(4..).unwrap_or("").trim())
        .filter_map(|l| l.strip_prefix("AUTH "))
        .flat_map(|m| m.split_whitespace().map(str::to_owned))
        .collect()
}

/// A greeted client on `port` with its EHLO reply.
async fn session(port: u16) -> (Client, String) {
    let (mut c, greeting) = Client::connect(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    expect(&greeting, "220");
    let ehlo = c.cmd("EHLO client.example.test").await.unwrap();
    expect(&ehlo, "250");
    (c, ehlo)
}

/// `AUTH PLAIN` for `user` with base64 whose unused low bits are set: the
/// same bytes to a lenient decoder, a different string to a strict one.
fn plain_with_padding_bits(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let canonical = STANDARD.encode(format!("\0{user}\0{password}"));
    let pads = canonical.len() - canonical.trim_end_matches('=').len();
    assert!(pads > 0, "choose a length that needs padding");
    let mut bytes = canonical.into_bytes();
    let last = bytes.len() - pads - 1;
    let value = ALPHABET.iter().position(|&c| c == bytes[last]).unwrap();
    // Each '=' leaves two bits of the last character unused.
    bytes[last] = ALPHABET[value | ((1 << (2 * pads)) - 1)];
    let blob = String::from_utf8(bytes).unwrap();
    assert!(STANDARD.decode(&blob).is_err(), "{blob} is canonical");
    blob
}

/// Whether `reply` names sender key `key` (a word of its own).
fn names(reply: &str, key: &str) -> bool {
    reply.split_whitespace().any(|w| w == key)
}

/// The queue id in Postfix's `250 2.0.0 Ok: queued as ID`.
fn queue_id(reply: &str) -> String {
    reply
        .trim_end()
        .rsplit_once("queued as ")
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
        .1
        .to_owned()
}

/// `mailbrake ARGS -c CONFIG`; (exit code, stdout and stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailbrake"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("MAILBRAKE_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_is_the_user_postfix_and_dovecot_logged_in() {
    let mta = Mta::start();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[admin]\nbind = \"127.0.0.1:{}\"\n[server]\nhostname = \"mb.test\"\n\
         drain_timeout = \"5s\"\n[state]\ndir = {:?}\n[protect]\n\
         connections_per_ip = \"off\"\n[limits]\ndefault = \"12/1h\"\n",
        free_port(),
        state.path().join("state")
    ) + &listener(
        "submission",
        port,
        "none",
        None,
        &format!("127.0.0.1:{}", mta.port),
        "allow_plaintext_auth = true",
    );
    let mut mb = Mailbrake::start(&config);

    // EHLO: Postfix offers everything Dovecot has; mailbrake what it reads.
    let (mut direct, ehlo) = session(mta.port).await;
    let offered = mechanisms(&ehlo);
    for m in DOVECOT_MECHANISMS.split(' ') {
        assert!(
            offered.contains(&m.to_ascii_uppercase()),
            "Postfix does not offer {m}: {ehlo}"
        );
    }
    direct.cmd("QUIT").await.unwrap();
    let (mut c, ehlo) = session(port).await;
    let mut shown = mechanisms(&ehlo);
    shown.sort();
    let mut readable = READABLE.map(str::to_owned).to_vec();
    readable.sort();
    assert_eq!(shown, readable, "mailbrake's EHLO: {ehlo}");

    // alice, with base64 a strict decoder refuses: Dovecot takes it, and so
    // does mailbrake, which counts 12 of 15 recipients and refuses 3.
    let blob = plain_with_padding_bits("alice", ALICE_PASSWORD);
    expect(&c.cmd(&format!("AUTH PLAIN {blob}")).await.unwrap(), "235");
    let rcpts: Vec<String> = (0..15).map(|i| format!("alice-{i}@example.net")).collect();
    let t = c
        .transaction(
            "alice@example.test",
            &rcpts,
            "Subject: fifteen\r\n\r\nhello",
        )
        .await
        .unwrap();
    expect(&t.mail, "250");
    for (i, reply) in t.rcpts.iter().enumerate() {
        if i < 12 {
            expect(reply, "250");
        } else {
            expect(reply, "450 4.7.1");
            assert!(names(reply, "auth:alice"), "{reply}");
        }
    }
    let end = t.end.expect("DATA after 12 accepted recipients");
    expect(&end, "250");
    let id = queue_id(&end);
    c.cmd("QUIT").await.unwrap();
    mta.wait_done(&id);
    let logged = mta.wait_log(&format!("{id}: client="), 1);
    assert!(
        logged[0].contains("sasl_method=PLAIN, sasl_username=alice"),
        "Postfix logged another user: {logged:?}"
    );
    let delivered = mta.delivered();
    let expected: BTreeMap<String, usize> = rcpts[..12].iter().map(|r| (r.clone(), 1)).collect();
    assert_eq!(delivered, expected, "what Postfix delivered");

    // The canonical spelling is the same user: the same, spent, limit.
    let (mut c, _) = session(port).await;
    expect(&c.auth_plain("alice", ALICE_PASSWORD).await.unwrap(), "235");
    expect(
        &c.cmd("MAIL FROM:<alice@example.test>").await.unwrap(),
        "250",
    );
    let refused = c.cmd("RCPT TO:<alice-15@example.net>").await.unwrap();
    expect(&refused, "450 4.7.1");
    assert!(names(&refused, "auth:alice"), "{refused}");
    c.cmd("QUIT").await.unwrap();

    let (code, shown) = cli(&mb.config, &["sender", "show", "auth:alice"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("12/12 in the last 1h"), "{shown}");

    // bob, from the same address with AUTH LOGIN: his own 12.
    let (mut c, _) = session(port).await;
    expect(&c.cmd("AUTH LOGIN").await.unwrap(), "334");
    expect(&c.cmd(&STANDARD.encode("bob")).await.unwrap(), "334");
    expect(&c.cmd(&STANDARD.encode(BOB_PASSWORD)).await.unwrap(), "235");
    let rcpts: Vec<String> = (0..13).map(|i| format!("bob-{i}@example.net")).collect();
    let t = c
        .transaction("bob@example.test", &rcpts, "Subject: thirteen\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(t.accepted(), 12, "{:?}", t.rcpts);
    expect(&t.rcpts[12], "450 4.7.1");
    assert!(names(&t.rcpts[12], "auth:bob"), "{}", t.rcpts[12]);
    let id = queue_id(t.end.as_deref().expect("DATA for bob"));
    c.cmd("QUIT").await.unwrap();
    mta.wait_done(&id);
    let logged = mta.wait_log(&format!("{id}: client="), 1);
    assert!(
        logged[0].contains("sasl_method=LOGIN, sasl_username=bob"),
        "{logged:?}"
    );
    let bobs = mta
        .delivered()
        .into_iter()
        .filter(|(r, n)| r.starts_with("bob-") && *n == 1)
        .count();
    assert_eq!(bobs, 12, "bob's deliveries: {:?}", mta.delivered());
    let (_, shown) = cli(&mb.config, &["sender", "show", "auth:bob"]);
    assert!(shown.contains("12/12 in the last 1h"), "{shown}");

    // A mechanism mailbrake removed never reaches Postfix.
    // Postfix has had five sessions (the probe at start, the direct EHLO,
    // alice twice, bob) and saw no RCPT that mailbrake refused.
    let sessions = 5;
    let before = mta.wait_log("disconnect from", sessions);
    assert_eq!(before.len(), sessions, "{before:?}");
    let rcpts: Vec<&str> = before
        .iter()
        .flat_map(|l| l.split_whitespace().filter(|w| w.starts_with("rcpt=")))
        .collect();
    assert_eq!(rcpts, ["rcpt=12", "rcpt=12"], "{before:?}");
    let (mut c, _) = session(port).await;
    for mech in [
        "ANONYMOUS dHJhY2U=",
        "ANONYMOUS",
        "NTLM TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let reply = c.cmd(&format!("AUTH {mech}")).await.unwrap();
        expect(&reply, "504 5.5.4");
    }
    c.cmd("QUIT").await.unwrap();
    let disconnects = mta.wait_log("disconnect from", sessions + 1);
    let last = &disconnects[sessions];
    assert!(
        !last.contains("auth="),
        "Postfix saw an AUTH: {last}\n{}",
        mta.log()
    );
    assert!(
        !mta.dovecot_log().contains("anonymous("),
        "{}",
        mta.dovecot_log()
    );
    // The same check sees one that does reach it.
    let (mut direct, _) = session(mta.port).await;
    expect(&direct.cmd("AUTH ANONYMOUS dHJhY2U=").await.unwrap(), "235");
    direct.cmd("QUIT").await.unwrap();
    let disconnects = mta.wait_log("disconnect from", sessions + 2);
    assert!(
        disconnects[sessions + 1].contains("auth=1"),
        "{disconnects:?}"
    );
    eventually(
        "Dovecot logging the anonymous login",
        || mta.dovecot_log().contains("anonymous(trace").then_some(()),
        || mta.dovecot_log(),
    );

    assert!(
        !mb.logs().contains("cannot tell who authenticated"),
        "{}",
        mb.logs()
    );
    mb.signal("TERM");
    assert!(mb.wait_exit().success(), "{}", mb.logs());
}
