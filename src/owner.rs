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

use crate::orig_dst::normalize;

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
/// with many sockets). Async callers may prefer `tokio::task::spawn_blocking`.
pub fn socket_owner(source: SocketAddr, destination: SocketAddr) -> Result<u32, OwnerError> {
    let (source, destination) = (normalize(source), normalize(destination));
    if source.is_ipv4() != destination.is_ipv4() {
        // No socket connects an IPv4 address to a native IPv6 one.
        return Err(OwnerError::NotFound);
    }
    match socket_owner_netlink(source, destination) {
        Ok(uid) => Ok(uid),
        Err(NetlinkFailure::Unavailable(e)) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "netlink sock_diag unavailable: reading /proc/net/tcp instead");
            });
            socket_owner_procfs(source, destination)
        }
        Err(NetlinkFailure::Owner(OwnerError::NotFound)) if !tcp_diag_works() => {
            socket_owner_procfs(source, destination)
        }
        Err(NetlinkFailure::Owner(e)) => Err(e),
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
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Lines as Linux prints them (x86-64, little-endian).
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2729 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 320200C0:0019 01 00000000:00000000 00:00000000 00000000  1001        0 40001 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C351 0200007F:0019 01 00000000:00000000 02:000A7D8C 00000000  1002        0 40002 2 0000000000000000 20 4 30 10 -1
   3: 0100007F:C352 320200C0:0019 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0100007F:2729 0100007F:C353 03 00000000:00000000 01:00000064 00000000   108        0 0 1 0000000000000000 20 4 30 10 -1
   5: 0A0B000A:D431 0100A8C0:01BB 01 00000000:00000000 02:00000E1C 00000000     0        0 40005 1 0000000000000000 20 4 30 10 -1
   6: 0100007F:C354 320200C0:0019 05 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0019 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20245 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:D6D8 00000000000000000000000001000000:2729 01 00000000:00000000 00:00000000 00000000  1003        0 50001 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:C355 0000000000000000FFFF0000320200C0:0019 01 00000000:00000000 00:00000000 00000000  1004        0 50002 1 0000000000000000 20 4 30 10 -1
   3: B80D0120000000000000000001000000:E001 B80D0120000000000000000050000000:0019 01 00000000:00000000 00:00000000 00000000  1005        0 50003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_addresses_parse() {
        let cases = [
            ("0100007F:0019", Some("127.0.0.1:25")),
            ("320200C0:C350", Some("192.0.2.50:50000")),
            ("00000000:0000", Some("0.0.0.0:0")),
            ("00000000000000000000000001000000:2729", Some("[::1]:10025")),
            (
                "0000000000000000FFFF00000100007F:0019",
                Some("[::ffff:127.0.0.1]:25"),
            ),
            (
                "B80D0120000000000000000050000000:0019",
                Some("[2001:db8::50]:25"),
            ),
            ("local_address", None),
            ("0100007F", None),
            ("0100007F:", None),
            ("0100007:0019", None),
            ("0100007G:0019", None),
            ("+100007F:0019", None),
            ("0100007F:10000", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_proc_addr(text), expected.map(addr), "{text}");
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_tcp_lookups() {
        let cases: &[(&str, &str, &str, Option<u32>)] = &[
            // Redirected: the client socket is connected to the original
            // destination (192.0.2.50:25), not to mailbrake.
            (TCP, "127.0.0.1:50000", "192.0.2.50:25", Some(1001)),
            (TCP, "127.0.0.1:50001", "127.0.0.2:25", Some(1002)),
            // Same source, wrong destination or port: not this socket.
            (TCP, "127.0.0.1:50000", "192.0.2.51:25", None),
            (TCP, "127.0.0.1:50000", "192.0.2.50:587", None),
            (TCP, "127.0.0.1:50009", "192.0.2.50:25", None),
            // Given v4-mapped, looked up as IPv4.
            (
                TCP,
                "[::ffff:127.0.0.1]:50000",
                "[::ffff:192.0.2.50]:25",
                Some(1001),
            ),
            // TIME_WAIT (state 06) and FIN_WAIT2 time-wait remnants (timer 3).
            (TCP, "127.0.0.1:50002", "192.0.2.50:25", None),
            (TCP, "127.0.0.1:50004", "192.0.2.50:25", None),
            // A request socket (SYN_RECV, inode 0): no owner.
            (TCP, "127.0.0.1:10025", "127.0.0.1:50003", None),
            // A listener is not a connection.
            (TCP, "127.0.0.1:10025", "127.0.0.1:1", None),
            (TCP, "127.0.0.1:10025", "0.0.0.0:0", Some(108)),
            // Root owns sockets too.
            (TCP, "10.0.11.10:54321", "192.168.0.1:443", Some(0)),
            // IPv6 table.
            (TCP6, "[::1]:55000", "[::1]:10025", Some(1003)),
            (TCP6, "[2001:db8::1]:57345", "[2001:db8::50]:25", Some(1005)),
            (TCP6, "[2001:db8::1]:57345", "[2001:db8::51]:25", None),
            // A dual-stack client connected to an IPv4 address, found by an
            // IPv4 lookup and by a v4-mapped one.
            (TCP6, "127.0.0.1:50005", "192.0.2.50:25", Some(1004)),
            (
                TCP6,
                "[::ffff:127.0.0.1]:50005",
                "[::ffff:192.0.2.50]:25",
                Some(1004),
            ),
            // Wrong table for the family.
            (TCP, "[::1]:55000", "[::1]:10025", None),
            (TCP6, "127.0.0.1:50000", "192.0.2.50:25", None),
            // Nothing to read.
            ("", "127.0.0.1:50000", "192.0.2.50:25", None),
            (
                "garbage\n1: x y z\n",
                "127.0.0.1:50000",
                "192.0.2.50:25",
                None,
            ),
        ];
        for (table, source, destination, expected) in cases {
            assert_eq!(
                parse_proc_net_tcp(table, addr(source), addr(destination)),
                *expected,
                "{source} -> {destination}"
            );
        }
    }

    fn current_uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    /// Connects to a fresh listener on `ip` and checks every path finds the
    /// client socket's owner: us.
    fn check_own_connection(ip: IpAddr) {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let server_addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(server_addr).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        assert_eq!(peer, client_addr);

        let uid = current_uid();
        assert_eq!(socket_owner(client_addr, server_addr).unwrap(), uid);
        assert_eq!(
            socket_owner_netlink(client_addr, server_addr).unwrap(),
            uid,
            "via netlink"
        );
        assert_eq!(
            socket_owner_procfs(client_addr, server_addr).unwrap(),
            uid,
            "via /proc"
        );
        // The server end is a socket of ours too, looked up the other way.
        assert_eq!(socket_owner(server_addr, client_addr).unwrap(), uid);
    }

    #[test]
    fn finds_own_socket_ipv4() {
        check_own_connection(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn finds_own_socket_ipv6() {
        if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
            eprintln!("skipped: no IPv6 loopback");
            return;
        }
        check_own_connection(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn finds_v4_connection_given_mapped_addresses() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(server_addr).unwrap();
        let client_addr = client.local_addr().unwrap();
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        assert_eq!(
            socket_owner(mapped(client_addr), mapped(server_addr)).unwrap(),
            current_uid()
        );
    }

    /// A closed client socket lingers in `TIME_WAIT`, which the kernel
    /// reports with uid 0: that must not be taken for root's socket.
    #[test]
    fn time_wait_socket_has_no_owner() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(server_addr).unwrap();
        let client_addr = client.local_addr().unwrap();
        let (server, _) = listener.accept().unwrap();
        // The client closes first, so its end is the one left in TIME_WAIT.
        drop(client);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut &server, &mut rest).unwrap();
        drop(server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(":{:04X} ", client_addr.port())) && l.contains(" 06 "))
        {
            assert!(std::time::Instant::now() < deadline, "no TIME_WAIT entry");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(matches!(
            socket_owner_netlink(client_addr, server_addr),
            Err(NetlinkFailure::Owner(OwnerError::NotFound))
        ));
        assert!(matches!(
            socket_owner_procfs(client_addr, server_addr),
            Err(OwnerError::NotFound)
        ));
    }

    #[test]
    fn missing_socket_is_not_found() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(server_addr).unwrap();
        let client_addr = client.local_addr().unwrap();
        let elsewhere = addr("192.0.2.1:25");

        let cases = [
            // A real source with the wrong destination.
            (client_addr, elsewhere),
            // A client on another host.
            (addr("192.0.2.7:40000"), server_addr),
            // The listener's own address and port with a destination it is
            // not connected to: the kernel's lookup falls back to the
            // listener, which must not be taken for the answer.
            (server_addr, elsewhere),
            // Mixed families.
            (client_addr, addr("[2001:db8::1]:25")),
        ];
        for (source, destination) in cases {
            assert!(
                matches!(socket_owner(source, destination), Err(OwnerError::NotFound)),
                "{source} -> {destination}: {:?}",
                socket_owner(source, destination)
            );
            assert!(
                matches!(
                    socket_owner_procfs(source, destination),
                    Err(OwnerError::NotFound)
                ),
                "{source} -> {destination} via /proc"
            );
        }
        assert!(matches!(
            socket_owner_netlink(client_addr, elsewhere),
            Err(NetlinkFailure::Owner(OwnerError::NotFound))
        ));
        assert!(tcp_diag_works());
    }
}
