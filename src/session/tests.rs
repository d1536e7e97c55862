//! Session rules, driven through events with a fake clock and no I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod auth;
mod chaos;
mod timing;
mod transactions;

use super::*;
use crate::config::{ClientTls, SessionLimits, Timeouts, UpstreamTls};

/// A session and everything it has written so far.
struct T {
    s: Session,
    now: Instant,
    client_out: Vec<u8>,
    upstream_out: Vec<u8>,
    client_tls_started: bool,
    upstream_tls_started: bool,
    closed: bool,
    client_closed: bool,
    /// Recipients containing this text are refused by the policy.
    refuse: Option<&'static str>,
    checked: Vec<RcptCheck>,
    tx_events: Vec<TxEvent>,
    auth_results: Vec<bool>,
    /// AUTH as this user is refused by the policy.
    block_auth: Option<String>,
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mb.test".into(),
        client_tls: ClientTls::StartTls,
        allow_plaintext_auth: false,
        upstream_tls: UpstreamTls::None,
        xclient: false,
        limits: SessionLimits::default(),
        timeouts: Timeouts::default(),
    }
}

impl T {
    fn new(cfg: SessionConfig) -> T {
        let now = Instant::now();
        let s = Session::new(
            Arc::new(cfg),
            "192.0.2.7:4321".parse().unwrap(),
            false,
            false,
            now,
        );
        T {
            s,
            now,
            client_out: Vec::new(),
            upstream_out: Vec::new(),
            client_tls_started: false,
            upstream_tls_started: false,
            closed: false,
            client_closed: false,
            refuse: None,
            checked: Vec::new(),
            tx_events: Vec::new(),
            auth_results: Vec::new(),
            block_auth: None,
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            assert!(!self.closed, "action after close: {a:?}");
            match a {
                Action::ToClient(b) => self.client_out.extend(b),
                Action::ToUpstream(b) => self.upstream_out.extend(b),
                Action::StartClientTls => self.client_tls_started = true,
                Action::StartUpstreamTls => self.upstream_tls_started = true,
                Action::Close => self.closed = true,
                Action::CloseClient => self.client_closed = true,
                Action::Tx(event) => self.tx_events.push(event),
                Action::AuthResult { ok, .. } => self.auth_results.push(ok),
                Action::CheckAuth(user) => {
                    let user = user.as_ref().map(|u| u.as_str().to_owned());
                    let allowed = self.block_auth.is_none() || self.block_auth != user;
                    let more = self.s.on_auth_verdict(allowed, self.now);
                    self.apply(more);
                }
                Action::CheckRcpt(check) => {
                    let verdict = match self.refuse {
                        Some(r) if check.recipient.contains(r) => {
                            Verdict::Refuse("450 4.7.1 limit".into())
                        }
                        _ => Verdict::Accept,
                    };
                    self.checked.push(check);
                    let more = self.s.on_rcpt_verdict(verdict, self.now);
                    self.apply(more);
                }
            }
        }
    }

    fn client(&mut self, bytes: &[u8]) -> &mut Self {
        let a = self.s.on_client_bytes(bytes, self.now);
        self.apply(a);
        self
    }

    fn upstream(&mut self, bytes: &[u8]) -> &mut Self {
        let a = self.s.on_upstream_bytes(bytes, self.now);
        self.apply(a);
        self
    }

    /// What the client received since the last call.
    fn client_got(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.client_out)).into_owned()
    }

    /// What the upstream received since the last call.
    fn upstream_got(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.upstream_out)).into_owned()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let a = self.s.on_timeout(self.now);
        self.apply(a);
    }

    /// A pipelined MAIL, RCPT, DATA, answered 250, 250, 354; output drained.
    fn open_data(&mut self) {
        self.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        self.upstream(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(
            self.upstream_got(),
            "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
        );
        assert_eq!(self.client_got(), "250 ok\r\n250 ok\r\n354 go\r\n");
    }

    /// Greeting and EHLO, with a typical Postfix capability list.
    fn greet(&mut self) {
        self.upstream(b"220 mx.test ESMTP\r\n");
        assert_eq!(self.client_got(), "220 mx.test ESMTP\r\n");
        self.client(b"EHLO client.test\r\n");
        assert_eq!(self.upstream_got(), "EHLO client.test\r\n");
        self.upstream(b"250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n");
        self.client_got();
    }
}

