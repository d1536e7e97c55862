//! What a session asks of its driver ([`Action`]) and what its policy
//! hears and answers: a recipient to decide, the verdict, and what the
//! upstream made of the transaction.

use std::time::Duration;

use super::{Mechanism, Username};

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    ToClient(Vec<u8>),
    /// Write these bytes to the upstream.
    ToUpstream(Vec<u8>),
    /// Flush what was written to the client, then run a TLS handshake as
    /// server on the client leg and call [`Session::on_client_tls`].
    StartClientTls,
    /// Run a TLS handshake as client on the upstream leg and call
    /// [`Session::on_upstream_tls`].
    StartUpstreamTls,
    /// Ask the recipient policy; answer with [`Session::on_rcpt_verdict`].
    CheckRcpt(RcptCheck),
    /// Tell the recipient policy how its accepted recipients fared.
    Tx(TxEvent),
    /// May this client (and this user, when known) try AUTH now? Answer
    /// with [`Session::on_auth_verdict`].
    CheckAuth(Option<Username>),
    /// An AUTH exchange ended: accepted by the upstream (`ok`) or not.
    AuthResult {
        user: Option<Username>,
        mechanism: Mechanism,
        ok: bool,
    },
    /// Flush what was written to the client, then close the client's leg
    /// only; the session goes on reading the upstream until [`Action::Close`].
    CloseClient,
    /// Flush what was written to the client, then close both legs. The
    /// upstream gets nothing more: an unfinished message is never completed.
    Close,
}

/// A recipient awaiting the policy's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptCheck {
    /// The forward-path, without angle brackets.
    pub recipient: String,
    /// The envelope sender of the open transaction.
    pub mail_from: String,
    /// The AUTH username, once the upstream accepted it.
    pub user: Option<Username>,
    /// The first recipient of its transaction (the envelope sender is new).
    pub first_in_transaction: bool,
}

/// What the upstream made of the commands that decide a transaction, in the
/// order it answered them, so the policy can follow the upstream's state
/// without ids. Every RCPT forwarded (each one after an accepting verdict)
/// gets exactly one `RcptReply`; every end of message forwarded gets one
/// `EndSent` and, if the upstream answers, one `End`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// The upstream answered the oldest forwarded RCPT still unanswered.
    RcptReply { accepted: bool },
    /// An end of data or a last BDAT went to the upstream: from here on the
    /// recipients before it count as sent unless the upstream refuses it.
    EndSent,
    /// The upstream answered the oldest end of message still unanswered:
    /// accepted (`delivered`) or refused. Either way its transaction is over
    /// (RFC 5321 4.1.1.4, RFC 3030 2).
    End {
        delivered: bool,
        message: MessageInfo,
    },
    /// The upstream accepted a RSET, EHLO or HELO: the recipients it had
    /// accepted are gone unsent.
    Reset,
}

/// A message whose end the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub size: u64,
    /// From the end of data to the upstream's reply.
    pub waited: Duration,
}

/// The policy's answer for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the RCPT to the upstream.
    Accept,
    /// Answer locally with this reply line (no CRLF); the upstream never sees it.
    Refuse(String),
}
