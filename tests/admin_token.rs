//! A site cannot lift its own limit: on a hosting server set up as shipped
//! (`config/transparent.toml`, mailbrake as its own user as the systemd unit
//! runs it, no token configured), a process running as a site's Unix user
//! can reach the admin API on loopback, but every call that would change its
//! sender (exempt, raise, clear, lock, unlock, reset, reload) and every read
//! of the API is refused with 401, it cannot read the token mailbrake made,
//! and its recipients stay limited. Root, with the CLI and no flags, can.
//!
//! Needs root (CI runs as root). Without it the test fails loudly: it never
//! passes by skipping.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::admin::generated_token;
use common::netns::{Netns, require_root_and, shipped_transparent};
use common::*;
use serde_json::Value;

/// The site's Unix user; setpriv needs no passwd entry.
const SITE_UID: u32 = 65534;
/// mailbrake's own user: what the REDIRECT rule spares.
const MB_UID: u32 = 65532;
const KEY: &str = "vhost%3Asite-a";

/// Sends one message to `n` recipients through port 25 of 127.0.0.2 (which
/// the REDIRECT hands to mailbrake), as the site; prints `REFUSED <reply>`
/// per refused recipient, then `ACCEPTED <count>`.
const SEND: &str = r"import smtplib, sys
n = int(sys.argv[1])
to = ['r%d@remote.test' % i for i in range(n)]
s = smtplib.SMTP('127.0.0.2', 25, timeout=20)
try:
    refused = s.sendmail('site@site-a.test', to, b'Subject: s\r\n\r\nhello\r\n')
except smtplib.SMTPRecipientsRefused as e:
    refused = e.recipients
s.quit()
for rcpt, (code, text) in sorted(refused.items()):
    print('REFUSED %d %s' % (code, text.decode()))
print('ACCEPTED %d' % (n - len(refused)))
";

/// What a compromised site tries against the admin API: read the token,
/// then every call without it or with a guess. Prints `TOKEN read|denied`,
/// `CALL <method> <path> <auth> <status>` per call and `METRICS <status>`.
const ATTACK: &str = r"import http.client, json, sys
port, token_file, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    open(token_file).read()
    print('TOKEN read')
except PermissionError:
    print('TOKEN denied')
sender = '/api/senders/' + key
calls = [('POST', sender + '/exempt'), ('PUT', sender + '/override'),
         ('DELETE', sender + '/override'), ('POST', sender + '/lock'),
         ('POST', sender + '/unlock'), ('POST', sender + '/reset'),
         ('POST', '/api/reload'), ('GET', sender), ('GET', '/api/status'),
         ('GET', '/api/top'), ('GET', '/api/audit'), ('GET', '/api/report')]
body = json.dumps({'limit': 'unlimited', 'reason': 'mine now', 'who': 'site-a'})
def call(method, path, auth):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    headers = {'Content-Type': 'application/json'}
    if auth:
        headers['Authorization'] = auth
    c.request(method, path, body=body, headers=headers)
    status = c.getresponse().status
    c.close()
    return status
for method, path in calls:
    for auth in [None, 'Bearer guessed', 'Bearer ', 'Basic cm9vdDpyb290']:
        print('CALL %s %s %s %d' % (method, path, (auth or '-').replace(' ', '_'), call(method, path, auth)))
c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
c.request('GET', '/metrics')
print('METRICS %d' % c.getresponse().status)
";

