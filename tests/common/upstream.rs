//! A scriptable SMTP server that records exactly the bytes it received:
//! the upstream in end-to-end tests. A recipient whose address starts with
//! `reject` gets `550`, one starting with `defer` gets `451`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the test upstream behaves.
#[derive(Clone, Default)]
pub struct Opts {
    /// Offer STARTTLS with this config.
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// Speak TLS from the first byte.
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN; accepts alice / secret.
    pub auth: bool,
    pub chunking: bool,
    /// Offer XCLIENT.
    pub xclient: bool,
    /// Expect a PROXY protocol header first (recorded, not interpreted).
    pub proxy_header: bool,
    /// Close the connection without a word when this command arrives.
    pub hang_up_on: Option<&'static str>,
    /// Read this command (and everything after it) but never answer, until
    /// the other side closes. `"."`: the message's final dot (nothing stored).
    pub stall_on: Option<&'static str>,
    /// Listen here instead of 127.0.0.1:0.
    pub bind: Option<SocketAddr>,
    /// With `auth`, also accept any username whose password is this.
    pub any_user_password: Option<&'static str>,
    /// Refuse (554, nothing stored) at the end of data any message whose
    /// body contains this text.
    pub refuse_data_containing: Option<&'static str>,
    /// Greet with this line (no CRLF) instead of `220`. After a `421`
    /// greeting the connection closes; after any other non-2xx greeting
    /// every command but QUIT gets `503` (RFC 5321 section 3.1).
    pub greeting: Option<&'static str>,
    /// Accept the connection but never greet: read until the other side closes.
    pub silent: bool,
    /// Inside DATA, close the connection without a word once at least this
    /// many body bytes have arrived (nothing stored).
    pub hang_up_after_body_bytes: Option<usize>,
    /// Inside DATA, wait this long before each read: a slow MTA, so that a
    /// large message is still on its way while the test acts.
    pub body_read_pause: Option<Duration>,
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Message {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The body as received, dot-stuffing intact, without the final `.\r\n`.
    pub wire: Vec<u8>,
}

impl Message {
    /// The body with dot-stuffing removed.
    pub fn content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire.len());
        let mut line_start = true;
        let mut i = 0;
        while i < self.wire.len() {
            let b = self.wire[i];
            if !(line_start && b == b'.') {
                out.push(b);
            }
            line_start = b == b'\n';
            i += 1;
        }
        out
    }
}

/// `content` as it must be on the wire: a dot before every line starting
/// with one (RFC 5321 section 4.5.2); [`Message::content`] undoes it.
pub fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// Something the upstream saw.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Message),
    /// The first line of a message's body arrived (after `354`).
    BodyBegun,
    /// A connection ended; all bytes it received (after TLS decryption).
    Closed(Vec<u8>),
}

pub struct Upstream {
    pub addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    pub messages: Arc<Mutex<Vec<Message>>>,
}

