//! The upstream side of a session: mailbrake's own set-up of the upstream
//! leg (EHLO probe, STARTTLS) and every reply, matched to the command it
//! answers and relayed to the client in order.

use std::time::Instant;

use super::ehlo::{self, Offer};
use super::replies::Failure;
use super::reply::Reply;
use super::{Action, Expect, MessageInfo, Phase, Session, Slot, TxEvent};
use crate::config::{ClientTls, UpstreamTls};

impl Session {
    /// One whole reply from the upstream.
    pub(super) fn on_reply(&mut self, reply: Reply, now: Instant) {
        self.flush_local();
        // A line held for a reply is looked at again after each one.
        self.held = false;
        let (expect, since) = match self.queue.pop_front() {
            Some(Slot::Upstream { expect, since }) => (expect, since),
            other => {
                if let Some(slot) = other {
                    self.queue.push_front(slot);
                }
                // An unsolicited reply: a 421 before the upstream hangs up is
                // normal (RFC 5321 3.8), anything else is a protocol error.
                if reply.code == 421 {
                    tracing::warn!(reply = %reply.last_text(), "upstream closing the session");
                    self.relay_goodbye(reply);
                } else {
                    self.fail(Failure::UpstreamProtocol(format!(
                        "unexpected reply {:?}",
                        reply.last_text()
                    )));
                }
                return;
            }
        };
        match expect {
            Expect::Greeting => self.on_greeting(reply, now),
            Expect::Probe => self.on_probe(reply, now),
            Expect::UpstreamStartTls => {
                if reply.code == 220 {
                    self.act(Action::StartUpstreamTls);
                } else if self.cfg.upstream_tls == UpstreamTls::StartTls {
                    self.fail(Failure::UpstreamTls(format!(
                        "STARTTLS refused: {}",
                        reply.last_text()
                    )));
                } else {
                    tracing::info!(reply = %reply.last_text(), "upstream refused STARTTLS; continuing in plaintext");
                    self.finish_setup();
                }
            }
            Expect::Xclient => {
                if reply.code != 220 {
                    tracing::warn!(reply = %reply.last_text(), "upstream refused XCLIENT");
                }
                if let Some((line, expect)) = self.pending_helo.take() {
                    self.forward(&line, expect, now);
                }
            }
            Expect::Ehlo => {
                self.sync = false;
                if reply.code == 421 {
                    return self.relay_goodbye(reply);
                }
                if reply.is_positive() {
                    // A new start: no transaction, and BDAT only if offered now.
                    self.reset_transaction();
                    self.upstream_chunking = reply
                        .texts()
                        .skip(1)
                        .any(|t| t.len() >= 8 && t[..8].eq_ignore_ascii_case(b"CHUNKING"));
                }
                let offer = Offer {
                    starttls: self.cfg.client_tls == ClientTls::StartTls && !self.client_tls,
                    auth: self.client_tls || self.cfg.allow_plaintext_auth,
                };
                self.send_client(ehlo::rewrite(&reply, offer));
            }
            Expect::Helo | Expect::Quit => {
                self.sync = false;
                if expect == Expect::Helo && reply.is_positive() {
                    // A HELO session has no BDAT.
                    self.reset_transaction();
                    self.upstream_chunking = false;
                }
                self.relay(reply);
            }
            Expect::Mail { tx } => {
                if let Some(open) = self.tx.as_mut().filter(|open| open.id == tx) {
                    if reply.is_positive() {
                        open.confirmed = true;
                    } else {
                        self.tx = None;
                    }
                }
                self.relay(reply);
            }
            Expect::Rcpt { tx } => {
                let accepted = reply.is_positive();
                let ending = self.ending.iter_mut().flatten();
                if let Some(t) = self.tx.iter_mut().chain(ending).find(|t| t.id == tx) {
                    if accepted {
                        t.rcpt_accepted += 1;
                    } else {
                        t.rcpt_refused_upstream += 1;
                    }
                }
                self.act(Action::Tx(TxEvent::RcptReply { accepted }));
                self.relay(reply);
            }
            Expect::Data => {
                self.sync = false;
                if reply.code == 354 {
                    self.start_body(Phase::Data(super::data::DataScanner::new()), now);
                }
                self.relay(reply);
            }
            Expect::DataEnd | Expect::Bdat { last: true } => {
                let size = self.end_transaction(&reply);
                let delivered = reply.is_positive();
                self.act(Action::Tx(TxEvent::End {
                    delivered,
                    message: MessageInfo {
                        size,
                        waited: now.saturating_duration_since(since),
                    },
                }));
                self.relay(reply);
            }
            Expect::Bdat { last: false } => self.relay(reply),
            Expect::Auth => {
                self.sync = false;
                if reply.code == 334 {
                    self.phase = Phase::AuthResponse;
                } else {
                    let sasl = self.sasl.take();
                    let mech = sasl.as_ref().map_or("?", |s| s.mechanism.name());
                    let user = sasl.as_ref().and_then(|s| s.username().cloned());
                    let ok = reply.code == 235;
                    if ok {
                        tracing::info!(mechanism = mech, user = %user.as_ref().map_or("?", |u| u.as_str()), "authenticated");
                    } else {
                        tracing::info!(mechanism = mech, user = %user.as_ref().map_or("?", |u| u.as_str()), reply = %reply.last_text(), "authentication failed");
                    }
                    if let Some(s) = &sasl {
                        self.act(Action::AuthResult {
                            user: user.clone(),
                            mechanism: s.mechanism,
                            ok,
                        });
                    }
                    if ok && user.is_none() {
                        // The upstream knows a user mailbrake cannot name:
                        // counting on under the session's other key would
                        // let it step around its own limit.
                        return self.fail(Failure::UnknownUser(mech.to_string()));
                    }
                    if ok {
                        self.user = user;
                    }
                }
                self.relay(reply);
            }
            Expect::Rset => {
                // Its transaction was closed when it was sent (what follows
                // it may have opened another); the recipients the upstream
                // held go.
                if reply.is_positive() {
                    self.act(Action::Tx(TxEvent::Reset));
                }
                self.relay(reply);
            }
            Expect::Other => self.relay(reply),
        }
        if matches!(expect, Expect::Quit) {
            self.close();
        }
        self.flush_local();
    }

