//! AUTH: reading the username out of a relayed SASL exchange, so it can
//! become the session's identity once the upstream answers 235.
//!
//! The identity is worth something only if it is the one the MTA accepted: a
//! client whose username mailbrake cannot read would be counted under its
//! address instead (a larger bucket, or someone else's), and one whose
//! username mailbrake reads differently from the MTA would be counted under
//! someone else's name. So mailbrake reads a username only where the servers
//! all read the same one, and the rest must not reach the MTA:
//!
//! - a mechanism it cannot read a user from is removed from the EHLO reply,
//!   and an AUTH with it is refused ([`Mechanism::user_readable`]);
//! - a response it cannot read ([`SaslExchange::unreadable`]) is not
//!   forwarded: the AUTH line is answered locally, a later response is
//!   replaced by a cancellation (`*`).
//!
//! Only the username is ever kept. Only the message that names the user is
//! decoded (with a PLAIN password in it, into a temporary buffer that is
//! dropped); passwords, digests and tokens in later messages are never
//! looked at, and nothing here is ever logged.

mod read;
#[cfg(test)]
mod tests;

use std::fmt;
use zeroize::Zeroizing;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A SASL username, as the server will see it: valid UTF-8, no control
/// characters, 1 to [`Username::MAX`] bytes. Anything else is
/// [`Unreadable::Username`], never cleaned up into another name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MAX: usize = 256;

    fn new(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let fits = (1..=Self::MAX).contains(&text.len());
        (fits && !text.chars().any(char::is_control)).then(|| Username(text.to_owned()))
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

/// The SASL mechanisms, as far as mailbrake tells them apart.
///
/// Every one but [`Mechanism::Other`] names its user in a client message
/// (see `read.rs` for where). `Other` is everything mailbrake cannot read a
/// user from, so it is never offered to the client:
/// GSSAPI, GSS-SPNEGO, GS2-KRB5, KERBEROS_V4/V5 (the principal travels inside
/// a Kerberos ticket); NTLM (in a binary message, mapped to an account by the
/// server); EXTERNAL (the identity comes from a TLS client certificate, and
/// mailbrake terminates TLS); ANONYMOUS (no identity); the `*-PLUS` variants
/// (channel binding cannot cross a TLS-terminating proxy); OTP, SKEY, SECURID,
/// NMAS and the other rarely deployed ones; and any name smtp-proto does not
/// know (SCRAM-SHA-512, for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// draft-murchison-sasl-login.
    Login,
    /// RFC 2195.
    CramMd5,
    /// RFC 2831.
    DigestMd5,
    /// SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677).
    Scram,
    /// Google's XOAUTH2.
    XOauth2,
    /// RFC 7628.
    OAuthBearer,
    Other,
}

impl Mechanism {
    pub fn from_smtp_proto(mech: u64) -> Self {
        use smtp_proto::*;
        match mech {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            AUTH_CRAM_MD5 => Mechanism::CramMd5,
            AUTH_DIGEST_MD5 => Mechanism::DigestMd5,
            AUTH_XOAUTH2 => Mechanism::XOauth2,
            AUTH_OAUTHBEARER => Mechanism::OAuthBearer,
            AUTH_SCRAM_SHA_1 | AUTH_SCRAM_SHA_256 => Mechanism::Scram,
            _ => Mechanism::Other,
        }
    }

    /// A mechanism named in an EHLO `AUTH` line, read by the same parser as
    /// the client's `AUTH` command, so that what the client is offered and
    /// what it may then use can never disagree.
    pub fn from_name(name: &[u8]) -> Self {
        let mut line = Vec::with_capacity(name.len() + 7);
        line.extend_from_slice(b"AUTH ");
        line.extend_from_slice(name);
        line.extend_from_slice(b"\r\n");
        match smtp_proto::Request::parse(&mut line.iter()) {
            Ok(smtp_proto::Request::Auth { mechanism, .. }) => Self::from_smtp_proto(mechanism),
            _ => Mechanism::Other,
        }
    }

    /// Whether mailbrake reads the username from this mechanism's messages.
    /// Only these are offered in the EHLO reply; an `AUTH` with any other is
    /// to be answered locally with `replies::AUTH_MECHANISM_UNAVAILABLE`.
    pub fn user_readable(self) -> bool {
        self != Mechanism::Other
    }

    /// The server speaks first (a challenge), so the user is named in the
    /// first continuation, and an initial response is a protocol error that
    /// servers handle differently (Dovecot ignores it).
    fn server_first(self) -> bool {
        matches!(self, Mechanism::CramMd5 | Mechanism::DigestMd5)
    }

