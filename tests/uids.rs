//! Vhosts by socket owner for real: in a network namespace of its own, two
//! clients running as two different Unix users connect from the same address
//! through an iptables REDIRECT, and mailbrake counts each under the vhost of
//! its uid. Two processes, one IP, two keys; and users in no `[[vhost]]` are
//! each their own sender (`user:NAME`, `uid:N`), never the shared address.
//!
//! Needs root (CI runs as root). Without it the test fails loudly: it never
//! passes by skipping.

mod common;

use std::process::{Child, Stdio};

use common::netns::{Netns, require_root_and};
use common::*;

/// The uids of the two hosting customers; setpriv needs no passwd entry.
const UID_A: u32 = 65534;
const UID_B: u32 = 65533;
/// In no vhost: Debian's `daemon`, and a uid with no name.
const UID_DAEMON: u32 = 1;
const UID_NAMELESS: u32 = 65532;

impl Netns {
    /// Starts python's smtplib as `uid`, sending one message to the three
    /// recipients `TAG-1@remote.test` .. `TAG-3@remote.test` through
    /// `host`:25. It prints one `REFUSED <rcpt> <code> <text>` line per
    /// refused recipient (smtplib returns them when some were accepted, and
    /// raises only when all were refused) and `SENT` once done.
    fn client(&self, uid: u32, host: &str, tag: &str) -> Child {
        let script = r"import smtplib, sys
host, tag = sys.argv[1], sys.argv[2]
to = ['%s-%d@remote.test' % (tag, i) for i in (1, 2, 3)]
s = smtplib.SMTP(host, 25, timeout=20)
try:
    refused = s.sendmail('site@hosting.test', to, ('Subject: ' + tag + '\r\n\r\nhello\r\n').encode())
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
s.quit()
for rcpt, (code, text) in sorted(refused.items()):
    print('REFUSED %s %d %s' % (rcpt, code, text.decode()))
print('SENT')
";
        self.python_as(uid, script, &[host, tag])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn require_root_and_tools() {
    require_root_and(
        "VHOST-BY-UID",
        &["ip", "iptables", "setpriv", "/usr/bin/python3"],
    );
}

/// Waits for a client; returns its `REFUSED` lines as (recipient, reply).
fn refused(client: Child, what: &str, mb: &Mailbrake) -> Vec<(String, String)> {
    let out = client.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("SENT"),
        "{what}: client failed: {text}\nmailbrake log:\n{}",
        mb.logs()
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("REFUSED "))
        .map(|l| {
            let (rcpt, reply) = l.split_once(' ').unwrap();
            (rcpt.to_string(), reply.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_users_behind_one_address_are_counted_apart() {
    require_root_and_tools();
    let ns = Netns::new("mbuids");
    // Non-root traffic to 127.0.0.2:25 goes to mailbrake; mailbrake (root)
    // dials the original destination unredirected.
    ns.redirect_port_25("iptables", "127.0.0.2", Some("0"), "10025");
    let mut up = ns.upstream("0.0.0.0:25");

    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [limits]\ndefault = \"2/1h\"\n[protect]\nconnections_per_ip = \"off\"\n\
         [[vhost]]\nname = \"site-a\"\nuids = [{UID_A}]\n\
         [[vhost]]\nname = \"site-b\"\nuids = [{UID_B}]\n",
        dir.path().join("state")
    ) + "[[listener]]\nname = \"smtp\"\nbind = \"127.0.0.1:10025\"\ntls = \"none\"\nupstream = \"original-destination\"\n";
    let mb = Mailbrake::start_with(&ns.prefix(), &cfg);

    // All at once: each is over its own limit, and none uses another's.
    let a = ns.client(UID_A, "127.0.0.2", "a");
    let b = ns.client(UID_B, "127.0.0.2", "b");
    let c = ns.client(UID_DAEMON, "127.0.0.2", "c");
    let d = ns.client(UID_NAMELESS, "127.0.0.2", "d");
    let (refused_a, refused_b, refused_c, refused_d) = tokio::task::block_in_place(|| {
        (
            refused(a, &format!("uid {UID_A}"), &mb),
            refused(b, &format!("uid {UID_B}"), &mb),
            refused(c, &format!("uid {UID_DAEMON}"), &mb),
            refused(d, &format!("uid {UID_NAMELESS}"), &mb),
        )
    });
    let nameless = format!("uid:{UID_NAMELESS}");
    for (tag, refused, key) in [
        ("a", &refused_a, "vhost:site-a"),
        ("b", &refused_b, "vhost:site-b"),
        ("c", &refused_c, "user:daemon"),
        ("d", &refused_d, nameless.as_str()),
    ] {
        assert_eq!(refused.len(), 1, "{key}: {refused:?}");
        let (rcpt, reply) = &refused[0];
        assert_eq!(rcpt, &format!("{tag}-3@remote.test"), "{key}");
        assert!(
            reply.starts_with("450 4.7.1")
                && reply.contains(&format!("Recipient limit reached for {key} (2/1h)")),
            "{key}: {reply:?}\nmailbrake log:\n{}",
            mb.logs()
        );
    }

    let mut delivered = Vec::new();
    for _ in 0..4 {
        delivered.push(up.next_message().await.rcpts);
    }
    delivered.sort();
    for (i, tag) in ["a", "b", "c", "d"].into_iter().enumerate() {
        assert_eq!(
            delivered[i],
            [
                format!("{tag}-1@remote.test"),
                format!("{tag}-2@remote.test")
            ]
        );
    }
    let logs = mb.logs();
    assert!(
        !logs.contains("ip:127.0.0.1"),
        "no recipient may be counted under the shared address:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_dialling_the_hosts_own_address_is_still_its_user() {
    require_root_and_tools();
    let ns = Netns::new("mbhostaddr");
    // An address of the host's own that is not a loopback one (the
    // namespace has no other interface to put it on).
    ns.exec(&["ip", "addr", "add", "192.0.2.2/32", "dev", "lo"]);
    let mut up = ns.upstream("127.0.0.1:2526");

    let dir = tempfile::tempdir().unwrap();
    // A drop-in listener on every address, the default identity order.
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [limits]\ndefault = \"2/1h\"\nlock_after_refusals = 0\n\
         [protect]\nconnections_per_ip = \"off\"\n",
        dir.path().join("state")
    ) + "[[listener]]\nname = \"smtp\"\nbind = \"0.0.0.0:25\"\ntls = \"none\"\nupstream = \"127.0.0.1:2526\"\n";
    let mb = Mailbrake::start_with(&ns.prefix(), &cfg);

    // Two recipients through loopback, then three through 192.0.2.2: one
    // user, one window, whichever address it dials.
    let first = ns.client(UID_DAEMON, "127.0.0.1", "lo");
    let refused_lo = tokio::task::block_in_place(|| refused(first, "through loopback", &mb));
    assert_eq!(refused_lo.len(), 1, "{refused_lo:?}");
    assert_eq!(
        up.next_message().await.rcpts,
        ["lo-1@remote.test", "lo-2@remote.test"]
    );
    let second = ns.client(UID_DAEMON, "192.0.2.2", "pub");
    let refused_pub = tokio::task::block_in_place(|| refused(second, "through 192.0.2.2", &mb));
    assert_eq!(refused_pub.len(), 3, "the window is full: {refused_pub:?}");
    for (_, reply) in &refused_pub {
        assert!(
            reply.contains("Recipient limit reached for user:daemon (2/1h)"),
            "{reply:?}\nmailbrake log:\n{}",
            mb.logs()
        );
    }
}