/// Runs `cmd`; (success, stdout and stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The site sends to `n` recipients: (accepted, refusal replies).
fn site_sends(ns: &Netns, n: usize, mb: &Mailbrake) -> (usize, Vec<String>) {
    let (ok, text) = run(&mut ns.python_as(SITE_UID, SEND, &[&n.to_string()]));
    assert!(
        ok,
        "the site's client failed: {text}\nmailbrake log:\n{}",
        mb.logs()
    );
    let accepted = text
        .lines()
        .find_map(|l| l.strip_prefix("ACCEPTED "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    let refused = text
        .lines()
        .filter_map(|l| l.strip_prefix("REFUSED "))
        .map(str::to_owned)
        .collect();
    (accepted, refused)
}

/// The mailbrake CLI inside the namespace, as `uid` (root when `None`), with
/// the configuration mailbrake runs with and no other flag or token.
fn cli(ns: &Netns, uid: Option<u32>, config: &Path, args: &[&str]) -> (i32, String) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]);
    if let Some(uid) = uid {
        c.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups");
    }
    c.arg(env!("CARGO_BIN_EXE_mailbrake"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env("USER", "ops")
        .env_remove("SUDO_USER")
        .env_remove("MAILBRAKE_ADMIN_TOKEN");
    let out = c.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The audit trail's actions, newest first, as root's CLI prints them.
fn audit(ns: &Netns, config: &Path) -> Vec<String> {
    let (code, out) = cli(ns, None, config, &["audit", "--json"]);
    assert_eq!(code, 0, "{out}");
    let audit: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} by {}", e["action"], e["key"], e["who"]).replace('"', ""))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_user_cannot_change_its_sender_and_root_with_the_cli_can() {
    require_root_and(
        "ADMIN TOKEN",
        &["ip", "iptables", "setpriv", "/usr/bin/python3"],
    );
    let ns = Netns::new("mbadmin");
    ns.redirect_port_25("iptables", "127.0.0.2", Some(&MB_UID.to_string()), "10025");
    let mut mx = ns.upstream("127.0.0.2:25");

    let state = tempfile::tempdir().unwrap();
    let vhost = format!("[[vhost]]\nname = \"site-a\"\nuids = [{SITE_UID}]\n");
    let mut mb = ns.mailbrake_as(
        MB_UID,
        state.path(),
        &shipped_transparent(state.path(), &vhost),
    );
    // Let anyone into the state directory: the token file must protect
    // itself.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = admin_addr(&mut mb);
    assert!(admin.ip().is_loopback(), "{admin}");
    let token_file = state.path().join("admin.token");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, MB_UID),
        "the token is mailbrake's user's alone"
    );
    let token = generated_token(state.path());

    // The site is limited (the example's 30/1h).
    let (accepted, refused) = tokio::task::block_in_place(|| site_sends(&ns, 31, &mb));
    assert_eq!(accepted, 30, "{refused:?}");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].starts_with("450 4.7.1 Recipient limit reached for vhost:site-a"),
        "{refused:?}"
    );
    assert_eq!(mx.next_message().await.rcpts.len(), 30);

    // It tries to lift the limit through the admin API.
    let port = admin.port().to_string();
    let token_path = token_file.to_str().unwrap();
    let (ok, text) = tokio::task::block_in_place(|| {
        run(&mut ns.python_as(SITE_UID, ATTACK, &[&port, token_path, KEY]))
    });
    assert!(ok, "{text}");
    assert!(text.lines().any(|l| l == "TOKEN denied"), "{text}");
    let calls: Vec<&str> = text.lines().filter(|l| l.starts_with("CALL ")).collect();
    assert_eq!(calls.len(), 12 * 4, "{text}");
    for line in &calls {
        let status = line.rsplit(' ').next().unwrap();
        assert!(status == "401" || status == "403", "not refused: {line}");
    }
    // /metrics stays open on loopback, for Prometheus.
    assert!(text.lines().any(|l| l == "METRICS 200"), "{text}");

    // The CLI as the site: no token it can read, exit 4.
    let config = mb.config.clone();
    let exempt = ["sender", "exempt", "vhost:site-a", "--reason", "mine now"];
    let (code, out) = tokio::task::block_in_place(|| cli(&ns, Some(SITE_UID), &config, &exempt));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("could not be read") && out.contains("run as root"),
        "{out}"
    );

    // Nothing changed: still limited, nothing audited, nothing reloaded.
    let (accepted, refused) = tokio::task::block_in_place(|| site_sends(&ns, 2, &mb));
    assert_eq!(accepted, 0, "the limit must still hold: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("Recipient limit reached for vhost:site-a")),
        "{refused:?}"
    );
    let trail = tokio::task::block_in_place(|| audit(&ns, &config));
    assert!(trail.is_empty(), "refused calls left a trace: {trail:?}");
    assert!(!mb.logs().contains("configuration reloaded"));

    // Root, with one command and no flag, can.
    let (code, out) = tokio::task::block_in_place(|| cli(&ns, None, &config, &exempt));
    assert_eq!(code, 0, "{out}");
    let (accepted, refused) = tokio::task::block_in_place(|| site_sends(&ns, 5, &mb));
    assert_eq!(accepted, 5, "exempted by root: {refused:?}");
    assert_eq!(mx.next_message().await.rcpts.len(), 5);
    let (code, out) = tokio::task::block_in_place(|| cli(&ns, None, &config, &["reload"]));
    assert_eq!(code, 0, "{out}");
    tokio::task::block_in_place(|| mb.logged("configuration reloaded"));
    let trail = tokio::task::block_in_place(|| audit(&ns, &config));
    assert_eq!(
        trail,
        ["reload  by ops", "exempt vhost:site-a by ops"],
        "only root's changes"
    );

    let logs = mb.logs();
    assert!(!logs.contains(&token), "the token reached the logs");
    assert!(
        logs.contains("admin API: call refused, no valid token"),
        "refusals are logged:\n{logs}"
    );
}

/// A site's process that holds the admin port while mailbrake is down
/// (stopped, restarting, failed to start): prints `LISTENING`, then every
/// byte it is sent, as `GOT <repr>`, for a few seconds.
const SQUAT: &str = r"import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(8)
print('LISTENING', flush=True)
s.settimeout(8)
try:
    while True:
        c, _ = s.accept()
        c.settimeout(2)
        data = b''
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    break
                data += d
        except socket.timeout:
            pass
        print('GOT %r' % data, flush=True)
        c.close()
        break
except socket.timeout:
    pass
";

#[test]
fn a_site_holding_the_admin_port_is_never_sent_the_token() {
    require_root_and("ADMIN TOKEN", &["ip", "setpriv", "/usr/bin/python3"]);
    let ns = Netns::new("mbsquat");
    let state = tempfile::tempdir().unwrap();
    let token_file = state.path().join("operator.token");
    std::fs::write(&token_file, "s3cret-operator-token\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = state.path().join("mailbrake.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = {:?}\n[admin]\nbind = \"127.0.0.1:9725\"\ntoken_file = {:?}\n",
            state.path().join("state"),
            token_file
        ) + &listener("smtp", 2525, "none", None, "127.0.0.1:10025", ""),
    )
    .unwrap();
    let mut squatter = ns
        .python_as(SITE_UID, SQUAT, &["9725"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(squatter.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "LISTENING");

    let (code, text) = cli(&ns, None, &config, &["status"]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(&format!("is held by uid {SITE_UID}, not by mailbrake"))
            && text.contains("the token was not sent"),
        "{text}"
    );
    let mut got = String::new();
    std::io::Read::read_to_string(&mut out, &mut got).unwrap();
    squatter.wait().unwrap();
    assert!(!got.contains("s3cret"), "the squatter got the token: {got}");
    assert_eq!(
        got.trim(),
        "GOT b''",
        "only the CLI's probe, with nothing in it"
    );
}
