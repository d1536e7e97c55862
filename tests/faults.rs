//! Faults end to end: the mailbrake binary between clients and a recording
//! upstream on 127.0.0.1, when one side dies, refuses, stalls or crawls,
//! when the process is killed, and when it reloads under load. Each test is
//! bounded in time; none sleeps to synchronise except where time itself is
//! what is tested (a timeout, the state flush interval).

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::upstream::{Opts, Upstream};
use common::*;

/// The password the upstream accepts for every user.
const PASSWORD: &str = "secret";

/// `base_config` (no limits, no connection rate) plus `sections`, and one
/// plain listener `l` on `port` towards `up`.
fn config(state: &Path, port: u16, up: SocketAddr, sections: &str) -> String {
    base_config(state)
        + sections
        + &listener(
            "l",
            port,
            "none",
            None,
            &up.to_string(),
            "allow_plaintext_auth = true",
        )
}

/// A message body of `lines` lines of 70 bytes, no dot lines.
fn body(lines: usize) -> String {
    (0..lines)
        .map(|i| format!("{i:04} {}\r\n", "x".repeat(64)))
        .collect()
}

/// Waits (bounded) until mailbrake's log holds `n` lines containing `needle`.
async fn wait_log_count(mb: &Mailbrake, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = mb.logs().matches(needle).count();
        if seen >= n {
            assert_eq!(seen, n, "more {needle:?} lines than expected");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {n} {needle:?} log lines after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === 1. the upstream dies in the middle of DATA ===

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_data_gives_421_never_250() {
    let up = Upstream::start(Opts {
        hang_up_after_body_bytes: Some(1000),
        ..Opts::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mb = Mailbrake::start(&config(dir.path(), port, up.addr, ""));
    let lost = "421 4.4.2 mb.test lost the connection to the mail server, try again later\r\n";

    // Part of a body (3 kB): the upstream dies after 1 kB of it.
    let mut c = Box::pin(Raw::greeted(port)).await;
    Box::pin(c.open_data()).await;
    c.send(body(40).as_bytes()).await;
    assert_eq!(Box::pin(c.reply()).await.as_deref(), Some(lost));
    assert_eq!(Box::pin(c.closed()).await, "", "more after the 421");

    // The whole message, end of data included, in one write: the upstream
    // dies before it reads the dot, and mailbrake never answers the end of
    // data itself.
    let mut c = Box::pin(Raw::greeted(port)).await;
    Box::pin(c.open_data()).await;
    c.send(format!("{}.\r\n", body(40)).as_bytes()).await;
    let rest = Box::pin(c.closed()).await;
    assert_eq!(rest, lost, "the client must get 421, never 250");

    assert_eq!(up.messages.lock().unwrap().len(), 0, "a message was stored");
    wait_log_count(&mb, "fault=upstream", 2).await;
    assert!(
        mb.logs().contains("upstream closed the connection"),
        "{}",
        mb.logs()
    );
}

// === 2. the upstream refuses, or never speaks ===

#[tokio::test(flavor = "multi_thread")]
async fn upstream_refusing_or_silent_is_answered_in_bounded_time() {
    let refusing = Upstream::start(Opts {
        greeting: Some("554 5.3.2 upstream.test no service for you"),
        ..Opts::default()
    })
    .await;
    let busy = Upstream::start(Opts {
        greeting: Some("421 4.3.2 upstream.test busy, come back later"),
        ..Opts::default()
    })
    .await;
    let silent = Upstream::start(Opts {
        silent: true,
        ..Opts::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let cfg = base_config(dir.path())
        + "[timeouts]\nupstream_greeting = \"1s\"\n"
        + &listener(
            "refusing",
            ports[0],
            "none",
            None,
            &refusing.addr.to_string(),
            "",
        )
        + &listener("busy", ports[1], "none", None, &busy.addr.to_string(), "")
        + &listener(
            "silent",
            ports[2],
            "none",
            None,
            &silent.addr.to_string(),
            "",
        );
    let _mb = Mailbrake::start(&cfg);
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // 554: the client reads the upstream's own refusal, and the session
    // cannot be used; QUIT still ends it politely.
    let started = Instant::now();
    let (mut c, greeting) = Client::connect(addr(ports[0])).await.unwrap();
    assert_eq!(greeting, "554 5.3.2 upstream.test no service for you\r\n");
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(code(&ehlo) >= 500, "EHLO after a 554 greeting: {ehlo:?}");
    expect(&c.cmd("QUIT").await.unwrap(), "221");
    assert_eq!(c.rest().await.unwrap(), "");
    assert!(started.elapsed() < Duration::from_secs(3));

    // 421: the upstream's words, then the connection closes.
    let started = Instant::now();
    let (mut c, greeting) = Client::connect(addr(ports[1])).await.unwrap();
    assert_eq!(
        greeting,
        "421 4.3.2 upstream.test busy, come back later\r\n"
    );
    assert_eq!(c.rest().await.unwrap(), "");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Silent: accepted, never greets. mailbrake gives up after
    // upstream_greeting (1 s) with its own 421.
    let started = Instant::now();
    let (mut c, greeting) = Client::connect(addr(ports[2])).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(
        greeting,
        "421 4.4.2 mb.test mail server timed out, try again later\r\n"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "421 after {waited:?}, upstream_greeting = 1s"
    );
    assert_eq!(c.rest().await.unwrap(), "");
}

// === 3. clients vanishing mid-DATA, 1,000 times ===

/// SplitMix64: a small deterministic PRNG, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One vanishing client: where it cuts its message, and how it leaves.
struct Cut {
    /// The message as sent on the wire, final `CRLF.CRLF` included.
    wire: Vec<u8>,
    /// Bytes sent before vanishing: always fewer than the whole message.
    at: usize,
    /// The prefix goes out in two writes, split here.
    split: usize,
    /// Leave with an RST instead of a FIN.
    reset: bool,
}

fn cut(i: usize, rng: &mut Rng) -> Cut {
    let filler = "y".repeat(rng.below(300));
    let wire = format!(
        "From: v{i}@vanish.test\r\nSubject: vanishing {i}\r\n\r\nfirst line\r\n\
         ..a stuffed dot line\r\n.not the end\r\n{filler}\r\nlast line\r\n.\r\n"
    )
    .into_bytes();
    let len = wire.len();
    let stuffed = wire.windows(4).position(|w| w == b"\r\n..").unwrap();
    let at = match i % 10 {
        0 => len - 1,        // after "\r\n.\r": only the last LF missing
        1 => len - 2,        // after "\r\n."
        2 => len - 3,        // after the last line's "\r\n"
        3 => stuffed + 3,    // after "\r\n." of a stuffed line
        4 => rng.below(8),   // right after 354, or nearly
        _ => rng.below(len), // anywhere
    };
    let split = rng.below(at + 1);
    Cut {
        wire,
        at,
        split,
        reset: rng.below(2) == 1,
    }
}

/// Connects, opens DATA for one recipient, sends `cut.at` bytes of the
/// message and vanishes.
async fn vanish(addr: SocketAddr, i: usize, cut: Cut) {
    let (mut c, greeting) = Client::connect(addr).await.unwrap();
    expect(&greeting, "220");
    let open = format!(
        "EHLO v{i}.test\r\nMAIL FROM:<v{i}@vanish.test>\r\nRCPT TO:<r{i}@dest.test>\r\nDATA\r\n"
    );
    c.send(open.as_bytes()).await.unwrap();
    for code in ["250", "250", "250", "354"] {
        expect(&c.reply().await.unwrap(), code);
    }
    c.send(&cut.wire[..cut.split]).await.unwrap();
    tokio::task::yield_now().await;
    c.send(&cut.wire[cut.split..cut.at]).await.unwrap();
    c.vanish(cut.reset);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_clients_vanishing_mid_data_deliver_nothing() {
    const SESSIONS: usize = 1000;
    const BATCH: usize = 50;
    let mut up = Upstream::start(Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mb = Mailbrake::start(&config(dir.path(), port, up.addr, ""));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let started = Instant::now();
    let mut rng = Rng(0x6d61_696c_6272_616b);
    for batch in 0..SESSIONS / BATCH {
        let tasks: Vec<_> = (0..BATCH)
            .map(|j| {
                let i = batch * BATCH + j;
                tokio::spawn(vanish(addr, i, cut(i, &mut rng)))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Every upstream connection has ended (so nothing can still be
    // stored), each after mailbrake saw its client go mid-message.
    for _ in 0..SESSIONS {
        let seen = up.next_close().await;
        // Each reached DATA at the upstream, and no upstream saw an end of
        // data, nor the CR of a "CRLF . CR" whose LF never came.
        assert!(seen.windows(6).any(|w| w == b"DATA\r\n"), "{seen:?}");
        assert!(!seen.windows(5).any(|w| w == b"\r\n.\r\n"), "{seen:?}");
        assert!(!seen.ends_with(b"\r\n.\r"), "{seen:?}");
    }
    wait_log_count(
        &mb,
        "client disconnected in the middle of a message",
        SESSIONS,
    )
    .await;
    assert_eq!(
        up.messages.lock().unwrap().len(),
        0,
        "a vanished client's message was delivered"
    );
    eprintln!("{SESSIONS} vanishing clients in {:?}", started.elapsed());

    // And mailbrake still serves.
    let mut c = Box::pin(Raw::greeted(port)).await;
    Box::pin(c.open_data()).await;
    c.send(b"Subject: after the storm\r\n\r\nstill here\r\n.\r\n")
        .await;
    expect(&Box::pin(c.reply()).await.unwrap(), "250");
    let m = up.next_message().await;
    assert_eq!(
        m.content(),
        b"Subject: after the storm\r\n\r\nstill here\r\n"
    );
    assert_eq!(up.messages.lock().unwrap().len(), 1);
}

// === 4. slowloris ===

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_command_line_is_closed_within_a_bound() {
    let up = Upstream::start(Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mb = Mailbrake::start(&config(
        dir.path(),
        port,
        up.addr,
        "[timeouts]\nclient_command = \"1s\"\n",
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = "421 4.4.2 mb.test Error: timeout exceeded\r\n";

    // The control: a client that says nothing is closed after 1 s.
    let started = Instant::now();
    let (mut idle, _) = Client::connect(addr).await.unwrap();
    expect(&idle.cmd("EHLO idle.test").await.unwrap(), "250");
    assert_eq!(idle.rest().await.unwrap(), timeout);
    assert!(started.elapsed() < Duration::from_secs(3));

    // One byte of a command line every 200 ms, never a line end: the
    // line's deadline (1 s) should close it long before 5 s.
    let (mut read, mut write) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let mut seen = Vec::new();
    read_reply(&mut read, &mut seen, b"220 ").await;
    write.write_all(b"EHLO slow.test\r\n").await.unwrap();
    read_reply(&mut read, &mut seen, b"250 ").await;
    let started = Instant::now();
    let bytes = Arc::new(AtomicUsize::new(0));
    let sent = bytes.clone();
    let dripping = tokio::spawn(async move {
        for b in b"NOOP slowly-slowly-slowly-slowly-slowly".iter().cycle() {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut rest)).await;
    dripping.abort();
    let after = started.elapsed();
    let sent = bytes.load(Ordering::Relaxed);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        closed.is_ok(),
        "SLOWLORIS: a client sending one byte every 200 ms of a command line \
         that never ends is still connected after {after:?} ({sent} bytes sent, \
         client_command = 1s; replies so far: {rest:?})"
    );
    assert_eq!(rest, timeout, "closed after {after:?}");
    eprintln!("slowloris closed after {after:?} and {sent} bytes");
}

/// Reads into `seen` until it ends with a whole last reply line starting with `last`.
async fn read_reply(r: &mut tokio::net::tcp::OwnedReadHalf, seen: &mut Vec<u8>, last: &[u8]) {
    let done = |seen: &[u8]| {
        let body = seen.strip_suffix(b"\r\n").unwrap_or(b"");
        let line = body.rsplit(|&b| b == b'\n').next().unwrap_or(b"");
        seen.ends_with(b"\r\n") && line.starts_with(last)
    };
    let mut tmp = [0u8; 1024];
    while !done(seen) {
        let n = tokio::time::timeout(Duration::from_secs(20), r.read(&mut tmp))
            .await
            .expect("no reply within 20 s")
            .unwrap();
        assert!(n > 0, "closed; so far: {:?}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&tmp[..n]);
    }
}

// === 5. kill -9 under load ===

/// A whole config with `[limits] limits`.
fn limits_config(state: &Path, port: u16, up: SocketAddr, limits: &str) -> String {
    format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [limits]\n{limits}\n[protect]\nconnections_per_ip = \"off\"\n",
        state.join("state")
    ) + &listener(
        "l",
        port,
        "none",
        None,
        &up.to_string(),
        "allow_plaintext_auth = true",
    )
}

/// `n` recipients named after `tag`.
fn rcpts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}@dest.test")).collect()
}

/// One session as `user`: one transaction to `to`; the transaction.
async fn send_as(addr: SocketAddr, user: &str, to: &[String]) -> std::io::Result<Transaction> {
    let (mut c, greeting) = Client::connect(addr).await?;
    expect(&greeting, "220");
    expect(&c.cmd("EHLO c.test").await?, "250");
    expect(&c.auth_plain(user, PASSWORD).await?, "235");
    let t = c
        .transaction(user, to, "Subject: counted\r\n\r\nhello")
        .await?;
    let _ = c.cmd("QUIT").await;
    Ok(t)
}

/// Sessions of an exempt user, one after the other, until `stop` or until
/// mailbrake is gone; counts what was delivered. Whether mailbrake went away
/// under it.
async fn load(addr: SocketAddr, stop: Arc<AtomicBool>, delivered: Arc<AtomicUsize>) -> bool {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match send_as(addr, "load@example.net", &rcpts(&format!("load{n}"), 3)).await {
            Ok(t) if t.delivered() => {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(t) => panic!("load refused: {t:?}"),
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_keeps_counts_flushed_before_it() {
    let up = Upstream::start(Opts {
        auth: true,
        any_user_password: Some(PASSWORD),
        ..Opts::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let limits = "default = \"100/1h\"\nexempt_users = [\"load@example.net\"]";
    let port = free_port();
    let mut mb = Mailbrake::start(&limits_config(state.path(), port, up.addr, limits));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // Load: four exempt clients sending all along.
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(addr, stop.clone(), delivered.clone())))
        .collect();

    // The user: 30 recipients in three concurrent sessions, all delivered.
    let user = "counted@example.net";
    let sessions: Vec<_> = (0..3)
        .map(|s| {
            tokio::spawn(async move { send_as(addr, user, &rcpts(&format!("s{s}"), 10)).await })
        })
        .collect();
    for s in sessions {
        let t = s.await.unwrap().unwrap();
        assert_eq!(t.accepted(), 10, "{t:?}");
        assert!(t.delivered(), "{t:?}");
    }

    // The state thread writes the journal every FLUSH_INTERVAL: a commit
    // made just after a write waits one interval, plus the write itself.
    // Two intervals and a margin put the 30 on disk; what a crash may lose
    // is only what came after.
    tokio::time::sleep(2 * mailbrake::state::FLUSH_INTERVAL + Duration::from_millis(500)).await;
    let before_kill = delivered.load(Ordering::Relaxed);
    assert!(before_kill > 0, "the load is not running");

    // kill -9 while the load is in flight.
    mb.child.kill().unwrap();
    mb.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut cut = 0;
    for l in loaders {
        let was_cut = tokio::time::timeout(Duration::from_secs(20), l)
            .await
            .expect("a load client hangs after the kill")
            .unwrap();
        cut += usize::from(was_cut);
    }
    // A client between two messages may see the stop flag before it tries
    // again, so not every one is cut; the load was running if any was.
    assert!(cut > 0, "no load client was running when the kill came");

    // Restarted on the same state: exactly 70 more for the user.
    let port = free_port();
    let _mb = Mailbrake::start(&limits_config(state.path(), port, up.addr, limits));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t = send_as(addr, user, &rcpts("after", 80)).await.unwrap();
    assert_eq!(t.accepted(), 70, "{:#?}", t.rcpts);
    assert!(t.delivered(), "{t:?}");
    for r in &t.rcpts[70..] {
        assert!(
            r.starts_with("450 4.7.1")
                && r.contains("Recipient limit reached for auth:counted@example.net (100/1h)"),
            "{r:?}"
        );
    }
}

// === 6. SIGHUP under load ===

/// A session left in the middle of its message: DATA open, half the body sent.
async fn half_sent(addr: SocketAddr, i: usize, half: &str) -> Client {
    let (mut c, greeting) = Client::connect(addr).await.unwrap();
    expect(&greeting, "220");
    expect(&c.cmd(&format!("EHLO h{i}.test")).await.unwrap(), "250");
    let open = format!("MAIL FROM:<h{i}@hup.test>\r\nRCPT TO:<r{i}@dest.test>\r\nDATA\r\n");
    c.send(open.as_bytes()).await.unwrap();
    for code in ["250", "250", "354"] {
        expect(&c.reply().await.unwrap(), code);
    }
    c.send(half.as_bytes()).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_under_load_drops_no_session() {
    const SESSIONS: usize = 20;
    let mut up = Upstream::start(Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Few commands outside a transaction, so a new session shows whose
    // hostname it runs with.
    let cfg = config(
        dir.path(),
        port,
        up.addr,
        "[session]\nmax_commands_without_mail = 5\n",
    );
    let mut mb = Mailbrake::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let (first, second) = (body(20), body(30));
    let live: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let first = first.clone();
            tokio::spawn(async move { half_sent(addr, i, &first).await })
        })
        .collect();
    let mut clients = Vec::new();
    for c in live {
        clients.push(c.await.unwrap());
    }

    // A new file (another hostname), and SIGHUP while all 20 are mid-message.
    std::fs::write(&mb.config, cfg.replace("\"mb.test\"", "\"reloaded.test\"")).unwrap();
    mb.signal("HUP");
    tokio::task::block_in_place(|| mb.wait_log("configuration reloaded"));

    let finishing: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let second = second.clone();
            tokio::spawn(async move {
                c.send(format!("{second}.\r\n").as_bytes()).await.unwrap();
                let end = c.reply().await.unwrap();
                expect(&c.cmd("QUIT").await.unwrap(), "221");
                end
            })
        })
        .collect();
    for f in finishing {
        let end = f.await.unwrap();
        expect(&end, "250 2.0.0 Ok: queued as TEST");
    }
    let expected = format!("{first}{second}");
    for _ in 0..SESSIONS {
        let m = up.next_message().await;
        assert_eq!(String::from_utf8(m.content()).unwrap(), expected);
    }
    assert_eq!(up.messages.lock().unwrap().len(), SESSIONS);

    // New sessions run on the new file: its hostname in mailbrake's own replies.
    let (mut c, _) = Client::connect(addr).await.unwrap();
    let mut said = String::new();
    for _ in 0..10 {
        match c.cmd("NOOP").await {
            Ok(r) => said.push_str(&r),
            Err(_) => break,
        }
    }
    assert!(
        said.contains("421 4.7.0 reloaded.test Error: too many commands"),
        "{said:?}"
    );
}