    /// Name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::DigestMd5 => "DIGEST-MD5",
            Mechanism::XOauth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::Scram => "SCRAM",
            Mechanism::Other => "other",
        }
    }
}

/// Why an exchange's username cannot be read. Says nothing of the message
/// itself, so it may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("mechanism names no user mailbrake can read")]
    Mechanism,
    #[error("initial response to a mechanism where the server speaks first")]
    InitialResponse,
    #[error("more than one word after the mechanism")]
    Command,
    #[error("not base64")]
    Base64,
    #[error("not in the mechanism's syntax")]
    Syntax,
    #[error("no username in the message")]
    NoUser,
    #[error("authorization identity differs from the username")]
    Authzid,
    #[error("username empty, over 256 bytes, not UTF-8 or with control characters")]
    Username,
}

/// Follows one AUTH exchange from the client's side.
#[derive(Debug, Clone)]
pub struct SaslExchange {
    pub mechanism: Mechanism,
    reading: Reading,
}

/// How far an exchange got with its username.
#[derive(Debug, Clone)]
enum Reading {
    /// The message that names the user has not come yet.
    Awaiting,
    Known(Username),
    Unreadable(Unreadable),
    /// The client cancelled (`*`) before naming a user.
    Cancelled,
}

impl SaslExchange {
    /// Starts an exchange; `initial` is the initial response as smtp-proto
    /// gives it: empty when there is none, `=` when it is empty (RFC 4954).
    pub fn start(mechanism: Mechanism, initial: &[u8]) -> Self {
        let mut x = SaslExchange {
            mechanism,
            reading: Reading::Awaiting,
        };
        if !mechanism.user_readable() {
            x.reading = Reading::Unreadable(Unreadable::Mechanism);
            return x;
        }
        match initial {
            b"" => {}
            _ if mechanism.server_first() => {
                x.reading = Reading::Unreadable(Unreadable::InitialResponse);
            }
            // An empty LOGIN initial response is no username: Dovecot then
            // asks for it, and the next message names the user.
            b"=" if mechanism == Mechanism::Login => {}
            b"=" => x.read(Ok(Zeroizing::new(Vec::new()))),
            _ => x.read(decode(initial)),
        }
        x
    }

    /// Starts an exchange from the client's whole AUTH command line (without
    /// its line ending), reading the initial response as the upstream will:
    /// everything after the mechanism. More than one word there is
    /// [`Unreadable::Command`] (Postfix, Dovecot and aiosmtpd answer 501 to
    /// it; smtp-proto keeps the first word, and a lenient server might join
    /// them).
    pub fn from_command(mechanism: Mechanism, line: &[u8]) -> Self {
        let mut words = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty())
            .skip(2); // AUTH, the mechanism
        let initial = words.next().unwrap_or(b"");
        if words.next().is_some() {
            return SaslExchange {
                mechanism,
                reading: Reading::Unreadable(Unreadable::Command),
            };
        }
        Self::start(mechanism, initial)
    }

    /// One client response line (base64, without its line ending). Only the
    /// message that names the user is read; later ones are not looked at.
    pub fn on_response(&mut self, line: &[u8]) {
        if !matches!(self.reading, Reading::Awaiting) {
            return;
        }
        if line == b"*" {
            self.reading = Reading::Cancelled;
        } else {
            self.read(decode(line));
        }
    }

    fn read(&mut self, message: Result<Zeroizing<Vec<u8>>, Unreadable>) {
        let mechanism = self.mechanism;
        self.reading = match message.and_then(|m| read::username(mechanism, &m)) {
            Ok(user) => Reading::Known(user),
            Err(why) => Reading::Unreadable(why),
        };
    }

    /// The username, once the client has sent it.
    pub fn username(&self) -> Option<&Username> {
        match &self.reading {
            Reading::Known(user) => Some(user),
            _ => None,
        }
    }

    /// Why the username cannot be read, once that is known. The line that
    /// made it so must not reach the upstream: after [`SaslExchange::start`]
    /// or [`SaslExchange::from_command`], answer the AUTH line with
    /// `replies::AUTH_UNREADABLE`; after [`SaslExchange::on_response`],
    /// send `*` upstream instead, which ends the exchange with the
    /// upstream's 501 (RFC 4954 §4).
    pub fn unreadable(&self) -> Option<Unreadable> {
        match self.reading {
            Reading::Unreadable(why) => Some(why),
            _ => None,
        }
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

/// Decoded messages may hold a password: their buffers are wiped when dropped.
fn decode(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unreadable> {
    let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
        text.iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .collect(),
    );
    SASL_BASE64
        .decode(compact.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| Unreadable::Base64)
}
