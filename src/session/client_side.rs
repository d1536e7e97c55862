//! The client side of a session: command lines, SASL responses, DATA and
//! BDAT bodies, each read according to the current phase.

use std::time::Instant;

use smtp_proto::Request;

use super::auth::{Mechanism, SaslExchange, Username};
use super::data::{DataScanner, Scan};
use super::replies::{self, Failure};
use super::reply::trim_eol;
use super::syntax::{bdat_arguments, command_for_log};
use super::{
    Action, Expect, Phase, RcptCheck, Session, Then, Transaction, TxEvent, Verdict, xclient,
};
use crate::config::ClientTls;

impl Session {
    /// Processes as much of `input` as the current phase allows; returns the
    /// number of bytes used. The rest waits in `inbuf`.
    pub(super) fn process_client(&mut self, input: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        while pos < input.len() && !self.client_blocked() {
            let rest = &input[pos..];
            let used = match &mut self.phase {
                Phase::Command | Phase::AuthResponse => match self.take_line(rest) {
                    Line::Whole(line) if self.must_wait(line) => {
                        // Decided by a reply still to come; the line stays.
                        self.held = true;
                        break;
                    }
                    Line::Whole(line) => {
                        self.last_client_activity = now;
                        let used = line.len();
                        self.bytes_after_line = rest.len() - used;
                        if matches!(self.phase, Phase::AuthResponse) {
                            self.on_sasl_line(line, now);
                        } else {
                            self.on_command(line, now);
                        }
                        used
                    }
                    Line::TooLong(used) => {
                        self.last_client_activity = now;
                        tracing::info!("client line too long");
                        if matches!(self.phase, Phase::AuthResponse) {
                            // The upstream waits for a SASL response: cancel
                            // the exchange (RFC 4954 "*"); its reply goes back.
                            self.on_sasl_line(b"*\r\n", now);
                        } else {
                            self.local(replies::LINE_TOO_LONG, Then::Nothing);
                        }
                        used
                    }
                    Line::Skipped(used) => used,
                    Line::Incomplete => break,
                },
                Phase::Data(scanner) => match scanner.scan(rest) {
                    Scan::More { forward } => {
                        self.body(b"", &rest[..forward]);
                        self.count_body(rest.len());
                        rest.len()
                    }
                    Scan::End { end } => {
                        let held = scanner.take_held();
                        self.body(held, &rest[..end]);
                        self.phase = Phase::Command;
                        self.body_clock = None;
                        self.end_message(Expect::DataEnd, now);
                        end
                    }
                    Scan::Smuggling => {
                        self.fail(Failure::Smuggling);
                        rest.len()
                    }
                },
                Phase::DiscardData(scanner) => match scanner.scan(rest) {
                    Scan::End { end } => {
                        self.phase = Phase::Command;
                        self.body_clock = None;
                        end
                    }
                    Scan::More { .. } => {
                        self.count_body(rest.len());
                        rest.len()
                    }
                    Scan::Smuggling => {
                        // Keep discarding up to a proper end of data.
                        *scanner = DataScanner::new();
                        rest.len()
                    }
                },
                Phase::Bdat {
                    remaining,
                    forward,
                    last,
                } => {
                    let n = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    let (done, forward, last) = (*remaining == 0, *forward, *last);
                    if forward {
                        self.body(b"", &rest[..n]);
                    }
                    if done {
                        self.phase = Phase::Command;
                        // The message goes on only after a chunk forwarded.
                        if last || !forward {
                            self.body_clock = None;
                        }
                    }
                    self.count_body(n);
                    n
                }
                Phase::ClientTlsHandshake | Phase::Draining | Phase::Closed => rest.len(),
                Phase::Setup => break,
            };
            pos += used;
        }
        pos
    }

