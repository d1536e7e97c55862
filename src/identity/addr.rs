//! The addresses of a connection, each in its role: the client's
//! ([`ClientAddr`]) and the one it reached ([`DialledAddr`]).
//!
//! An IPv4 client of a dual-stack listener is seen as `::ffff:a.b.c.d`; it is
//! the same client as `a.b.c.d` and must count, match networks, be rate
//! limited and be logged as such. [`ClientAddr::new`] unmaps it once; code
//! that takes a `ClientAddr` (or its [`ClientAddr::ip`]) never checks again.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The client: the TCP peer, or the address a trusted PROXY header gave.
/// Always normal (see [`normalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(SocketAddr);

impl ClientAddr {
    /// The client at `addr`, an IPv4-mapped address taken as IPv4.
    pub fn new(addr: SocketAddr) -> Self {
        ClientAddr(normalize(addr))
    }

    pub fn addr(self) -> SocketAddr {
        self.0
    }

    pub fn ip(self) -> IpAddr {
        self.0.ip()
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        ClientAddr::new(addr)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The address the client reached: mailbrake's local address, the original
/// destination before a REDIRECT, or what a trusted PROXY header named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialledAddr(pub SocketAddr);

/// Turns an IPv4-mapped IPv6 address (`[::ffff:192.0.2.1]:25`) into the plain
/// IPv4 one (`192.0.2.1:25`); others are unchanged.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize_ip(addr.ip()), addr.port())
}

/// [`normalize`] for an address without a port (an `ip:` key in the
/// configuration, say).
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_unmaps_v4_mapped_addresses() {
        let cases = [
            ("[::ffff:192.0.2.1]:25", "192.0.2.1:25"),
            ("[::ffff:127.0.0.1]:587", "127.0.0.1:587"),
            ("192.0.2.1:25", "192.0.2.1:25"),
            ("[2001:db8::1]:25", "[2001:db8::1]:25"),
            ("[::1]:25", "[::1]:25"),
            // IPv4-compatible (deprecated, ::a.b.c.d) is not mapped: left alone.
            ("[::192.0.2.1]:25", "[::c000:201]:25"),
            ("[::]:0", "[::]:0"),
        ];
        for (input, expected) in cases {
            let input: SocketAddr = input.parse().unwrap();
            let expected: SocketAddr = expected.parse().unwrap();
            assert_eq!(normalize(input), expected, "{input}");
            assert_eq!(normalize_ip(input.ip()), expected.ip(), "{input}");
        }
    }

    #[test]
    fn a_client_is_normal_from_construction() {
        let cases = [
            ("[::ffff:192.0.2.7]:4321", "192.0.2.7:4321", "192.0.2.7"),
            ("192.0.2.7:4321", "192.0.2.7:4321", "192.0.2.7"),
            ("[2001:db8::7]:4321", "[2001:db8::7]:4321", "2001:db8::7"),
            ("[::1]:4321", "[::1]:4321", "::1"),
        ];
        for (input, addr, ip) in cases {
            let client = ClientAddr::new(input.parse().unwrap());
            assert_eq!(
                client.addr(),
                addr.parse::<SocketAddr>().unwrap(),
                "{input}"
            );
            assert_eq!(client.ip(), ip.parse::<IpAddr>().unwrap(), "{input}");
            assert!(client.ip().is_ipv4() == addr.starts_with(|c: char| c.is_ascii_digit()));
            assert_eq!(client.to_string(), addr);
            assert_eq!(
                ClientAddr::from(input.parse::<SocketAddr>().unwrap()),
                client
            );
        }
    }
}
