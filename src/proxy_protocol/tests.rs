use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A v2 header: signature, version/command byte, family/protocol byte, payload.
fn v2(version_command: u8, family_protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family_protocol);
    out.extend((payload.len() as u16).to_be_bytes());
    out.extend(payload);
    out
}

fn v2_tcp4_payload() -> Vec<u8> {
    let mut p = vec![192, 0, 2, 1, 198, 51, 100, 7];
    p.extend(4321u16.to_be_bytes());
    p.extend(25u16.to_be_bytes());
    p
}

/// A v2 TCP6 payload: source and destination addresses, then ports.
fn tcp6_payload(source: &str, destination: &str, ports: (u16, u16)) -> Vec<u8> {
    let mut p = Vec::new();
    for ip in [source, destination] {
        p.extend(ip.parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
    p.extend(ports.0.to_be_bytes());
    p.extend(ports.1.to_be_bytes());
    p
}

fn v2_tcp6_payload() -> Vec<u8> {
    tcp6_payload("2001:db8::1", "2001:db8::2", (4321, 587))
}

fn proxied(source: &str, destination: &str, consumed: usize) -> Inbound {
    Inbound::Proxied {
        source: addr(source),
        destination: addr(destination),
        consumed,
    }
}

/// Valid headers and what they parse to.
fn valid_headers() -> Vec<(&'static str, Vec<u8>, Inbound)> {
    let tcp4_tlv = {
        let mut p = v2_tcp4_payload();
        p.extend([0x04, 0x00, 0x02, 0xAA, 0xBB]); // NOOP TLV
        p
    };
    let mapped6 = tcp6_payload("::ffff:192.0.2.1", "2001:db8::2", (4321, 25));
    // Expected results with `consumed` 0: the whole header is filled in below.
    let cases: Vec<(&str, Vec<u8>, Inbound)> = vec![
        (
            "v1 TCP4",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 4321 25\r\n".to_vec(),
            proxied("192.0.2.1:4321", "198.51.100.7:25", 0),
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4321 587\r\n".to_vec(),
            proxied("[2001:db8::1]:4321", "[2001:db8::2]:587", 0),
        ),
        (
            "v1 TCP6 v4-mapped",
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 4321 25\r\n".to_vec(),
            proxied("192.0.2.1:4321", "[2001:db8::2]:25", 0),
        ),
        (
            "v1 UNKNOWN",
            b"PROXY UNKNOWN\r\n".to_vec(),
            Inbound::Local { consumed: 0 },
        ),
        (
            "v1 UNKNOWN with addresses",
            b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n".to_vec(),
            Inbound::Local { consumed: 0 },
        ),
        (
            "v2 TCP4",
            v2(0x21, 0x11, &v2_tcp4_payload()),
            proxied("192.0.2.1:4321", "198.51.100.7:25", 0),
        ),
        (
            "v2 TCP4 with a TLV",
            v2(0x21, 0x11, &tcp4_tlv),
            proxied("192.0.2.1:4321", "198.51.100.7:25", 0),
        ),
        (
            "v2 TCP6",
            v2(0x21, 0x21, &v2_tcp6_payload()),
            proxied("[2001:db8::1]:4321", "[2001:db8::2]:587", 0),
        ),
        (
            "v2 TCP6 v4-mapped",
            v2(0x21, 0x21, &mapped6),
            proxied("192.0.2.1:4321", "[2001:db8::2]:25", 0),
        ),
        (
            "v2 LOCAL",
            v2(0x20, 0x00, &[]),
            Inbound::Local { consumed: 0 },
        ),
        (
            "v2 LOCAL with addresses",
            v2(0x20, 0x11, &v2_tcp4_payload()),
            Inbound::Local { consumed: 0 },
        ),
        (
            "v2 PROXY UNSPEC",
            v2(0x21, 0x00, &[]),
            Inbound::Local { consumed: 0 },
        ),
        (
            "v2 PROXY AF_UNIX",
            v2(0x21, 0x31, &[0; 216]),
            Inbound::Local { consumed: 0 },
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, expected)| {
            let consumed = bytes.len();
            let expected = match expected {
                Inbound::Proxied {
                    source,
                    destination,
                    ..
                } => Inbound::Proxied {
                    source,
                    destination,
                    consumed,
                },
                Inbound::Local { .. } => Inbound::Local { consumed },
                Inbound::Incomplete => Inbound::Incomplete,
            };
            (name, bytes, expected)
        })
        .collect()
}

#[test]
fn parses_valid_headers() {
    for (name, header, expected) in valid_headers() {
        assert_eq!(parse_inbound(&header).unwrap(), expected, "{name}");
        // The client's first bytes after the header are not consumed.
        let mut with_smtp = header.clone();
        with_smtp.extend(b"EHLO client.example\r\n");
        assert_eq!(
            parse_inbound(&with_smtp).unwrap(),
            expected,
            "{name} + EHLO"
        );
    }
}

#[test]
fn every_prefix_is_incomplete() {
    for (name, header, _) in valid_headers() {
        for i in 0..header.len() {
            match parse_inbound(&header[..i]) {
                Ok(Inbound::Incomplete) => {}
                other => panic!("{name}: prefix of {i} bytes gave {other:?}"),
            }
        }
    }
}

#[test]
fn rejects_what_cannot_be_a_header() {
    let mut too_long_v2 = V2_SIGNATURE.to_vec();
    too_long_v2.extend([0x21, 0x11, 0xff, 0xff]);
    let mut v1_without_crlf = b"PROXY UNKNOWN ".to_vec();
    v1_without_crlf.resize(V1_MAX_LEN, b'a');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("SMTP", b"EHLO x\r\n".to_vec()),
        ("one SMTP byte", b"E".to_vec()),
        (
            "lower-case proxy",
            b"proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n".to_vec(),
        ),
        ("HTTP", b"GET / HTTP/1.1\r\n".to_vec()),
        ("TLS ClientHello", vec![0x16, 0x03, 0x01, 0x00, 0xa5]),
        (
            "v1 bad protocol",
            b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n".to_vec(),
        ),
        (
            "v1 lower-case protocol",
            b"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n".to_vec(),
        ),
        (
            "v1 v6 in TCP4",
            b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 192.0.2.300 198.51.100.7 1 2\r\n".to_vec(),
        ),
        (
            "v1 port too big",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n".to_vec(),
        ),
        (
            "v1 port leading zero",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n".to_vec(),
        ),
        (
            "v1 trailing junk",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 x\r\n".to_vec(),
        ),
        (
            "v1 bare LF then SMTP",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\nEHLO".to_vec(),
        ),
        ("v1 too long", v1_without_crlf),
        ("v1 double space", b"PROXY  TCP4".to_vec()),
        ("v1 unknown word, unterminated", b"PROXY X".to_vec()),
        (
            "v1 control byte, unterminated",
            b"PROXY TCP4 192.0.2.1\t".to_vec(),
        ),
        (
            "v1 CR inside, unterminated",
            b"PROXY TCP4 192.0.2.1\r\r".to_vec(),
        ),
        ("v1 no addresses", b"PROXY TCP4\r\n".to_vec()),
        (
            "v1 missing port",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n".to_vec(),
        ),
        ("v2 bad signature", b"\r\n\r\n\0\r\nQUIX\n".to_vec()),
        ("v2 version 1", v2(0x11, 0x11, &v2_tcp4_payload())),
        ("v2 bad command", v2(0x22, 0x11, &v2_tcp4_payload())),
        ("v2 bad family", v2(0x21, 0x41, &v2_tcp4_payload())),
        ("v2 short addresses", v2(0x21, 0x11, &[192, 0, 2, 1])),
        ("v2 datagram", v2(0x21, 0x12, &v2_tcp4_payload())),
        ("v2 over our cap", too_long_v2),
    ];
    for (name, bytes) in cases {
        assert!(
            parse_inbound(&bytes).is_err(),
            "{name}: {:?}",
            parse_inbound(&bytes)
        );
    }
}

/// Corrupting any byte of a valid header never panics, and whatever is
/// accepted lies within the input.
#[test]
fn corrupted_headers_never_panic() {
    for (name, header, _) in valid_headers() {
        for at in 0..header.len() {
            for byte in [0x00, b' ', b'\r', b'\n', b'9', b':', 0x7f, 0xff] {
                let mut bad = header.clone();
                bad[at] = byte;
                for end in 0..=bad.len() {
                    match parse_inbound(&bad[..end]) {
                        Ok(Inbound::Proxied { consumed, .. } | Inbound::Local { consumed }) => {
                            assert!(consumed <= end, "{name}: byte {at} = {byte:#x}")
                        }
                        Ok(Inbound::Incomplete) | Err(_) => {}
                    }
                }
            }
        }
    }
}

#[test]
fn encodes_exact_bytes() {
    let mut v2_tcp4 = V2_SIGNATURE.to_vec();
    v2_tcp4.extend([0x21, 0x11, 0x00, 0x0c]);
    v2_tcp4.extend(v2_tcp4_payload());
    let cases: Vec<(ProxyVersion, &str, &str, Vec<u8>)> = vec![
        (
            ProxyVersion::V1,
            "192.0.2.1:4321",
            "198.51.100.7:25",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 4321 25\r\n".to_vec(),
        ),
        (
            ProxyVersion::V1,
            "[2001:db8::1]:4321",
            "[2001:db8::2]:587",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4321 587\r\n".to_vec(),
        ),
        // v4-mapped on a dual-stack listener: written as plain IPv4.
        (
            ProxyVersion::V1,
            "[::ffff:192.0.2.1]:4321",
            "[::ffff:198.51.100.7]:25",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 4321 25\r\n".to_vec(),
        ),
        // Mixed families: the IPv4 side is mapped into IPv6.
        (
            ProxyVersion::V1,
            "192.0.2.1:4321",
            "[2001:db8::2]:25",
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 4321 25\r\n".to_vec(),
        ),
        (
            ProxyVersion::V2,
            "192.0.2.1:4321",
            "198.51.100.7:25",
            v2_tcp4.clone(),
        ),
        (
            ProxyVersion::V2,
            "[::ffff:192.0.2.1]:4321",
            "198.51.100.7:25",
            v2_tcp4,
        ),
        (
            ProxyVersion::V2,
            "[2001:db8::1]:4321",
            "[2001:db8::2]:587",
            v2(0x21, 0x21, &v2_tcp6_payload()),
        ),
    ];
    for (version, client, local, expected) in cases {
        assert_eq!(
            encode(version, addr(client), addr(local)),
            expected,
            "{version:?} {client} {local}"
        );
    }
}

#[test]
fn round_trips() {
    let pairs = [
        ("192.0.2.1:4321", "198.51.100.7:25"),
        ("[2001:db8::1]:4321", "[2001:db8::2]:587"),
        ("[::ffff:192.0.2.1]:1", "[::ffff:198.51.100.7]:65535"),
        ("192.0.2.1:4321", "[2001:db8::2]:25"),
        ("[2001:db8::1]:4321", "198.51.100.7:25"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
    ];
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        for (client, local) in pairs {
            let header = encode(version, addr(client), addr(local));
            assert_eq!(
                parse_inbound(&header).unwrap(),
                Inbound::Proxied {
                    source: normalize(addr(client)),
                    destination: normalize(addr(local)),
                    consumed: header.len(),
                },
                "{version:?} {client} {local}"
            );
        }
    }
}

#[test]
fn trusted_peers() {
    let trusted: Vec<IpNet> = ["10.0.0.0/8", "2001:db8:1::/48", "::ffff:192.0.2.0/120"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let cases = [
        ("10.1.2.3", true),
        ("::ffff:10.1.2.3", true),
        ("11.0.0.1", false),
        ("::ffff:11.0.0.1", false),
        ("2001:db8:1::5", true),
        ("2001:db8:2::5", false),
        // An IPv4 peer matches an IPv6 network holding its mapped form.
        ("192.0.2.9", true),
        ("::ffff:192.0.2.9", true),
        // IPv4-compatible (::a.b.c.d) is not IPv4-mapped.
        ("::10.1.2.3", false),
    ];
    for (peer, expected) in cases {
        assert_eq!(
            is_trusted(peer.parse().unwrap(), &trusted),
            expected,
            "{peer}"
        );
    }
    assert!(!is_trusted("10.1.2.3".parse().unwrap(), &[]));
}
