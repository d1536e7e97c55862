//! The ways a spammer stepped around the limit, end to end: the mailbrake
//! binary in front of the model MTA (tests/model) served on 127.0.0.1, and a
//! raw client pipelining as an attacker would. What counts is what the MTA
//! delivered, and that must stay within the 12/1h limit however the
//! commands are pipelined or the connection is cut.

mod common;
mod model;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use common::*;
use model::mta::{Ask, Behaviour, Mta};

/// The model MTA on a port of its own, one thread per connection; every
/// recipient it delivered, in one list. `ask` decides for every connection.
struct ModelUpstream {
    addr: SocketAddr,
    delivered: Arc<Mutex<Vec<String>>>,
}

impl ModelUpstream {
    fn start(ask: fn(Ask) -> bool) -> ModelUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let all = delivered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let all = all.clone();
                std::thread::spawn(move || {
                    let mut mta = Mta::new(Behaviour::default(), Box::new(ask));
                    let _ = stream.write_all(&mta.greeting());
                    let mut buf = [0u8; 4096];
                    let mut seen = 0;
                    while !mta.closed {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let replies = mta.input(&buf[..n]);
                        let new: Vec<String> = mta.delivered[seen..]
                            .iter()
                            .map(|(_, r)| r.clone())
                            .collect();
                        seen = mta.delivered.len();
                        all.lock().unwrap().extend(new);
                        if stream.write_all(&replies).is_err() {
                            break;
                        }
                    }
                    mta.eof();
                });
            }
        });
        ModelUpstream { addr, delivered }
    }

    fn delivered(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }
}

fn config(state: &std::path::Path, port: u16, up: SocketAddr) -> String {
    format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [protect]\nconnections_per_ip = \"off\"\n[limits]\ndefault = \"12/1h\"\n",
        state.join("state")
    ) + &listener("smtp", port, "none", None, &up.to_string(), "")
}

fn rcpts(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("RCPT TO:<{tag}{i}@example.net>\r\n"))
        .collect()
}

/// The replies to a pipelined batch of `n` commands.
async fn replies(c: &mut Raw, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(c.reply().await.expect("a reply to each pipelined command"));
    }
    got
}

async fn rig(ask: fn(Ask) -> bool) -> (Mailbrake, ModelUpstream, u16, tempfile::TempDir) {
    let up = ModelUpstream::start(ask);
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mb = Mailbrake::start(&config(state.path(), port, up.addr));
    (mb, up, port, state)
}

#[tokio::test]
async fn a_pipelined_rset_before_each_transaction() {
    let (_mb, up, port, _state) = rig(|a| a != Ask::Hangup).await;
    let mut c = Raw::greeted(port).await;
    for _ in 0..10 {
        let batch = format!("RSET\r\nMAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(12, "r"));
        c.send(batch.as_bytes()).await;
        let got = replies(&mut c, 15).await;
        if got.last().is_some_and(|r| r.starts_with("354")) {
            c.send(b"Subject: spam\r\n\r\nbuy\r\n.\r\n").await;
            c.reply().await;
        } else {
            c.send(b"RSET\r\n").await;
            c.reply().await;
        }
    }
    c.cmd("QUIT").await;
    assert_eq!(up.delivered(), 12);
}

#[tokio::test]
async fn pipelining_right_after_the_end_of_data() {
    let (_mb, up, port, _state) = rig(|a| a != Ask::Hangup).await;
    let mut c = Raw::greeted(port).await;
    c.send(format!("MAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(6, "p")).as_bytes())
        .await;
    replies(&mut c, 8).await;
    for _ in 0..10 {
        // The end of data, and the next transaction behind it (RFC 2920).
        let batch = format!("hi\r\n.\r\nMAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(6, "p"));
        c.send(batch.as_bytes()).await;
        let got = replies(&mut c, 9).await;
        if !got.last().is_some_and(|r| r.starts_with("354")) {
            // Refused: reset, and open the next message to go on pipelining.
            c.send(format!("RSET\r\nMAIL FROM:<a@x>\r\n{}DATA\r\n", rcpts(6, "p")).as_bytes())
                .await;
            replies(&mut c, 9).await;
        }
    }
    assert!(up.delivered() <= 12, "{} delivered", up.delivered());
}

#[tokio::test]
async fn a_client_gone_right_after_the_last_bdat_chunk() {
    let (_mb, up, port, _state) = rig(|a| a != Ask::Hangup).await;
    for s in 0..10 {
        let mut c = Raw::greeted(port).await;
        let batch = format!(
            "MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nhi\r\n",
            rcpts(12, &format!("b{s}-"))
        );
        c.send(batch.as_bytes()).await;
        c.shutdown().await;
        // The next session starts once this one is over upstream too.
        drop(c);
    }
    let mut c = Raw::greeted(port).await;
    c.send(format!("MAIL FROM:<a@x>\r\n{}BDAT 4 LAST\r\nhi\r\n", rcpts(12, "z")).as_bytes())
        .await;
    for _ in 0..14 {
        c.reply().await.expect("a reply to each pipelined command");
    }
    assert!(up.delivered() <= 12, "{} delivered", up.delivered());
}
