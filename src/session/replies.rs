//! Every reply mailbrake writes itself, in one place, and the failures that
//! end a session with the party at fault. Everything else the client reads
//! comes from the upstream, byte for byte.

use std::fmt;

use crate::config::LimitAction;

/// Whose fault a failure was: the split a proxy's operator needs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client misbehaved or went away.
    Client,
    /// The upstream MTA failed or misbehaved.
    Upstream,
    /// mailbrake itself (configuration, capacity, shutdown).
    Internal,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        })
    }
}

/// Why a session ends early. Each one gives the client a reply (or nothing,
/// when the client is gone) and a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream would loop back to mailbrake: {0}")]
    UpstreamLoop(String),
    #[error("TLS to the upstream failed: {0}")]
    UpstreamTls(String),
    #[error("upstream does not offer STARTTLS and upstream_tls = \"starttls\"")]
    UpstreamNoStartTls,
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("upstream closed the connection")]
    UpstreamClosed,
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    #[error("client idle for {0:?}")]
    ClientTimeout(std::time::Duration),
    #[error("client sent its message slower than {0} bytes a second")]
    ClientTooSlow(u64),
    #[error("client disconnected in the middle of a message; upstream closed without end-of-data")]
    ClientGoneMidData,
    #[error("client sent more than {0} commands without a transaction")]
    TooManyCommands(usize),
    #[error("bare CR or LF next to a '.' line in DATA (SMTP smuggling)")]
    Smuggling,
    #[error(
        "out of open files ({0}); raise the open-file limit (LimitNOFILE) or lower max_sessions"
    )]
    OutOfFiles(String),
    #[error("too many concurrent sessions on this listener ({0})")]
    TooManySessions(usize),
    #[error("too many new connections from this address")]
    ConnectionRate,
    #[error("too many concurrent sessions of this Unix user ({0})")]
    TooManyUserSessions(usize),
    #[error("too many failed AUTH attempts from this address or for this user")]
    AuthBlocked,
    #[error("mailbrake is shutting down")]
    ShuttingDown,
    #[error("the upstream accepted an AUTH {0} whose user mailbrake could not read")]
    UnknownUser(String),
}

impl Failure {
    pub fn fault(&self) -> Fault {
        use Failure::*;
        match self {
            UpstreamUnreachable(_)
            | UpstreamTls(_)
            | UpstreamNoStartTls
            | UpstreamTimeout(_)
            | UpstreamClosed
            | UpstreamProtocol(_) => Fault::Upstream,
            ClientTimeout(_)
            | ClientTooSlow(_)
            | ClientGoneMidData
            | TooManyCommands(_)
            | Smuggling
            | ConnectionRate
            | TooManyUserSessions(_)
            | AuthBlocked
            | UnknownUser(_) => Fault::Client,
            UpstreamLoop(_) | OutOfFiles(_) | TooManySessions(_) | ShuttingDown => Fault::Internal,
        }
    }

    /// The reply the client gets before the connection closes, if any.
    pub fn reply(&self, host: &str) -> Option<Vec<u8>> {
        use Failure::*;
        let text = match self {
            UpstreamUnreachable(_) => {
                format!("421 4.4.1 {host} mail server unreachable, try again later")
            }
            UpstreamLoop(_) => {
                format!("421 4.3.5 {host} proxy misconfigured (mail loop), try again later")
            }
            UpstreamTls(_) | UpstreamNoStartTls => {
                format!(
                    "421 4.7.0 {host} cannot secure the connection to the mail server, try again later"
                )
            }
            UpstreamTimeout(_) => {
                format!("421 4.4.2 {host} mail server timed out, try again later")
            }
            UpstreamClosed | UpstreamProtocol(_) => {
                format!("421 4.4.2 {host} lost the connection to the mail server, try again later")
            }
            ClientTimeout(_) | ClientTooSlow(_) => {
                format!("421 4.4.2 {host} Error: timeout exceeded")
            }
            ClientGoneMidData => return None,
            TooManyCommands(_) => format!("421 4.7.0 {host} Error: too many commands"),
            Smuggling => format!(
                "554 5.5.2 {host} Error: bare <CR> or <LF> next to a '.' line; \
                 message refused, nothing delivered"
            ),
            TooManySessions(_) => {
                format!("421 4.7.0 {host} Error: too many connections, try again later")
            }
            OutOfFiles(_) => format!("421 4.3.2 {host} too busy, try again later"),
            ShuttingDown => format!("421 4.3.2 {host} shutting down, try again later"),
            ConnectionRate => format!(
                "421 4.7.0 {host} Error: too many connections from your address, try again later"
            ),
            TooManyUserSessions(_) => format!(
                "421 4.7.0 {host} Error: too many connections from your user, try again later"
            ),
            UnknownUser(_) => {
                format!("421 4.7.0 {host} Error: cannot tell who authenticated, closing")
            }
            AuthBlocked => {
                format!("421 4.7.0 {host} Error: too many failed authentications, try again later")
            }
        };
        Some(line(&text))
    }
}

