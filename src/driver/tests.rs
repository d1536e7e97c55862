//! The driver over in-memory streams (`tokio::io::duplex`), with paused
//! time, a scripted MTA and a policy whose verdicts the test hands out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use super::*;
use crate::config::{ClientTls, SessionLimits, Timeouts, UpstreamTls};
use crate::session::SessionConfig;

#[test]
fn read_buffers_follow_the_traffic() {
    let mut b = ReadBuf::new();
    b.fit(100);
    assert_eq!(b.0.len(), READ_BUF_MIN, "a command line keeps it small");
    for _ in 0..10 {
        let n = b.0.len();
        b.fit(n);
    }
    assert_eq!(b.0.len(), READ_BUF_MAX, "a stream grows it, up to the cap");
    b.fit(READ_BUF_MAX / 2);
    assert_eq!(b.0.len(), READ_BUF_MAX, "still streaming");
    b.fit(200);
    assert_eq!(
        b.0.len(),
        READ_BUF_MIN,
        "back to small when the stream ends"
    );
}

// === A scripted MTA ===

/// Answers like a patient MTA and records every line it reads, the bodies'
/// lines included. A MAIL from `silent@…` is never answered.
async fn mta(mut io: DuplexStream, seen: Arc<Mutex<Vec<String>>>) {
    let _ = io.write_all(b"220 mta.test ESMTP\r\n").await;
    let mut buf = Vec::new();
    let mut in_data = false;
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            seen.lock().unwrap().push(line.clone());
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                b"250 2.0.0 queued\r\n"
            } else if upper.starts_with("EHLO") {
                b"250-mta.test\r\n250 PIPELINING\r\n"
            } else if upper.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if upper.starts_with("MAIL FROM:<SILENT@") {
                continue;
            } else if upper.starts_with("QUIT") {
                let _ = io.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 2.0.0 ok\r\n"
            };
            if io.write_all(reply).await.is_err() {
                return;
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// === A policy whose verdicts the test gives ===

/// What the policy saw: each recipient asked about, and each decision that
/// was dropped before it was made.
#[derive(Default)]
struct PolicyLog {
    asked: Vec<String>,
    abandoned: Vec<String>,
}

/// Refuses recipients containing "refuse" at once; every other verdict
/// waits for the test to send it.
struct Gated {
    verdicts: mpsc::UnboundedReceiver<Verdict>,
    log: Arc<Mutex<PolicyLog>>,
}

/// Notes a decision dropped before it was made.
struct Abandon {
    rcpt: Option<String>,
    log: Arc<Mutex<PolicyLog>>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(rcpt) = self.rcpt.take() {
            self.log.lock().unwrap().abandoned.push(rcpt);
        }
    }
}

impl SessionPolicy for Gated {
    fn check_rcpt<'a>(&'a mut self, check: &'a RcptCheck) -> Pending<'a, Verdict> {
        self.log.lock().unwrap().asked.push(check.recipient.clone());
        if check.recipient.contains("refuse") {
            return Box::pin(std::future::ready(Verdict::Refuse(
                "450 4.7.1 refused by the test".into(),
            )));
        }
        let mut guard = Abandon {
            rcpt: Some(check.recipient.clone()),
            log: self.log.clone(),
        };
        Box::pin(async move {
            let verdict = self.verdicts.recv().await.unwrap_or(Verdict::Accept);
            guard.rcpt.take();
            verdict
        })
    }
}

// === The harness ===

/// One session driven over in-memory streams.
struct Run {
    client: DuplexStream,
    verdicts: mpsc::UnboundedSender<Verdict>,
    log: Arc<Mutex<PolicyLog>>,
    mta: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
    /// The MTA's end, when the test answers for it instead of [`mta`].
    by_hand: Option<DuplexStream>,
}

fn start() -> Run {
    start_with(false)
}

/// A session whose MTA is the test itself.
fn start_by_hand() -> Run {
    start_with(true)
}

