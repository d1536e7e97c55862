//! Choosing and dialling the upstream: a fixed `HOST:PORT`, or the original
//! destination of a REDIRECTed connection; refusing to dial mailbrake itself;
//! the outbound PROXY protocol header.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{ProxyVersion, UpstreamTarget};
use crate::identity::{ClientAddr, DialledAddr, normalize};
use crate::orig_dst;
use crate::session::Failure;

/// Where this session's upstream is, before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Host { host: String, port: u16 },
    Addr(SocketAddr),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Host { host, port } => write!(f, "{host}:{port}"),
            Destination::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Resolves the listener's target for one accepted connection.
pub fn destination(
    target: &UpstreamTarget,
    socket: &TcpStream,
    peer: SocketAddr,
) -> Result<Destination, Failure> {
    match target {
        UpstreamTarget::Fixed { host, port } => Ok(Destination::Host {
            host: host.clone(),
            port: *port,
        }),
        UpstreamTarget::OriginalDestination => orig_dst::original_destination(socket, peer)
            .map(|a| Destination::Addr(normalize(a)))
            .map_err(|e| {
                Failure::UpstreamUnreachable(format!(
                    "no original destination ({e}); is the REDIRECT rule in place?"
                ))
            }),
    }
}

/// Whether dialling `target` would reach mailbrake itself: the address the
/// client reached, or any listener's bind address.
pub fn is_loop(target: SocketAddr, local: SocketAddr, binds: &[SocketAddr]) -> bool {
    let target = normalize(target);
    let local = normalize(local);
    if target == local {
        return true;
    }
    binds.iter().any(|b| {
        let b = normalize(*b);
        b.port() == target.port()
            && (b.ip() == target.ip()
                || (b.ip().is_unspecified()
                    && (target.ip().is_loopback() || target.ip() == local.ip())))
    })
}

/// Connects to the upstream within `timeout`, trying each resolved address,
/// and refusing any that is mailbrake itself.
pub async fn connect(
    dest: &Destination,
    local: SocketAddr,
    binds: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = match dest {
            Destination::Addr(a) => vec![*a],
            Destination::Host { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| Failure::UpstreamUnreachable(format!("{dest}: {e}")))?
                .collect(),
        };
        let mut last = format!("{dest}: no address");
        for addr in addrs {
            if is_loop(addr, local, binds) {
                return Err(Failure::UpstreamLoop(format!(
                    "{addr} is mailbrake itself (client reached {local})"
                )));
            }
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) if is_out_of_files(&e) => {
                    return Err(Failure::OutOfFiles(format!("connecting to {addr}: {e}")));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(Failure::UpstreamUnreachable(last))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Failure::UpstreamUnreachable(format!(
            "{dest}: no connection within {timeout:?}"
        ))),
    }
}

/// This process (EMFILE) or the whole system (ENFILE) has no file descriptor
/// left: mailbrake's own limit, not the upstream's fault.
pub fn is_out_of_files(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

/// Writes the PROXY protocol header, before any SMTP byte.
pub async fn send_proxy_header(
    stream: &mut TcpStream,
    version: ProxyVersion,
    client: ClientAddr,
    dialled: DialledAddr,
) -> Result<(), Failure> {
    let header = crate::proxy_protocol::encode(version, client.addr(), dialled.0);
    stream
        .write_all(&header)
        .await
        .map_err(|e| Failure::UpstreamUnreachable(format!("writing the PROXY header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_loops() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let binds = [a("0.0.0.0:2525"), a("127.0.0.1:2587"), a("[::]:2465")];
        let local = a("192.0.2.10:2525");
        let cases = [
            ("192.0.2.10:2525", true),  // the address the client reached
            ("127.0.0.1:2525", true),   // wildcard bind, loopback
            ("127.0.0.1:2587", true),   // exact bind
            ("127.0.0.2:2587", false),  // other loopback, specific bind
            ("[::1]:2465", true),       // v6 wildcard
            ("127.0.0.1:10025", false), // the real MTA
            ("198.51.100.1:25", false), // a remote MX
            ("[::ffff:192.0.2.10]:2525", true),
        ];
        for (target, expected) in cases {
            assert_eq!(is_loop(a(target), local, &binds), expected, "{target}");
        }
    }
}