/// A one-line reply with its CRLF.
pub fn line(text: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(text.len() + 2);
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

pub const STARTTLS_READY: &str = "220 2.0.0 Ready to start TLS";
pub const STARTTLS_NOT_OFFERED: &str = "502 5.5.1 Error: STARTTLS not available";
pub const STARTTLS_ALREADY: &str = "503 5.5.1 Error: TLS already active";
pub const IN_TRANSACTION: &str = "503 5.5.1 Error: MAIL transaction in progress";
pub const SEND_EHLO_FIRST: &str = "503 5.5.1 Error: send HELO/EHLO first";
pub const AUTH_NEEDS_TLS: &str = "530 5.7.0 Must issue a STARTTLS command first";
/// AUTH with a mechanism mailbrake cannot read a username from, which the
/// EHLO reply never offers (RFC 4954 §6).
pub const AUTH_MECHANISM_UNAVAILABLE: &str = "504 5.5.4 Error: unrecognized authentication type";
/// An AUTH initial response from which mailbrake cannot read the username
/// (not base64, or not in the mechanism's syntax); never forwarded.
pub const AUTH_UNREADABLE: &str = "501 5.5.2 Error: cannot decode the authentication response";
pub const NO_VALID_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients";
pub const BDAT_SYNTAX: &str = "501 5.5.4 Syntax: BDAT count [LAST]";
pub const BDAT_NOT_SUPPORTED: &str = "502 5.5.1 Error: BDAT not supported by this server";
pub const NOT_RECOGNIZED: &str = "502 5.5.2 Error: command not recognized";
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Error: command not implemented";
pub const LINE_TOO_LONG: &str = "500 5.5.2 Error: line too long";
pub const BARE_CR: &str = "500 5.5.2 Error: bare <CR> in command";
pub const LEADING_SPACE: &str = "500 5.5.2 Error: command starts with a space";
pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command";
pub const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command";
pub const STARTTLS_AFTER_AUTH: &str = "503 5.5.1 Error: STARTTLS is not allowed after AUTH";

// === Recipient limits ===
//
// Worded from plain data (the key's text, the rate as configured, times
// already written for people), so the session stays free of the limits.

/// A recipient over its sender's limit: `rate` as configured (`12/1h`);
/// `next` when the window frees up (`in 14 min (09:32 UTC)`), or `None` when
/// only messages in progress fill it. Observe mode words it as deferred.
pub fn over_limit(
    action: LimitAction,
    key: &dyn fmt::Display,
    rate: &str,
    next: Option<&str>,
) -> String {
    let code = match action {
        LimitAction::Reject => "550 5.7.1",
        LimitAction::Defer | LimitAction::Observe => "450 4.7.1",
    };
    let when = match next {
        Some(next) => format!("next recipient accepted {next}"),
        None => "next recipient accepted when messages in progress are sent".into(),
    };
    format!("{code} Recipient limit reached for {key} ({rate}); {when}")
}

/// A recipient of a locked sender: `until` is how long and until when
/// (`24 h`, `2026-11-28 09:32 UTC`), `None` for a lock only an operator
/// lifts; `contact` is `[limits] contact`.
pub fn sender_locked(
    key: &dyn fmt::Display,
    reason: &dyn fmt::Display,
    until: Option<(&str, &str)>,
    contact: Option<&str>,
) -> String {
    let until = match until {
        Some((wait, at)) => format!(" for {wait} (until {at})"),
        None => " until an operator unlocks it".into(),
    };
    let contact = contact
        .map(|c| format!("; contact {c}"))
        .unwrap_or_default();
    format!("450 4.7.1 Sender {key} is locked ({reason}){until}{contact}")
}

/// A recipient faster than `[protect] rcpt_pace` allows its sender.
pub fn too_quickly(key: &dyn fmt::Display) -> String {
    format!("450 4.7.1 Too many recipients too quickly for {key}; slow down")
}

/// A recipient whose client closed the connection while its limit was
/// being decided: it is not forwarded, and the reply reaches a client that
/// only half-closed.
pub const RCPT_UNDECIDED: &str =
    "451 4.3.0 Recipient not decided: the client closed the connection";

/// A recipient no limit can be decided for: the fleet's Redis unreachable
/// with `redis_failure = "closed"`.
pub const LIMITS_UNAVAILABLE: &str =
    "451 4.3.0 Recipient limits are temporarily unavailable; try again later";

/// Every recipient while the limits cannot be saved.
pub const LIMITS_UNSAVED: &str =
    "451 4.3.0 Recipient limits cannot be saved right now; try again later";

/// The reply for a verb that takes no argument, given one.
pub fn no_arguments(verb: &str) -> String {
    format!("501 5.5.4 Syntax: {verb}")
}

/// The reply for a command smtp-proto could not parse.
pub fn syntax(err: &smtp_proto::Error) -> String {
    use smtp_proto::Error::*;
    match err {
        UnknownCommand => NOT_RECOGNIZED.to_string(),
        InvalidSenderAddress => "501 5.1.7 Error: bad sender address syntax".into(),
        InvalidRecipientAddress => "501 5.1.3 Error: bad recipient address syntax".into(),
        SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
        InvalidParameter { param } => format!("501 5.5.4 Error: invalid parameter {param}"),
        UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("555 5.5.4 Error: unsupported parameter {param}")
        }
        NeedsMoreData { .. } | ResponseTooLong | InvalidResponse { .. } => {
            "500 5.5.2 Error: syntax error".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_reply_is_one_well_formed_line() {
        let all = [
            Failure::UpstreamUnreachable("x".into()),
            Failure::UpstreamLoop("x".into()),
            Failure::UpstreamTls("x".into()),
            Failure::UpstreamNoStartTls,
            Failure::UpstreamTimeout(std::time::Duration::from_secs(1)),
            Failure::UpstreamClosed,
            Failure::UpstreamProtocol("x".into()),
            Failure::ClientTimeout(std::time::Duration::from_secs(1)),
            Failure::ClientTooSlow(500),
            Failure::TooManyCommands(1),
            Failure::Smuggling,
            Failure::TooManySessions(1),
            Failure::OutOfFiles("x".into()),
            Failure::ShuttingDown,
            Failure::ConnectionRate,
            Failure::AuthBlocked,
            Failure::UnknownUser("LOGIN".into()),
        ];
        for f in all {
            let r = f.reply("mb.example").unwrap();
            let text = std::str::from_utf8(&r).unwrap();
            assert!(
                text.ends_with("\r\n") && text.matches("\r\n").count() == 1,
                "{f:?}"
            );
            let code: u16 = text[..3].parse().unwrap();
            assert!((400..600).contains(&code), "{f:?}");
            assert_eq!(&text[3..4], " ");
            // The enhanced code's class matches the basic code's.
            assert_eq!(text.as_bytes()[4], text.as_bytes()[0], "{f:?}");
        }
        assert_eq!(Failure::ClientGoneMidData.reply("x"), None);
    }
}
