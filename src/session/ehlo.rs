//! The EHLO reply: what the upstream can do, and the capability list the
//! client is shown, rewritten line by line from the upstream's raw reply.
//!
//! Rules: STARTTLS only where this listener terminates TLS (and has not yet);
//! XCLIENT, XFORWARD and extensions that would switch the dialogue into a
//! mode mailbrake cannot follow are never shown; a SASL mechanism mailbrake
//! cannot read a username from is removed from the `AUTH` and `AUTH=` lines
//! (a client using it would be counted under its address, not its login:
//! [`Mechanism::user_readable`]), a line left with none is dropped, and AUTH
//! is hidden while it would be refused anyway.

use super::auth::Mechanism;
use super::reply::{Reply, trim_eol};

/// Extensions never shown to the client.
///
/// XCLIENT and XFORWARD let a client claim another identity; XEXCH50 and
/// X-LINK2STATE are Exchange extensions with binary payloads mailbrake does
/// not frame.
const HIDDEN: &[&str] = &["XCLIENT", "XFORWARD", "XEXCH50", "X-LINK2STATE", "STARTTLS"];

/// What this session lets the client see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Add STARTTLS (this listener terminates TLS and the client leg is still plain).
    pub starttls: bool,
    /// Show AUTH (the client leg is TLS, or plaintext AUTH is allowed).
    pub auth: bool,
}

/// What the upstream advertised, for mailbrake's own use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamCaps {
    pub starttls: bool,
    /// The XCLIENT argument list (`NAME ADDR PORT ...`), if advertised.
    pub xclient: Option<String>,
}

/// The keyword of a capability line, upper-cased, and its arguments.
fn keyword(text: &[u8]) -> (String, &[u8]) {
    let end = text
        .iter()
        .position(|&b| b == b' ' || b == b'=')
        .unwrap_or(text.len());
    let key = String::from_utf8_lossy(&text[..end]).to_ascii_uppercase();
    let args = text.get(end + 1..).unwrap_or(b"");
    (key, args)
}

/// Reads the upstream's capabilities from a 250 EHLO reply.
pub fn capabilities(reply: &Reply) -> UpstreamCaps {
    let mut caps = UpstreamCaps::default();
    for text in reply.texts().skip(1) {
        match keyword(text) {
            (k, _) if k == "STARTTLS" => caps.starttls = true,
            (k, args) if k == "XCLIENT" => {
                caps.xclient = Some(String::from_utf8_lossy(args).into_owned());
            }
            _ => {}
        }
    }
    caps
}

