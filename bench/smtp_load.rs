//! An SMTP load generator that speaks TLS, for `bench/throughput.sh`'s TLS
//! workloads: Postfix's `smtp-source` has no TLS. It drives the same
//! dialogue as `smtp-source` (greeting, EHLO, then per message MAIL, one RCPT
//! per recipient, DATA and the body, nothing pipelined), over plain TCP,
//! implicit TLS or STARTTLS, with every TLS handshake a full one (no session
//! resumption), so that both proxies do the same work per connection.
//!
//! ```text
//! smtp_load --connect 127.0.0.1:2525 --tls starttls --ca cert.pem \
//!           --messages 20000 --sessions 50 --size 2000 --rcpts 2 [--reuse]
//! ```
//!
//! Prints the elapsed seconds; exits non-zero when any reply was not the
//! expected one (a benchmark that refuses mail measures nothing).

// Benchmarks time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::{Error, ErrorKind, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tls {
    None,
    Starttls,
    Implicit,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long, value_enum, default_value = "none")]
    tls: Tls,
    /// The certificate to trust (PEM).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The name the certificate is checked against.
    #[arg(long, default_value = "localhost")]
    name: String,
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Message size in bytes (headers and body).
    #[arg(long, default_value_t = 2000)]
    size: usize,
    #[arg(long, default_value_t = 2)]
    rcpts: usize,
    /// Send messages over kept connections instead of one per connection.
    #[arg(long)]
    reuse: bool,
}

struct Load {
    args: Args,
    tls: Option<TlsConnector>,
    name: ServerName<'static>,
    body: Vec<u8>,
    left: AtomicUsize,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let tls = match args.tls {
        Tls::None => None,
        _ => match connector(&args) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("smtp_load: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let name = match ServerName::try_from(args.name.clone()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("smtp_load: --name: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let load = Arc::new(Load {
        body: body(args.size),
        left: AtomicUsize::new(args.messages),
        tls,
        name,
        args,
    });
    // One thread, like smtp-source: the generator should not take more of
    // the machine than the proxy it measures.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let result: Result<()> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..load.args.sessions {
            let load = load.clone();
            tasks.push(tokio::spawn(async move { worker(&load).await }));
        }
        for t in tasks {
            t.await.map_err(Error::other)??;
        }
        Ok(())
    });
    match result {
        Ok(()) => {
            println!("{:.3}", started.elapsed().as_secs_f64());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn connector(args: &Args) -> std::result::Result<TlsConnector, String> {
    let path = args.ca.as_ref().ok_or("--ca is needed with TLS")?;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Headers and lines of `X` up to `size` bytes, as smtp-source sends.
fn body(size: usize) -> Vec<u8> {
    let mut b =
        b"From: <bench@example.com>\r\nTo: <sink@example.net>\r\nSubject: load\r\n\r\n".to_vec();
    while b.len() + 2 < size {
        let n = (size - b.len() - 2).min(78);
        b.extend(std::iter::repeat_n(b'X', n));
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// Takes one message from the shared count.
fn take(load: &Load) -> bool {
    load.left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

async fn worker(load: &Load) -> Result<()> {
    while take(load) {
        let mut s = open(load).await?;
        send(&mut s, load).await?;
        if load.args.reuse {
            while take(load) {
                send(&mut s, load).await?;
            }
        }
        command(&mut s, b"QUIT\r\n", 221).await?;
    }
    Ok(())
}

/// Connects, greets and (as asked) secures a session.
async fn open(load: &Load) -> Result<BufReader<Box<dyn Io>>> {
    let tcp = TcpStream::connect(load.args.connect).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match (&load.tls, load.args.tls) {
        (Some(c), Tls::Implicit) => Box::new(c.connect(load.name.clone(), tcp).await?),
        _ => Box::new(tcp),
    };
    let mut s = BufReader::new(io);
    expect(&mut s, 220).await?;
    command(&mut s, b"EHLO load.example\r\n", 250).await?;
    if let (Some(c), Tls::Starttls) = (&load.tls, load.args.tls) {
        command(&mut s, b"STARTTLS\r\n", 220).await?;
        // Nothing may be buffered past the 220: the next bytes are TLS.
        if !s.buffer().is_empty() {
            return Err(Error::other("bytes after the STARTTLS reply"));
        }
        let tls = c.connect(load.name.clone(), s.into_inner()).await?;
        s = BufReader::new(Box::new(tls));
        command(&mut s, b"EHLO load.example\r\n", 250).await?;
    }
    Ok(s)
}

async fn send(s: &mut BufReader<Box<dyn Io>>, load: &Load) -> Result<()> {
    command(s, b"MAIL FROM:<bench@example.com>\r\n", 250).await?;
    for i in 0..load.args.rcpts {
        let rcpt = format!("RCPT TO:<{i}sink@example.net>\r\n");
        command(s, rcpt.as_bytes(), 250).await?;
    }
    command(s, b"DATA\r\n", 354).await?;
    command(s, &load.body, 250).await
}

async fn command(s: &mut BufReader<Box<dyn Io>>, line: &[u8], code: u16) -> Result<()> {
    let w = s.get_mut();
    w.write_all(line).await?;
    w.flush().await?;
    expect(s, code).await
}

/// Reads one reply (all its lines) and checks its code.
async fn expect(s: &mut BufReader<Box<dyn Io>>, code: u16) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    match line.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(c) if c == code => Ok(()),
        _ => Err(Error::other(format!(
            "expected {code}, got {:?}",
            line.trim_end()
        ))),
    }
}
