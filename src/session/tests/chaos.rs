//! Hostile input on purpose: random walks over an SMTP alphabet.

use std::time::Duration;

use super::{T, cfg};
use crate::config::UpstreamTls;
use crate::session::{Expect, SessionConfig, Slot};

/// A small deterministic generator (xorshift), so the chaos test needs no crate
/// and fails the same way every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Hostile input on purpose: random sequences over an SMTP alphabet, from
/// both sides, in random splits. The session must never panic, never act
/// after closing, and never let the upstream see an end of data the client
/// did not send whole.
#[test]
fn chaos_over_an_smtp_alphabet() {
    let client_words: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<b@y>\r\n",
        b"RCPT TO:<over@y>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 3 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN AGEAYg==\r\n",
        b"AUTH LOGIN\r\n",
        b"*\r\n",
        b".\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r",
        b"\n",
        b".",
        b"x",
        b"\xff\x00",
        b"XCLIENT ADDR=1.2.3.4\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
        b"hi\r\n.\r\n",
        b"hi\r\n.\r\n",
    ];
    let upstream_words: &[&[u8]] = &[
        b"220 mx\r\n",
        b"250 ok\r\n",
        b"250-mx\r\n250-CHUNKING\r\n250 STARTTLS\r\n",
        b"354 go\r\n",
        b"334 VXNlcm5hbWU6\r\n",
        b"235 ok\r\n",
        b"535 no\r\n",
        b"550 no\r\n",
        b"421 bye\r\n",
        b"221 bye\r\n",
        b"250-",
        b"garbage\r\n",
        b"\r\n",
        b"250 ok\r\n",
        b"250 ok\r\n",
        b"250 ok\r\n",
        b"250 ok\r\n250 ok\r\n354 go\r\n",
        b"354 go\r\n",
    ];
    let configs = [
        cfg(),
        SessionConfig {
            upstream_tls: UpstreamTls::Opportunistic,
            xclient: true,
            allow_plaintext_auth: true,
            ..cfg()
        },
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut delivered, mut closed) = (0, 0);
    for round in 0..20_000 {
        let mut t = T::new(configs[round % 2].clone());
        t.refuse = Some("over");
        let mut sent = Vec::new();
        if !rng.next().is_multiple_of(10) {
            t.upstream(b"220 mx\r\n");
            t.client(b"EHLO c\r\n");
            sent.extend_from_slice(b"EHLO c\r\n");
        }
        for _ in 0..(rng.next() % 60) {
            if t.closed {
                break;
            }
            match rng.next() % 6 {
                0..=2 => {
                    let w = rng.pick(client_words);
                    sent.extend_from_slice(w);
                    t.client(w);
                }
                3 | 4 => {
                    // Mostly a plausible answer to what is pending, sometimes anything.
                    let pending = t.s.queue.iter().find_map(|slot| match slot {
                        Slot::Upstream { expect, .. } => Some(*expect),
                        Slot::Local { .. } => None,
                    });
                    let w: &[u8] = match (rng.next() % 5, pending) {
                        (0, _) | (_, None) => rng.pick(upstream_words),
                        (
                            _,
                            Some(Expect::Greeting | Expect::UpstreamStartTls | Expect::Xclient),
                        ) => b"220 mx\r\n",
                        (_, Some(Expect::Ehlo | Expect::Probe)) => {
                            b"250-mx\r\n250-CHUNKING\r\n250 XCLIENT ADDR HELO\r\n"
                        }
                        (_, Some(Expect::Data)) => b"354 go\r\n",
                        (_, Some(Expect::Auth)) => {
                            rng.pick(&[b"334 \r\n", b"235 ok\r\n", b"535 no\r\n"])
                        }
                        (_, Some(Expect::Quit)) => b"221 bye\r\n",
                        (_, Some(Expect::Rcpt { .. })) => rng.pick(&[b"250 ok\r\n", b"550 no\r\n"]),
                        (_, Some(_)) => b"250 ok\r\n",
                    };
                    t.upstream(w);
                }
                _ => {
                    let event = rng.next() % 4;
                    let a = match event {
                        0 => t.s.on_client_tls(Ok(()), t.now),
                        1 => t.s.on_upstream_tls(Ok(()), t.now),
                        2 => t.s.on_client_eof(t.now),
                        _ => {
                            t.now += Duration::from_secs(rng.next() % 700);
                            t.s.on_timeout(t.now)
                        }
                    };
                    t.apply(a);
                }
            }
        }
        // Every end of data the upstream saw, the client sent. (SASL lines are
        // relayed with their endings normalised and may look like one: skip
        // rounds with AUTH for this check.)
        let up = t.upstream_got();
        if String::from_utf8_lossy(&sent).contains("AUTH") {
            continue;
        }
        let ends_up = up.matches("\r\n.\r\n").count();
        let ends_client = String::from_utf8_lossy(&sent).matches("\r\n.\r\n").count();
        assert!(
            ends_up <= ends_client,
            "round {round}: upstream saw {ends_up} ends, client sent {ends_client}\nclient: {:?}\nupstream: {up:?}",
            String::from_utf8_lossy(&sent)
        );
        delivered += ends_up;
        closed += usize::from(t.closed);
    }
    // The walk reached the interesting states, not just early refusals.
    eprintln!("chaos: {delivered} messages delivered, {closed} sessions closed");
    assert!(
        delivered > 150 && closed > 1000,
        "delivered {delivered}, closed {closed}"
    );
}
