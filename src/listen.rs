//! Binding a listener once per session thread. Each thread accepts on a
//! socket of its own in one `SO_REUSEPORT` group, and the kernel spreads new
//! connections over them: a connection is accepted, relayed and closed on one
//! thread, with no hand-over and no second registration with a poller.

use std::io;
use std::net::{SocketAddr, TcpListener};

use std::os::unix::net::UnixListener;
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Bind, UnixBind};

/// Pending connections each socket may queue (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// One session thread's listening socket, not yet registered with its
/// runtime.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// `n` listening sockets for `bind`, one per session thread: a TCP group
/// ([`bind_group`]), or one Unix socket ([`bind_unix`]) and its duplicates.
pub fn bind(bind: &Bind, n: usize) -> io::Result<Vec<Bound>> {
    match bind {
        Bind::Tcp(addr) => Ok(bind_group(*addr, n)?.into_iter().map(Bound::Tcp).collect()),
        Bind::Unix(cfg) => {
            let first = bind_unix(cfg)?;
            let mut all = Vec::with_capacity(n.max(1));
            for _ in 1..n.max(1) {
                all.push(Bound::Unix(first.try_clone()?));
            }
            all.push(Bound::Unix(first));
            Ok(all)
        }
    }
}

/// Removes a Unix socket's file at stop, unless another process has put its
/// own in its place since (`ino` is the file this one bound).
pub fn unlink_unix(path: &std::path::Path, ino: u64) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// `n` listening sockets on `addr` (non-blocking, for tokio). Fails, as a
/// plain bind would, when another process already listens there: a second
/// mailbrake must not silently share the port.
pub fn bind_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        // A bind without SO_REUSEPORT fails if anyone holds the port,
        // whether or not they set SO_REUSEPORT themselves.
        drop(socket(addr, false)?);
    }
    let mut group = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let s = socket(addr, true)?;
        // Port 0: the others join the port the kernel chose for the first.
        addr = s.local_addr()?;
        group.push(s);
    }
    Ok(group)
}

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The longest path a Unix socket may have (`sun_path` holds 108 bytes,
/// the last a NUL).
pub const UNIX_PATH_MAX: usize = 107;
/// The private directory a socket is made in, beside its path: `.mb-` and
/// eight hex digits.
const PRIVATE_DIR_LEN: usize = 12;

/// `None` when `path`, and the temporary path [`bind_unix`] makes beside it,
/// fit in a Unix socket address; else the longest path that would.
pub fn unix_path_room(path: &Path) -> Option<usize> {
    let parent = path.parent().map_or(0, |p| p.as_os_str().len());
    let temp = parent + 1 + PRIVATE_DIR_LEN + 2;
    let fits = path.as_os_str().len() <= UNIX_PATH_MAX && temp <= UNIX_PATH_MAX;
    (!fits).then_some(UNIX_PATH_MAX)
}

/// Binds the Unix socket `cfg` names: a stale file left by a mailbrake that
/// died is replaced, a socket someone still listens on is not (`AddrInUse`),
/// nor is anything that is not a socket. The socket is made in a private
/// directory (mode 0700, a random name) beside its path, given its mode,
/// owner and group there, where nobody else can swap it for a link, then
/// renamed into place: no client ever finds it with other permissions, and
/// a stale file is replaced without a moment where the path is missing. A
/// directory (or any directory above it) that someone else could rearrange
/// is refused ([`trusted_dir`]): whoever can write there could move the
/// socket away, or put a socket of their own at its path while mailbrake is
/// stopped.
pub fn bind_unix(cfg: &UnixBind) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = &cfg.path;
    let dir = path.parent().unwrap_or(Path::new("/"));
    trusted_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let private = private_dir(dir)?;
    let temp = private.join("s");
    let placed = (|| -> io::Result<UnixListener> {
        let listener = UnixListener::bind(&temp)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(cfg.mode))?;
        let uid = account(cfg.owner.as_deref(), |n| {
            nix::unistd::User::from_name(n).map(|u| u.map(|u| u.uid.as_raw()))
        })?;
        let gid = account(cfg.group.as_deref(), |n| {
            nix::unistd::Group::from_name(n).map(|g| g.map(|g| g.gid.as_raw()))
        })?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&temp, uid, gid)?;
        }
        std::fs::rename(&temp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&temp);
    let _ = std::fs::remove_dir(&private);
    let listener = placed?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Refuses a socket directory that someone else could rearrange, as