    /// The upstream accepted an EHLO or HELO (client input waited for it):
    /// its transaction is gone.
    fn reset_transaction(&mut self) {
        self.tx = None;
        self.body_clock = None;
        self.act(Action::Tx(TxEvent::Reset));
    }

    /// Relays a reply as the upstream wrote it.
    fn relay(&mut self, reply: Reply) {
        if reply.code == 421 {
            return self.relay_goodbye(reply);
        }
        self.send_client(reply.raw);
    }

    /// A 421 means the upstream is closing: pass it on and close.
    fn relay_goodbye(&mut self, reply: Reply) {
        self.send_client(reply.raw);
        self.said_goodbye = true;
        self.close();
    }

    /// Logs the ended transaction's one line; returns the message size.
    fn end_transaction(&mut self, reply: &Reply) -> u64 {
        let Some(tx) = self.ending.pop_front().flatten() else {
            return 0;
        };
        tracing::info!(
            from = %tx.mail_from,
            rcpts = tx.rcpt_accepted,
            refused_by_limit = tx.rcpt_refused_locally,
            refused_by_upstream = tx.rcpt_refused_upstream,
            size = tx.size,
            user = %self.user.as_ref().map_or("", |u| u.as_str()),
            code = reply.code,
            reply = %reply.last_text(),
            "message"
        );
        tx.size
    }

    fn on_greeting(&mut self, reply: Reply, now: Instant) {
        let wants_tls = matches!(
            self.cfg.upstream_tls,
            UpstreamTls::StartTls | UpstreamTls::Opportunistic
        ) && !self.upstream_tls;
        if reply.code == 220 && (wants_tls || self.cfg.xclient) {
            self.greeting = Some(reply.raw);
            self.probe(now);
        } else {
            self.greeting = Some(reply.raw);
            self.finish_setup();
        }
    }

    /// mailbrake's own EHLO, answered to mailbrake only.
    fn probe(&mut self, now: Instant) {
        let line = format!("EHLO {}\r\n", self.cfg.hostname);
        self.forward(line.as_bytes(), Expect::Probe, now);
    }

    fn on_probe(&mut self, reply: Reply, now: Instant) {
        if reply.code == 250 {
            self.caps = ehlo::capabilities(&reply);
        }
        let start_tls = !self.upstream_tls
            && match self.cfg.upstream_tls {
                UpstreamTls::StartTls => true,
                UpstreamTls::Opportunistic => self.caps.starttls,
                UpstreamTls::None | UpstreamTls::Implicit => false,
            };
        if start_tls && !self.caps.starttls {
            return self.fail(Failure::UpstreamNoStartTls);
        }
        if start_tls {
            self.forward(b"STARTTLS\r\n", Expect::UpstreamStartTls, now);
        } else {
            self.finish_setup();
        }
    }

    /// The upstream leg is TLS now; learn its capabilities again if XCLIENT needs them.
    pub(super) fn after_upstream_tls(&mut self, now: Instant) {
        self.caps = Default::default();
        if self.cfg.xclient {
            self.probe(now);
        } else {
            self.finish_setup();
        }
    }

    /// The upstream leg is ready: the client gets the greeting and may talk.
    fn finish_setup(&mut self) {
        if !matches!(self.phase, Phase::Setup) {
            return;
        }
        let greeting = self.greeting.take().unwrap_or_default();
        let positive = greeting.first() == Some(&b'2');
        self.phase = Phase::Command;
        if greeting.starts_with(b"421") {
            self.send_client(greeting);
            self.said_goodbye = true;
            self.close();
        } else {
            if !positive {
                tracing::info!(greeting = %String::from_utf8_lossy(super::reply::trim_eol(&greeting)), "upstream refuses the session");
            }
            self.send_client(greeting);
        }
    }
}
