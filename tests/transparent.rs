//! Transparent mode for real: in a network namespace of its own, an iptables
//! (and ip6tables) REDIRECT sends a non-root client's connection to port 25
//! into mailbrake, which finds the original destination and relays there.
//!
//! Needs root (CI runs as root). Without it the test fails loudly: it never
//! passes by skipping.

mod common;

use std::process::Command;

use common::upstream::{Opts, Upstream};
use common::*;

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("mbtest-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// Starts a recording upstream inside the namespace, on `bind`.
    fn upstream(&self, bind: &str) -> Upstream {
        let path = format!("/run/netns/{}", self.name);
        let bind = bind.parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // Sockets created by this thread from now on live in the namespace.
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let up = Upstream::start(Opts {
                    bind: Some(bind),
                    ..Opts::default()
                })
                .await;
                tx.send(up).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    }

    /// Sends one message with python's smtplib as uid 65534 (whose traffic
    /// the REDIRECT rules catch); returns the exit status and output.
    fn client(&self, host: &str, tag: &str) -> (bool, String) {
        let script = "import smtplib, sys\n\
s = smtplib.SMTP(sys.argv[1], 25, timeout=20)\n\
s.sendmail('site@hosting.test', ['rcpt@remote.test'], ('Subject: ' + sys.argv[2] + '\\r\\n\\r\\nhello\\r\\n').encode())\n\
s.quit()\n";
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .args(["/usr/bin/python3", "-c", script, host, tag])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("`{}` failed: {other:?}", args.join(" ")),
    }
}

fn require_root_and_tools() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "TRANSPARENT-MODE TEST CANNOT RUN: it needs root for `ip netns` and iptables \
             (CI runs as root). This is a failure, not a skip."
        );
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv", "/usr/bin/python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "TRANSPARENT-MODE TEST CANNOT RUN: `{tool}` is missing (.ci/run installs iproute2, iptables, util-linux, python3)"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_v4_v6_and_v4_mapped_reach_the_original_destination() {
    require_root_and_tools();
    let ns = Netns::new();
    // Non-root traffic to port 25 goes to mailbrake; mailbrake (root) dials out unredirected.
    let catch = [
        "-m",
        "owner",
        "!",
        "--uid-owner",
        "0",
        "-j",
        "REDIRECT",
        "--to-ports",
    ];
    let rule = |tool: &str, dst: &str, port: &str| {
        let mut args = vec![
            tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dst, "--dport", "25",
        ];
        args.extend_from_slice(&catch);
        args.push(port);
        ns.exec(&args);
    };
    rule("iptables", "127.0.0.2", "10025"); // IPv4 listener
    rule("iptables", "127.0.0.3", "10026"); // IPv4 client on the dual-stack listener: v4-mapped
    rule("ip6tables", "::1", "10026"); // IPv6

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
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["/usr/bin/python3", "-c", script])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.starts_with("421 4.3.5"),
        "direct connection: {reply:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::task::block_in_place(|| mb.wait_log("loop"));
}
