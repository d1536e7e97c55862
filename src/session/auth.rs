//! AUTH: reading the username out of a relayed SASL exchange, so it can
//! become the session's identity once the upstream answers 235.
//!
//! Only the username is ever kept. Passwords, digests and tokens are decoded
//! into a temporary buffer and dropped; nothing here is ever logged.

use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A SASL username, as the client gave it (control characters removed,
/// at most [`Username::MAX`] bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MAX: usize = 256;

    fn new(raw: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(raw);
        let clean: String = text.chars().filter(|c| !c.is_control()).collect();
        if clean.is_empty() || clean.len() > Self::MAX {
            return None;
        }
        Some(Username(clean))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mechanisms mailbrake can read a username from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    XOauth2,
    OAuthBearer,
    Scram,
    Other,
}

impl Mechanism {
    pub fn from_smtp_proto(mech: u64) -> Self {
        use smtp_proto::*;
        match mech {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            AUTH_CRAM_MD5 => Mechanism::CramMd5,
            AUTH_XOAUTH2 => Mechanism::XOauth2,
            AUTH_OAUTHBEARER => Mechanism::OAuthBearer,
            AUTH_SCRAM_SHA_1 | AUTH_SCRAM_SHA_256 => Mechanism::Scram,
            _ => Mechanism::Other,
        }
    }

    /// Name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::XOauth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Scram => "SCRAM",
            Mechanism::Other => "other",
        }
    }
}

/// Follows one AUTH exchange from the client's side.
#[derive(Debug, Clone)]
pub struct SaslExchange {
    pub mechanism: Mechanism,
    /// Client responses seen so far (the initial response counts).
    responses: u32,
    username: Option<Username>,
}

impl SaslExchange {
    /// Starts an exchange; `initial` is the initial response on the AUTH line, if any.
    pub fn start(mechanism: Mechanism, initial: &[u8]) -> Self {
        let mut x = SaslExchange {
            mechanism,
            responses: 0,
            username: None,
        };
        if !initial.is_empty() {
            x.on_response(initial);
        }
        x
    }

    /// One client response line (base64, without its line ending).
    pub fn on_response(&mut self, line: &[u8]) {
        self.responses += 1;
        if self.username.is_some() || self.responses > 1 {
            return;
        }
        let decoded = if line == b"=" {
            Vec::new()
        } else {
            match decode(line) {
                Some(d) => d,
                None => return,
            }
        };
        self.username = match self.mechanism {
            Mechanism::Plain => plain_authcid(&decoded),
            Mechanism::Login => Username::new(&decoded),
            Mechanism::CramMd5 => decoded
                .iter()
                .rposition(|&b| b == b' ')
                .and_then(|sp| Username::new(&decoded[..sp])),
            Mechanism::XOauth2 => field(&decoded, b"user=", 0x01),
            Mechanism::OAuthBearer => field(&decoded, b"a=", b','),
            Mechanism::Scram => scram_user(&decoded),
            Mechanism::Other => None,
        };
    }

    /// The username, once the client has sent it.
    pub fn username(&self) -> Option<&Username> {
        self.username.as_ref()
    }
}

/// The base64 of SASL responses, decoded at least as leniently as the
/// servers do, wherever they all decode to the same bytes:
///
/// - Dovecot 2.3 (`base64_decode`, the one Postfix's Dovecot SASL reaches,
///   checked against 2.3.19): skips SP, TAB, CR and LF anywhere, ignores
///   non-zero trailing bits, needs the padding, refuses anything after it;
/// - Cyrus SASL 2.1.28 (`sasl_decode64`, Postfix's Cyrus SASL): no
///   whitespace, ignores trailing bits, needs the padding, refuses anything
///   after it;
/// - Python's `b64decode(validate=True)` (aiosmtpd): the same as Cyrus.
///
/// So whitespace is skipped, trailing bits are ignored, and padding may be
/// missing (a decoder that accepts that decodes to the same bytes). Data
/// after the padding is refused: the decoders that accept it disagree (some
/// stop at the padding, others decode on), so no username read from it
/// could be trusted to be the server's.
const SASL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    SASL_BASE64.decode(compact).ok()
}

/// PLAIN: `authzid NUL authcid NUL passwd`; the identity is the authcid.
fn plain_authcid(d: &[u8]) -> Option<Username> {
    let mut parts = d.splitn(3, |&b| b == 0);
    let _authzid = parts.next()?;
    let authcid = parts.next()?;
    parts.next()?;
    Username::new(authcid)
}

/// The value after `key` in a `sep`-separated list.
fn field(d: &[u8], key: &[u8], sep: u8) -> Option<Username> {
    d.split(|&b| b == sep || b == 0x01)
        .find_map(|part| part.strip_prefix(key))
        .and_then(Username::new)
}

