//! One session, its real limits (enforcer, ledger, engine) and the model MTA,
//! wired together without sockets; the test decides when bytes cross each
//! wire, so every interleaving of pipelined commands and replies can be
//! tried. [`Harness::check`] is the invariant mailbrake exists for.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use mailbrake::config::{
    ClientTls, LimitsConfig, ProtectConfig, SessionLimits, Timeouts, UpstreamTls,
};
use mailbrake::driver::SessionPolicy;
use mailbrake::identity::{ClientAddr, Identity};
use mailbrake::limits::enforce::Enforcer;
use mailbrake::limits::{Clock, Limiter, Policy, SenderKey, Time};
use mailbrake::protect::Protect;
use mailbrake::session::{Action, Session, SessionConfig, Verdict};

use super::mta::{Behaviour, Mta};

pub const CLIENT: &str = "192.0.2.7:4321";

/// A clock that stands still unless the test moves it.
struct FixedClock(Arc<AtomicU32>);

impl Clock for FixedClock {
    fn now(&self) -> Time {
        self.0.load(Ordering::SeqCst)
    }
}

/// A session listener's settings for the model: plaintext AUTH allowed, so
/// the model's AUTH can be reached without TLS.
pub fn session_config() -> SessionConfig {
    SessionConfig {
        hostname: "mb.test".into(),
        client_tls: ClientTls::None,
        allow_plaintext_auth: true,
        upstream_tls: UpstreamTls::None,
        xclient: false,
        limits: SessionLimits::default(),
        timeouts: Timeouts::default(),
    }
}

pub struct Harness {
    pub session: Session,
    enforcer: Option<Enforcer>,
    pub limiter: Arc<Limiter>,
    pub mta: Mta,
    now: Instant,
    /// Written to the upstream, not yet read by the MTA.
    wire_to_mta: Vec<u8>,
    /// Written by the MTA, not yet read by the session.
    wire_to_session: Vec<u8>,
    pub client_got: Vec<u8>,
    /// Every accepting verdict: the key it was given for, and the recipient.
    pub verdicts: Vec<(SenderKey, String)>,
    /// The session has ended (closed itself, or the client reset it).
    pub ended: bool,
    upstream_eof_told: bool,
}

impl Harness {
    pub fn new(
        cfg: SessionConfig,
        limits: &LimitsConfig,
        behaviour: Behaviour,
        ask: Box<dyn FnMut(super::mta::Ask) -> bool>,
    ) -> Self {
        let clock = FixedClock(Arc::new(AtomicU32::new(1_000_000)));
        let limiter = Arc::new(Limiter::new(Policy::new(limits), Box::new(clock)));
        let off = ProtectConfig {
            connections_per_ip: None,
            auth_failures_per_ip: None,
            auth_failures_per_user: None,
            rcpt_pace: None,
        };
        let client: SocketAddr = CLIENT.parse().expect("address");
        let enforcer = Enforcer::new(
            limiter.clone(),
            Arc::new(Protect::new(&off)),
            Identity::by_address(ClientAddr::new(client)),
            None,
        );
        let now = Instant::now();
        let session = Session::new(Arc::new(cfg), client, false, false, now);
        let mta = Mta::new(behaviour, ask);
        let mut h = Harness {
            session,
            enforcer: Some(enforcer),
            limiter,
            wire_to_session: mta.greeting(),
            mta,
            now,
            wire_to_mta: Vec::new(),
            client_got: Vec::new(),
            verdicts: Vec::new(),
            ended: false,
            upstream_eof_told: false,
        };
        h.deliver_to_session(usize::MAX);
        h
    }

    /// Bytes from the client.
    pub fn client(&mut self, bytes: &[u8]) {
        if !self.ended {
            let actions = self.session.on_client_bytes(bytes, self.now);
            self.apply(actions);
        }
    }

    /// The client closes its side (the session may still wait for replies).
    pub fn client_eof(&mut self) {
        if !self.ended {
            let actions = self.session.on_client_eof(self.now);
            self.apply(actions);
        }
    }

    /// The client resets the connection: the session is gone at once, and
    /// what it wrote upstream still arrives there.
    pub fn client_reset(&mut self) {
        self.end();
    }

    /// Up to `n` bytes cross from mailbrake to the MTA.
    pub fn deliver_to_mta(&mut self, n: usize) {
        let n = n.min(self.wire_to_mta.len());
        let bytes: Vec<u8> = self.wire_to_mta.drain(..n).collect();
        let replies = self.mta.input(&bytes);
        self.wire_to_session.extend(replies);
    }

    /// Up to `n` reply bytes cross from the MTA to mailbrake; once the MTA
    /// has hung up and everything it sent is read, the session hears so.
    pub fn deliver_to_session(&mut self, n: usize) {
        if self.ended {
            return;
        }
        let n = n.min(self.wire_to_session.len());
        if n > 0 {
            let bytes: Vec<u8> = self.wire_to_session.drain(..n).collect();
            let actions = self.session.on_upstream_bytes(&bytes, self.now);
            self.apply(actions);
        }
        if self.mta.closed
            && self.wire_to_session.is_empty()
            && !self.ended
            && !self.upstream_eof_told
        {
            self.upstream_eof_told = true;
            let actions = self.session.on_upstream_eof(self.now);
            self.apply(actions);
        }
    }

