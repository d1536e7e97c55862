//! Binding a listener once per session thread. Each thread accepts on a
//! socket of its own in one `SO_REUSEPORT` group, and the kernel spreads new
//! connections over them: a connection is accepted, relayed and closed on one
//! thread, with no hand-over and no second registration with a poller.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections each socket may queue (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

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
}