impl Upstream {
    pub async fn start(opts: Opts) -> Upstream {
        let bind = opts.bind.unwrap_or(([127, 0, 0, 1], 0).into());
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stored = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (opts, tx, stored) = (opts.clone(), tx.clone(), stored.clone());
                tokio::spawn(async move {
                    let mut conn = Conn {
                        io: Io::Plain(stream),
                        buf: Vec::new(),
                        seen: Vec::new(),
                        opts,
                        tx,
                        stored,
                    };
                    let _ = conn.run().await;
                    let seen = std::mem::take(&mut conn.seen);
                    let _ = conn.tx.send(Event::Closed(seen));
                });
            }
        });
        Upstream {
            addr,
            events,
            messages,
        }
    }

    /// The next event, failing the test if none comes within 20 s.
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("no upstream event within 20 s")
            .expect("upstream stopped")
    }

    pub async fn next_message(&mut self) -> Message {
        loop {
            if let Event::Message(m) = self.next_event().await {
                return m;
            }
        }
    }

    /// Waits for a connection to end and returns what it received.
    pub async fn next_close(&mut self) -> Vec<u8> {
        loop {
            if let Event::Closed(b) = self.next_event().await {
                return b;
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

struct Conn {
    io: Io,
    buf: Vec<u8>,
    seen: Vec<u8>,
    opts: Opts,
    tx: mpsc::UnboundedSender<Event>,
    stored: Arc<Mutex<Vec<Message>>>,
}

impl Conn {
    async fn read_more(&mut self) -> std::io::Result<bool> {
        let mut tmp = vec![0u8; 65536];
        let n = match &mut self.io {
            Io::Plain(s) => s.read(&mut tmp).await?,
            Io::Tls(s) => s.read(&mut tmp).await?,
            Io::Gone => 0,
        };
        self.buf.extend_from_slice(&tmp[..n]);
        self.seen.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.buf.drain(..=nl).collect()));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => write_flush(s, text.as_bytes()).await,
            Io::Tls(s) => write_flush(s.as_mut(), text.as_bytes()).await,
            Io::Gone => Ok(()),
        }
    }

    async fn tls(&mut self, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        let Io::Plain(s) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!("TLS twice")
        };
        let tls = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await?;
        self.io = Io::Tls(Box::new(tls));
        Ok(())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        if self.opts.proxy_header {
            // Read (and record) the header: v1 ends at CRLF, v2 has a length field.
            while self.buf.len() < 16 {
                if !self.read_more().await? {
                    return Ok(());
                }
            }
            if self.buf.starts_with(b"PROXY ") {
                self.line().await?;
            } else {
                let len = 16 + u16::from_be_bytes([self.buf[14], self.buf[15]]) as usize;
                while self.buf.len() < len {
                    self.read_more().await?;
                }
                self.buf.drain(..len);
            }
        }
        if let Some(cfg) = self.opts.implicit_tls.clone() {
            self.tls(cfg).await?;
        }
        if self.opts.silent {
            while self.read_more().await? {}
            return Ok(());
        }
        if let Some(greeting) = self.opts.greeting {
            self.send(&format!("{greeting}\r\n")).await?;
            if !greeting.starts_with('2') {
                return self.refuse_session(greeting.starts_with("421")).await;
            }
        } else {
            self.send("220 upstream.test ESMTP recorder\r\n").await?;
        }
        let mut from = String::new();
        let mut rcpts = Vec::new();
        let mut bdat = Vec::new();
        while let Some(line) = self.line().await? {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let upper = text.to_ascii_uppercase();
            if let Some(h) = self.opts.hang_up_on
                && upper.starts_with(h)
            {
                return Ok(());
            }
            if let Some(s) = self.opts.stall_on
                && upper.starts_with(s)
            {
                while self.read_more().await? {}
                return Ok(());
            }
            if upper.starts_with("EHLO") {
                let mut caps = vec!["upstream.test", "PIPELINING", "8BITMIME", "SIZE 52428800"];
                if self.opts.starttls.is_some() && matches!(self.io, Io::Plain(_)) {
                    caps.push("STARTTLS");
                }
                if self.opts.auth {
                    caps.push("AUTH PLAIN LOGIN SCRAM-SHA-256-PLUS");
                }
                if self.opts.chunking {
                    caps.push("CHUNKING");
                }
                if self.opts.xclient {
                    caps.push("XCLIENT NAME ADDR PORT PROTO HELO LOGIN");
                }
                caps.push("XFORWARD NAME ADDR");
                let n = caps.len();
                let reply: String = caps
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect();
                self.send(&reply).await?;
            } else if upper.starts_with("HELO") {
                self.send("250 upstream.test\r\n").await?;
            } else if upper == "STARTTLS" {
                self.send("220 2.0.0 Ready to start TLS\r\n").await?;
                let cfg = self.opts.starttls.clone().expect("STARTTLS not offered");
                self.tls(cfg).await?;
            } else if upper.starts_with("XCLIENT") {
                self.send("220 upstream.test ESMTP recorder\r\n").await?;
            } else if upper.starts_with("AUTH") {
                self.auth(&text).await?;
            } else if upper.starts_with("MAIL FROM:") {
                from = path(&text[10..]);
                rcpts.clear();
                self.send("250 2.1.0 Ok\r\n").await?;
            } else if upper.starts_with("RCPT TO:") {
                let to = path(&text[8..]);
                if to.starts_with("reject") {
                    self.send("550 5.1.1 No such user\r\n").await?;
                } else if to.starts_with("defer") {
                    self.send("451 4.3.0 Try again later\r\n").await?;
                } else {
                    rcpts.push(to);
                    self.send("250 2.1.5 Ok\r\n").await?;
                }
            } else if upper == "DATA" {
                if rcpts.is_empty() {
                    self.send("554 5.5.1 Error: no valid recipients\r\n")
                        .await?;
                    continue;
                }
                self.send("354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut wire = Vec::new();
                loop {
                    if let Some(pause) = self.opts.body_read_pause
                        && !self.buf.contains(&b'\n')
                    {
                        tokio::time::sleep(pause).await;
                    }
                    let Some(l) = self.line().await? else {
                        return Ok(()); // client gone: nothing stored
                    };
                    if wire.is_empty() {
                        let _ = self.tx.send(Event::BodyBegun);
                    }
                    if l == b".\r\n" {
                        if self.opts.stall_on == Some(".") {
                            while self.read_more().await? {}
                            return Ok(()); // never answered: nothing stored
                        }
                        break;
                    }
                    wire.extend_from_slice(&l);
                    if self
                        .opts
                        .hang_up_after_body_bytes
                        .is_some_and(|n| wire.len() >= n)
                    {
                        return Ok(()); // dies mid-message: nothing stored
                    }
                }
                if let Some(marker) = self.opts.refuse_data_containing
                    && String::from_utf8_lossy(&wire).contains(marker)
                {
                    rcpts.clear();
                    self.send("554 5.7.1 Message refused\r\n").await?;
                    continue;
                }
                self.deliver(&from, &rcpts, wire).await?;
            } else if upper.starts_with("BDAT") {
                let mut parts = upper.split_whitespace().skip(1);
                let size: usize = parts.next().unwrap().parse().unwrap();
                let last = parts.next() == Some("LAST");
                while self.buf.len() < size {
                    if !self.read_more().await? {
                        return Ok(());
                    }
                }
                bdat.extend(self.buf.drain(..size));
                if last {
                    let wire = std::mem::take(&mut bdat);
                    self.deliver(&from, &rcpts, wire).await?;
                } else {
                    self.send(&format!("250 2.0.0 {size} bytes received\r\n"))
                        .await?;
                }
            } else if upper == "RSET" {
                rcpts.clear();
                self.send("250 2.0.0 Ok\r\n").await?;
            } else if upper == "QUIT" {
                self.send("221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else if upper.starts_with("NOOP") {
                self.send("250 2.0.0 Ok\r\n").await?;
            } else {
                self.send("502 5.5.2 Error: command not recognized\r\n")
                    .await?;
            }
        }
        Ok(())
    }

    /// After a refusing greeting: close at once (`421`), or answer `503`
    /// to everything but QUIT until the client leaves.
    async fn refuse_session(&mut self, close: bool) -> std::io::Result<()> {
        if close {
            return Ok(());
        }
        while let Some(line) = self.line().await? {
            if line.to_ascii_uppercase().starts_with(b"QUIT") {
                return self.send("221 2.0.0 Bye\r\n").await;
            }
            self.send("503 5.5.1 Error: no service\r\n").await?;
        }
        Ok(())
    }

    async fn deliver(
        &mut self,
        from: &str,
        rcpts: &[String],
        wire: Vec<u8>,
    ) -> std::io::Result<()> {
        let m = Message {
            from: from.to_string(),
            rcpts: rcpts.to_vec(),
            wire,
        };
        let n = {
            let mut stored = self.stored.lock().unwrap();
            stored.push(m.clone());
            stored.len()
        };
        let _ = self.tx.send(Event::Message(m));
        self.send(&format!("250 2.0.0 Ok: queued as TEST{n:04}\r\n"))
            .await
    }

    async fn auth(&mut self, line: &str) -> std::io::Result<()> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut parts = line.split_whitespace().skip(1);
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next().map(str::to_string);
        let ok = match mech.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => r,
                    None => {
                        self.send("334 \r\n").await?;
                        let l = self.line().await?.unwrap_or_default();
                        String::from_utf8_lossy(&l).trim_end().to_string()
                    }
                };
                let d = b64.decode(resp).unwrap_or_default();
                d == b"\0alice\0secret"
                    || d == b"alice\0alice\0secret"
                    || self.opts.any_user_password.is_some_and(|p| {
                        let mut parts = d.split(|&b| b == 0);
                        let (_, user, pass) = (parts.next(), parts.next(), parts.next());
                        user.is_some_and(|u| !u.is_empty()) && pass == Some(p.as_bytes())
                    })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(u) => u,
                    None => {
                        self.send("334 VXNlcm5hbWU6\r\n").await?;
                        let l = self.line().await?.unwrap_or_default();
                        String::from_utf8_lossy(&l).trim_end().to_string()
                    }
                };
                self.send("334 UGFzc3dvcmQ6\r\n").await?;
                let l = self.line().await?.unwrap_or_default();
                let pass = String::from_utf8_lossy(&l).trim_end().to_string();
                let (user, pass) = (
                    b64.decode(user).unwrap_or_default(),
                    b64.decode(pass).unwrap_or_default(),
                );
                (user == b"alice" && pass == b"secret")
                    || self
                        .opts
                        .any_user_password
                        .is_some_and(|p| !user.is_empty() && pass == p.as_bytes())
            }
            _ => false,
        };
        if ok {
            self.send("235 2.7.0 Authentication successful\r\n").await
        } else {
            self.send("535 5.7.8 Error: authentication failed\r\n")
                .await
        }
    }
}

/// The address inside `<...>`.
fn path(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.find('>').unwrap_or(arg.len());
    arg[start..end].to_string()
}

async fn write_flush<S: AsyncWrite + AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    b: &[u8],
) -> std::io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}