/// OpenSSH checks the paths it trusts: it and every directory above it must
/// be root's or mailbrake's user's and writable by no one else. Above the
/// socket's own directory, a sticky one (`/tmp`) may be writable by all:
/// nobody can move what is not theirs out of it. The socket's own directory
/// may not: anyone could put a socket at its path while mailbrake is
/// stopped.
fn trusted_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir.canonicalize()?;
    let me = nix::unistd::geteuid().as_raw();
    for (depth, d) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(d)?;
        let open = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let owned = meta.uid() == 0 || meta.uid() == me;
        if !owned || (open && (depth == 0 || !sticky)) {
            let what = if depth == 0 {
                "the socket's directory"
            } else {
                "a directory above the socket's"
            };
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{what}, {}, is owned by uid {} with mode {:o}: it must be root's or \
                     mailbrake's, and not writable by others (systemd's \
                     RuntimeDirectory=mailbrake makes such a directory)",
                    d.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// A new directory in `dir` only this process's user may enter.
fn private_dir(dir: &Path) -> io::Result<std::path::PathBuf> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::DirBuilderExt;
    let mut last = None;
    for _ in 0..16 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let name = format!(".mb-{:08x}", h.finish() as u32);
        let private = dir.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => return Ok(private),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free private directory name")))
}

/// A socket file's owner or group, by name.
fn account<T>(
    name: Option<&str>,
    find: impl Fn(&str) -> nix::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let Some(name) = name else {
        return Ok(None);
    };
    match find(name) {
        Ok(Some(id)) => Ok(Some(id)),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user or group \"{name}\""),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_even_when_the_kernel_chooses_it() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = group
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_is_refused_even_by_another_group() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = first[0].local_addr().unwrap();
        let e = bind_group(taken, 2).expect_err("a second group must not join");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_group(plain.local_addr().unwrap(), 1).expect_err("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    fn unix(dir: &std::path::Path, mode: u32) -> UnixBind {
        UnixBind {
            path: dir.join("submit.sock"),
            mode,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn a_unix_socket_gets_its_mode_and_replaces_only_a_stale_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = unix(dir.path(), 0o660);
        let first = bind_unix(&cfg).unwrap();
        let mode = std::fs::metadata(&cfg.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // Someone listens: not taken over.
        let e = bind_unix(&cfg).expect_err("in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // The listener died and left its file: replaced.
        drop(first);
        assert!(cfg.path.exists());
        let second = bind_unix(&unix(dir.path(), 0o666)).unwrap();
        let mode = std::fs::metadata(&cfg.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        std::os::unix::net::UnixStream::connect(&cfg.path).expect("the new socket answers");
        drop(second);
        // Only the socket is left in the directory: no temporary file.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A file that is not a socket is never replaced.
        std::fs::remove_file(&cfg.path).unwrap();
        std::fs::write(&cfg.path, b"not a socket").unwrap();
        let e = bind_unix(&cfg).expect_err("not a socket");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&cfg.path).unwrap(), b"not a socket");
    }

    #[test]
    fn a_socket_directory_others_could_rearrange_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = unix(dir.path(), 0o666);
        let set = |mode: u32| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for refused in [0o777, 0o775, 0o757] {
            set(refused);
            let e = bind_unix(&cfg).expect_err("a directory others may write to");
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{refused:o}");
            assert!(e.to_string().contains("not writable by others"), "{e}");
            assert!(!cfg.path.exists());
        }
        // Sticky, as /tmp: others could still put a socket at the path.
        set(0o1777);
        bind_unix(&cfg).expect_err("a sticky directory all may write to");
        set(0o755);
        drop(bind_unix(&cfg).expect("mailbrake's own directory"));
        // A directory above it that others may write to: they could rename
        // this one away and put theirs in its place.
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("mb");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (mode, refused) in [(0o777, true), (0o1777, false), (0o755, false)] {
            std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let got = bind_unix(&unix(&inner, 0o666));
            assert_eq!(got.is_err(), refused, "above it {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(
                    e.to_string().contains("a directory above the socket's"),
                    "{e}"
                );
            }
            let _ = std::fs::remove_file(inner.join("submit.sock"));
        }
    }

    #[test]
    fn a_path_fits_with_the_temporary_one_beside_it() {
        let room = |p: &str| unix_path_room(Path::new(p));
        assert_eq!(room("/run/mailbrake/submit.sock"), None);
        let dir = format!("/{}", "d".repeat(UNIX_PATH_MAX - 16));
        assert_eq!(room(&format!("{dir}/s")), None, "{}", dir.len());
        let dir = format!("/{}", "d".repeat(UNIX_PATH_MAX - 15));
        assert_eq!(room(&format!("{dir}/s")), Some(UNIX_PATH_MAX));
        assert_eq!(
            room(&format!("/{}", "s".repeat(UNIX_PATH_MAX))),
            Some(UNIX_PATH_MAX)
        );
        // The longest that fits also binds.
        let base = tempfile::tempdir().unwrap();
        let room_left = UNIX_PATH_MAX - base.path().as_os_str().len() - 1;
        let cfg = UnixBind {
            path: base.path().join("s".repeat(room_left)),
            ..unix(base.path(), 0o666)
        };
        assert_eq!(unix_path_room(&cfg.path), None);
        drop(bind_unix(&cfg).expect("a path that fits"));
    }
}
