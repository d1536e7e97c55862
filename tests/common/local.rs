//! Local submission for the tests of the sendmail road: mailbrake with a
//! Unix socket listener in a directory every user may enter, programs run
//! as other Unix users (setpriv), and `mailbrake sendmail` pointed at it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::upstream::{Opts, Upstream};

/// Debian's `nobody` and `daemon`: two users with names, in no vhost.
pub const NOBODY: u32 = 65534;
pub const DAEMON: u32 = 1;
/// A uid nobody has.
pub const NAMELESS: u32 = 54321;

/// `dir/run`, made enterable by every user (and `dir` too): the socket's
/// directory, as the unit's `RuntimeDirectoryMode=0755` makes it.
pub fn open_run_dir(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for d in [dir, run.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    run
}

/// A configuration with one Unix socket listener at `socket` in front of
/// `up`, the state under `state`, `[limits]` lines `limits`, then `extra`.
pub fn socket_config(
    state: &Path,
    socket: &Path,
    up: std::net::SocketAddr,
    limits: &str,
    extra: &str,
) -> String {
    format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [limits]\n{limits}\n{extra}\n\
         [[listener]]\nname = \"sendmail\"\nbind = \"unix:{}\"\nupstream = \"{up}\"\n",
        state.join("state"),
        socket.display()
    )
}

/// `program` run as `uid` (its gid the same number, no other groups).
pub fn as_user(uid: u32, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", program]);
    c
}

/// The command line of `mailbrake sendmail` submitting to `socket`, for a
/// `sendmail_path` (the built binary; tests run it as other users, so it
/// must be where they can read it, as a checkout under /root is not).
pub fn sendmail_path(socket: &Path, args: &str) -> String {
    format!(
        "{} sendmail --socket {} {args}",
        env!("CARGO_BIN_EXE_mailbrake"),
        socket.display()
    )
}

/// The mail domain `mailbrake sendmail` puts after a login: `/etc/mailname`,
/// or the host name.
pub fn mail_domain() -> String {
    std::fs::read_to_string("/etc/mailname")
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
                .to_owned()
        })
}

/// mailbrake with a Unix socket listener in front of `up`, in a run
/// directory of its own (removed with it).
pub struct SocketMailbrake {
    pub mb: super::Mailbrake,
    pub socket: PathBuf,
    pub run: tempfile::TempDir,
}

impl SocketMailbrake {
    /// Started with `[limits]` lines `limits`, then `extra`.
    pub fn start(up: std::net::SocketAddr, limits: &str, extra: &str) -> SocketMailbrake {
        let run = tempfile::tempdir().unwrap();
        let socket = open_run_dir(run.path()).join("submit.sock");
        let mb = super::Mailbrake::start(&socket_config(run.path(), &socket, up, limits, extra));
        SocketMailbrake { mb, socket, run }
    }
}

/// The far end of the sendmail road: a recording upstream behaving as
/// `opts` says, and mailbrake in front of it with `[limits]` lines
/// `limits`. Fails the test unless it runs as root with setpriv.
pub async fn road(opts: Opts, limits: &str) -> (Upstream, SocketMailbrake) {
    super::netns::require_root_and("THE SENDMAIL ROAD", &["setpriv"]);
    let up = Upstream::start(opts).await;
    let mb = SocketMailbrake::start(up.addr, limits, "");
    (up, mb)
}

/// `mailbrake sendmail --socket SOCKET ARGS` as `uid`, taking neither the
/// socket nor the timeout from the test's environment.
pub fn sendmail_as(uid: u32, socket: &Path, args: &[&str]) -> Command {
    let mut c = as_user(uid, env!("CARGO_BIN_EXE_mailbrake"));
    c.arg("sendmail")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MAILBRAKE_SUBMIT_SOCKET")
        .env_remove("MAILBRAKE_SUBMIT_TIMEOUT");
    c
}

/// What one run of a sendmail command did.
#[derive(Debug)]
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

impl Ran {
    /// The exit status; a panic if the command was killed.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed, not exited: {self:?}"))
    }
}

/// [`submit`], off the runtime the upstream runs on.
pub async fn run_sendmail(cmd: Command, input: &[u8]) -> Ran {
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || submit(cmd, &input))
        .await
        .unwrap()
}

/// Runs `cmd` with `input` on its standard input (written while it runs,
/// as PHP writes); it must print nothing on standard output.
pub fn submit(mut cmd: Command, input: &[u8]) -> Ran {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the sendmail command");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("write the message");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ran {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `text` with every line ending in CRLF, as the command sends it; a last
/// line without an end is left so.
pub fn crlf(text: impl AsRef<[u8]>) -> Vec<u8> {
    let text = text.as_ref();
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    for line in text.split_inclusive(|&b| b == b'\n') {
        match line.strip_suffix(b"\n") {
            Some(l) => {
                out.extend_from_slice(l.strip_suffix(b"\r").unwrap_or(l));
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}
