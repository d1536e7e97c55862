//! Which local Unix user owns the client end of a TCP connection.
//!
//! Local sites send mail to a remote port 25; an iptables `REDIRECT` hands the
//! connection to mailbrake. The client's socket is still connected to the
//! *original* destination, so its 4-tuple is (source = the peer address
//! mailbrake accepted, destination = the original destination from
//! [`crate::orig_dst`]); for a direct connection it is (peer, our local
//! address). [`socket_owner`] finds that socket in the kernel and returns its
//! owner's uid (the `sk_uid` the kernel recorded when the socket was created).
//!
//! The kernel is asked with one `NETLINK_SOCK_DIAG` / `SOCK_DIAG_BY_FAMILY`
//! request for exactly that 4-tuple. Where netlink `sock_diag` cannot be used
//! (no netlink socket for that protocol, e.g. a sandbox, or no permission, or
//! the `tcp_diag` module missing) the uid column of `/proc/net/tcp` and
//! `/proc/net/tcp6` is read instead — slower on a busy host, same answer.
//!
//! Both only see sockets in mailbrake's own network namespace: mailbrake must
//! run in the namespace of the sites it serves.
//!
//! A session asks through [`lookup`], which reads `/proc` on tokio's
//! blocking threads, so that the fallback (it reads the whole socket table)
//! never holds up the other sessions of the session's thread. mailbrake's
//! own connections coming back through the REDIRECT are recognised here
//! too ([`not_own`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Once, OnceLock};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, IPPROTO_TCP, TCP_SYN_RECV, TCP_TIME_WAIT,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use super::addr::{ClientAddr, DialledAddr, normalize};

/// Why [`socket_owner`] has no uid to give.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// No local TCP socket has this 4-tuple: the client is on another host, or
    /// its socket is already gone (closed, or only a `TIME_WAIT` remnant,
    /// which has no owner).
    #[error("no local TCP socket with this address pair")]
    NotFound,
    /// The netlink `sock_diag` exchange failed in a way that is not "not
    /// available here" (which falls back to `/proc`): a malformed or missing
    /// reply, an unexpected error code.
    #[error("sock_diag netlink query failed: {0}")]
    Netlink(String),
    /// Reading `/proc/net/tcp{,6}` in the fallback failed.
    #[error("reading the socket table: {0}")]
    Io(#[from] io::Error),
}

/// The Unix uid owning the local TCP socket with this exact 4-tuple, `source`
/// being the client's end (its local address and port) and `destination` the
/// address that socket is connected to (for a `REDIRECT`ed connection the
/// original destination, not mailbrake's address).
///
/// IPv4-mapped IPv6 addresses are looked up as IPv4, so the peer address of a
/// dual-stack listener can be passed as it is; a dual-stack *client* socket
/// connected to an IPv4 address is found too.
///
/// This blocks for one netlink round-trip to the kernel (microseconds, no
/// network; bounded by a 1 s receive timeout), or, where netlink `sock_diag`
/// is unavailable, for reading `/proc/net/tcp{,6}` (milliseconds on a host
/// with many sockets). Sessions call [`lookup`] instead.
pub fn socket_owner(source: SocketAddr, destination: SocketAddr) -> Result<u32, OwnerError> {
    let (source, destination) = (normalize(source), normalize(destination));
    if source.is_ipv4() != destination.is_ipv4() {
        // No socket connects an IPv4 address to a native IPv6 one.
        return Err(OwnerError::NotFound);
    }
    by_sock_diag(source, destination).unwrap_or_else(|| socket_owner_procfs(source, destination))
}

/// The answer of netlink `sock_diag`, or `None` when it cannot be had that
/// way and `/proc` must be read. `source`/`destination` must already be
/// normalized and of the same family.
fn by_sock_diag(source: SocketAddr, destination: SocketAddr) -> Option<Result<u32, OwnerError>> {
    match socket_owner_netlink(source, destination) {
        Ok(uid) => Some(Ok(uid)),
        Err(NetlinkFailure::Unavailable(e)) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "netlink sock_diag unavailable: reading /proc/net/tcp instead");
            });
            None
        }
        Err(NetlinkFailure::Owner(OwnerError::NotFound)) if !tcp_diag_works() => None,
        Err(NetlinkFailure::Owner(e)) => Some(Err(e)),
    }
}