fn start_with(by_hand: bool) -> Run {
    let (client, client_side) = tokio::io::duplex(64 * 1024);
    let (upstream_side, mta_side) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let by_hand = match by_hand {
        true => Some(mta_side),
        false => {
            tokio::spawn(mta(mta_side, seen.clone()));
            None
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let log = Arc::new(Mutex::new(PolicyLog::default()));
    let stop = CancellationToken::new();
    let env = DriverEnv {
        server_tls: None,
        upstream_tls: None,
        tls_handshake: Duration::from_secs(30),
        write_timeout: Duration::from_secs(300),
        stop: stop.clone(),
        metrics: Arc::new(m::ListenerMetrics::new("test")),
    };
    let cfg = SessionConfig {
        hostname: "mb.test".into(),
        client_tls: ClientTls::None,
        allow_plaintext_auth: false,
        upstream_tls: UpstreamTls::None,
        xclient: false,
        limits: SessionLimits::default(),
        timeouts: Timeouts::default(),
    };
    let mut policy = Gated {
        verdicts: rx,
        log: log.clone(),
    };
    let done = tokio::spawn(async move {
        let mut session = Session::new(
            Arc::new(cfg),
            "192.0.2.7:4321".parse().unwrap(),
            false,
            false,
            now(),
        );
        let mut c = Leg::Plain(client_side);
        let mut u = Leg::Plain(upstream_side);
        drive(&mut session, &mut c, &mut u, &mut policy, &env).await;
    });
    Run {
        client,
        verdicts: tx,
        log,
        mta: seen,
        stop,
        done,
        by_hand,
    }
}

impl Run {
    async fn send(&mut self, text: &str) {
        self.client.write_all(text.as_bytes()).await.unwrap();
    }

    /// The next whole reply (every line of a multi-line one), or what came
    /// before the client's stream ended or an hour (of paused time) passed.
    async fn reply(&mut self) -> String {
        let hour = Duration::from_secs(3600);
        tokio::time::timeout(hour, self.next_reply())
            .await
            .unwrap_or_else(|_| "(nothing within an hour)".into())
    }

    async fn next_reply(&mut self) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.client.read(&mut byte).await {
                Ok(1) => out.push(byte[0]),
                _ => return String::from_utf8_lossy(&out).into_owned(),
            }
            if out.ends_with(b"\r\n") {
                let text = String::from_utf8_lossy(&out).into_owned();
                let last = text.trim_end().rsplit("\r\n").next().unwrap_or("");
                if last.as_bytes().get(3) != Some(&b'-') {
                    return text;
                }
            }
        }
    }

    /// Nothing more is written to the client for `wait` of (paused) time.
    async fn silent_for(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, self.client.read(&mut byte))
            .await
            .is_err()
    }

    /// The client reads end of stream: the session closed its side.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = self.client.read_to_end(&mut rest);
        let hour = Duration::from_secs(3600);
        matches!(tokio::time::timeout(hour, read).await, Ok(Ok(0)))
    }

    /// The driver returned (within an hour of paused time).
    async fn ended(&mut self) -> bool {
        let hour = Duration::from_secs(3600);
        matches!(tokio::time::timeout(hour, &mut self.done).await, Ok(Ok(())))
    }

    fn mta_saw(&self, prefix: &str) -> Vec<String> {
        let seen = self.mta.lock().unwrap();
        seen.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The decision on b@y.test was dropped, and its RCPT never sent.
    fn b_abandoned_unsent(&self) {
        assert_eq!(self.log.lock().unwrap().abandoned, ["b@y.test"]);
        assert!(self.mta_saw("RCPT").is_empty());
    }

    /// Greeted, then a MAIL from `from` and a RCPT to b@y.test, whose
    /// decision waits.
    async fn deciding_b(&mut self, from: &str) {
        self.greeted().await;
        self.send(&format!("MAIL FROM:<{from}>\r\nRCPT TO:<b@y.test>\r\n"))
            .await;
    }

    /// As the MTA: the next bytes mailbrake sends, up to and including the
    /// end of `last`.
    async fn mta_reads(&mut self, last: &str) -> String {
        let mta = self.by_hand.as_mut().expect("an MTA by hand");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).ends_with(last) {
            match tokio::time::timeout(Duration::from_secs(3600), mta.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// As the MTA: `text` in one segment.
    async fn mta_says(&mut self, text: &str) {
        let mta = self.by_hand.as_mut().expect("an MTA by hand");
        mta.write_all(text.as_bytes()).await.unwrap();
    }

    /// Greeted and EHLO answered, with the test as the MTA.
    async fn greeted_by_hand(&mut self) {
        self.mta_says("220 mta.test ESMTP\r\n").await;
        assert!(self.reply().await.starts_with("220 "));
        self.send("EHLO client.test\r\n").await;
        assert_eq!(self.mta_reads("\r\n").await, "EHLO client.test\r\n");
        self.mta_says("250-mta.test\r\n250 PIPELINING\r\n").await;
        assert!(self.reply().await.starts_with("250"));
    }

    async fn greeted(&mut self) {
        assert!(self.reply().await.starts_with("220 "));
        self.send("EHLO client.test\r\n").await;
        assert!(self.reply().await.starts_with("250"));
    }
}

// === Timers ===

#[tokio::test(start_paused = true)]
async fn an_idle_client_times_out_counted_from_its_last_command() {
    let mut r = start();
    r.greeted().await;
    // The first deadline is armed 300 s after EHLO; the NOOP at 200 s moves
    // it to 500 s, so the timer wakes early once and is re-armed.
    tokio::time::advance(Duration::from_secs(200)).await;
    r.send("NOOP\r\n").await;
    assert!(r.reply().await.starts_with("250"));
    let noop = TokioInstant::now();
    let reply = r.reply().await;
    assert_eq!(reply, "421 4.4.2 mb.test Error: timeout exceeded\r\n");
    let idle = noop.elapsed();
    assert!(
        idle >= Duration::from_secs(300) && idle < Duration::from_millis(300_100),
        "timed out {idle:?} after the last command"
    );
    assert!(r.closed().await);
    assert!(r.ended().await);
}

// === Output order ===

#[tokio::test(start_paused = true)]
async fn local_and_upstream_replies_keep_the_order_of_the_commands() {
    let mut r = start();
    r.greeted().await;
    for _ in 0..2 {
        r.verdicts.send(Verdict::Accept).unwrap();
    }
    r.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<refuse@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
        .await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(r.reply().await);
    }
    assert_eq!(
        replies,
        [
            "250 2.0.0 ok\r\n",
            "250 2.0.0 ok\r\n",
            "450 4.7.1 refused by the test\r\n",
            "250 2.0.0 ok\r\n",
            "354 go ahead\r\n",
        ]
    );
    assert_eq!(
        r.mta_saw("RCPT"),
        ["RCPT TO:<b@y.test>", "RCPT TO:<c@y.test>"],
        "the refused recipient never reached the MTA"
    );
}

// === A decision that takes long ===

#[tokio::test(start_paused = true)]
async fn a_slow_decision_holds_its_rcpt_and_keeps_what_the_client_pipelines() {
    let mut r = start();
    r.greeted().await;
    r.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        .await;
    // The client does not wait: the rest of its transaction arrives while
    // the first recipient is still being decided.
    r.send("RCPT TO:<c@y.test>\r\nDATA\r\nSubject: t\r\n\r\nbody\r\n.\r\n")
        .await;
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "MAIL's reply, at once");
    assert!(r.silent_for(Duration::from_millis(1500)).await);
    assert_eq!(r.mta_saw("MAIL"), ["MAIL FROM:<a@x.test>"]);
    assert!(r.mta_saw("RCPT").is_empty(), "no RCPT before its verdict");
    assert_eq!(r.log.lock().unwrap().asked, ["b@y.test"]);

    r.verdicts.send(Verdict::Accept).unwrap();
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "b accepted");
    assert!(r.silent_for(Duration::from_millis(1500)).await);
    assert_eq!(r.mta_saw("RCPT"), ["RCPT TO:<b@y.test>"]);
    assert_eq!(r.log.lock().unwrap().asked, ["b@y.test", "c@y.test"]);

    r.verdicts.send(Verdict::Accept).unwrap();
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "c accepted");
    assert_eq!(r.reply().await, "354 go ahead\r\n");
    assert_eq!(r.reply().await, "250 2.0.0 queued\r\n");
    assert_eq!(r.mta_saw("body"), ["body"], "the pipelined body, once");
    assert!(r.log.lock().unwrap().abandoned.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_deadline_holds_while_a_decision_is_pending() {
    let mut r = start();
    // The MTA never answers this MAIL, and no verdict ever comes.
    r.deciding_b("silent@x.test").await;
    let sent = TokioInstant::now();
    assert_eq!(
        r.reply().await,
        "421 4.4.2 mb.test mail server timed out, try again later\r\n"
    );
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_millis(300_100),
        "timed out after {waited:?}"
    );
    assert!(r.closed().await);
    assert!(r.ended().await);
    r.b_abandoned_unsent();
}

