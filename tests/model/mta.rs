//! A model MTA: a small SMTP server as a pure state machine, for tests.
//!
//! It answers each command by its own rules (RFC 5321, 3030 and 4954, with
//! the deviations real servers have, chosen by the test through [`Ask`])
//! and records the recipients of every transaction it completed, under the
//! sender it would name itself: its AUTH user, else the connection's. Bytes
//! in, reply bytes out; no sockets, no clock.

/// A choice the model leaves to the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Accept this EHLO or HELO.
    Helo,
    /// Accept this MAIL (outside a transaction).
    Mail,
    /// Accept this RCPT (inside a transaction).
    Rcpt,
    /// Deliver this message (end of data, last BDAT).
    Deliver,
    /// Accept this RSET (a server that refuses it keeps its transaction).
    Rset,
    /// Accept these AUTH credentials.
    Auth,
    /// Hang up instead of sending this reply (the command's effect stays:
    /// a message may be queued and its 250 lost).
    Hangup,
}

/// What the model offers and tolerates.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// CHUNKING in the EHLO reply.
    pub chunking: bool,
    /// BDAT understood in a HELO session too (otherwise it is an unknown
    /// command there, and its chunk is read as commands).
    pub bdat_after_helo: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            chunking: true,
            bdat_after_helo: false,
        }
    }
}

enum Mode {
    Command,
    Data,
    Bdat { remaining: usize, last: bool },
    AuthLogin { user: Option<String> },
}

/// A recipient the model accepted: (AUTH user when accepted, address).
pub type Accepted = (Option<String>, String);

pub struct Mta {
    behaviour: Behaviour,
    ask: Box<dyn FnMut(Ask) -> bool>,
    inbuf: Vec<u8>,
    body: Vec<u8>,
    mode: Mode,
    /// `Some(esmtp)` once greeted.
    greeted: Option<bool>,
    user: Option<String>,
    tx: Option<Vec<Accepted>>,
    /// A BDAT of this transaction failed: the rest is discarded (RFC 3030 2).
    bdat_failed: bool,
    /// Every recipient of every message delivered.
    pub delivered: Vec<Accepted>,
    /// Every RCPT command received, in order, with the AUTH user then.
    pub rcpt_commands: Vec<Accepted>,
    pub closed: bool,
}

impl Mta {
    pub fn new(behaviour: Behaviour, ask: Box<dyn FnMut(Ask) -> bool>) -> Self {
        Mta {
            behaviour,
            ask,
            inbuf: Vec::new(),
            body: Vec::new(),
            mode: Mode::Command,
            greeted: None,
            user: None,
            tx: None,
            bdat_failed: false,
            delivered: Vec::new(),
            rcpt_commands: Vec::new(),
            closed: false,
        }
    }

    pub fn greeting(&self) -> Vec<u8> {
        b"220 mta.test ESMTP model\r\n".to_vec()
    }