/// The owner of a connection's client socket, or `None` (no such local
/// socket, or the lookup failed: logged at debug level).
///
/// The `sock_diag` query runs on the calling thread: it costs about as much
/// as handing it to another thread would (`bench/owner.rs`). The `/proc`
/// fallback, tens of milliseconds with 10,000 connections open, runs on
/// tokio's blocking threads, so that the other sessions of this thread do
/// not wait for it.
pub async fn lookup(client: ClientAddr, dialled: DialledAddr) -> Option<u32> {
    let (source, destination) = (client.addr(), normalize(dialled.0));
    let found = if source.is_ipv4() != destination.is_ipv4() {
        Err(OwnerError::NotFound)
    } else if let Some(found) = by_sock_diag(source, destination) {
        found
    } else {
        tokio::task::spawn_blocking(move || socket_owner_procfs(source, destination))
            .await
            .unwrap_or_else(|e| Err(OwnerError::Io(io::Error::other(e))))
    };
    match found {
        Ok(uid) => Some(uid),
        Err(e) => {
            tracing::debug!(error = %e, "no local owner for this connection");
            None
        }
    }
}

/// A REDIRECTed connection owned by mailbrake's own user: its own outgoing
/// connection came back to it (the REDIRECT rule does not exclude it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a connection from mailbrake's own user (uid {uid}) was redirected to it; \
     exclude that user from the REDIRECT rule (config/iptables.sh)"
)]
pub struct OwnConnection {
    pub uid: u32,
}

/// `Err` when `owner` is the user mailbrake runs as.
pub fn not_own(owner: Option<u32>) -> Result<(), OwnConnection> {
    match owner {
        Some(uid) if uid == nix::unistd::getuid().as_raw() => Err(OwnConnection { uid }),
        _ => Ok(()),
    }
}

/// Which way [`socket_owner_via`] asks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One netlink `sock_diag` request for the exact 4-tuple.
    SockDiag,
    /// Reading `/proc/net/tcp{,6}`: the fallback.
    ProcNetTcp,
}

/// [`socket_owner`] by one path only, with no fallback: for measurements
/// (`bench/owner.rs`) and tests.
pub fn socket_owner_via(
    via: Via,
    source: SocketAddr,
    destination: SocketAddr,
) -> Result<u32, OwnerError> {
    let (source, destination) = (normalize(source), normalize(destination));
    match via {
        Via::SockDiag => socket_owner_netlink(source, destination).map_err(|e| match e {
            NetlinkFailure::Owner(e) => e,
            NetlinkFailure::Unavailable(e) => OwnerError::Netlink(e.to_string()),
        }),
        Via::ProcNetTcp => socket_owner_procfs(source, destination),
    }
}

/// How the netlink path failed.
#[derive(Debug)]
enum NetlinkFailure {
    /// Netlink `sock_diag` cannot be used here: fall back to `/proc`.
    Unavailable(io::Error),
    /// An answer (`NotFound`) or a real failure.
    Owner(OwnerError),
}

impl From<OwnerError> for NetlinkFailure {
    fn from(e: OwnerError) -> Self {
        NetlinkFailure::Owner(e)
    }
}

/// How long to wait for the kernel's answer. It is queued before `send`
/// returns, so this only guards against a kernel that never answers.
const REPLY_TIMEOUT_SECS: i64 = 1;

/// Sequence number of our request, checked in the reply.
const SEQUENCE: u32 = 0x6d62_6b01;

/// Errors that mean "netlink sock_diag is not usable here", as opposed to an
/// answer about the socket.
fn is_unavailable(errno: i32) -> bool {
    [
        Errno::EPROTONOSUPPORT,
        Errno::EAFNOSUPPORT,
        Errno::ESOCKTNOSUPPORT,
        Errno::EPERM,
        Errno::EACCES,
        Errno::EOPNOTSUPP,
        Errno::ENOSYS,
    ]
    .iter()
    .any(|e| *e as i32 == errno)
}

