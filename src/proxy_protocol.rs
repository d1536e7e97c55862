//! PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>): the header
//! mailbrake writes to the upstream, and the pure, incremental parse of a header
//! a trusted load balancer sends before the client's first byte.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{v1, v2};

use crate::config::ProxyVersion;
use crate::identity::normalize;

/// Longest v1 header, CRLF included (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header we accept, in bytes. The spec allows 16 + 65535; a header
/// carrying addresses (at most 216 bytes, for AF_UNIX) plus the TLVs load
/// balancers actually send fits easily, and a peer cannot make us buffer 64 KiB.
pub const V2_MAX_LEN: usize = 4096;

/// v2 signature (spec section 2.2).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2 fixed part: signature, version/command, family/protocol, length.
const V2_FIXED_LEN: usize = 16;
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Why an inbound header is refused. Always the client's (or its load
/// balancer's) fault.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("expected a PROXY protocol header, got something else")]
    NotProxy,
    #[error("invalid PROXY v1 header: {0}")]
    V1(#[source] v1::BinaryParseError),
    #[error("invalid PROXY v1 header: {0}")]
    V1Invalid(&'static str),
    #[error("invalid PROXY v2 header: {0}")]
    V2(#[source] v2::ParseError),
    #[error("PROXY header of {len} bytes or more exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("PROXY v2 header describes a datagram connection, not a stream")]
    NotStream,
}

/// The result of looking at the first bytes of a connection from a trusted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Not enough bytes yet to decide: read more and call again with all of them.
    Incomplete,
    /// The real client (`source`) and the address it connected to
    /// (`destination`), both with IPv4-mapped addresses made plain IPv4.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
        /// Header length: the client's own bytes start here.
        consumed: usize,
    },
    /// v2 `LOCAL`, v1 `UNKNOWN`, or v2 `PROXY` with an unspecified or AF_UNIX
    /// family: no usable address, keep the real peer.
    Local { consumed: usize },
}

/// The header written to the upstream right after connecting, describing the
/// real client (`client`) and the address it connected to (`local`).
///
/// Both addresses are first normalised (IPv4-mapped becomes IPv4). When the two
/// then differ in family, the IPv4 one is written IPv4-mapped so the header is
/// `TCP6` / `AF_INET6`: every IPv4 address has an IPv6 form, so the spec's
/// fallbacks (v1 `UNKNOWN`, v2 `LOCAL`) are never needed.
pub fn encode(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(normalize(client), normalize(local));
    match version {
        ProxyVersion::V1 => v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("an address-only v2 header is 16 + 36 bytes at most, far below u16::MAX"),
    }
}

/// Parses the header at the start of `buf` (v1 or v2, told apart by the first
/// byte). Pure and incremental: call again with more bytes on `Incomplete`. Fails
/// as soon as the bytes cannot be the start of a header, e.g. a client that
/// speaks SMTP straight away, and at the latest after [`V1_MAX_LEN`] or
/// [`V2_MAX_LEN`] bytes.
pub fn parse_inbound(buf: &[u8]) -> Result<Inbound, ProxyError> {
    if starts_like(buf, V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts_like(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Whether `peer` may send a PROXY header: it lies in one of the `trusted`
/// networks. An IPv4-mapped peer (`::ffff:a.b.c.d`) matches IPv4 networks, and
/// an IPv4 peer also matches IPv6 networks that contain its mapped form.
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let plain = normalize(SocketAddr::new(peer, 0)).ip();
    let mapped = match plain {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(_) => plain,
    };
    trusted
        .iter()
        .any(|net| net.contains(&plain) || net.contains(&mapped))
}

/// Brings two addresses into one family, mapping the IPv4 one into IPv6 if needed.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        SocketAddr::V6(_) => addr,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (to_v6(a), to_v6(b))
    }
}

/// `buf` agrees with `prefix` for as long as both go (empty `buf` agrees).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// v1 is parsed by ppp only once the CRLF is in: ppp's own "partial" verdicts
/// misjudge some prefixes (`... 4321 ` with the last port still to come). Until
/// then the prefix is checked for plausibility so non-headers fail early.
fn parse_v1(buf: &[u8]) -> Result<Inbound, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = memchr::memmem::find(window, b"\r\n") else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::TooLong {
                len: buf.len(),
                max: V1_MAX_LEN,
            });
        }
        return v1_plausible(buf).map(|()| Inbound::Incomplete);
    };
    let header = v1::Header::try_from(&buf[..cr + 2]).map_err(ProxyError::V1)?;
    let consumed = header.header.len();
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Inbound::Proxied {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
            consumed,
        },
        v1::Addresses::Tcp6(a) => Inbound::Proxied {
            source: normalize(SocketAddr::new(a.source_address.into(), a.source_port)),
            destination: normalize(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
            consumed,
        },
        v1::Addresses::Unknown => Inbound::Local { consumed },
    })
}

/// Whether an unterminated v1 line can still become a header: a known protocol
/// word (or the start of one) and printable ASCII, with a CR only at the end.
fn v1_plausible(buf: &[u8]) -> Result<(), ProxyError> {
    let invalid = |reason| Err(ProxyError::V1Invalid(reason));
    let rest = buf.get(V1_PREFIX.len()..).unwrap_or_default();
    let word_len = rest
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(rest.len());
    let word = &rest[..word_len];
    let known = [&b"TCP4"[..], b"TCP6", b"UNKNOWN"];
    let word_ok = if word_len == rest.len() {
        known.iter().any(|k| k.starts_with(word))
    } else {
        known.contains(&word)
    };
    if !word_ok {
        return invalid("unknown protocol");
    }
    let body = buf.strip_suffix(b"\r").unwrap_or(buf);
    if !body.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return invalid("control or non-ASCII byte");
    }
    Ok(())
}

fn parse_v2(buf: &[u8]) -> Result<Inbound, ProxyError> {
    if let Some(len) = buf.get(V2_FIXED_LEN - 2..V2_FIXED_LEN) {
        let len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > V2_MAX_LEN {
            return Err(ProxyError::TooLong {
                len,
                max: V2_MAX_LEN,
            });
        }
    }
    let header = match v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(e) if ppp::PartialResult::is_incomplete(&e) => return Ok(Inbound::Incomplete),
        Err(e) => return Err(ProxyError::V2(e)),
    };
    let consumed = header.len();
    if header.command == v2::Command::Local {
        // Health checks from the proxy itself: addresses are to be ignored.
        return Ok(Inbound::Local { consumed });
    }
    if header.protocol == v2::Protocol::Datagram {
        return Err(ProxyError::NotStream);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => Inbound::Proxied {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
            consumed,
        },
        v2::Addresses::IPv6(a) => Inbound::Proxied {
            source: normalize(SocketAddr::new(a.source_address.into(), a.source_port)),
            destination: normalize(SocketAddr::new(
                a.destination_address.into(),
                a.destination_port,
            )),
            consumed,
        },
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Inbound::Local { consumed },
    })
}

#[cfg(test)]
mod tests;
