//! Transparent mode for real: in a network namespace of its own, an iptables
//! (and ip6tables) REDIRECT sends a non-root client's connection to port 25
//! into mailbrake, which finds the original destination and relays there.
//!
//! Needs root (CI runs as root). Without it the test fails loudly: it never
//! passes by skipping.

mod common;

use common::netns::{Netns, require_root_and};
use common::*;

impl Netns {
    /// Sends one message with python's smtplib as uid 65534 (whose traffic
    /// the REDIRECT rules catch); returns the exit status and output.
    fn client(&self, host: &str, tag: &str) -> (bool, String) {
        let script = "import smtplib, sys\n\
s = smtplib.SMTP(sys.argv[1], 25, timeout=20)\n\
s.sendmail('site@hosting.test', ['rcpt@remote.test'], ('Subject: ' + sys.argv[2] + '\\r\\n\\r\\nhello\\r\\n').encode())\n\
s.quit()\n";
        let out = self
            .python_as(65534, script, &[host, tag])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

fn require_root_and_tools() {
    require_root_and(
        "TRANSPARENT-MODE",
        &["ip", "iptables", "ip6tables", "setpriv", "/usr/bin/python3"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_v4_v6_and_v4_mapped_reach_the_original_destination() {
    require_root_and_tools();
    let ns = Netns::new("mbtest");
    // Non-root traffic to port 25 goes to mailbrake; mailbrake (root) dials out unredirected.
    let root = Some("0");
    ns.redirect_port_25("iptables", "127.0.0.2", root, "10025"); // IPv4 listener
    ns.redirect_port_25("iptables", "127.0.0.3", root, "10026"); // IPv4 client on the dual-stack listener: v4-mapped
    ns.redirect_port_25("ip6tables", "::1", root, "10026"); // IPv6

    let mut up4 = ns.upstream("0.0.0.0:25");
    let mut up6 = ns.upstream("[::1]:25");

    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path())
        + "[[listener]]\nname = \"v4\"\nbind = \"127.0.0.1:10025\"\ntls = \"none\"\nupstream = \"original-destination\"\n"
        + "[[listener]]\nname = \"dual\"\nbind = \"[::]:10026\"\ntls = \"none\"\nupstream = \"original-destination\"\n";
    let mut mb = Mailbrake::start_with(&ns.prefix(), &cfg);

    let cases = [
        ("127.0.0.2", "v4", false, "upstream=127.0.0.2:25"),
        ("127.0.0.3", "mapped", false, "upstream=127.0.0.3:25"),
        ("::1", "v6", true, "upstream=[::1]:25"),
    ];
    for (host, tag, v6, log) in cases {
        let up = if v6 { &mut up6 } else { &mut up4 };
        let (ok, out) = tokio::task::block_in_place(|| ns.client(host, tag));
        assert!(
            ok,
            "{tag}: client failed: {out}\nmailbrake log:\n{}",
            mb.logs()
        );
        let m = up.next_message().await;
        assert_eq!(m.rcpts, ["rcpt@remote.test"], "{tag}");
        assert!(
            String::from_utf8_lossy(&m.wire).contains(&format!("Subject: {tag}")),
            "{tag}"
        );
        let line = tokio::task::block_in_place(|| mb.wait_log("session start"));
        assert!(line.contains(log), "{tag}: {line}");
    }

    // A client that reaches mailbrake's port directly has no other destination:
    // dialling it would loop, and mailbrake refuses with a clear error.
    let script = "import socket\ns = socket.create_connection(('127.0.0.1', 10025), timeout=20)\nprint(s.recv(512).decode())\n";
    let out = ns.python_as(65534, script, &[]).output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.starts_with("421 4.3.5"),
        "direct connection: {reply:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::task::block_in_place(|| mb.wait_log("loop"));
}

/// A REDIRECT rule that forgets to exclude mailbrake's own user sends
/// mailbrake's outgoing connection back into it: that is refused as a loop
/// (the socket's owner is mailbrake itself), not relayed round and round.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_catches_mailbrake_itself_is_refused_as_a_loop() {
    require_root_and_tools();
    let ns = Netns::new("mbloop");
    // No owner match: every connection to 127.0.0.2:25, mailbrake's included.
    ns.redirect_port_25("iptables", "127.0.0.2", None, "10025");
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path())
        + "[[listener]]\nname = \"v4\"\nbind = \"127.0.0.1:10025\"\ntls = \"none\"\nupstream = \"original-destination\"\n";
    let mut mb = Mailbrake::start_with(&ns.prefix(), &cfg);
    let script = "import socket\ns = socket.create_connection(('127.0.0.2', 25), timeout=20)\nprint(s.recv(512).decode())\n";
    let out = ns.python_as(65534, script, &[]).output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.starts_with("421 4.3.5"),
        "{reply:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = tokio::task::block_in_place(|| mb.logged("mailbrake's own user"));
    assert!(line.contains("loop"), "{line}");
}
