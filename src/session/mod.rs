//! One SMTP session as a pure state machine.
//!
//! The driver feeds it events — bytes from the client, bytes from the
//! upstream, end of stream, TLS established, a policy verdict, the time — and
//! carries out the [`Action`]s it returns: bytes to write to either side, TLS
//! upgrades, a policy question, close. Nothing here touches a socket or reads
//! a clock, so every SMTP rule is a fast unit test (see `tests.rs`).
//!
//! The relay model: client commands are parsed (smtp-proto) and forwarded as
//! the client's own bytes; each forwarded command leaves a slot in a FIFO that
//! the upstream's next reply fills, and commands answered locally leave a
//! ready reply in the same FIFO, so pipelined replies reach the client in
//! order. A few commands (EHLO, DATA, AUTH, STARTTLS) change how the bytes
//! that follow them must be read; after one of those, client input waits
//! until its reply is known.
//!
//! The upstream's replies, not the client's commands, say what became of a
//! transaction. Every forwarded RCPT carries a verdict; the policy hears, in
//! the upstream's order, the reply to each of them, each end of message sent
//! and its reply, and each accepted RSET, EHLO or HELO ([`TxEvent`]). The
//! session's own idea of the open transaction (`tx`) only decides what it
//! answers locally (a RCPT without MAIL, a nested MAIL, DATA with no valid
//! recipient), always in the direction of refusing.

mod actions;
mod auth;
mod client_side;
pub mod data;
mod ehlo;
pub mod replies;
mod reply;
mod state;
mod syntax;
mod timing;
mod upstream_side;
pub mod xclient;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::{ClientTls, SessionLimits, Timeouts, UpstreamTls};

pub use actions::{Action, MessageInfo, RcptCheck, TxEvent, Verdict};
pub use auth::{Mechanism, Username};
pub use replies::{Failure, Fault};

use auth::SaslExchange;
use ehlo::UpstreamCaps;
use reply::ReplyReader;
use state::{Expect, Phase, Slot, Then, Transaction};

/// What a session needs to know about its listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// mailbrake's name in its own EHLO and local replies.
    pub hostname: String,
    pub client_tls: ClientTls,
    pub allow_plaintext_auth: bool,
    pub upstream_tls: UpstreamTls,
    pub xclient: bool,
    pub limits: SessionLimits,
    pub timeouts: Timeouts,
}

/// One SMTP session between a client and its upstream.
#[derive(Debug)]
pub struct Session {
    cfg: std::sync::Arc<SessionConfig>,
    client: SocketAddr,
    client_tls: bool,
    upstream_tls: bool,
    phase: Phase,
    actions: Vec<Action>,
    /// Client bytes received but not yet processed.
    inbuf: Vec<u8>,
    queue: VecDeque<Slot>,
    replies: ReplyReader,
    /// The upstream greeting, held while mailbrake sets up the upstream leg.
    greeting: Option<Vec<u8>>,
    caps: UpstreamCaps,
    /// The upstream offered CHUNKING in its last EHLO reply to the client.
    upstream_chunking: bool,
    /// Client input waits for the reply to a command that changes how it is read.
    sync: bool,
    /// A RCPT line waiting for the policy's verdict.
    pending_rcpt: Option<Vec<u8>>,
    /// An AUTH line waiting for the policy's verdict.
    pending_auth: Option<Vec<u8>>,
    /// The client's HELO/EHLO line waiting for the XCLIENT reply.
    pending_helo: Option<(Vec<u8>, Expect)>,
    greeted: bool,
    helo: Option<String>,
    sasl: Option<SaslExchange>,
    user: Option<Username>,
    /// The transaction the client's commands have opened and not yet ended.
    tx: Option<Transaction>,
    /// Transactions whose end of message was sent, oldest first, awaiting the
    /// upstream's reply (`None`: sent with no transaction open).
    ending: VecDeque<Option<Transaction>>,
    last_tx_id: u64,
    /// A command line waits at the front of `inbuf` for a reply that decides it.
    held: bool,
    commands_without_mail: usize,
    skipping_long_line: bool,
    /// Bytes received after the command line being handled (a DATA refused
    /// locally discards them as a pipelined body).
    bytes_after_line: usize,
    client_eof: bool,
    last_client_activity: Instant,
    /// When the message body being read began (a DATA body, or a BDAT
    /// message from its first chunk to its last), and its bytes so far.
    body_clock: Option<(Instant, u64)>,
    /// A 421 reached the client already; do not send another.
    said_goodbye: bool,
}