/// Rewrites a 250 EHLO reply for the client; other replies pass unchanged.
pub fn rewrite(reply: &Reply, offer: Offer) -> Vec<u8> {
    if reply.code != 250 {
        return reply.raw.clone();
    }
    // (text, line ending) of every line kept, the greeting line first.
    let mut kept: Vec<(std::borrow::Cow<'_, [u8]>, &[u8])> = Vec::new();
    for (i, line) in reply.raw.split_inclusive(|&b| b == b'\n').enumerate() {
        let body = trim_eol(line);
        let eol = &line[body.len()..];
        let text = body.get(4..).unwrap_or(b"");
        if i == 0 {
            kept.push((text.into(), eol));
            continue;
        }
        let (key, args) = keyword(text);
        if HIDDEN.contains(&key.as_str()) {
            continue;
        }
        if key == "AUTH" {
            if !offer.auth {
                continue;
            }
            let mechs: Vec<&[u8]> = args
                .split(|&b| b == b' ')
                .filter(|m| !m.is_empty() && Mechanism::from_name(m).user_readable())
                .collect();
            if mechs.is_empty() {
                continue;
            }
            let sep = &text[4..5]; // ' ' or '=' as the upstream wrote it
            let mut line = b"AUTH".to_vec();
            line.extend_from_slice(sep);
            line.extend_from_slice(&mechs.join(&b' '));
            kept.push((line.into(), eol));
            continue;
        }
        kept.push((text.into(), eol));
    }
    if offer.starttls {
        kept.push((b"STARTTLS"[..].into(), b"\r\n"));
    }
    let mut out = Vec::with_capacity(reply.raw.len() + 16);
    let last = kept.len() - 1;
    for (i, (text, eol)) in kept.iter().enumerate() {
        out.extend_from_slice(b"250");
        out.push(if i == last { b' ' } else { b'-' });
        out.extend_from_slice(text);
        out.extend_from_slice(if eol.is_empty() { b"\r\n" } else { eol });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &[u8]) -> Reply {
        let code = std::str::from_utf8(&raw[..3]).unwrap().parse().unwrap();
        Reply {
            code,
            raw: raw.to_vec(),
        }
    }

    const POSTFIX: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-STARTTLS\r\n250-AUTH PLAIN LOGIN SCRAM-SHA-256-PLUS SCRAM-SHA-256\r\n\
250-AUTH=PLAIN LOGIN\r\n250-XCLIENT NAME ADDR PORT HELO LOGIN\r\n250-XFORWARD NAME ADDR\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";

    #[test]
    fn rewrites_capabilities_line_by_line() {
        let cases: &[(Offer, &[u8])] = &[
            (
                Offer {
                    starttls: true,
                    auth: false,
                },
                b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
            ),
            (
                Offer {
                    starttls: false,
                    auth: true,
                },
                b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
250-AUTH PLAIN LOGIN SCRAM-SHA-256\r\n250-AUTH=PLAIN LOGIN\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
            ),
        ];
        for (offer, expected) in cases {
            let got = rewrite(&reply(POSTFIX), *offer);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected),
                "{offer:?}"
            );
        }
    }

    #[test]
    fn single_line_and_only_plus_mechanisms() {
        let got = rewrite(
            &reply(b"250 mx\r\n"),
            Offer {
                starttls: true,
                auth: true,
            },
        );
        assert_eq!(got, b"250-mx\r\n250 STARTTLS\r\n");
        let got = rewrite(
            &reply(b"250-mx\r\n250 AUTH SCRAM-SHA-1-PLUS\r\n"),
            Offer {
                starttls: false,
                auth: true,
            },
        );
        assert_eq!(got, b"250 mx\r\n");
        let refused = reply(b"550 no\r\n");
        assert_eq!(
            rewrite(
                &refused,
                Offer {
                    starttls: true,
                    auth: true
                }
            ),
            b"550 no\r\n"
        );
    }

    /// What Dovecot's submission server offers with every mechanism it has,
    /// and an old-style `AUTH=` line.
    const DOVECOT: &[u8] = b"250-mx.example\r\n250-8BITMIME\r\n\
250-AUTH PLAIN LOGIN CRAM-MD5 DIGEST-MD5 NTLM GSSAPI GSS-SPNEGO SCRAM-SHA-1 \
SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-256-PLUS OAUTHBEARER XOAUTH2 ANONYMOUS EXTERNAL OTP\r\n\
250-AUTH=login plain gssapi\r\n250 SMTPUTF8\r\n";

    #[test]
    fn keeps_exactly_the_mechanisms_whose_user_mailbrake_reads() {
        let auth = Offer {
            starttls: false,
            auth: true,
        };
        let cases: &[(&[u8], &[u8])] = &[
            (
                DOVECOT,
                b"250-mx.example\r\n250-8BITMIME\r\n\
250-AUTH PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1 SCRAM-SHA-256 OAUTHBEARER XOAUTH2\r\n\
250-AUTH=login plain\r\n250 SMTPUTF8\r\n",
            ),
            // A line left with no mechanism goes, AUTH= as well as AUTH.
            (
                b"250-mx\r\n250-AUTH GSSAPI NTLM\r\n250-AUTH=GSSAPI\r\n250 8BITMIME\r\n",
                b"250-mx\r\n250 8BITMIME\r\n",
            ),
            (
                b"250-mx\r\n250-AUTH=EXTERNAL\r\n250 AUTH EXTERNAL ANONYMOUS\r\n",
                b"250 mx\r\n",
            ),
            // Extra spaces go; names keep their spelling.
            (
                b"250-mx\r\n250 AUTH  gssapi  Plain\r\n",
                b"250-mx\r\n250 AUTH Plain\r\n",
            ),
        ];
        for (upstream, expected) in cases {
            let got = rewrite(&reply(upstream), auth);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn the_client_can_use_every_mechanism_shown_and_none_removed() {
        let auth = Offer {
            starttls: false,
            auth: true,
        };
        let shown = rewrite(&reply(DOVECOT), auth);
        let mechanisms = |raw: &[u8]| -> Vec<String> {
            let text = String::from_utf8_lossy(raw).into_owned();
            text.lines()
                .filter_map(|l| l.get(4..))
                .filter(|l| l[..4].eq_ignore_ascii_case("AUTH"))
                .flat_map(|l| l[5..].split(' ').map(str::to_owned).collect::<Vec<_>>())
                .filter(|m| !m.is_empty())
                .collect()
        };
        let kept = mechanisms(&shown);
        assert_eq!(kept.len(), 10, "{kept:?}");
        for m in mechanisms(DOVECOT) {
            // The client's AUTH command, parsed as the client side parses it.
            let line = format!("AUTH {m}\r\n");
            let Ok(smtp_proto::Request::Auth { mechanism, .. }) =
                smtp_proto::Request::parse(&mut line.as_bytes().iter())
            else {
                panic!("{line:?} does not parse");
            };
            let usable = Mechanism::from_smtp_proto(mechanism).user_readable();
            assert_eq!(usable, kept.contains(&m), "{m}");
        }
    }

    #[test]
    fn reads_upstream_capabilities() {
        let caps = capabilities(&reply(POSTFIX));
        assert!(caps.starttls);
        assert_eq!(caps.xclient.as_deref(), Some("NAME ADDR PORT HELO LOGIN"));
        assert_eq!(capabilities(&reply(b"250 mx\r\n")), UpstreamCaps::default());
    }
}
