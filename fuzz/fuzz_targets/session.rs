//! The SMTP session state machine under random input from both sides,
//! drawn from an SMTP alphabet so the fuzzer reaches deep states quickly.
//! It must never panic, and never act after closing.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mailbrake::config::{ClientTls, SessionLimits, Timeouts, UpstreamTls};
use mailbrake::session::{Action, Session, SessionConfig, Verdict};

const CLIENT: &[&[u8]] = &[
    b"EHLO c\r\n", b"HELO c\r\n", b"MAIL FROM:<a@x>\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<b@y>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
    b"AUTH PLAIN AGEAYg==\r\n", b"AUTH LOGIN\r\n", b"*\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r", b"\n",
    b".", b"x", b"\xff\x00", b"XCLIENT ADDR=1.2.3.4\r\n", b"\r\n.\r",
];
const UPSTREAM: &[&[u8]] = &[
    b"220 mx\r\n", b"250 ok\r\n", b"250-mx\r\n250-CHUNKING\r\n250 STARTTLS\r\n", b"354 go\r\n",
    b"334 VXNlcm5hbWU6\r\n", b"235 ok\r\n", b"535 no\r\n", b"550 no\r\n", b"421 bye\r\n", b"221 bye\r\n",
    b"250-", b"garbage\r\n", b"\r\n", b"250 XCLIENT ADDR\r\n",
];

fuzz_target!(|data: &[u8]| {
    let cfg = SessionConfig {
        hostname: "mb.fuzz".into(),
        client_tls: if data.first().is_some_and(|b| b & 1 == 0) { ClientTls::StartTls } else { ClientTls::None },
        allow_plaintext_auth: data.get(1).is_some_and(|b| b & 1 == 0),
        upstream_tls: if data.get(2).is_some_and(|b| b & 1 == 0) { UpstreamTls::Opportunistic } else { UpstreamTls::None },
        xclient: data.get(3).is_some_and(|b| b & 1 == 0),
        limits: SessionLimits::default(),
        timeouts: Timeouts::default(),
    };
    let mut now = Instant::now();
    let mut s = Session::new(Arc::new(cfg), "192.0.2.1:1".parse().unwrap(), false, false, now);
    let mut closed = false;
    let mut queue: std::collections::VecDeque<Action> = Default::default();
    for &b in data.iter().skip(4) {
        if closed {
            break; // the driver stops here too
        }
        let actions = match b % 8 {
            0..=2 => s.on_client_bytes(CLIENT[(b as usize / 8) % CLIENT.len()], now),
            3 | 4 => s.on_upstream_bytes(UPSTREAM[(b as usize / 8) % UPSTREAM.len()], now),
            5 => s.on_client_bytes(&[b], now),
            6 => match b / 8 % 4 {
                0 => s.on_client_tls(Ok(()), now),
                1 => s.on_upstream_tls(Ok(()), now),
                2 => s.on_client_eof(now),
                _ => s.on_upstream_eof(now),
            },
            _ => {
                now += Duration::from_secs(u64::from(b) * 3);
                s.on_timeout(now)
            }
        };
        queue.extend(actions);
        while let Some(a) = queue.pop_front() {
            assert!(!closed, "action after close: {a:?}");
            match a {
                Action::Close => closed = true,
                Action::CheckRcpt(_) => queue.extend(s.on_rcpt_verdict(
                    if b & 16 == 0 { Verdict::Accept } else { Verdict::Refuse("450 4.7.1 no".into()) },
                    now,
                )),
                Action::CheckAuth(_) => queue.extend(s.on_auth_verdict(b & 32 == 0, now)),
                _ => {}
            }
        }
    }
});
