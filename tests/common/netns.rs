//! A network namespace of the test's own, for transparent-mode tests: made
//! on creation, deleted on drop. Everything in it stays on its loopback.

use std::path::Path;
use std::process::Command;

use super::Mailbrake;
use super::upstream::{Opts, Upstream};

/// `config/transparent.toml` as shipped, with the state directory and the
/// sendmail socket moved into `state` and `extra` (e.g. `[[vhost]]` tables)
/// appended.
pub fn shipped_transparent(state: &Path, extra: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/transparent.toml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    let dir = "dir = \"/var/lib/mailbrake\"";
    let socket = "unix:/run/mailbrake/submit.sock";
    for text in [dir, socket] {
        assert_eq!(
            shipped.matches(text).count(),
            1,
            "config/transparent.toml: expected one `{text}`"
        );
    }
    let moved = format!("unix:{}", state.join("submit.sock").display());
    shipped
        .replace(dir, &format!("dir = {state:?}"))
        .replace(socket, &moved)
        + "\n"
        + extra
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Debian's python running `script` (with `args`) as `uid`, inside the
    /// namespace: a hosting customer's process.
    pub fn python_as(&self, uid: u32, script: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "/usr/bin/python3", "-c", script])
            .args(args);
        c
    }

    /// Starts mailbrake inside the namespace the way
    /// `config/mailbrake.service` runs it: as its own unprivileged user
    /// `uid`, owning `state`, without any capability and unable to gain one.
    pub fn mailbrake_as(&self, uid: u32, state: &Path, config: &str) -> Mailbrake {
        std::os::unix::fs::chown(state, Some(uid), Some(uid)).unwrap();
        // `Mailbrake::start_with` writes the configuration into a directory
        // only root may enter, and appends `BINARY run -c FILE`: open that
        // directory to mailbrake's user, then become it.
        let wrapper = format!(
            "chmod 0755 \"$(dirname \"$3\")\" && exec setpriv --reuid={uid} --regid={uid} \
             --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs \
             \"$0\" \"$@\""
        );
        let mut prefix = self.prefix();
        prefix.extend_from_slice(&["sh", "-c", &wrapper]);
        Mailbrake::start_with(&prefix, config)
    }

    /// `tag` keeps the names of concurrently running test binaries apart.
    pub fn new(tag: &str) -> Netns {
        let name = format!("{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    pub fn prefix(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// A NAT OUTPUT rule (`tool`: iptables or ip6tables): TCP to `dst` port
    /// 25 is redirected to `to_port`, except from uid `spared` when given.
    pub fn redirect_port_25(&self, tool: &str, dst: &str, spared: Option<&str>, to_port: &str) {
        let mut args = vec![
            tool, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dst, "--dport", "25",
        ];
        if let Some(uid) = spared {
            args.extend_from_slice(&["-m", "owner", "!", "--uid-owner", uid]);
        }
        args.extend_from_slice(&["-j", "REDIRECT", "--to-ports", to_port]);
        self.exec(&args);
    }

    /// Starts a recording upstream inside the namespace, on `bind`.
    pub fn upstream(&self, bind: &str) -> Upstream {
        self.upstream_with(bind, Opts::default())
    }

    /// A recording upstream inside the namespace, with `opts` (bound at `bind`).
    pub fn upstream_with(&self, bind: &str, opts: Opts) -> Upstream {
        let path = format!("/run/netns/{}", self.name);
        let opts = Opts {
            bind: Some(bind.parse().unwrap()),
            ..opts
        };
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
                tx.send(Upstream::start(opts).await).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("`{}` failed: {other:?}", args.join(" ")),
    }
}

/// Fails the test (never skips it) unless it runs as root with `tools`.
pub fn require_root_and(what: &str, tools: &[&str]) {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "{what} TEST CANNOT RUN: it needs root for `ip netns`, iptables and setpriv \
             (CI runs as root). This is a failure, not a skip."
        );
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{what} TEST CANNOT RUN: `{tool}` is missing (.ci/run installs iproute2, iptables, util-linux, python3)"
        );
    }
}
