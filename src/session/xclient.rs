//! Postfix's XCLIENT extension (<https://www.postfix.org/XCLIENT_README.html>):
//! reading which attributes the upstream advertises in its EHLO reply, and
//! writing the command that hands it the real client's address, HELO name and
//! login. Pure: bytes in, bytes out.

use std::net::IpAddr;

/// Attributes for Postfix's XCLIENT, describing the real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XclientAttrs<'a> {
    pub addr: IpAddr,
    pub port: u16,
    /// The client's verified host name; `[UNAVAILABLE]` is sent when absent.
    pub name: Option<&'a str>,
    /// What the client gave in HELO/EHLO; omitted when absent.
    pub helo: Option<&'a str>,
    /// The SASL login name, once authenticated; omitted when absent.
    pub login: Option<&'a str>,
}

/// The XCLIENT attributes the upstream advertised (one flag per name the
/// XCLIENT_README defines). All false means XCLIENT is not offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XclientSupport {
    pub name: bool,
    pub addr: bool,
    pub port: bool,
    pub proto: bool,
    pub helo: bool,
    pub login: bool,
    pub destaddr: bool,
    pub destport: bool,
}

impl XclientSupport {
    /// Whether any attribute mailbrake sends (ADDR, PORT, NAME, HELO, LOGIN) is supported.
    pub fn any(&self) -> bool {
        self.addr || self.port || self.name || self.helo || self.login
    }
}

/// The attributes advertised in the upstream's EHLO line for XCLIENT, given
/// either the arguments (`NAME ADDR PORT ...`) or the whole line
/// (`XCLIENT NAME ADDR ...`). Case-insensitive; unknown names are ignored.
pub fn supported(ehlo_line_args: &str) -> XclientSupport {
    let mut words = ehlo_line_args.split_ascii_whitespace().peekable();
    words.next_if(|w| w.eq_ignore_ascii_case("XCLIENT"));
    let mut support = XclientSupport::default();
    for word in words {
        let flag = match word.to_ascii_uppercase().as_str() {
            "NAME" => &mut support.name,
            "ADDR" => &mut support.addr,
            "PORT" => &mut support.port,
            "PROTO" => &mut support.proto,
            "HELO" => &mut support.helo,
            "LOGIN" => &mut support.login,
            "DESTADDR" => &mut support.destaddr,
            "DESTPORT" => &mut support.destport,
            _ => continue,
        };
        *flag = true;
    }
    support
}