fn classify_io(context: &str, err: io::Error) -> NetlinkFailure {
    match err.raw_os_error() {
        Some(code) if is_unavailable(code) => NetlinkFailure::Unavailable(err),
        _ => NetlinkFailure::Owner(OwnerError::Netlink(format!("{context}: {err}"))),
    }
}

/// One exact `SOCK_DIAG_BY_FAMILY` lookup. `source`/`destination` must
/// already be normalized and of the same family.
fn socket_owner_netlink(
    source: SocketAddr,
    destination: SocketAddr,
) -> Result<u32, NetlinkFailure> {
    let family = if source.is_ipv4() { AF_INET } else { AF_INET6 };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        // Ignored by an exact lookup, but say what we mean.
        states: StateFlags::all(),
        socket_id: SocketId {
            source_port: source.port(),
            destination_port: destination.port(),
            source_address: source.ip(),
            destination_address: destination.ip(),
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match on the 4-tuple alone. A zero cookie
            // would be compared with the socket's cookie and fail (ESTALE).
            cookie: [0xff; 8],
        },
    };
    let mut header = NetlinkHeader::default();
    // No NLM_F_DUMP: an exact lookup, answered with one message or an error.
    header.flags = NLM_F_REQUEST;
    header.sequence_number = SEQUENCE;
    let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);

    let socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)
        .map_err(|e| classify_io("opening the netlink socket", e))?;
    setsockopt(
        &socket,
        sockopt::ReceiveTimeout,
        &TimeVal::seconds(REPLY_TIMEOUT_SECS),
    )
    .map_err(|e| classify_io("setting the receive timeout", e.into()))?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(|e| classify_io("connecting the netlink socket", e))?;
    socket
        .send(&out, 0)
        .map_err(|e| classify_io("sending the sock_diag request", e))?;

    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let len = socket
            .recv(&mut buf, 0)
            .map_err(|e| classify_io("reading the sock_diag reply", e))?;
        if len > buf.len() {
            return Err(OwnerError::Netlink(format!("reply truncated ({len} bytes)")).into());
        }
        let mut offset = 0;
        while offset < buf.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .map_err(|e| OwnerError::Netlink(format!("malformed reply: {e}")))?;
            let length = message.header.length as usize;
            if length == 0 {
                return Err(OwnerError::Netlink("zero-length reply message".into()).into());
            }
            offset += length;
            if message.header.sequence_number != SEQUENCE {
                continue;
            }
            return match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    owner_from_response(&response.header, source, destination)
                        .map_err(NetlinkFailure::from)
                }
                NetlinkPayload::Error(error) => match error.code {
                    // An ACK without a socket: nothing found.
                    None => Err(OwnerError::NotFound.into()),
                    Some(code) if -code.get() == Errno::ENOENT as i32 => {
                        Err(OwnerError::NotFound.into())
                    }
                    Some(code) if is_unavailable(-code.get()) => {
                        Err(NetlinkFailure::Unavailable(error.to_io()))
                    }
                    Some(_) => Err(OwnerError::Netlink(format!("kernel answered: {error}")).into()),
                },
                NetlinkPayload::Done(_) => Err(OwnerError::NotFound.into()),
                NetlinkPayload::Noop => continue,
                other => Err(OwnerError::Netlink(format!("unexpected reply: {other:?}")).into()),
            };
        }
    }
}