impl Session {
    /// A session whose client leg is already TLS when `client_tls` (implicit
    /// TLS) and whose upstream leg is TLS when `upstream_tls`. The driver has
    /// connected the upstream; its greeting comes next.
    pub fn new(
        cfg: std::sync::Arc<SessionConfig>,
        client: SocketAddr,
        client_tls: bool,
        upstream_tls: bool,
        now: Instant,
    ) -> Self {
        let max_reply = cfg.limits.max_reply_bytes.get();
        let mut queue = VecDeque::new();
        queue.push_back(Slot::Upstream {
            expect: Expect::Greeting,
            since: now,
        });
        Session {
            cfg,
            client,
            client_tls,
            upstream_tls,
            phase: Phase::Setup,
            actions: Vec::new(),
            inbuf: Vec::new(),
            queue,
            replies: ReplyReader::new(max_reply),
            greeting: None,
            caps: UpstreamCaps::default(),
            upstream_chunking: false,
            sync: false,
            pending_rcpt: None,
            pending_auth: None,
            pending_helo: None,
            greeted: false,
            helo: None,
            sasl: None,
            user: None,
            tx: None,
            ending: VecDeque::new(),
            last_tx_id: 0,
            held: false,
            commands_without_mail: 0,
            skipping_long_line: false,
            bytes_after_line: 0,
            client_eof: false,
            last_client_activity: now,
            body_clock: None,
            said_goodbye: false,
        }
    }

    // === Events ===

    /// Bytes from the client.
    pub fn on_client_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        // A body counts as activity byte by byte (RFC 5321 4.5.3.2.5 times
        // each data block); a command only once whole, so that a client
        // trickling one byte at a time cannot hold a session forever.
        if self.in_body() {
            self.last_client_activity = now;
        }
        if self.inbuf.is_empty() {
            let used = self.process_client(bytes, now);
            self.keep_unprocessed(&bytes[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.inbuf);
            buf.extend_from_slice(bytes);
            let used = self.process_client(&buf, now);
            buf.drain(..used);
            self.keep_unprocessed(&buf);
        }
        self.finish_if_client_gone();
        self.take_actions()
    }

    /// The client closed its side.
    pub fn on_client_eof(&mut self, now: Instant) -> Vec<Action> {
        self.client_eof = true;
        self.last_client_activity = now;
        self.finish_if_client_gone();
        self.take_actions()
    }

