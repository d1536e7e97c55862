//! Shared pieces of the end-to-end tests: test certificates, a mailbrake
//! process with its own config, a raw SMTP client, the recording upstream.

// Tests wait and time themselves on the real clock.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

pub mod admin;
pub mod local;
pub mod netns;
pub mod postfix;
pub mod redis;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` / 127.0.0.1, on disk and as rustls configs.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
    /// A client that trusts exactly this certificate.
    pub client: Arc<rustls::ClientConfig>,
}

pub fn certs() -> Certs {
    certs_for(&["localhost", "127.0.0.1"])
}

pub fn certs_for(names: &[&str]) -> Certs {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der = ck.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key_der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Certs {
        dir,
        cert,
        key,
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// A free port on 127.0.0.1 (bound, then released), never one this test
/// process handed out before (two listeners of one config on the same port
/// fail validation), and below the kernel's ephemeral range (32768-60999 by
/// default): a port-0 bind elsewhere in the test (an admin endpoint, a test
/// upstream) or an outgoing connection's local port could otherwise take it
/// between here and its use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries that run one after the other start far apart.
    let offset = (std::process::id() % 60) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = u16::try_from(FIRST + (offset + n) % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running mailbrake process.
pub struct Mailbrake {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Mailbrake {
    /// Starts mailbrake with `config` (TOML) and waits until it has logged
    /// `listening` once per listener.
    pub fn start(config: &str) -> Mailbrake {
        Mailbrake::start_with(&[], config)
    }

    /// Like [`Mailbrake::start`], with the command prefixed by `prefix`
    /// (e.g. `ip netns exec NAME`).
    pub fn start_with(prefix: &[&str], config: &str) -> Mailbrake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbrake.toml");
        // Tests run side by side: unless a test chooses, the admin endpoint
        // takes a free port (its address is logged as "admin endpoint ready").
        let config = if config.contains("[admin]") {
            config.to_string()
        } else {
            format!("[admin]\nbind = \"127.0.0.1:0\"\n{config}")
        };
        std::fs::write(&path, &config).unwrap();
        let bin = env!("CARGO_BIN_EXE_mailbrake");
        let (program, args) = match prefix.split_first() {
            Some((p, rest)) => (
                p.to_string(),
                rest.iter()
                    .map(|s| s.to_string())
                    .chain([bin.to_string()])
                    .collect(),
            ),
            None => (bin.to_string(), Vec::new()),
        };
        let mut child = Command::new(program)
            .args(args)
            .args(["run", "-c"])
            .arg(&path)
            .env("MAILBRAKE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let mut mb = Mailbrake {
            child,
            dir,
            config: path,
            log,
            lines,
        };
        let listeners = config.matches("[[listener]]").count();
        for _ in 0..listeners {
            mb.wait_log("listening");
        }
        mb
    }

    /// Waits (up to 20 s) for a log line containing `needle`; returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within 20 s; log:\n{}",
                    self.logs()
                ),
            }
        }
    }

    /// A log line containing `needle`, already logged or still to come.
    pub fn logged(&mut self, needle: &str) -> String {
        match self.logs().lines().find(|l| l.contains(needle)) {
            Some(line) => line.to_owned(),
            None => self.wait_log(needle),
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (up to 30 s) and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mailbrake did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mailbrake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain listener named `name` that allows AUTH without TLS, in front of `up`.
pub fn plain_auth_listener(name: &str, port: u16, up: std::net::SocketAddr) -> String {
    listener(
        name,
        port,
        "none",
        None,
        &up.to_string(),
        "allow_plaintext_auth = true\n",
    )
}

/// A listener section for tests.
pub fn listener(
    name: &str,
    port: u16,
    tls: &str,
    certs: Option<&Certs>,
    upstream: &str,
    extra: &str,
) -> String {
    let cert = certs
        .map(|c| format!("cert = {:?}\nkey = {:?}\n", c.cert, c.key))
        .unwrap_or_default();
    format!(
        "[[listener]]\nname = {name:?}\nbind = \"127.0.0.1:{port}\"\ntls = {tls:?}\n{cert}upstream = {upstream:?}\n{extra}\n"
    )
}

/// The top of a test config: no recipient limit and no connection rate, so
/// relay tests are not limited by each other; limit tests set their own.
pub fn base_config(dir: &Path) -> String {
    format!(
        "[server]\nhostname = \"mb.test\"\ndrain_timeout = \"5s\"\n[state]\ndir = {:?}\n\
         [limits]\ndefault = \"unlimited\"\n[protect]\nconnections_per_ip = \"off\"\n",
        dir.join("state")
    )
}

/// A raw SMTP client for byte-level tests.
pub struct Raw {
    io: RawIo,
    buf: Vec<u8>,
}

enum RawIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Gone,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        Raw {
            io: RawIo::Plain(s),
            buf: Vec::new(),
        }
    }

    /// Connected to mailbrake on 127.0.0.1:`port`, greeting read, `EHLO c` done.
    pub async fn greeted(port: u16) -> Raw {
        let mut c = Raw::connect(([127, 0, 0, 1], port).into()).await;
        expect(&c.reply().await.expect("no greeting"), "220");
        expect(&c.cmd("EHLO c").await, "250");
        c
    }

    /// Pipelines `MAIL FROM:<a@x>`, `RCPT TO:<b@y>`, `DATA` and expects 250, 250, 354.
    pub async fn open_data(&mut self) {
        self.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
            .await;
        for code in ["250", "250", "354"] {
            expect(&self.reply().await.expect("closed"), code);
        }
    }

    /// Pipelines MAIL and `n` RCPTs (`r0@example.net`, …), expects 250 to
    /// MAIL, and returns the RCPT replies.
    pub async fn recipients(&mut self, n: usize) -> Vec<String> {
        let mut batch = String::from("MAIL FROM:<sender@example.com>\r\n");
        for i in 0..n {
            batch.push_str(&format!("RCPT TO:<r{i}@example.net>\r\n"));
        }
        self.send(batch.as_bytes()).await;
        expect(&self.reply().await.unwrap(), "250");
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.reply().await.unwrap());
        }
        out
    }

    pub async fn connect_tls(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.tls(client).await;
        r
    }

    pub async fn tls(&mut self, client: Arc<rustls::ClientConfig>) {
        let RawIo::Plain(s) = std::mem::replace(&mut self.io, RawIo::Gone) else {
            panic!("TLS twice")
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, s)
            .await
            .unwrap();
        self.io = RawIo::Tls(Box::new(tls));
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match &mut self.io {
            RawIo::Plain(s) => s.write_all(bytes).await.unwrap(),
            RawIo::Tls(s) => {
                s.write_all(bytes).await.unwrap();
                s.flush().await.unwrap();
            }
            RawIo::Gone => panic!("gone"),
        }
    }

    /// Closes the write side (the client is done or vanishes).
    pub async fn shutdown(&mut self) {
        match &mut self.io {
            RawIo::Plain(s) => s.shutdown().await.unwrap(),
            RawIo::Tls(s) => s.shutdown().await.unwrap(),
            RawIo::Gone => {}
        }
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = vec![0u8; 65536];
        let read = async {
            match &mut self.io {
                RawIo::Plain(s) => s.read(&mut tmp).await,
                RawIo::Tls(s) => s.read(&mut tmp).await,
                RawIo::Gone => Ok(0),
            }
        };
        let n = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("no reply within 20 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    /// The next whole reply (all lines), or `None` at end of stream.
    pub async fn reply(&mut self) -> Option<String> {
        let mut end = 0;
        loop {
            while let Some(nl) = self.buf[end..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[end..end + nl + 1];
                end += nl + 1;
                if line.get(3) != Some(&b'-') {
                    let reply: Vec<u8> = self.buf.drain(..end).collect();
                    return Some(String::from_utf8_lossy(&reply).into_owned());
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Sends `line` and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.expect("connection closed")
    }

    /// Expects the connection to be closed by the other side (after any replies).
    pub async fn closed(&mut self) -> String {
        let mut rest = String::new();
        while let Some(r) = self.reply().await {
            rest.push_str(&r);
        }
        rest
    }
}

/// Asserts that `reply` starts with `code`.
#[track_caller]
pub fn expect(reply: &str, code: &str) {
    assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
}

impl Raw {
    /// The client's own address: what the upstream sees in XCLIENT and PROXY headers.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.io {
            RawIo::Plain(s) => s.local_addr().unwrap(),
            RawIo::Tls(s) => s.get_ref().0.local_addr().unwrap(),
            RawIo::Gone => panic!("gone"),
        }
    }

    /// Connects with TLS from the first byte, sending `sni` as the server
    /// name and verifying the certificate against `client`'s roots and `sni`;
    /// a failed handshake is returned, not a panic.
    pub async fn try_connect_tls_as(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> std::io::Result<Raw> {
        let s = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, s)
            .await?;
        Ok(Raw {
            io: RawIo::Tls(Box::new(tls)),
            buf: Vec::new(),
        })
    }
}

// === metrics ===

/// `GET /metrics`, as Prometheus would.
pub async fn scrape(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: mailbrake\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Every sample of a scrape: `name{labels}` (labels sorted) → value.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

/// The admin address from mailbrake's log.
pub fn admin_addr(mb: &mut Mailbrake) -> SocketAddr {
    // Logged before the listeners, so already read by `Mailbrake::start`.
    let logs = mb.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("admin endpoint ready"))
        .expect("mailbrake logs its admin address");
    let bind = line
        .split("bind=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    bind.parse().unwrap()
}

// === a client that may fail ===

/// An SMTP client for load, fault and incident tests: every step returns an
/// error instead of panicking (the server may close at any point), reads go
/// through a small buffer, and it can connect from a chosen local address.
pub struct Client {
    read: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    /// Connects to `addr` and reads the greeting, which is returned.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<(Client, String)> {
        Client::from_stream(TcpStream::connect(addr).await?).await
    }

    /// Connects to `addr` from `local` (any port), e.g. 127.0.0.2 to be
    /// another loopback client, and reads the greeting.
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
    ) -> std::io::Result<(Client, String)> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local, 0))?;
        Client::from_stream(socket.connect(addr).await?).await
    }

    async fn from_stream(s: TcpStream) -> std::io::Result<(Client, String)> {
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Client {
            read: tokio::io::BufReader::new(r),
            write: w,
        };
        let greeting = c.reply().await?;
        Ok((c, greeting))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// The next whole reply; `UnexpectedEof` when the server has closed,
    /// `TimedOut` after 20 s of silence.
    pub async fn reply(&mut self) -> std::io::Result<String> {
        use tokio::io::AsyncBufReadExt;
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.read.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(reply);
            }
        }
    }

    /// Sends `line` with CRLF; the reply.
    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// `AUTH PLAIN` as `user`; the reply.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> std::io::Result<String> {
        use base64::Engine;
        let blob =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {blob}")).await
    }

    /// Everything the server still sends until it closes (bounded by
    /// [`Client::reply`]'s timeout per reply).
    pub async fn rest(&mut self) -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            match self.reply().await {
                Ok(r) => all.push_str(&r),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(all),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(all),
                Err(e) => return Err(e),
            }
        }
    }

    /// Vanishes: with `reset`, an RST (SO_LINGER 0); otherwise a FIN.
    pub fn vanish(self, reset: bool) {
        let stream = self.read.into_inner().reunite(self.write).unwrap();
        if reset {
            let _ = stream.set_zero_linger();
        }
        drop(stream);
    }
}

/// The three-digit code of a reply (0 if it has none).
pub fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// What became of one transaction sent by [`Client::transaction`].
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail: String,
    /// One reply per recipient, in order.
    pub rcpts: Vec<String>,
    pub data: String,
    /// The reply to the end of data, when DATA got `354`.
    pub end: Option<String>,
}

impl Transaction {
    /// How many recipients got `250`.
    pub fn accepted(&self) -> usize {
        self.rcpts.iter().filter(|r| r.starts_with("250")).count()
    }

    /// Whether the message was queued (`250` at the end of data).
    pub fn delivered(&self) -> bool {
        self.end.as_deref().is_some_and(|r| r.starts_with("250"))
    }
}

impl Client {
    /// One transaction as a pipelining client sends it (RFC 2920): MAIL,
    /// every RCPT and DATA in one write; then, after `354`, `body` (already
    /// dot-stuffed, without the final dot) and `.`; after anything else, RSET.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[String],
        body: &str,
    ) -> std::io::Result<Transaction> {
        let mut batch = format!("MAIL FROM:<{from}>\r\n");
        for r in rcpts {
            batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        batch.push_str("DATA\r\n");
        self.send(batch.as_bytes()).await?;
        let mail = self.reply().await?;
        let mut replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            replies.push(self.reply().await?);
        }
        let data = self.reply().await?;
        let end = if data.starts_with("354") {
            self.send(format!("{body}\r\n.\r\n").as_bytes()).await?;
            Some(self.reply().await?)
        } else {
            // The transaction is still open; a client resets it before the
            // next one, as Postfix's smtp client, smtplib and PHPMailer do.
            self.send(b"RSET\r\n").await?;
            self.reply().await?;
            None
        };
        Ok(Transaction {
            mail,
            rcpts: replies,
            data,
            end,
        })
    }
}
