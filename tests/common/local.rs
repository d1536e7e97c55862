//! Local submission for the tests of the sendmail road: mailbrake with a
//! Unix socket listener in a directory every user may enter, programs run
//! as other Unix users (setpriv), and `mailbrake sendmail` pointed at it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
