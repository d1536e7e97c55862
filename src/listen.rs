//! Binding a listener once per session thread. Each thread accepts on a
//! socket of its own in one `SO_REUSEPORT` group, and the kernel spreads new
//! connections over them: a connection is accepted, relayed and closed on one
//! thread, with no hand-over and no second registration with a poller.

use std::io;
use std::net::{SocketAddr, TcpListener};

use std::os::unix::net::UnixListener;

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

/// Binds the Unix socket `cfg` names: a stale file left by a mailbrake that
/// died is replaced, a socket someone still listens on is not (`AddrInUse`),
/// nor is anything that is not a socket. The socket is made under a
/// temporary name, given its mode, owner and group, then renamed into place:
/// no client ever finds it with other permissions, and a restart never
/// leaves the path missing for longer than the rename.
pub fn bind_unix(cfg: &UnixBind) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = &cfg.path;
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
    let mut temp = path.clone().into_os_string();
    temp.push(format!(".{}.new", std::process::id()));
    let temp = std::path::PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    let placed = (|| {
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
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
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
}