    /// Splits off one line (LF-terminated), within the phase's length limit.
    fn take_line<'a>(&mut self, rest: &'a [u8]) -> Line<'a> {
        let max = if matches!(self.phase, Phase::AuthResponse) {
            self.cfg.limits.max_auth_line_length.get()
        } else {
            self.cfg.limits.max_line_length.get()
        };
        match memchr::memchr(b'\n', rest) {
            Some(nl) if self.skipping_long_line => {
                self.skipping_long_line = false;
                Line::Skipped(nl + 1)
            }
            Some(nl) if nl + 1 > max => Line::TooLong(nl + 1),
            Some(nl) => Line::Whole(&rest[..=nl]),
            None if self.skipping_long_line => Line::Skipped(rest.len()),
            None if rest.len() >= max => {
                self.skipping_long_line = true;
                Line::TooLong(rest.len())
            }
            None => Line::Incomplete,
        }
    }

    /// Whether this command line must wait for replies still to come: a MAIL
    /// behind a MAIL the upstream has not answered (it is nested if that one
    /// is accepted, and opens a transaction if it is refused).
    fn must_wait(&self, line: &[u8]) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.confirmed)
            && matches!(self.phase, Phase::Command)
            && line.len() >= 4
            && line[..4].eq_ignore_ascii_case(b"MAIL")
    }

    /// Forwards the command that ends a message (its bytes already sent when
    /// `expect` is `DataEnd`): from here on its recipients count as sent,
    /// unless the upstream is seen to refuse it.
    fn end_message(&mut self, expect: Expect, now: Instant) {
        self.queue
            .push_back(super::Slot::Upstream { expect, since: now });
        self.ending.push_back(self.tx.take());
        self.act(Action::Tx(TxEvent::EndSent));
    }

    /// Forwards body bytes (DATA or BDAT) to the upstream.
    fn body(&mut self, held: &[u8], bytes: &[u8]) {
        if let Some(tx) = &mut self.tx {
            tx.size += (held.len() + bytes.len()) as u64;
        }
        if !held.is_empty() {
            self.send_upstream(held);
        }
        if !bytes.is_empty() {
            self.send_upstream(bytes);
        }
    }

    /// One SASL response line, forwarded unchanged and never logged.
    fn on_sasl_line(&mut self, line: &[u8], now: Instant) {
        let body = trim_eol(line);
        let mut line = line;
        let mut learnt = None;
        if let Some(sasl) = &mut self.sasl {
            let before = sasl.username().is_some();
            sasl.on_response(body);
            if !before {
                learnt = sasl.username().cloned();
            }
            if let Some(why) = sasl.unreadable() {
                // Never forward what mailbrake cannot read: cancel the
                // exchange instead (RFC 4954 §4), the upstream answers 501.
                tracing::info!(mechanism = sasl.mechanism.name(), reason = %why, "AUTH cancelled: username unreadable");
                line = b"*\r\n";
            }
        }
        self.phase = Phase::Command;
        self.sync = true;
        match learnt {
            // The username just arrived: ask before it goes upstream.
            Some(user) => self.check_auth(line, Some(user)),
            None => self.forward_line(line, Expect::Auth, now),
        }
    }

    /// Holds an AUTH line until the policy says this client and user may try.
    fn check_auth(&mut self, line: &[u8], user: Option<Username>) {
        self.pending_auth = Some(line.to_vec());
        self.act(Action::CheckAuth(user));
    }

    /// The policy's answer to [`Action::CheckAuth`].
    pub(super) fn apply_auth_verdict(&mut self, line: Vec<u8>, allowed: bool, now: Instant) {
        if allowed {
            self.forward_line(&line, Expect::Auth, now);
        } else {
            self.fail(Failure::AuthBlocked);
        }
    }

    /// Forwards a client line with its ending normalised to CRLF, so mailbrake
    /// and the upstream always agree on where it ends.
    fn forward_line(&mut self, line: &[u8], expect: Expect, now: Instant) {
        if line.ends_with(b"\r\n") {
            self.forward(line, expect, now);
        } else {
            let body = trim_eol(line);
            self.send_upstream(body);
            self.forward(b"\r\n", expect, now);
        }
    }

    /// One command line from the client.
    fn on_command(&mut self, line: &[u8], now: Instant) {
        let body = trim_eol(line);
        if body.contains(&b'\r') {
            self.local(replies::BARE_CR, Then::Nothing);
            self.count_command();
            return;
        }
        if body.first().is_some_and(u8::is_ascii_whitespace) {
            // Servers differ on what " EHLO x" is; mailbrake does not guess.
            self.local(replies::LEADING_SPACE, Then::Nothing);
            self.count_command();
            return;
        }
        let mut parse_buf;
        let parsable: &[u8] = if line.ends_with(b"\r\n") {
            line
        } else {
            parse_buf = body.to_vec();
            parse_buf.extend_from_slice(b"\r\n");
            &parse_buf
        };
        let request = match Request::parse(&mut parsable.iter()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(command = %command_for_log(body), "refused: {e:?}");
                self.local(&replies::syntax(&e), Then::Nothing);
                self.count_command();
                return;
            }
        };
        tracing::trace!(command = %command_for_log(body), "client");
        let needs_greeting = matches!(
            request,
            Request::Mail { .. }
                | Request::Rcpt { .. }
                | Request::Data
                | Request::Bdat { .. }
                | Request::Auth { .. }
                | Request::StartTls
        );
        if needs_greeting && !self.greeted {
            self.local(replies::SEND_EHLO_FIRST, Then::Nothing);
            self.count_command();
            return;
        }
        // A verb that takes no argument gets none past mailbrake: the
        // upstream might refuse it (a RSET it refuses keeps its transaction).
        let verb = match request {
            Request::Rset => Some("RSET"),
            Request::Data => Some("DATA"),
            Request::Quit => Some("QUIT"),
            Request::StartTls => Some("STARTTLS"),
            _ => None,
        };
        if let Some(verb) = verb
            && !body[verb.len()..].iter().all(u8::is_ascii_whitespace)
        {
            self.local(&replies::no_arguments(verb), Then::Nothing);
            self.count_command();
            return;
        }
        match request {
            Request::Ehlo { host } => self.on_helo(host.into_owned(), parsable, Expect::Ehlo, now),
            Request::Helo { host } => self.on_helo(host.into_owned(), parsable, Expect::Helo, now),
            Request::Mail { from } => {
                if self.tx.is_some() {
                    // Its MAIL was accepted (`must_wait` saw to that).
                    self.local(replies::NESTED_MAIL, Then::Nothing);
                    return;
                }
                self.commands_without_mail = 0;
                self.last_tx_id += 1;
                let id = self.last_tx_id;
                self.tx = Some(Transaction {
                    id,
                    mail_from: from.address.into_owned(),
                    ..Transaction::default()
                });
                self.forward(parsable, Expect::Mail { tx: id }, now);
            }
            Request::Rcpt { to } => {
                if let Some(tx) = &self.tx {
                    self.pending_rcpt = Some(parsable.to_vec());
                    self.act(Action::CheckRcpt(RcptCheck {
                        recipient: to.address.into_owned(),
                        mail_from: tx.mail_from.clone(),
                        user: self.user.clone(),
                        first_in_transaction: tx.rcpt_forwarded + tx.rcpt_refused_locally == 0,
                    }));
                } else {
                    // Never forwarded without a transaction and a verdict.
                    self.local(replies::NEED_MAIL, Then::Nothing);
                    self.count_command();
                }
            }
            Request::Data => {
                if self.all_recipients_refused_locally() {
                    self.local(replies::NO_VALID_RECIPIENTS, Then::Nothing);
                    // A client that did not wait for 354 sent its body already.
                    if self.bytes_after_line > 0 {
                        self.start_body(Phase::DiscardData(DataScanner::new()), now);
                    }
                } else {
                    self.sync = true;
                    self.forward(b"DATA\r\n", Expect::Data, now);
                }
            }
            Request::Bdat { .. } => {
                // smtp-proto reads more into a BDAT line than an MTA does
                // ("BDAT 120 ;" is a chunk to it, a 501 to Postfix, which then
                // reads the chunk as commands): only the strict form passes,
                // and the upstream gets mailbrake's own rendering of it.
                let Some((remaining, is_last)) = bdat_arguments(body) else {
                    self.local(replies::BDAT_SYNTAX, Then::Nothing);
                    return;
                };
                let line = format!("BDAT {remaining}{}\r\n", if is_last { " LAST" } else { "" });
                let parsable = line.as_bytes();
                let refusal = if !self.upstream_chunking {
                    Some(replies::BDAT_NOT_SUPPORTED)
                } else if self.all_recipients_refused_locally() {
                    Some(replies::NO_VALID_RECIPIENTS)
                } else {
                    None
                };
                match refusal {
                    Some(text) => self.local(text, Then::Nothing),
                    None if is_last => {
                        self.send_upstream(parsable);
                        self.end_message(Expect::Bdat { last: true }, now);
                    }
                    None => self.forward(parsable, Expect::Bdat { last: false }, now),
                }
                if remaining > 0 {
                    let forward = refusal.is_none();
                    self.start_body(
                        Phase::Bdat {
                            remaining,
                            forward,
                            last: is_last,
                        },
                        now,
                    );
                } else if is_last {
                    self.body_clock = None;
                }
            }
            Request::Auth { mechanism, .. } => {
                if !self.client_tls && !self.cfg.allow_plaintext_auth {
                    self.local(replies::AUTH_NEEDS_TLS, Then::Nothing);
                    return;
                }
                let mech = Mechanism::from_smtp_proto(mechanism);
                tracing::debug!(mechanism = mech.name(), "AUTH");
                if !mech.user_readable() {
                    self.local(replies::AUTH_MECHANISM_UNAVAILABLE, Then::Nothing);
                    return;
                }
                let sasl = SaslExchange::from_command(mech, body);
                if let Some(why) = sasl.unreadable() {
                    tracing::info!(mechanism = mech.name(), reason = %why, "AUTH refused: username unreadable");
                    self.local(replies::AUTH_UNREADABLE, Then::Nothing);
                    return;
                }
                let user = sasl.username().cloned();
                self.sasl = Some(sasl);
                self.sync = true;
                self.check_auth(parsable, user);
            }
            Request::StartTls => {
                let text = if self.cfg.client_tls != ClientTls::StartTls {
                    replies::STARTTLS_NOT_OFFERED
                } else if self.client_tls {
                    replies::STARTTLS_ALREADY
                } else if self.user.is_some() {
                    // TLS would make mailbrake forget a user the upstream keeps.
                    replies::STARTTLS_AFTER_AUTH
                } else if self.tx.is_some() {
                    replies::IN_TRANSACTION
                } else {
                    self.phase = Phase::ClientTlsHandshake;
                    self.local(replies::STARTTLS_READY, Then::StartTls);
                    return;
                };
                self.local(text, Then::Nothing);
            }
            Request::Rset => {
                self.tx = None;
                self.body_clock = None;
                if self.count_command() {
                    self.forward(b"RSET\r\n", Expect::Rset, now);
                }
            }
            Request::Quit => {
                self.sync = true;
                self.forward(b"QUIT\r\n", Expect::Quit, now);
            }
            Request::Noop { .. } => {
                // Its argument means nothing; the upstream gets none to misread.
                if self.count_command() {
                    self.forward(b"NOOP\r\n", Expect::Other, now);
                }
            }
            Request::Vrfy { .. }
            | Request::Expn { .. }
            | Request::Help { .. }
            | Request::Etrn { .. } => {
                if self.count_command() {
                    self.forward(parsable, Expect::Other, now);
                }
            }
            Request::Lhlo { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.local(replies::NOT_IMPLEMENTED, Then::Nothing);
                self.count_command();
            }
        }
    }

    /// EHLO or HELO: a new start, whose reply says what the upstream offers.
    fn on_helo(&mut self, host: String, line: &[u8], expect: Expect, now: Instant) {
        self.greeted = true;
        self.helo = Some(host);
        if self.count_command() {
            self.sync = true;
            self.send_helo(line, expect, now);
        }
    }

    /// Sends the client's HELO/EHLO, after an XCLIENT when that is on.
    fn send_helo(&mut self, line: &[u8], expect: Expect, now: Instant) {
        let support = match (&self.caps.xclient, self.cfg.xclient) {
            (Some(args), true) => xclient::supported(args),
            _ => Default::default(),
        };
        if !support.any() {
            self.forward(line, expect, now);
            return;
        }
        let attrs = xclient::XclientAttrs {
            addr: self.client.ip(),
            port: self.client.port(),
            name: None,
            helo: self.helo.as_deref(),
            login: self.user.as_ref().map(|u| u.as_str()),
        };
        let command = xclient::command(&attrs, &support);
        self.pending_helo = Some((line.to_vec(), expect));
        self.forward(&command, Expect::Xclient, now);
    }

    /// Applies the policy's verdict to the RCPT line that waited for it. An
    /// accepted one is always forwarded, even if its MAIL was refused
    /// meanwhile: the policy holds a reservation for it, and the upstream's
    /// reply settles it.
    pub(super) fn apply_rcpt_verdict(&mut self, line: Vec<u8>, verdict: Verdict, now: Instant) {
        let tx = self.tx.as_mut();
        let id = tx.as_ref().map_or(0, |tx| tx.id);
        match verdict {
            Verdict::Accept => {
                if let Some(tx) = tx {
                    tx.rcpt_forwarded += 1;
                }
                self.forward(&line, Expect::Rcpt { tx: id }, now);
            }
            Verdict::Refuse(text) => {
                if let Some(tx) = tx {
                    tx.rcpt_refused_locally += 1;
                }
                self.local(&text, Then::Nothing);
            }
        }
    }

    fn all_recipients_refused_locally(&self) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.rcpt_forwarded == 0 && tx.rcpt_refused_locally > 0)
    }

    /// Counts a command outside a transaction; too many ends the session
    /// (and returns false).
    fn count_command(&mut self) -> bool {
        if self.tx.is_some() {
            return true;
        }
        self.commands_without_mail += 1;
        let max = self.cfg.limits.max_commands_without_mail.get();
        if self.commands_without_mail > max {
            self.fail(Failure::TooManyCommands(max));
            return false;
        }
        true
    }
}

/// What [`Session::take_line`] found at the front of the client's input.
enum Line<'a> {
    /// A whole line, its LF included.
    Whole(&'a [u8]),
    /// The start of a line over the limit (the rest is skipped as it comes):
    /// this many bytes consumed.
    TooLong(usize),
    /// More of an overlong line, consumed and dropped.
    Skipped(usize),
    /// No LF yet.
    Incomplete,
}
