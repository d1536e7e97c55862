//! The limit holds against the MTA's own view of the session: each way a
//! spammer stepped around it, replayed against the model MTA with the real
//! session, enforcer, ledger and engine, and a random walk over client
//! commands, MTA behaviours and wire timings. After every step, the MTA has
//! delivered no more recipients per key than the limiter counts, and no RCPT
//! reached it without a verdict.

mod model;

use mailbrake::config::{Limit, LimitsConfig, Rate};
use mailbrake::limits::{Lock, LockReason, SenderKey};
use model::harness::{CLIENT, Harness, session_config};
use model::mta::{Ask, Behaviour};
use std::time::Duration;

fn twelve() -> LimitsConfig {
    LimitsConfig {
        default: Limit::Rates(vec![Rate {
            count: 12,
            window: Duration::from_secs(3600),
        }]),
        rotation: None,
        lock_after_refusals: None,
        ..LimitsConfig::default()
    }
}

/// An MTA that accepts everything and never hangs up, unless `refuse` says.
fn mta(refuse: impl Fn(Ask) -> bool + 'static) -> Box<dyn FnMut(Ask) -> bool> {
    Box::new(move |a| match a {
        Ask::Hangup => refuse(a),
        _ => !refuse(a),
    })
}

fn greeted(ask: Box<dyn FnMut(Ask) -> bool>) -> Harness {
    greeted_with(ask, Behaviour::default())
}

fn greeted_with(ask: Box<dyn FnMut(Ask) -> bool>, behaviour: Behaviour) -> Harness {
    let mut h = Harness::new(session_config(), &twelve(), behaviour, ask);
    h.client(b"EHLO client.test\r\n");
    h.settle();
    h.client_read();
    h
}

fn rcpts(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("RCPT TO:<{tag}{i}@example.net>\r\n"))
        .collect()
}

fn ip_sent(h: &Harness) -> usize {
    let ip = CLIENT.parse::<std::net::SocketAddr>().unwrap().ip();
    h.limiter.status(&SenderKey::ip(ip, 64), Some(ip)).rates[0].1
}