/// The uid in a sock_diag answer, after checking that the kernel answered
/// about the socket we asked for: an exact lookup that finds no connected
/// socket falls back to a *listener* on the source address and port (a remote
/// client whose port happens to be a local service's port would otherwise be
/// attributed to that service's user).
fn owner_from_response(
    header: &InetResponseHeader,
    source: SocketAddr,
    destination: SocketAddr,
) -> Result<u32, OwnerError> {
    let id = &header.socket_id;
    let found_source = normalize(SocketAddr::new(id.source_address, id.source_port));
    let found_destination = normalize(SocketAddr::new(id.destination_address, id.destination_port));
    if found_source != source || found_destination != destination {
        return Err(OwnerError::NotFound);
    }
    // TIME_WAIT remnants and embryonic (request) sockets are reported with
    // uid 0 and inode 0: they have no owner.
    let time_wait = header.state == TCP_TIME_WAIT || header.timer == Some(Timer::TimeWait);
    let request_sock = header.state == TCP_SYN_RECV && header.inode == 0;
    if time_wait || request_sock {
        return Err(OwnerError::NotFound);
    }
    Ok(header.uid)
}

/// Whether an `ENOENT` from sock_diag can be trusted to mean "no such socket".
/// The kernel also answers `ENOENT` when it has no TCP diag handler (the
/// `tcp_diag` module is not loaded and cannot be); then every lookup would
/// come back empty. Checked once, on the first `ENOENT`, by looking up a
/// listener of our own.
fn tcp_diag_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            return true; // cannot probe: trust netlink
        };
        let Ok(local) = listener.local_addr() else {
            return true;
        };
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let works = !matches!(
            socket_owner_netlink(local, unspecified),
            Err(NetlinkFailure::Owner(OwnerError::NotFound))
        );
        if !works {
            tracing::warn!(
                "netlink sock_diag has no TCP handler (tcp_diag module?): reading /proc/net/tcp instead"
            );
        }
        works
    })
}

/// The fallback: find the 4-tuple in `/proc/net/tcp` (IPv4 only) and
/// `/proc/net/tcp6` (IPv6, and IPv4 through dual-stack sockets).
fn socket_owner_procfs(source: SocketAddr, destination: SocketAddr) -> Result<u32, OwnerError> {
    let (source, destination) = (normalize(source), normalize(destination));
    let tables: &[&str] = if source.is_ipv4() {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/tcp6"]
    };
    for path in tables {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // No tcp6 table on a kernel without IPv6.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(OwnerError::Io(e)),
        };
        if let Some(uid) = parse_proc_net_tcp(&text, source, destination) {
            return Ok(uid);
        }
    }
    Err(OwnerError::NotFound)
}

/// The uid of the socket with this 4-tuple in the text of `/proc/net/tcp` or
/// `/proc/net/tcp6`, if it is there and has an owner.
///
/// A line reads `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`,
/// addresses as `ADDR:PORT` in hex: the port as a number, the address as the
/// kernel's in-memory 32-bit words each printed with `%08X` (so on a
/// little-endian host `127.0.0.1` is `0100007F`). Both sides are normalized,
/// so an IPv4 lookup matches a v4-mapped entry of `tcp6`. `TIME_WAIT`
/// remnants (state `06` or timer `3`) and request sockets (state `03`, inode
/// 0) have no owner and are skipped.
fn parse_proc_net_tcp(text: &str, source: SocketAddr, destination: SocketAddr) -> Option<u32> {
    let (source, destination) = (normalize(source), normalize(destination));
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_sl), Some(local), Some(remote), Some(state), Some(_queues), Some(timer)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let (Some(_retransmits), Some(uid), Some(_timeout), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // The header line fails here: "local_address" is no address.
        let (Some(local), Some(remote)) = (parse_proc_addr(local), parse_proc_addr(remote)) else {
            continue;
        };
        if normalize(local) != source || normalize(remote) != destination {
            continue;
        }
        let Ok(state) = u8::from_str_radix(state, 16) else {
            continue;
        };
        let time_wait = state == TCP_TIME_WAIT || timer.split(':').next() == Some("03");
        let request_sock = state == TCP_SYN_RECV && inode == "0";
        if time_wait || request_sock {
            continue;
        }
        if let Ok(uid) = uid.parse() {
            return Some(uid);
        }
    }
    None
}

/// `0100007F:0019` → `127.0.0.1:25`; 32 hex digits for IPv6.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests;
