//! The original destination of a connection redirected by iptables/nftables
//! (`REDIRECT`, `DNAT`): `SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for
//! IPv6, both answered from the kernel's conntrack table.
//!
//! Linux answers these only for connections conntrack tracks: without the
//! conntrack module the call fails with `ENOPROTOOPT`, with conntrack but no
//! entry for the connection with `ENOENT`, and for a tracked connection that was
//! not NATed it returns the socket's own local address.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};

use crate::identity::normalize;

/// The address the client dialled before the NAT rewrote it to ours. `peer` is
/// the accepted connection's peer address and chooses the family: IPv4 peers,
/// and IPv4-mapped peers (`::ffff:a.b.c.d` on a dual-stack socket), are asked
/// with `SO_ORIGINAL_DST`; native IPv6 peers with `IP6T_SO_ORIGINAL_DST`. An
/// IPv4 destination is returned as a plain [`SocketAddr::V4`].
pub fn original_destination<S: AsFd>(sock: &S, peer: SocketAddr) -> io::Result<SocketAddr> {
    if normalize(peer).is_ipv4() {
        // SOL_IP on an AF_INET6 socket is passed through to the IPv4 code, so
        // this works for v4-mapped peers on dual-stack sockets too.
        let raw = getsockopt(sock, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
    } else {
        let raw = getsockopt(sock, sockopt::Ip6tOriginalDst)?;
        Ok(normalize(SocketAddr::V6(SocketAddrV6::from(
            SockaddrIn6::from(raw),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, TcpListener, TcpStream};

    use super::*;

    /// On a connection nothing redirected, Linux either fails (no conntrack
    /// module: `ENOPROTOOPT`; conntrack without an entry: `ENOENT`) or returns
    /// the address that was dialled, which is our own local address.
    /// Returns the peer address the server saw.
    fn check_unredirected(listener: TcpListener, connect_ip: IpAddr) -> SocketAddr {
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(SocketAddr::new(connect_ip, port)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = normalize(server.local_addr().unwrap());
        match original_destination(&server, peer) {
            Ok(dst) => assert_eq!(dst, local, "peer {peer}"),
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOPROTOOPT | nix::libc::ENOENT)
                ),
                "peer {peer}: unexpected error {e}"
            ),
        }
        peer
    }

    #[test]
    fn unredirected_ipv4_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        check_unredirected(listener, [127, 0, 0, 1].into());
    }

    #[test]
    fn unredirected_ipv6_and_v4_mapped_connections() {
        // Skipped where the host has no IPv6 loopback.
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        check_unredirected(listener, Ipv6Addr::LOCALHOST.into());
        // A dual-stack listener (the Linux default, bindv6only = 0) sees an
        // IPv4 client as ::ffff:127.0.0.1.
        if std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1") {
            eprintln!("bindv6only = 1: dual-stack case skipped");
            return;
        }
        let listener = TcpListener::bind("[::]:0").unwrap();
        let peer = check_unredirected(listener, [127, 0, 0, 1].into());
        assert_eq!(peer.ip(), "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
