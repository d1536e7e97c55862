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