/// SCRAM client-first-message: `gs2-header n=user,r=nonce`, with `=2C` and `=3D` escapes.
fn scram_user(d: &[u8]) -> Option<Username> {
    let raw = d
        .split(|&b| b == b',')
        .find_map(|part| part.strip_prefix(b"n="))?;
    let text = String::from_utf8_lossy(raw)
        .replace("=2C", ",")
        .replace("=3D", "=");
    Username::new(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        STANDARD.encode(s).into_bytes()
    }

    #[test]
    fn decodes_base64_as_leniently_as_the_servers() {
        // "\0user\0pw" is AHVzZXIAcHc= (one padding byte); "user" is dXNlcg== (two).
        let ok = |s: &str| Some(s.as_bytes().to_vec());
        let cases: &[(&[u8], Option<Vec<u8>>)] = &[
            (b"AHVzZXIAcHc=", ok("\0user\0pw")),
            (b"dXNlcg==", ok("user")),
            // Padding missing, in part or whole.
            (b"AHVzZXIAcHc", ok("\0user\0pw")),
            (b"dXNlcg", ok("user")),
            (b"dXNlcg=", ok("user")),
            // Non-zero trailing bits (Dovecot, Cyrus and Python ignore them).
            (b"AHVzZXIAcHd=", ok("\0user\0pw")),
            (b"dXNlch==", ok("user")),
            (b"dXNlcv==", ok("user")),
            (b"dXNlch", ok("user")),
            // Whitespace anywhere, padding included (Dovecot skips it).
            (b"AHVz ZXIAcHc=", ok("\0user\0pw")),
            (b" dXNlcg== ", ok("user")),
            (b"dX\tNl\r\ncg=\t=", ok("user")),
            (b"", ok("")),
            // Data after the padding: decoders disagree on it.
            (b"dXNlcg==ZXZpbA==", None),
            (b"dXNlcg==Zg", None),
            (b"AHVzZXIAcHc==", None),
            (b"dXNlcg===", None),
            (b"dXNl=cg==", None),
            // Not base64 at all.
            (b"=", None),
            (b"dXNlc", None),
            (b"dXN!lcg==", None),
            (b"dXNl-cg_", None),
            (b"dXNlcg==\x0b", None),
            (b"\xffdXNlcg==", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                &decode(text),
                expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn reads_the_username_of_each_mechanism() {
        // (mechanism, initial response, later responses, username)
        type Case = (Mechanism, Vec<u8>, Vec<Vec<u8>>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (
                Mechanism::Plain,
                b64(b"\0alice@example.com\0secret"),
                vec![],
                Some("alice@example.com"),
            ),
            (
                Mechanism::Plain,
                vec![],
                vec![b64(b"admin\0bob\0pw")],
                Some("bob"),
            ),
            (
                Mechanism::Login,
                vec![],
                vec![b64(b"carol"), b64(b"pw")],
                Some("carol"),
            ),
            (
                Mechanism::Login,
                b64(b"dave"),
                vec![b64(b"pw")],
                Some("dave"),
            ),
            (
                Mechanism::CramMd5,
                vec![],
                vec![b64(b"erin b913a602c7eda7a495b4e6e7334d3890")],
                Some("erin"),
            ),
            (
                Mechanism::XOauth2,
                b64(b"user=frank@example.com\x01auth=Bearer tok\x01\x01"),
                vec![],
                Some("frank@example.com"),
            ),
            (
                Mechanism::OAuthBearer,
                b64(b"n,a=grace@example.com,\x01auth=Bearer t\x01\x01"),
                vec![],
                Some("grace@example.com"),
            ),
            (
                Mechanism::Scram,
                b64(b"n,,n=h=2Ci,r=abc"),
                vec![],
                Some("h,i"),
            ),
            (Mechanism::Plain, b"!!notbase64".to_vec(), vec![], None),
            (Mechanism::Plain, b"=".to_vec(), vec![], None),
            (Mechanism::Other, b64(b"x"), vec![], None),
        ];
        for (mech, initial, responses, expected) in cases {
            let mut x = SaslExchange::start(mech, &initial);
            for r in &responses {
                x.on_response(r);
            }
            assert_eq!(x.username().map(Username::as_str), expected, "{mech:?}");
        }
    }

    #[test]
    fn password_is_never_taken_as_username() {
        // LOGIN: a second response (the password) must not replace a missing first.
        let mut x = SaslExchange::start(Mechanism::Login, b"");
        x.on_response(b"*bad*");
        x.on_response(&b64(b"password"));
        assert_eq!(x.username(), None);
    }
}