/// The full command line, CRLF-terminated, with only the attributes `support`
/// lists, in the order ADDR, PORT, NAME, HELO, LOGIN:
/// `XCLIENT ADDR=192.0.2.1 PORT=4321 NAME=[UNAVAILABLE] HELO=client.example LOGIN=alice\r\n`.
///
/// An IPv6 address is written `IPV6:2001:db8::1`; the address is the
/// session's client, a [`ClientAddr`](crate::identity::ClientAddr)'s, so an
/// IPv4 client is never IPv4-mapped here. Values are xtext (RFC 3461 section 4).
///
/// Call it only when [`XclientSupport::any`] holds: otherwise the line is a bare
/// `XCLIENT\r\n`, which Postfix refuses with a 501.
///
/// The line is not split: with very long HELO or login values (xtext can
/// triple them) it may exceed 512 bytes; Postfix accepts lines up to its
/// `line_length_limit` (2048 by default).
pub fn command(attrs: &XclientAttrs<'_>, support: &XclientSupport) -> Vec<u8> {
    let mut line = b"XCLIENT".to_vec();
    let mut attr = |name: &str, value: &str| {
        line.push(b' ');
        line.extend(name.as_bytes());
        line.push(b'=');
        xtext_into(value.as_bytes(), &mut line);
    };
    if support.addr {
        let addr = match attrs.addr {
            IpAddr::V6(v6) => format!("IPV6:{v6}"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        attr("ADDR", &addr);
    }
    if support.port {
        attr("PORT", &attrs.port.to_string());
    }
    if support.name {
        attr("NAME", attrs.name.unwrap_or("[UNAVAILABLE]"));
    }
    if let (true, Some(helo)) = (support.helo, attrs.helo) {
        attr("HELO", helo);
    }
    if let (true, Some(login)) = (support.login, attrs.login) {
        attr("LOGIN", login);
    }
    line.extend(b"\r\n");
    line
}

/// Appends `value` as xtext (RFC 3461 section 4): bytes from `!` to `~` as
/// they are, except `+` and `=`; everything else as `+XX`, upper-case hex.
fn xtext_into(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend([b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xtext(value: &str) -> String {
        let mut out = Vec::new();
        xtext_into(value.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    const ALL: XclientSupport = XclientSupport {
        name: true,
        addr: true,
        port: true,
        proto: true,
        helo: true,
        login: true,
        destaddr: true,
        destport: true,
    };

    #[test]
    fn xtext_encoding() {
        let cases = [
            ("alice", "alice"),
            ("", ""),
            ("client.example", "client.example"),
            ("[UNAVAILABLE]", "[UNAVAILABLE]"),
            ("a+b", "a+2Bb"),
            ("a=b", "a+3Db"),
            ("a b", "a+20b"),
            ("!~", "!~"),
            ("tab\there", "tab+09here"),
            ("crlf\r\n", "crlf+0D+0A"),
            ("del\x7f", "del+7F"),
            ("nul\0", "nul+00"),
            ("jos\u{e9}", "jos+C3+A9"),
            ("user@example.com", "user@example.com"),
        ];
        for (input, expected) in cases {
            assert_eq!(xtext(input), expected, "{input:?}");
        }
    }

    #[test]
    fn command_lines() {
        let v4 = XclientAttrs {
            addr: "192.0.2.1".parse().unwrap(),
            port: 4321,
            name: None,
            helo: Some("client.example"),
            login: Some("alice"),
        };
        let minimal = XclientSupport {
            addr: true,
            port: true,
            ..XclientSupport::default()
        };
        let cases: Vec<(XclientAttrs<'_>, XclientSupport, &str)> = vec![
            (
                v4,
                ALL,
                "XCLIENT ADDR=192.0.2.1 PORT=4321 NAME=[UNAVAILABLE] HELO=client.example LOGIN=alice\r\n",
            ),
            (
                XclientAttrs {
                    addr: "2001:db8::1".parse().unwrap(),
                    name: Some("host.example"),
                    ..v4
                },
                ALL,
                "XCLIENT ADDR=IPV6:2001:db8::1 PORT=4321 NAME=host.example HELO=client.example LOGIN=alice\r\n",
            ),
            (
                XclientAttrs {
                    addr: crate::identity::normalize_ip("::ffff:192.0.2.1".parse().unwrap()),
                    ..v4
                },
                ALL,
                "XCLIENT ADDR=192.0.2.1 PORT=4321 NAME=[UNAVAILABLE] HELO=client.example LOGIN=alice\r\n",
            ),
            (
                XclientAttrs {
                    helo: None,
                    login: None,
                    ..v4
                },
                ALL,
                "XCLIENT ADDR=192.0.2.1 PORT=4321 NAME=[UNAVAILABLE]\r\n",
            ),
            (
                XclientAttrs {
                    helo: Some("[192.0.2.1]"),
                    login: Some("bob+tag=x y"),
                    ..v4
                },
                ALL,
                "XCLIENT ADDR=192.0.2.1 PORT=4321 NAME=[UNAVAILABLE] HELO=[192.0.2.1] LOGIN=bob+2Btag+3Dx+20y\r\n",
            ),
            (v4, minimal, "XCLIENT ADDR=192.0.2.1 PORT=4321\r\n"),
            (
                v4,
                XclientSupport {
                    login: true,
                    ..XclientSupport::default()
                },
                "XCLIENT LOGIN=alice\r\n",
            ),
        ];
        for (attrs, support, expected) in cases {
            assert!(support.any());
            let line = command(&attrs, &support);
            assert_eq!(String::from_utf8(line).unwrap(), expected);
        }
    }

    #[test]
    fn nothing_to_send_without_supported_attributes() {
        let attrs = XclientAttrs {
            addr: "192.0.2.1".parse().unwrap(),
            port: 25,
            name: None,
            helo: None,
            login: None,
        };
        let only_others = XclientSupport {
            proto: true,
            destaddr: true,
            destport: true,
            ..XclientSupport::default()
        };
        for support in [XclientSupport::default(), only_others] {
            assert!(!support.any(), "{support:?}");
            assert_eq!(command(&attrs, &support), b"XCLIENT\r\n");
        }
    }

    #[test]
    fn advertised_attributes() {
        let cases = [
            ("NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT", ALL),
            (
                "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT",
                ALL,
            ),
            (
                "xclient name addr port proto helo login destaddr destport",
                ALL,
            ),
            (
                "ADDR  Port\tfoo LOGIN",
                XclientSupport {
                    addr: true,
                    port: true,
                    login: true,
                    ..XclientSupport::default()
                },
            ),
            ("", XclientSupport::default()),
            ("XCLIENT", XclientSupport::default()),
            ("ADDRESS NAMES", XclientSupport::default()),
        ];
        for (args, expected) in cases {
            assert_eq!(supported(args), expected, "{args:?}");
        }
    }
}