fn session() -> T {
    T::new(cfg())
}

#[test]
fn relays_a_message_byte_for_byte() {
    let mut t = session();
    t.greet();
    let body = "Subject: hi\r\n\r\n..dot-stuffed\r\n8bit \u{e9}\r\n.\r\n";
    t.client(b"MAIL FROM:<a@x.test>\r\n");
    t.upstream(b"250 2.1.0 Ok\r\n");
    t.client(b"RCPT TO:<b@y.test>\r\n");
    t.upstream(b"250 2.1.5 Ok\r\n");
    t.client(b"DATA\r\n");
    assert_eq!(
        t.upstream_got(),
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    );
    t.upstream(b"354 End data with <CR><LF>.<CR><LF>\r\n");
    t.client(body.as_bytes());
    assert_eq!(t.upstream_got(), body);
    t.upstream(b"250 2.0.0 Ok: queued as ABC123\r\n");
    assert_eq!(
        t.client_got(),
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ABC123\r\n"
    );
    t.client(b"QUIT\r\n");
    t.upstream(b"221 2.0.0 Bye\r\n");
    assert_eq!(t.client_got(), "221 2.0.0 Bye\r\n");
    assert!(t.closed);
    assert_eq!(t.checked.len(), 1);
    assert_eq!(t.checked[0].mail_from, "a@x.test");
}