    /// Bytes from the client; returns the replies.
    pub fn input(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        self.inbuf.extend_from_slice(bytes);
        let mut pos = 0;
        while pos < self.inbuf.len() && !self.closed {
            let rest = &self.inbuf[pos..];
            let used = match &mut self.mode {
                Mode::Bdat { remaining, last } => {
                    let n = rest.len().min(*remaining);
                    *remaining -= n;
                    if *remaining == 0 {
                        let last = *last;
                        self.mode = Mode::Command;
                        let reply = self.bdat_done(last);
                        self.reply(&mut out, reply);
                    }
                    n
                }
                Mode::Data => {
                    self.body.push(rest[0]);
                    if self.body.ends_with(b"\r\n.\r\n") || self.body == b".\r\n" {
                        self.mode = Mode::Command;
                        self.body.clear();
                        let reply = self.end_of_message();
                        self.reply(&mut out, reply);
                    }
                    1
                }
                Mode::Command | Mode::AuthLogin { .. } => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&rest[..nl]);
                    let line = line.trim_end_matches('\r').to_string();
                    let reply = self.line(&line);
                    self.reply(&mut out, reply);
                    nl + 1
                }
            };
            pos += used;
        }
        self.inbuf.drain(..pos);
        out
    }

    /// The client closed: an unfinished message is never delivered.
    pub fn eof(&mut self) {
        self.closed = true;
    }

    fn reply(&mut self, out: &mut Vec<u8>, reply: Option<String>) {
        let Some(reply) = reply else { return };
        if (self.ask)(Ask::Hangup) {
            self.closed = true;
            return;
        }
        out.extend_from_slice(reply.as_bytes());
        out.extend_from_slice(b"\r\n");
        if reply.starts_with("221") {
            self.closed = true;
        }
    }

    fn line(&mut self, line: &str) -> Option<String> {
        if let Mode::AuthLogin { user } = &mut self.mode {
            let decoded = decode(line);
            return Some(match user.take() {
                None if line == "*" => {
                    self.mode = Mode::Command;
                    "501 cancelled".into()
                }
                None => {
                    *user = Some(decoded);
                    "334 UGFzc3dvcmQ6".into()
                }
                Some(name) => {
                    self.mode = Mode::Command;
                    self.authenticate(Some(name))
                }
            });
        }
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        Some(match verb.as_str() {
            "EHLO" | "HELO" if args.is_empty() => "501 Syntax: EHLO hostname".into(),
            "EHLO" | "HELO" => {
                if !(self.ask)(Ask::Helo) {
                    return Some("504 hostname refused".into());
                }
                self.tx = None;
                self.greeted = Some(verb == "EHLO");
                if verb == "HELO" {
                    return Some("250 mta.test".into());
                }
                let chunking = if self.behaviour.chunking {
                    "250-CHUNKING\r\n"
                } else {
                    ""
                };
                format!(
                    "250-mta.test\r\n250-PIPELINING\r\n{chunking}250-AUTH PLAIN LOGIN\r\n250 8BITMIME"
                )
            }
            "MAIL" if self.greeted.is_none() => "503 send EHLO first".into(),
            "MAIL" if self.tx.is_some() => "503 nested MAIL command".into(),
            "MAIL" if (self.ask)(Ask::Mail) => {
                self.tx = Some(Vec::new());
                self.bdat_failed = false;
                "250 2.1.0 Ok".into()
            }
            "MAIL" => "550 5.7.1 sender refused".into(),
            "RCPT" => {
                let to = address(&args);
                self.rcpt_commands.push((self.user.clone(), to.clone()));
                match &mut self.tx {
                    None => "503 need MAIL command".into(),
                    Some(rcpts) if (self.ask)(Ask::Rcpt) => {
                        rcpts.push((self.user.clone(), to));
                        "250 2.1.5 Ok".into()
                    }
                    Some(_) => "550 5.1.1 recipient refused".into(),
                }
            }
            "DATA" if !args.is_empty() => "501 Syntax: DATA".into(),
            "DATA" => match &self.tx {
                None => "503 need RCPT command".into(),
                Some(r) if r.is_empty() => "554 no valid recipients".into(),
                Some(_) => {
                    self.mode = Mode::Data;
                    "354 go ahead".into()
                }
            },
            "BDAT" if self.greeted != Some(true) && !self.behaviour.bdat_after_helo => {
                "502 5.5.2 command not recognized".into()
            }
            "BDAT" => {
                // Postfix's rule: `BDAT count [LAST]` exactly, or a 501 and
                // no chunk read (what follows is read as commands).
                let words: Vec<&str> = args.split_whitespace().collect();
                let size = words
                    .first()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<usize>().ok());
                let last = words.get(1).is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let well_formed = words.len() == 1 || (words.len() == 2 && last);
                match size.filter(|_| well_formed) {
                    None => "501 Syntax: BDAT count [LAST]".into(),
                    Some(0) => return self.bdat_done(last),
                    Some(remaining) => {
                        self.mode = Mode::Bdat { remaining, last };
                        return None;
                    }
                }
            }
            "RSET" if !args.is_empty() => "501 Syntax: RSET".into(),
            "RSET" if (self.ask)(Ask::Rset) => {
                self.tx = None;
                "250 2.0.0 Ok".into()
            }
            "RSET" => "554 RSET refused".into(),
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => "221 2.0.0 Bye".into(),
            "VRFY" => "252 2.0.0 maybe".into(),
            "AUTH" if self.user.is_some() => "503 already authenticated".into(),
            "AUTH" => {
                let mut words = args.split_whitespace();
                let mech = words.next().unwrap_or("").to_ascii_uppercase();
                match (mech.as_str(), words.next()) {
                    ("PLAIN", Some(initial)) => {
                        let d = decode(initial);
                        let authcid = d.split('\0').nth(1).map(str::to_string);
                        self.authenticate(authcid)
                    }
                    ("LOGIN", None) => {
                        self.mode = Mode::AuthLogin { user: None };
                        "334 VXNlcm5hbWU6".into()
                    }
                    _ => "504 5.5.4 unsupported".into(),
                }
            }
            _ => "502 5.5.2 command not recognized".into(),
        })
    }

    fn authenticate(&mut self, user: Option<String>) -> String {
        match user {
            Some(u) if !u.is_empty() && (self.ask)(Ask::Auth) => {
                self.user = Some(u);
                "235 2.7.0 Authentication successful".into()
            }
            _ => "535 5.7.8 authentication failed".into(),
        }
    }

    fn bdat_done(&mut self, last: bool) -> Option<String> {
        let reply = match &self.tx {
            None => "503 need MAIL command".to_string(),
            Some(r) if r.is_empty() => "554 no valid recipients".into(),
            Some(_) if self.bdat_failed => "554 earlier chunk refused".into(),
            Some(_) if last => return self.end_of_message(),
            Some(_) => "250 2.0.0 chunk ok".into(),
        };
        if last {
            self.tx = None;
        }
        Some(reply)
    }

    /// The end of a message: delivered, or refused; the transaction is over.
    fn end_of_message(&mut self) -> Option<String> {
        let rcpts = self.tx.take().unwrap_or_default();
        if rcpts.is_empty() {
            return Some("554 no valid recipients".into());
        }
        Some(if (self.ask)(Ask::Deliver) {
            self.delivered.extend(rcpts);
            "250 2.0.0 queued".into()
        } else {
            "554 5.7.1 message refused".into()
        })
    }
}

/// The address in `TO:<addr> params`.
fn address(args: &str) -> String {
    let start = args.find('<').map_or(0, |i| i + 1);
    let end = args[start..].find('>').map_or(args.len(), |i| start + i);
    args[start..end].to_string()
}

/// Lenient base64, as servers decode it: padding and trailing bits ignored.
fn decode(text: &str) -> String {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