    /// Both wires carry everything, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            if self.wire_to_mta.is_empty() && self.wire_to_session.is_empty() {
                break;
            }
            self.deliver_to_mta(usize::MAX);
            self.deliver_to_session(usize::MAX);
        }
        self.deliver_to_session(usize::MAX);
    }

    /// What the client has read since the last call.
    pub fn client_read(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.client_got)).into_owned()
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if self.ended {
                return;
            }
            let enforcer = self.enforcer.as_mut().expect("live while not ended");
            match action {
                Action::ToClient(b) => self.client_got.extend(b),
                Action::ToUpstream(b) => self.wire_to_mta.extend(b),
                Action::StartClientTls => {
                    queue.extend(self.session.on_client_tls(Ok(()), self.now));
                }
                Action::StartUpstreamTls => {
                    queue.extend(self.session.on_upstream_tls(Ok(()), self.now));
                }
                Action::CheckRcpt(check) => {
                    let verdict = ready(enforcer.check_rcpt(&check));
                    if verdict == Verdict::Accept {
                        let key = enforcer.key();
                        self.verdicts.push((key, check.recipient.clone()));
                    }
                    queue.extend(self.session.on_rcpt_verdict(verdict, self.now));
                }
                Action::Tx(event) => enforcer.on_tx(event),
                Action::CheckAuth(user) => {
                    let allowed = enforcer.check_auth(user.as_ref());
                    queue.extend(self.session.on_auth_verdict(allowed, self.now));
                }
                Action::AuthResult {
                    user,
                    mechanism,
                    ok,
                } => enforcer.on_auth(user.as_ref(), mechanism, ok),
                // Nothing more reaches the client; the MTA's replies still come.
                Action::CloseClient => {}
                Action::Close => self.end(),
            }
        }
    }

    /// The session is over: its policy goes (releasing or committing what it
    /// holds), what it wrote still reaches the MTA, then the MTA sees EOF.
    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.enforcer = None;
        let rest = std::mem::take(&mut self.wire_to_mta);
        self.mta.input(&rest);
        self.mta.eof();
    }

    /// The key mailbrake must count the MTA's user under: its name as
    /// mailbrake keeps it (control characters dropped, case folded), so
    /// users the MTA tells apart may share a key, never the other way round.
    fn key_of(user: &Option<String>) -> SenderKey {
        match user {
            Some(u) => SenderKey::auth(&u.chars().filter(|c| !c.is_control()).collect::<String>()),
            None => SenderKey::ip(CLIENT.parse::<SocketAddr>().unwrap().ip(), 64),
        }
    }

    /// The invariant: every RCPT the MTA received had an accepting verdict,
    /// for the key the MTA itself would name; and, for every key, the
    /// recipients the MTA delivered never exceed what the limiter counts
    /// (sent, plus reserved while the session lives; sent alone once it is
    /// gone, with nothing left reserved).
    pub fn check(&self) {
        let received = &self.mta.rcpt_commands;
        assert!(
            received.len() <= self.verdicts.len(),
            "{} RCPTs reached the MTA with {} verdicts",
            received.len(),
            self.verdicts.len()
        );
        for (i, (user, to)) in received.iter().enumerate() {
            let (key, checked) = &self.verdicts[i];
            assert_eq!(checked, to, "RCPT {i} reached the MTA without its verdict");
            assert_eq!(
                key,
                &Self::key_of(user),
                "RCPT {i} was decided for another key than the MTA's"
            );
        }
        let mut delivered: BTreeMap<String, (SenderKey, usize)> = BTreeMap::new();
        for (user, _) in &self.mta.delivered {
            let key = Self::key_of(user);
            delivered.entry(key.to_string()).or_insert((key, 0)).1 += 1;
        }
        let ip: IpAddr = CLIENT.parse::<SocketAddr>().unwrap().ip();
        for (key, n) in delivered.values() {
            let status = self.limiter.status(key, Some(ip));
            let sent = status.rates.first().map_or(0, |r| r.1);
            let pending = status.pending as usize;
            if self.ended {
                assert!(
                    *n <= sent,
                    "{key}: the MTA delivered {n}, the limiter counts {sent} sent"
                );
            } else {
                assert!(
                    *n <= sent + pending,
                    "{key}: the MTA delivered {n}, the limiter counts {sent} sent and {pending} reserved"
                );
            }
        }
        if self.ended {
            for (key, _) in delivered.values() {
                assert_eq!(self.limiter.status(key, Some(ip)).pending, 0, "{key}");
            }
        }
    }

    /// Recipients the MTA delivered in all.
    pub fn delivered(&self) -> usize {
        self.mta.delivered.len()
    }
}

/// A policy answer that is ready at once (the local engine never waits).
fn ready<T>(mut fut: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the local limiter answers at once"),
    }
}