#[tokio::test(start_paused = true)]
async fn stopping_ends_a_session_waiting_for_a_decision() {
    let mut r = start();
    r.deciding_b("a@x.test").await;
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "MAIL's reply");
    assert!(r.silent_for(Duration::from_secs(1)).await);
    r.stop.cancel();
    assert_eq!(
        r.reply().await,
        "421 4.3.2 mb.test shutting down, try again later\r\n"
    );
    assert!(r.closed().await);
    assert!(r.ended().await);
    r.b_abandoned_unsent();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_ends_its_pending_decision() {
    let mut r = start();
    r.deciding_b("a@x.test").await;
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "MAIL's reply");
    assert!(r.silent_for(Duration::from_secs(1)).await);
    let left = TokioInstant::now();
    r.client.shutdown().await.unwrap();
    assert!(r.ended().await);
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "the session ended when the client left, not at a timeout"
    );
    r.b_abandoned_unsent();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_after_pipelining_its_message_is_served_first() {
    let mut r = start();
    r.greeted().await;
    r.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    r.send("Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    r.client.shutdown().await.unwrap();
    assert_eq!(r.reply().await, "250 2.0.0 ok\r\n", "MAIL's reply");
    assert!(r.silent_for(Duration::from_secs(1)).await);
    assert!(r.log.lock().unwrap().abandoned.is_empty(), "still deciding");
    r.verdicts.send(Verdict::Accept).unwrap();
    assert!(r.ended().await);
    assert_eq!(r.mta_saw("RCPT"), ["RCPT TO:<b@y.test>"]);
    assert_eq!(r.mta_saw("body"), ["body"], "the message was delivered");
    assert!(r.log.lock().unwrap().abandoned.is_empty());
}

// === Replies queued behind a waiting decision ===

#[tokio::test(start_paused = true)]
async fn replies_queued_behind_a_waiting_decision_keep_their_order() {
    let mut r = start_by_hand();
    r.greeted_by_hand().await;
    // x and z are decided at once; y, behind a second MAIL, waits.
    r.verdicts.send(Verdict::Accept).unwrap();
    r.verdicts.send(Verdict::Accept).unwrap();
    r.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\n")
        .await;
    r.send("MAIL FROM:<b@x.test>\r\nRCPT TO:<y@y.test>\r\n")
        .await;
    r.mta_reads("RCPT TO:<z@y.test>\r\n").await;
    // One segment answers MAIL a (which lets the session ask about y) and x;
    // z is answered while y is still being decided.
    r.mta_says("250 2.1.0 mail a ok\r\n250 2.1.5 x ok\r\n")
        .await;
    while !r.log.lock().unwrap().asked.iter().any(|a| a == "y@y.test") {
        tokio::task::yield_now().await;
    }
    r.mta_says("550 5.1.1 z unknown\r\n").await;
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(r.reply().await);
    }
    assert_eq!(
        replies,
        [
            "250 2.1.0 mail a ok\r\n",
            "250 2.1.5 x ok\r\n",
            "550 5.1.1 z unknown\r\n",
            "503 5.5.1 Error: nested MAIL command\r\n",
        ],
        "in the order of the commands, while y's decision waits"
    );
    r.verdicts.send(Verdict::Accept).unwrap();
    assert_eq!(r.mta_reads("\r\n").await, "RCPT TO:<y@y.test>\r\n");
    r.mta_says("250 2.1.5 y ok\r\n").await;
    assert_eq!(r.reply().await, "250 2.1.5 y ok\r\n");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_half_closes_still_hears_what_the_mta_owes_it() {
    let mut r = start_by_hand();
    r.greeted_by_hand().await;
    r.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        .await;
    assert_eq!(r.mta_reads("\r\n").await, "MAIL FROM:<a@x.test>\r\n");
    // The client is done sending while b is decided and MAIL unanswered.
    r.client.shutdown().await.unwrap();
    while r.log.lock().unwrap().abandoned.is_empty() {
        tokio::task::yield_now().await;
    }
    r.mta_says("250 2.1.0 mail a ok\r\n").await;
    assert_eq!(r.reply().await, "250 2.1.0 mail a ok\r\n");
    assert_eq!(
        r.reply().await,
        "451 4.3.0 Recipient not decided: the client closed the connection\r\n"
    );
    assert!(r.closed().await);
    assert!(r.ended().await);
    let rest = r.mta_reads("\r\n").await;
    assert!(!rest.contains("RCPT"), "b was never forwarded: {rest:?}");
}
