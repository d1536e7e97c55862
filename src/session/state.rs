//! The session's states: the client side's phase, what each upstream reply
//! answers, the FIFO of replies owed to the client, and the open
//! transaction as its commands and replies show it.

use super::data::DataScanner;
use std::time::Instant;

/// The client side's phase: how the next client bytes are read.
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for the upstream greeting and mailbrake's own upstream set-up
    /// (EHLO probe, STARTTLS). Client bytes wait.
    Setup,
    /// Command lines.
    Command,
    /// The next line is a SASL response.
    AuthResponse,
    /// A DATA body, streamed to the upstream.
    Data(DataScanner),
    /// A DATA body answered locally (no valid recipients): discarded.
    DiscardData(DataScanner),
    /// A BDAT chunk: `remaining` bytes forwarded, or discarded when refused
    /// locally; `last` ends its message.
    Bdat {
        remaining: u64,
        forward: bool,
        last: bool,
    },
    /// STARTTLS accepted: everything the client pipelined after it is dropped
    /// until the handshake is done.
    ClientTlsHandshake,
    /// The client has had its last reply and its leg is closed; the
    /// upstream's replies to ends of message already sent are still read,
    /// so that what became of them is known, not guessed. Nothing more is
    /// sent to either side.
    Draining,
    /// Nothing more is read.
    Closed,
}

/// What the upstream's next reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Greeting,
    /// mailbrake's own EHLO, to learn about STARTTLS and XCLIENT.
    Probe,
    UpstreamStartTls,
    /// XCLIENT; the client's HELO/EHLO line is sent once it is answered.
    Xclient,
    Ehlo,
    Helo,
    /// The MAIL that opened transaction `tx`.
    Mail {
        tx: u64,
    },
    /// A RCPT of transaction `tx` (0: none open when it was sent), with an
    /// accepting verdict.
    Rcpt {
        tx: u64,
    },
    Data,
    DataEnd,
    Bdat {
        last: bool,
    },
    Auth,
    Rset,
    Quit,
    Other,
}

/// What happens after a local reply is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    Nothing,
    StartTls,
}

/// One reply owed to the client, in order.
#[derive(Debug)]
pub(super) enum Slot {
    Local { reply: Vec<u8>, then: Then },
    Upstream { expect: Expect, since: Instant },
}

/// A mail transaction, as seen from the commands sent and their replies.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// From 1, in the order the MAILs were sent.
    pub(super) id: u64,
    /// The upstream accepted its MAIL.
    pub(super) confirmed: bool,
    pub(super) mail_from: String,
    pub(super) rcpt_forwarded: u32,
    pub(super) rcpt_refused_locally: u32,
    pub(super) rcpt_accepted: u32,
    pub(super) rcpt_refused_upstream: u32,
    pub(super) size: u64,
}