#[test]
fn a_pipelined_rset_does_not_release_the_next_transaction() {
    let mut h = greeted(mta(|_| false));
    for round in 0..10 {
        let batch = format!("RSET\r\nMAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(12, "r"));
        h.client(batch.as_bytes());
        h.settle();
        h.client(b"Subject: spam\r\n\r\nbuy\r\n.\r\n");
        h.settle();
        h.check();
        assert_eq!(h.delivered(), 12, "round {round}");
    }
    assert_eq!(ip_sent(&h), 12);
}

#[test]
fn a_rset_with_an_argument_is_refused_locally_and_one_the_mta_refuses_keeps_the_count() {
    // RSET with an argument never reaches the MTA (which would refuse it and
    // keep its transaction).
    let mut h = greeted(mta(|_| false));
    h.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRSET now\r\n");
    h.settle();
    assert!(h.client_read().ends_with("501 5.5.4 Syntax: RSET\r\n"));
    // An MTA that refuses even a plain RSET keeps its recipients; they are
    // delivered with the next DATA and counted.
    let mut h = greeted(mta(|a| a == Ask::Rset));
    for _ in 0..5 {
        h.client(format!("MAIL FROM:<a@x>\r\n{}RSET\r\nDATA\r\n", rcpts(12, "x")).as_bytes());
        h.settle();
        h.client(b"hi\r\n.\r\n");
        h.settle();
        h.check();
    }
    assert!(h.delivered() <= 12);
    assert_eq!(h.delivered(), ip_sent(&h));
}

#[test]
fn a_refused_mail_with_another_mail_pipelined_behind_it() {
    let mut refuse_next_mail = true;
    let ask = Box::new(move |a| match a {
        Ask::Mail => {
            refuse_next_mail = !refuse_next_mail;
            refuse_next_mail
        }
        Ask::Hangup => false,
        _ => true,
    });
    let mut h = greeted(ask);
    for round in 0..10 {
        let batch = format!(
            "MAIL FROM:<a@x>\r\nMAIL FROM:<b@x>\r\n{}DATA\r\n",
            rcpts(12, "m")
        );
        h.client(batch.as_bytes());
        h.settle();
        // The second MAIL waited for the first one's reply, and went on.
        assert!(
            h.client_read()
                .starts_with("550 5.7.1 sender refused\r\n250 2.1.0 Ok\r\n"),
            "round {round}"
        );
        h.client(b"hi\r\n.\r\nRSET\r\n");
        h.settle();
        h.check();
        h.client_read();
    }
    assert_eq!(h.delivered(), 12);
}

#[test]
fn pipelining_after_the_end_of_data_and_after_the_last_bdat() {
    let mut h = greeted(mta(|_| false));
    h.client(format!("MAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(6, "d")).as_bytes());
    h.settle();
    for _ in 0..10 {
        // The end of data, the next transaction right behind it (RFC 2920).
        let batch = format!("hi\r\n.\r\nMAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(6, "d"));
        h.client(batch.as_bytes());
        h.settle();
        h.check();
    }
    assert_eq!(h.delivered(), 12);
    let mut h = greeted(mta(|_| false));
    for _ in 0..10 {
        let batch = format!("MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nhi\r\n", rcpts(6, "b"));
        h.client(batch.as_bytes());
        h.check();
        h.deliver_to_mta(usize::MAX);
        h.check();
    }
    h.settle();
    h.check();
    assert_eq!(h.delivered(), 12);
}

#[test]
fn a_message_queued_before_the_connection_went_stays_counted() {
    // The client resets right after the last BDAT chunk, before the MTA's
    // 250 is read.
    let mut total = 0;
    for _ in 0..10 {
        let mut h = greeted(mta(|_| false));
        h.client(format!("MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nhi\r\n", rcpts(12, "q")).as_bytes());
        h.client_reset();
        h.check();
        total += h.delivered();
        assert_eq!(h.delivered(), ip_sent(&h));
    }
    assert_eq!(
        total, 120,
        "each session delivered (a new limiter each time)"
    );
    // The MTA queues the message and hangs up before its 250.
    let mut h = greeted(mta(|a| a == Ask::Hangup));
    h.client(format!("MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nhi\r\n", rcpts(12, "h")).as_bytes());
    h.settle();
    h.check();
    assert!(h.ended);
}

#[test]
fn closing_over_a_pipelined_command_counts_the_message_in_flight() {
    let mut h = greeted(mta(|_| false));
    h.client(format!("MAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(12, "c")).as_bytes());
    h.settle();
    // The end of data, then a smuggling attempt that makes mailbrake close
    // before the MTA's reply is read.
    h.client(b"hi\r\n.\r\nDATA\r\n");
    h.deliver_to_mta(usize::MAX);
    h.client_reset();
    h.check();
    assert_eq!((h.delivered(), ip_sent(&h)), (12, 12));
}

#[test]
fn closing_on_the_client_still_reads_what_became_of_the_message() {
    // A message, then a flood that makes mailbrake close; the MTA refuses
    // the message. mailbrake closes the client's leg at once, reads the
    // MTA's verdict, and so counts nothing (before, it could only guess,
    // and counted the three as sent).
    let mut h = greeted(mta(|a| a == Ask::Deliver));
    let flood = "NOOP\r\n".repeat(101);
    h.client(
        format!(
            "MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nabcd{flood}",
            rcpts(3, "f")
        )
        .as_bytes(),
    );
    assert!(
        h.client_read()
            .ends_with("421 4.7.0 mb.test Error: too many commands\r\n")
    );
    assert!(!h.ended, "still reading the MTA");
    h.settle();
    h.check();
    assert!(h.ended);
    assert_eq!((h.delivered(), ip_sent(&h)), (0, 0));
    assert_eq!(h.client_read(), "", "the client has had its last reply");
}

#[test]
fn after_ehlo_then_helo_bdat_is_not_forwarded() {
    let mut h = greeted_with(mta(|_| false), Behaviour::default());
    h.client(b"HELO client.test\r\n");
    h.settle();
    h.client_read();
    let chunk = rcpts(20, "s");
    h.client(format!("MAIL FROM:<a@x>\r\nBDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    h.settle();
    h.check();
    assert!(
        h.client_read()
            .contains("502 5.5.1 Error: BDAT not supported")
    );
    assert!(h.mta.rcpt_commands.is_empty(), "{:?}", h.mta.rcpt_commands);
}

#[test]
fn a_bdat_line_the_mta_refuses_cannot_carry_commands_past_the_limit() {
    // smtp-proto reads "BDAT n ;" as a chunk of n; Postfix answers 501 and
    // reads the "chunk" as commands.
    for form in [
        "BDAT {} ;",
        "BDAT {} LAST x",
        "BDAT 99999999999999999999 {}",
    ] {
        let mut h = greeted(mta(|_| false));
        let smuggled = format!("MAIL FROM:<a@x>\r\n{}DATA\r\nhi\r\n.\r\n", rcpts(30, "s"));
        let line = form.replace("{}", &smuggled.len().to_string());
        h.client(format!("{line}\r\n{smuggled}").as_bytes());
        h.settle();
        h.check();
        assert!(
            h.client_read()
                .starts_with("501 5.5.4 Syntax: BDAT count [LAST]\r\n"),
            "{form}"
        );
        assert!(h.delivered() <= 12, "{form}: {} delivered", h.delivered());
    }
}

#[test]
fn an_ehlo_the_mta_refuses_keeps_the_transaction() {
    let mut helos = 0;
    let ask = Box::new(move |a| match a {
        Ask::Helo => {
            helos += 1;
            helos == 1
        }
        Ask::Hangup => false,
        _ => true,
    });
    let mut h = greeted(ask);
    h.client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n");
    h.settle();
    h.client(b"EHLO again\r\n");
    h.settle();
    h.client(b"RCPT TO:<c@y>\r\nDATA\r\nhi\r\n.\r\n");
    h.settle();
    h.check();
    assert_eq!(h.delivered(), 2, "{}", h.client_read());
}

#[test]
fn a_leading_space_is_not_a_command() {
    let mut h = greeted(mta(|_| false));
    h.client(b" EHLO x\r\n");
    h.settle();
    assert_eq!(
        h.client_read(),
        "500 5.5.2 Error: command starts with a space\r\n"
    );
}

#[test]
fn an_operator_lock_stops_every_recipient() {
    let mut h = greeted(mta(|_| false));
    let ip = CLIENT.parse::<std::net::SocketAddr>().unwrap().ip();
    h.limiter.lock(
        &SenderKey::ip(ip, 64),
        Lock {
            until: None,
            reason: LockReason::Operator("test".into()),
        },
    );
    for trick in [
        "RSET\r\nMAIL FROM:<a@x>\r\n",
        "MAIL FROM:<a@x>\r\nMAIL FROM:<b@x>\r\n",
        "MAIL FROM:<a@x>\r\n",
    ] {
        h.client(format!("{trick}{}DATA\r\nhi\r\n.\r\nRSET\r\n", rcpts(20, "l")).as_bytes());
        h.settle();
        h.check();
    }
    assert_eq!(h.delivered(), 0);
    assert!(h.mta.rcpt_commands.is_empty());
}

#[test]
fn auth_changes_the_key_and_both_keys_hold() {
    let mut h = greeted(mta(|_| false));
    // AUTH PLAIN with non-zero padding bits, as servers accept.
    h.client(format!("MAIL FROM:<a@x>\r\n{}DATA\r\nhi\r\n.\r\n", rcpts(15, "i")).as_bytes());
    h.settle();
    h.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    h.settle();
    assert!(h.client_read().contains("235"));
    h.client(format!("MAIL FROM:<a@x>\r\n{}DATA\r\nhi\r\n.\r\n", rcpts(15, "j")).as_bytes());
    h.settle();
    h.check();
    assert_eq!(h.delivered(), 24);
}

/// A small deterministic generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "EHLO c\r\n",
    "HELO c\r\n",
    "MAIL FROM:<a@x>\r\n",
    "MAIL FROM:<b@x>\r\n",
    "RCPT TO:<r@y>\r\n",
    "RCPT TO:<s@y>\r\n",
    "RCPT TO:<t@y>\r\n",
    "DATA\r\n",
    "hi\r\n.\r\n",
    ".\r\n",
    "BDAT 4\r\nabcd",
    "BDAT 4 LAST\r\nabcd",
    "BDAT 0 LAST\r\n",
    "BDAT 30 LAST\r\nRCPT TO:<smuggled@y>\r\nNOOP\r\n",
    "BDAT 37 ;\r\nMAIL FROM:<m@x>\r\nRCPT TO:<smuggled@y>\r\n",
    "BDAT 5 LAST x\r\n",
    "RSET\r\n",
    "RSET x\r\n",
    "NOOP\r\n",
    "NOOP hello\r\n",
    " RCPT TO:<sp@y>\r\n",
    "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
    "AUTH LOGIN\r\nYm9i\r\ncGFzcw==\r\n",
    "VRFY x\r\n",
    "QUIT\r\n",
];

/// A pipelined batch: mostly shaped like a transaction (what honest
/// clients and spammers send), sometimes anything from [`WORDS`].
fn batch(rng: &mut Rng) -> String {
    let mut batch = String::new();
    if rng.below(3) == 0 {
        for _ in 0..=rng.below(6) {
            batch.push_str(WORDS[rng.below(WORDS.len())]);
        }
        return batch;
    }
    for _ in 0..rng.below(3) {
        batch.push_str(WORDS[rng.below(WORDS.len())]);
    }
    batch.push_str(WORDS[2 + rng.below(2)]);
    for i in 0..rng.below(9) {
        batch.push_str(&format!("RCPT TO:<p{i}@y>\r\n"));
    }
    batch.push_str(match rng.below(4) {
        0 => "BDAT 4 LAST\r\nabcd",
        1 => "BDAT 2\r\nabBDAT 0 LAST\r\n",
        _ => "DATA\r\nhi\r\n.\r\n",
    });
    batch
}

/// Random sessions: pipelined command batches from [`WORDS`], an MTA whose
/// every choice is random, and bytes crossing each wire in random amounts at
/// random moments, the client going away at random. The invariant is checked
/// after every step.
#[test]
fn random_sessions_never_deliver_more_than_is_counted() {
    let (mut delivered, mut limited, mut verdicts) = (0, 0, 0);
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut mta_rng = Rng(seed ^ 0xDEAD_BEEF);
        let ask = Box::new(move |a| {
            let r = mta_rng.next() % 100;
            match a {
                Ask::Hangup => mta_rng.next() % 1000 < 3,
                _ => r >= 10,
            }
        });
        let behaviour = Behaviour {
            chunking: seed % 3 != 0,
            bdat_after_helo: seed % 5 == 0,
        };
        let mut h = Harness::new(session_config(), &twelve(), behaviour, ask);
        h.client(b"EHLO c\r\n");
        for _step in 0..200 {
            match rng.below(10) {
                0..=3 => {
                    let batch = batch(&mut rng);
                    h.client(batch.as_bytes());
                }
                4..=5 => h.deliver_to_mta(rng.below(64)),
                6..=7 => h.deliver_to_session(rng.below(64)),
                8 => h.settle(),
                _ => {
                    if rng.below(40) == 0 {
                        if rng.below(2) == 0 {
                            h.client_reset();
                        } else {
                            h.client_eof();
                            h.settle();
                        }
                    }
                }
            }
            h.check();
            if h.ended {
                break;
            }
        }
        h.settle();
        h.client_reset();
        h.check();
        delivered += h.delivered();
        verdicts += h.verdicts.len();
        limited += usize::from(h.verdicts.len() >= 12);
    }
    // The walk reaches what it is for: messages delivered, and senders at their limit.
    eprintln!("{delivered} delivered, {verdicts} verdicts, {limited} sessions at the limit");
    assert!(
        delivered > 1000 && limited > 50,
        "{delivered} delivered, {limited} at the limit"
    );
}