    /// Bytes from the upstream.
    pub fn on_upstream_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        self.replies.push(bytes);
        loop {
            if matches!(self.phase, Phase::Closed) {
                break;
            }
            match self.replies.next_reply() {
                Ok(Some(reply)) => {
                    self.on_reply(reply, now);
                    if matches!(self.phase, Phase::Draining) && !self.ending_unanswered() {
                        tracing::debug!("the upstream answered every end of message; closing");
                        self.close();
                    }
                    // Client input that waited for this reply goes first, so
                    // the next reply finds the slot it answers.
                    self.resume(now);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(Failure::UpstreamProtocol(e.to_string()));
                    break;
                }
            }
        }
        self.resume(now);
        self.take_actions()
    }

    /// The upstream closed its side.
    pub fn on_upstream_eof(&mut self, _now: Instant) -> Vec<Action> {
        if matches!(self.phase, Phase::Draining) {
            self.close();
        } else if !matches!(self.phase, Phase::Closed) {
            let quitting = matches!(
                self.queue.front(),
                Some(Slot::Upstream {
                    expect: Expect::Quit,
                    ..
                })
            );
            if quitting || self.said_goodbye {
                self.close();
            } else {
                self.fail(Failure::UpstreamClosed);
            }
        }
        self.take_actions()
    }

    /// The client leg's TLS handshake finished.
    pub fn on_client_tls(&mut self, ok: Result<(), String>, now: Instant) -> Vec<Action> {
        match ok {
            Ok(()) => {
                // RFC 3207 4.2: forget everything learnt before TLS.
                self.client_tls = true;
                self.greeted = false;
                self.helo = None;
                self.sasl = None;
                self.user = None;
                self.inbuf.clear();
                self.phase = Phase::Command;
                self.last_client_activity = now;
            }
            Err(e) => {
                tracing::info!(error = %e, "client TLS handshake failed");
                self.close();
            }
        }
        self.take_actions()
    }

    /// The upstream leg's TLS handshake finished.
    pub fn on_upstream_tls(&mut self, ok: Result<(), String>, now: Instant) -> Vec<Action> {
        match ok {
            Ok(()) => {
                self.upstream_tls = true;
                self.after_upstream_tls(now);
            }
            Err(e) => self.fail(Failure::UpstreamTls(e)),
        }
        self.resume(now);
        self.take_actions()
    }

    /// The policy's verdict on the RCPT of the last [`Action::CheckRcpt`].
    pub fn on_rcpt_verdict(&mut self, verdict: Verdict, now: Instant) -> Vec<Action> {
        if let Some(line) = self.pending_rcpt.take() {
            self.apply_rcpt_verdict(line, verdict, now);
        }
        self.resume(now);
        self.take_actions()
    }

    /// The policy's verdict on the AUTH of the last [`Action::CheckAuth`].
    pub fn on_auth_verdict(&mut self, allowed: bool, now: Instant) -> Vec<Action> {
        if let Some(line) = self.pending_auth.take() {
            self.apply_auth_verdict(line, allowed, now);
        }
        self.resume(now);
        self.take_actions()
    }

    /// Time passed; call at [`Session::deadline`].
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if let Some((deadline, failure)) = self.next_timeout()
            && now >= deadline
        {
            self.fail(failure);
        }
        self.take_actions()
    }

    /// Something outside the session ends it (shutdown).
    pub fn on_failure(&mut self, failure: Failure) -> Vec<Action> {
        self.fail(failure);
        self.take_actions()
    }

    // === Queries ===

    /// When [`Session::on_timeout`] must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_timeout().map(|(at, _)| at)
    }

    /// Whether the driver should read from the client now. False while the
    /// session waits for a reply that decides how the next bytes are read,
    /// which also applies back-pressure to a client that will not wait.
    pub fn wants_client_bytes(&self) -> bool {
        !self.client_eof && !self.client_blocked()
    }

    /// Whether the client has closed its side.
    pub fn client_closed(&self) -> bool {
        self.client_eof
    }

    /// Whether client bytes wait, read but not yet processed.
    pub fn has_unprocessed_input(&self) -> bool {
        !self.inbuf.is_empty()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The AUTH username the upstream accepted, if any.
    pub fn user(&self) -> Option<&Username> {
        self.user.as_ref()
    }

    // === Shared helpers ===

    fn client_blocked(&self) -> bool {
        self.sync
            || self.held
            || self.pending_rcpt.is_some()
            || self.pending_auth.is_some()
            || self.pending_helo.is_some()
            || matches!(
                self.phase,
                Phase::Setup | Phase::ClientTlsHandshake | Phase::Draining | Phase::Closed
            )
    }

    /// Queues an action; nothing is done after [`Action::Close`].
    fn act(&mut self, action: Action) {
        if !self.is_closed() {
            self.actions.push(action);
        }
    }

    fn send_client(&mut self, bytes: Vec<u8>) {
        if matches!(self.phase, Phase::Closed | Phase::Draining) {
            return;
        }
        if let Some(Action::ToClient(buf)) = self.actions.last_mut() {
            buf.extend_from_slice(&bytes);
        } else {
            self.actions.push(Action::ToClient(bytes));
        }
    }

    fn send_upstream(&mut self, bytes: &[u8]) {
        if self.is_closed() {
            return;
        }
        if let Some(Action::ToUpstream(buf)) = self.actions.last_mut() {
            buf.extend_from_slice(bytes);
        } else {
            self.actions.push(Action::ToUpstream(bytes.to_vec()));
        }
    }

    /// Forwards a command and records the reply it is owed.
    fn forward(&mut self, line: &[u8], expect: Expect, now: Instant) {
        self.send_upstream(line);
        self.queue.push_back(Slot::Upstream { expect, since: now });
    }

    /// Queues a local reply behind those still owed.
    fn local(&mut self, text: &str, then: Then) {
        self.queue.push_back(Slot::Local {
            reply: replies::line(text),
            then,
        });
        self.flush_local();
    }

    /// Writes the local replies now at the head of the queue.
    fn flush_local(&mut self) {
        while let Some(Slot::Local { .. }) = self.queue.front() {
            let Some(Slot::Local { reply, then }) = self.queue.pop_front() else {
                unreachable!()
            };
            self.send_client(reply);
            match then {
                Then::StartTls if !matches!(self.phase, Phase::Draining) => {
                    self.act(Action::StartClientTls)
                }
                _ => {}
            }
        }
    }

    /// Ends the session with a failure: its reply, a log line, close. When
    /// the client is at fault and an end of message it sent is unanswered,
    /// the client's leg closes now and the upstream's reply is still awaited.
    fn fail(&mut self, failure: Failure) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if matches!(self.phase, Phase::Draining) {
            tracing::warn!(fault = %failure.fault(), "{failure}");
            return self.close();
        }
        match failure.fault() {
            Fault::Client => tracing::info!(fault = %failure.fault(), "{failure}"),
            _ => tracing::warn!(fault = %failure.fault(), "{failure}"),
        }
        if !self.said_goodbye
            && let Some(reply) = failure.reply(&self.cfg.hostname)
        {
            self.send_client(reply);
        }
        if failure.fault() == Fault::Client && self.ending_unanswered() {
            self.phase = Phase::Draining;
            self.actions.push(Action::CloseClient);
        } else {
            self.close();
        }
    }

    /// An end of message was sent and its reply has not come.
    fn ending_unanswered(&self) -> bool {
        self.queue.iter().any(|slot| {
            matches!(
                slot,
                Slot::Upstream {
                    expect: Expect::DataEnd | Expect::Bdat { last: true },
                    ..
                }
            )
        })
    }

    fn close(&mut self) {
        if !matches!(self.phase, Phase::Closed) {
            self.phase = Phase::Closed;
            self.actions.push(Action::Close);
        }
    }

    fn keep_unprocessed(&mut self, rest: &[u8]) {
        if matches!(
            self.phase,
            Phase::ClientTlsHandshake | Phase::Draining | Phase::Closed
        ) {
            // RFC 3207 section 5: nothing pipelined after STARTTLS survives.
            self.inbuf.clear();
        } else {
            self.inbuf.extend_from_slice(rest);
        }
    }

    /// Processes client bytes that were waiting for a reply.
    fn resume(&mut self, now: Instant) {
        if !self.inbuf.is_empty() && !self.client_blocked() {
            let mut buf = std::mem::take(&mut self.inbuf);
            let used = self.process_client(&buf, now);
            buf.drain(..used);
            self.keep_unprocessed(&buf);
        }
        self.finish_if_client_gone();
    }

    /// After the client's EOF, closes once nothing more can happen.
    fn finish_if_client_gone(&mut self) {
        if !self.client_eof || matches!(self.phase, Phase::Closed | Phase::Draining) {
            return;
        }
        if matches!(
            self.phase,
            Phase::Data(_) | Phase::Bdat { forward: true, .. }
        ) {
            // Never let the upstream see an end to a message the client did not finish.
            self.fail(Failure::ClientGoneMidData);
            return;
        }
        let waiting_upstream = self
            .queue
            .iter()
            .any(|s| matches!(s, Slot::Upstream { .. }));
        if !waiting_upstream
            && self.pending_rcpt.is_none()
            && self.pending_auth.is_none()
            && self.pending_helo.is_none()
        {
            tracing::debug!("client closed the connection");
            self.close();
        }
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }
}