#[test]
fn pipelined_batch_keeps_reply_order_with_local_refusals() {
    let mut t = session();
    t.refuse = Some("over");
    t.greet();
    t.client(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<one@y.test>\r\nRCPT TO:<over@y.test>\r\nRCPT TO:<two@y.test>\r\nDATA\r\n");
    // Everything but the refused RCPT goes upstream in one batch.
    assert_eq!(
        t.upstream_got(),
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<one@y.test>\r\nRCPT TO:<two@y.test>\r\nDATA\r\n"
    );
    assert_eq!(t.client_got(), "", "nothing may overtake the MAIL reply");
    t.upstream(b"250 ok mail\r\n250 ok one\r\n");
    assert_eq!(
        t.client_got(),
        "250 ok mail\r\n250 ok one\r\n450 4.7.1 limit\r\n"
    );
    t.upstream(b"250 ok two\r\n354 go\r\n");
    assert_eq!(t.client_got(), "250 ok two\r\n354 go\r\n");
}

#[test]
fn all_recipients_refused_answers_data_locally_and_discards_pipelined_body() {
    let mut t = session();
    t.refuse = Some("@");
    t.greet();
    t.client(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: x\r\n\r\nRCPT TO:<evil@z>\r\n.\r\nNOOP\r\n");
    // The body was discarded; the NOOP after it is a command again.
    assert_eq!(t.upstream_got(), "MAIL FROM:<a@x.test>\r\nNOOP\r\n");
    t.upstream(b"250 ok\r\n250 noop\r\n");
    assert_eq!(
        t.client_got(),
        "250 ok\r\n450 4.7.1 limit\r\n554 5.5.1 Error: no valid recipients\r\n250 noop\r\n"
    );
}

#[test]
fn starttls_discards_pipelined_commands_and_resets_state() {
    let mut t = session();
    t.greet();
    t.client(b"STARTTLS\r\nMAIL FROM:<injected@evil>\r\n");
    assert_eq!(t.client_got(), "220 2.0.0 Ready to start TLS\r\n");
    assert!(t.client_tls_started);
    assert_eq!(t.upstream_got(), "");
    let a = t.s.on_client_tls(Ok(()), t.now);
    t.apply(a);
    // The injected command is gone, and EHLO is needed again.
    t.client(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(t.client_got(), "503 5.5.1 Error: send HELO/EHLO first\r\n");
    t.client(b"EHLO client.test\r\n");
    assert_eq!(t.upstream_got(), "EHLO client.test\r\n");
    t.upstream(b"250-mx.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");
    // After TLS: no STARTTLS offered, AUTH shown.
    assert_eq!(t.client_got(), "250-mx.test\r\n250 AUTH PLAIN\r\n");
}

#[test]
fn ehlo_before_tls_hides_auth_and_offers_starttls() {
    let mut t = session();
    t.upstream(b"220 mx\r\n");
    t.client(b"EHLO c\r\n");
    t.upstream(
        b"250-mx\r\n250-XCLIENT ADDR\r\n250-AUTH PLAIN SCRAM-SHA-256-PLUS\r\n250 8BITMIME\r\n",
    );
    assert_eq!(
        t.client_got(),
        "220 mx\r\n250-mx\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    );
}

#[test]
fn auth_before_tls_is_refused_unless_allowed() {
    let mut t = session();
    t.greet();
    t.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(
        t.client_got(),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(t.upstream_got(), "");

    let mut t = T::new(SessionConfig {
        allow_plaintext_auth: true,
        ..cfg()
    });
    t.greet();
    t.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(t.upstream_got(), "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    t.upstream(b"235 2.7.0 Authentication successful\r\n");
    assert_eq!(t.s.user().map(|u| u.as_str()), Some("alice"));
}

#[test]
fn auth_login_continuations_and_failure() {
    let mut t = T::new(SessionConfig {
        allow_plaintext_auth: true,
        ..cfg()
    });
    t.greet();
    t.client(b"AUTH LOGIN\r\n");
    t.upstream(b"334 VXNlcm5hbWU6\r\n");
    t.client(b"Ym9i\r\n"); // bob
    assert_eq!(t.upstream_got(), "AUTH LOGIN\r\nYm9i\r\n");
    t.upstream(b"334 UGFzc3dvcmQ6\r\n");
    // A password that looks like a command is still a SASL response.
    t.client(b"QUIT\r\n");
    assert_eq!(t.upstream_got(), "QUIT\r\n");
    assert!(!t.closed);
    t.upstream(b"535 5.7.8 Error: authentication failed\r\n");
    assert_eq!(t.s.user(), None);
    assert_eq!(
        t.client_got(),
        "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Error: authentication failed\r\n"
    );
    // Back to commands.
    t.client(b"NOOP\r\n");
    assert_eq!(t.upstream_got(), "NOOP\r\n");
}

#[test]
fn overlong_sasl_response_cancels_the_exchange() {
    let mut t = T::new(SessionConfig {
        allow_plaintext_auth: true,
        ..cfg()
    });
    t.greet();
    t.client(b"AUTH LOGIN\r\n");
    t.upstream(b"334 VXNlcm5hbWU6\r\n");
    t.upstream_got();
    t.client(&vec![b'A'; 20_000]);
    assert_eq!(t.upstream_got(), "*\r\n");
    t.upstream(b"501 5.7.0 Authentication aborted\r\n");
    t.client(b"AAAA\r\nNOOP\r\n");
    assert_eq!(t.upstream_got(), "NOOP\r\n");
    assert!(
        t.client_got()
            .ends_with("501 5.7.0 Authentication aborted\r\n")
    );
}

#[test]
fn smuggling_in_data_is_refused_and_never_ends_the_upstream_message() {
    let mut t = session();
    t.greet();
    t.open_data();
    t.client(b"Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<spoof@bank>\r\n");
    assert!(t.closed);
    assert!(t.client_got().starts_with("554 5.5.2 "));
    let up = t.upstream_got();
    assert!(!up.contains("\r\n.\r\n") && !up.contains("spoof"), "{up:?}");
}

#[test]
fn client_gone_mid_data_closes_without_end_of_data() {
    let mut t = session();
    t.greet();
    t.open_data();
    t.client(b"Subject: x\r\n\r\npartial\r\n.\r");
    let a = t.s.on_client_eof(t.now);
    t.apply(a);
    assert!(t.closed);
    assert_eq!(t.upstream_got(), "Subject: x\r\n\r\npartial\r\n.");
}

#[test]
fn upstream_closing_mid_session_gives_421() {
    let mut t = session();
    t.greet();
    t.client(b"MAIL FROM:<a@x>\r\n");
    let a = t.s.on_upstream_eof(t.now);
    t.apply(a);
    assert!(t.client_got().starts_with("421 4.4.2 "));
    assert!(t.closed);
}

#[test]
fn upstream_421_is_relayed_once() {
    let mut t = session();
    t.greet();
    t.upstream(b"421 4.4.2 mx.test Error: timeout exceeded\r\n");
    let a = t.s.on_upstream_eof(t.now);
    t.apply(a);
    assert_eq!(
        t.client_got(),
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
    assert!(t.closed);
}

#[test]
fn overlong_lines_get_500_and_the_session_goes_on() {
    let mut t = session();
    t.greet();
    let long = vec![b'A'; 5000];
    t.client(&long);
    t.client(b"AAAA\r\nNOOP\r\n");
    assert_eq!(t.client_got(), "500 5.5.2 Error: line too long\r\n");
    assert_eq!(t.upstream_got(), "NOOP\r\n");
}

#[test]
fn local_refusals_for_unknown_and_identity_commands() {
    let mut t = session();
    t.greet();
    for cmd in [
        "XCLIENT ADDR=10.0.0.1\r\n",
        "XFORWARD ADDR=10.0.0.1\r\n",
        "FOO\r\n",
    ] {
        t.client(cmd.as_bytes());
        assert_eq!(
            t.client_got(),
            "502 5.5.2 Error: command not recognized\r\n",
            "{cmd}"
        );
    }
    t.client(b"MAIL FROM:<a@x> FOO=BAR\r\n");
    assert!(t.client_got().starts_with("555 5.5.4"));
    t.client(b"NOOP\nHELP\r\n");
    // A bare LF line ending is forwarded as CRLF, so both sides agree on the line.
    assert_eq!(t.upstream_got(), "NOOP\r\nHELP\r\n");
}

#[test]
fn too_many_commands_without_mail_closes() {
    let mut t = T::new(SessionConfig {
        limits: SessionLimits {
            max_commands_without_mail: std::num::NonZeroUsize::new(3).unwrap(),
            ..SessionLimits::default()
        },
        ..cfg()
    });
    t.greet(); // EHLO counts as one
    t.client(b"NOOP\r\nNOOP\r\nNOOP\r\n");
    assert!(t.closed);
    assert_eq!(t.upstream_got(), "NOOP\r\nNOOP\r\n");
}

#[test]
fn bdat_relayed_exactly_or_refused_when_upstream_lacks_chunking() {
    let mut t = session();
    t.greet();
    t.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 13\r\nRCPT TO:<z>\r\nBDAT 0 LAST\r\n");
    assert_eq!(
        t.upstream_got(),
        "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 13\r\nRCPT TO:<z>\r\nBDAT 0 LAST\r\n"
    );
    t.upstream(b"250 a\r\n250 b\r\n250 c\r\n250 queued\r\n");
    assert_eq!(t.client_got(), "250 a\r\n250 b\r\n250 c\r\n250 queued\r\n");

    let mut t = session();
    t.upstream(b"220 mx\r\n");
    t.client(b"EHLO c\r\n");
    t.upstream(b"250 mx\r\n");
    t.client_got();
    t.upstream_got();
    t.client(b"MAIL FROM:<a@x>\r\nBDAT 13\r\nRCPT TO:<z>\r\nNOOP\r\n");
    // The chunk's content never reaches the upstream as commands.
    assert_eq!(t.upstream_got(), "MAIL FROM:<a@x>\r\nNOOP\r\n");
}

#[test]
fn upstream_starttls_setup_then_greeting() {
    let mut t = T::new(SessionConfig {
        upstream_tls: UpstreamTls::StartTls,
        ..cfg()
    });
    t.upstream(b"220 mx ESMTP\r\n");
    assert_eq!(t.client_got(), "");
    assert_eq!(t.upstream_got(), "EHLO mb.test\r\n");
    t.upstream(b"250-mx\r\n250 STARTTLS\r\n");
    assert_eq!(t.upstream_got(), "STARTTLS\r\n");
    t.upstream(b"220 go ahead\r\n");
    assert!(t.upstream_tls_started);
    // The client may not talk before the greeting.
    t.client(b"EHLO early\r\n");
    assert_eq!(t.upstream_got(), "");
    let a = t.s.on_upstream_tls(Ok(()), t.now);
    t.apply(a);
    assert_eq!(t.client_got(), "220 mx ESMTP\r\n");
    assert_eq!(t.upstream_got(), "EHLO early\r\n");
}

#[test]
fn upstream_starttls_required_but_absent_fails_opportunistic_goes_on() {
    let mut t = T::new(SessionConfig {
        upstream_tls: UpstreamTls::StartTls,
        ..cfg()
    });
    t.upstream(b"220 mx\r\n");
    t.upstream(b"250 mx\r\n");
    assert!(t.client_got().starts_with("421 4.7.0 "));
    assert!(t.closed);

    let mut t = T::new(SessionConfig {
        upstream_tls: UpstreamTls::Opportunistic,
        ..cfg()
    });
    t.upstream(b"220 mx\r\n");
    t.upstream(b"250 mx\r\n");
    assert_eq!(t.client_got(), "220 mx\r\n");
    assert!(!t.upstream_tls_started);
}

#[test]
fn xclient_precedes_the_clients_helo() {
    let mut t = T::new(SessionConfig {
        xclient: true,
        ..cfg()
    });
    t.upstream(b"220 mx\r\n");
    assert_eq!(t.upstream_got(), "EHLO mb.test\r\n");
    t.upstream(b"250-mx\r\n250 XCLIENT NAME ADDR PORT HELO LOGIN\r\n");
    assert_eq!(t.client_got(), "220 mx\r\n");
    t.client(b"EHLO client.test\r\n");
    let up = t.upstream_got();
    assert!(up.starts_with("XCLIENT ADDR=192.0.2.7 PORT=4321"), "{up}");
    assert!(up.contains("HELO=client.test"), "{up}");
    t.upstream(b"220 mx ESMTP\r\n");
    assert_eq!(t.upstream_got(), "EHLO client.test\r\n");
    t.upstream(b"250 mx\r\n");
    assert_eq!(t.client_got(), "250-mx\r\n250 STARTTLS\r\n");
}

#[test]
fn unsolicited_reply_is_a_protocol_error() {
    let mut t = session();
    t.greet();
    t.upstream(b"250 surprise\r\n");
    assert!(t.closed);
    assert!(t.client_got().starts_with("421 4.4.2 "));
}

#[test]
fn client_half_close_after_pipelining_still_gets_replies() {
    let mut t = session();
    t.greet();
    t.client(b"NOOP\r\nQUIT\r\n");
    let a = t.s.on_client_eof(t.now);
    t.apply(a);
    assert!(!t.closed);
    t.upstream(b"250 ok\r\n221 bye\r\n");
    assert_eq!(t.client_got(), "250 ok\r\n221 bye\r\n");
    assert!(t.closed);
}

#[test]
fn every_split_of_a_pipelined_session_gives_the_same_bytes() {
    let client: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
    let mut reference: Option<(String, String)> = None;
    for cut in 0..=client.len() {
        let mut t = session();
        t.upstream(b"220 mx\r\n");
        t.client(&client[..cut]);
        t.client(&client[cut..]);
        t.upstream(b"250 mx\r\n");
        t.upstream(b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n");
        let got = (t.client_got(), t.upstream_got());
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(&got, r, "cut {cut}"),
        }
    }
    let (c, u) = reference.unwrap();
    assert!(c.ends_with("250 queued\r\n221 bye\r\n"), "{c}");
    assert_eq!(u, String::from_utf8_lossy(client));
}

#[test]
fn auth_waits_for_the_policy_and_a_blocked_user_is_cut_off() {
    let mut t = T::new(SessionConfig {
        allow_plaintext_auth: true,
        ..cfg()
    });
    t.block_auth = Some("mallory".into());
    t.greet();
    // PLAIN with an initial response: the username is known at once.
    t.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"); // alice
    assert_eq!(t.upstream_got(), "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    t.upstream(b"535 5.7.8 no\r\n");
    assert_eq!(t.auth_results, [false]);
    // LOGIN: the username comes in the first response, checked before it is forwarded.
    t.client(b"AUTH LOGIN\r\n");
    t.upstream(b"334 VXNlcm5hbWU6\r\n");
    t.upstream_got();
    t.client(b"bWFsbG9yeQ==\r\n"); // mallory
    assert_eq!(
        t.upstream_got(),
        "",
        "the blocked user's response never reaches the upstream"
    );
    assert!(t.closed);
    assert!(t.client_got().ends_with(
        "421 4.7.0 mb.test Error: too many failed authentications, try again later\r\n"
    ));
}
