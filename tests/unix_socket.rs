//! The Unix socket listener: local programs submit over
//! `bind = "unix:PATH"`, and each is counted as the Unix user the kernel says
//! it is (`SO_PEERCRED`), whatever it writes: `user:NAME`, or `uid:N` for a
//! uid with no name. Clients run as other users through setpriv.
//!
//! Needs root (to become other users). Without it the test fails loudly: it
//! never passes by skipping.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::local::*;
use common::netns::require_root_and;
use common::upstream::{Opts, Upstream};
use common::*;

/// A raw SMTP client over a Unix socket, as `uid`: sends each command of
/// `commands` (a `.` alone sends a small message body and its final dot) and
/// prints each reply's first line.
fn client_as(uid: u32, socket: &Path, commands: &[&str]) -> Vec<String> {
    let script = r"import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile('rwb')
def reply():
    first = None
    while True:
        line = f.readline()
        if not line:
            return 'EOF'
        first = first or line.decode().rstrip()
        if line[3:4] != b'-':
            return first
print(reply())
for c in sys.argv[2:]:
    if c == '.':
        f.write(b'Subject: over a Unix socket\r\n\r\nhello\r\n.\r\n')
    else:
        f.write(c.encode() + b'\r\n')
    f.flush()
    print(reply())
";
    let out = as_user(uid, "/usr/bin/python3")
        .args(["-c", script])
        .arg(socket)
        .args(commands)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn config(state: &Path, socket: &Path, up: std::net::SocketAddr, extra: &str) -> String {
    socket_config(
        state,
        socket,
        up,
        &format!("default = \"2/1h\"\nlock_after_refusals = 0\n{extra}"),
        "",
    )
}

/// The commands of one message to `rcpts`, each recipient at `tag`.
fn message(rcpts: &[&str]) -> Vec<String> {
    let mut c = vec![
        "EHLO site.test".to_owned(),
        "MAIL FROM:<site@hosting.test>".to_owned(),
    ];
    c.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
    c.extend(["DATA".to_owned(), ".".to_owned(), "QUIT".to_owned()]);
    c
}

fn send_as(uid: u32, socket: &Path, rcpts: &[&str]) -> Vec<String> {
    let commands = message(rcpts);
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    client_as(uid, socket, &commands)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_uid_is_its_own_sender_whatever_it_claims() {
    require_root_and("the Unix socket listener test", &["setpriv", "python3"]);
    let mut up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    let mut mb = Mailbrake::start(&config(run.path(), &socket, up.addr, ""));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "the default socket_mode");

    // nobody: two recipients pass, the third is over its own limit, named by
    // its user, though it claims to be someone else every way it can.
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || {
        client_as(
            NOBODY,
            &s,
            &[
                "EHLO site.test",
                "XCLIENT ADDR=192.0.2.9 LOGIN=postmaster",
                "XFORWARD ADDR=192.0.2.9",
                "MAIL FROM:<root@hosting.test>",
                "RCPT TO:<a1@remote.test>",
                "RCPT TO:<a2@remote.test>",
                "RCPT TO:<a3@remote.test>",
                "DATA",
                ".",
                "QUIT",
            ],
        )
    })
    .await
    .unwrap();
    assert!(replies[0].starts_with("220 "), "{replies:?}");
    assert!(
        !replies[2].starts_with('2'),
        "XCLIENT must not be relayed: {replies:?}"
    );
    assert!(
        !replies[3].starts_with('2'),
        "XFORWARD must not be relayed: {replies:?}"
    );
    assert!(replies[5].starts_with("250"), "{replies:?}");
    assert!(replies[6].starts_with("250"), "{replies:?}");
    assert!(
        replies[7].starts_with("450 4.7.1") && replies[7].contains("user:nobody"),
        "the third recipient: {replies:?}"
    );
    assert!(replies[9].starts_with("250"), "end of data: {replies:?}");
    let m = up.next_message().await;
    assert_eq!(m.rcpts, ["a1@remote.test", "a2@remote.test"]);
    assert!(
        mb.logged("recipient refused")
            .contains("sender=user:nobody")
    );

    // A uid without a name counts as its number, apart from nobody.
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || send_as(NAMELESS, &s, &["b1@remote.test"]))
        .await
        .unwrap();
    assert!(replies[3].starts_with("250"), "{replies:?}");
    assert_eq!(up.next_message().await.rcpts, ["b1@remote.test"]);

    // nobody again, in a new connection: its window is still full.
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || send_as(NOBODY, &s, &["a4@remote.test"]))
        .await
        .unwrap();
    assert!(
        replies[3].starts_with("450 4.7.1") && replies[3].contains("user:nobody"),
        "{replies:?}"
    );

    let admin = admin_addr(&mut mb);
    let token = common::admin::generated_token(&run.path().join("state"));
    for (key, shown) in [
        ("uid:54321", "1/2 in the last 1h"),
        ("user:nobody", "2/2 in the last 1h"),
    ] {
        let (rc, out, err) = common::admin::cli(admin, &token, &["sender", "show", key]);
        assert_eq!(rc, 0, "{err}");
        assert!(out.contains(key) && out.contains(shown), "{key}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vhost_groups_users_and_an_exempt_user_is_not_limited() {
    require_root_and("the Unix socket listener test", &["setpriv", "python3"]);
    let mut up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    let extra = format!(
        "exempt_local_users = [\"nobody\"]\n[[vhost]]\nname = \"customer-7\"\nuids = [{NAMELESS}, {}]\n",
        NAMELESS + 1
    );
    let _mb = Mailbrake::start(&config(run.path(), &socket, up.addr, &extra));

    // Two users of one vhost share its limit of two.
    for (uid, rcpt, code) in [
        (NAMELESS, "c1@remote.test", "250"),
        (NAMELESS + 1, "c2@remote.test", "250"),
        (NAMELESS + 1, "c3@remote.test", "450"),
    ] {
        let s = socket.clone();
        let replies = tokio::task::spawn_blocking(move || send_as(uid, &s, &[rcpt]))
            .await
            .unwrap();
        assert!(replies[3].starts_with(code), "uid {uid}: {replies:?}");
        if code == "450" {
            assert!(replies[3].contains("vhost:customer-7"), "{replies:?}");
        } else {
            assert_eq!(up.next_message().await.rcpts, [rcpt]);
        }
    }
    // nobody is exempt: five recipients at once.
    let rcpts = [
        "n1@r.test",
        "n2@r.test",
        "n3@r.test",
        "n4@r.test",
        "n5@r.test",
    ];
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || send_as(NOBODY, &s, &rcpts))
        .await
        .unwrap();
    assert!(
        replies[3..8].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    assert_eq!(up.next_message().await.rcpts, rcpts);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exempt_loopback_network_does_not_exempt_the_sockets_clients() {
    require_root_and("the Unix socket listener test", &["setpriv", "python3"]);
    let mut up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    // Loopback exempt, for local monitoring over TCP: the socket's clients
    // have no address, and loopback's is not theirs.
    let extra = "exempt_networks = [\"127.0.0.0/8\", \"::1\"]";
    let _mb = Mailbrake::start(&config(run.path(), &socket, up.addr, extra));
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || {
        send_as(NOBODY, &s, &["e1@r.test", "e2@r.test", "e3@r.test"])
    })
    .await
    .unwrap();
    assert!(
        replies[5].starts_with("450 4.7.1") && replies[5].contains("user:nobody"),
        "{replies:?}"
    );
    assert_eq!(up.next_message().await.rcpts, ["e1@r.test", "e2@r.test"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_take_every_session_of_the_socket() {
    require_root_and("the Unix socket listener test", &["setpriv", "python3"]);
    let up = Upstream::start(Opts::default()).await;
    let run = tempfile::tempdir().unwrap();
    let socket = open_run_dir(run.path()).join("submit.sock");
    let config =
        config(run.path(), &socket, up.addr, "") + "max_sessions = 3\nmax_sessions_per_user = 2\n";
    let _mb = Mailbrake::start(&config);
    // nobody holds two sessions and asks for a third.
    let hold = "import socket, sys\n\
                held = []\n\
                for i in range(3):\n    \
                    s = socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(sys.argv[1])\n    \
                    held.append(s)\n    \
                    print(s.recv(512).decode().strip(), flush=True)\n\
                sys.stdin.read()\n";
    let mut holder = as_user(NOBODY, "/usr/bin/python3")
        .args(["-c", hold])
        .arg(&socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stdout.take().unwrap()));
    let greetings: Vec<String> =
        tokio::task::block_in_place(|| (0..3).map(|_| lines.next().unwrap().unwrap()).collect());
    assert!(
        greetings[0].starts_with("220") && greetings[1].starts_with("220"),
        "{greetings:?}"
    );
    assert!(
        greetings[2].starts_with("421 4.7.0")
            && greetings[2].contains("too many connections from your user"),
        "{greetings:?}"
    );
    // daemon still gets in, and sends.
    let s = socket.clone();
    let replies = tokio::task::spawn_blocking(move || send_as(DAEMON, &s, &["d1@r.test"]))
        .await
        .unwrap();
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(
        replies[0].starts_with("220") && replies[3].starts_with("250"),
        "{replies:?}"
    );
}
