//! The limit's invariant under arbitrary pipelined client sequences, MTA
//! behaviours and wire timings: the real session, enforcer, ledger and engine
//! against the model MTA (tests/model). After every step, the MTA has
//! delivered no more recipients per key than the limiter counts, and no RCPT
//! reached it without an accepting verdict for the MTA's own idea of the
//! sender.

#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailbrake::config::{Limit, LimitsConfig, Rate};
use model::harness::{Harness, session_config};
use model::mta::{Ask, Behaviour};

const WORDS: &[&[u8]] = &[
    b"EHLO c\r\n", b"HELO c\r\n", b"MAIL FROM:<a@x>\r\n", b"MAIL FROM:<b@x>\r\n", b"RCPT TO:<r@y>\r\n",
    b"RCPT TO:<s@y>\r\n", b"DATA\r\n", b"hi\r\n.\r\n", b".\r\n", b"\r\n.\r\n", b"BDAT 4\r\nabcd",
    b"BDAT 4 LAST\r\nabcd", b"BDAT 0 LAST\r\n", b"BDAT 20 LAST\r\nRCPT TO:<z@y>\r\nDATA\r\n", b"RSET\r\n",
    b"RSET x\r\n", b"NOOP\r\n", b"NOOP x\r\n", b" RCPT TO:<sp@y>\r\n", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n", b"AUTH LOGIN\r\n", b"Ym9i\r\n", b"*\r\n", b"QUIT\r\n", b"STARTTLS\r\n",
    b"DATA x\r\n", b"\n", b"\r", b"x", b"BDAT 15 ;\r\n", b"BDAT 15 LAST x\r\n",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The MTA's choices come from the back of the input, the steps from the front.
    let mut choices = data.to_vec();
    let ask = Box::new(move |a: Ask| {
        let c = choices.pop().unwrap_or(1);
        match a {
            Ask::Hangup => c == 0xff,
            _ => c % 8 != 0,
        }
    });
    let behaviour = Behaviour { chunking: data[0] & 1 == 0, bdat_after_helo: data[0] & 2 == 0 };
    let limits = LimitsConfig {
        default: Limit::Rates(vec![Rate { count: 3 + u32::from(data[1] % 4), window: Duration::from_secs(3600) }]),
        rotation: None,
        lock_after_refusals: None,
        ..LimitsConfig::default()
    };
    let mut h = Harness::new(session_config(), &limits, behaviour, ask);
    for &b in &data[2..] {
        match b % 8 {
            0..=3 => h.client(WORDS[(b as usize / 8) % WORDS.len()]),
            4 => h.deliver_to_mta(usize::from(b / 8)),
            5 => h.deliver_to_session(usize::from(b / 8)),
            6 => h.settle(),
            _ => match b / 8 % 8 {
                0 => h.client_reset(),
                1 => h.client_eof(),
                _ => h.deliver_to_mta(usize::MAX),
            },
        }
        h.check();
        if h.ended {
            break;
        }
    }
    h.settle();
    h.client_reset();
    h.check();
});
