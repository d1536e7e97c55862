//! What finding a connection's socket owner costs with 10,000 connections
//! open on the host, by netlink `sock_diag` and by the `/proc/net/tcp`
//! fallback, and what it costs the other sessions of a session thread when
//! the lookup runs on that thread, on tokio's blocking threads, or as
//! sessions run it (`identity::owner::lookup`).
//!
//! `cargo run --release --example owner_lookup [CONNECTIONS]` (default
//! 10,000; as root, or with a hard open-file limit above twice that). Only
//! loopback is used.

// Benchmarks time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mailbrake::identity::owner::{self, Via, socket_owner_via};
use mailbrake::identity::{ClientAddr, DialledAddr};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Lookups timed per path: every connection by `sock_diag`, fewer by
/// `/proc` (each reads the whole table).
const PROC_CALLS: usize = 300;

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--hold") {
        let n = args.next().and_then(|a| a.parse().ok()).expect("count");
        let server = args.next().and_then(|a| a.parse().ok()).expect("address");
        return hold(n, server);
    }
    let n: usize = first
        .map(|a| a.parse().expect("CONNECTIONS is a number"))
        .unwrap_or(10_000);
    raise_open_files(n as u64 + 256);

    // The client ends are held by a child process: each end needs a
    // descriptor, and one process may not be allowed twice 10,000.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let server = listener.local_addr().expect("local address");
    let mut holder = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--hold", &n.to_string(), &server.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("starting the holder");
    let mut held = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (accepted, peer) = listener.accept().expect("accept");
        clients.push(peer);
        held.push(accepted);
    }
    let table = std::fs::read_to_string("/proc/net/tcp").map_or(0, |t| t.lines().count() - 1);
    println!("{n} loopback connections open; /proc/net/tcp has {table} entries");
    let me = nix::unistd::getuid().as_raw();

    println!("\nper call, on the calling thread:");
    let diag = time_calls(&clients, clients.len(), |c| {
        assert_eq!(socket_owner_via(Via::SockDiag, c, server).ok(), Some(me));
    });
    report("sock_diag", &diag);
    let proc = time_calls(&clients, PROC_CALLS, |c| {
        assert_eq!(socket_owner_via(Via::ProcNetTcp, c, server).ok(), Some(me));
    });
    report("/proc/net/tcp", &proc);

    // What sessions use: sock_diag on the thread (it works here).
    let runs = [
        (Mode::Lookup, Via::SockDiag, 2_000),
        (Mode::OnThread, Via::SockDiag, 2_000),
        (Mode::SpawnBlocking, Via::SockDiag, 2_000),
        (Mode::OnThread, Via::ProcNetTcp, PROC_CALLS),
        (Mode::SpawnBlocking, Via::ProcNetTcp, PROC_CALLS),
    ];
    println!(
        "\nwhat a session thread's other tasks wait for, per lookup (gaps between their polls):"
    );
    for (mode, via, calls) in runs {
        let gaps = stalls(&clients[..calls], server, via, mode);
        report(&format!("{via:?}, {mode:?}"), &gaps);
    }
    println!("\nCPU time of the session thread itself per lookup (no other task):");
    for (mode, via, calls) in runs {
        let cpu = thread_cpu(&clients[..calls], server, via, mode);
        println!(
            "  {:<32} calls {calls:>6}  mean {cpu:>9.1?}",
            format!("{via:?}, {mode:?}")
        );
    }
    drop(held);
    drop(holder.stdin.take());
    let _ = holder.wait();
}

/// The child: connects `n` times to `server` and holds the connections
/// until its standard input closes.
fn hold(n: usize, server: SocketAddr) {
    raise_open_files(n as u64 + 256);
    let held: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(server).expect("connect"))
        .collect();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(held);
}

fn raise_open_files(want: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard))
            .expect("raising RLIMIT_NOFILE (run as root)");
    }
}

/// How a session thread runs a lookup.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `mailbrake::identity::owner::lookup`, as sessions do.
    Lookup,
    /// The query called on the session thread.
    OnThread,
    /// The query handed to tokio's blocking threads.
    SpawnBlocking,
}

/// One lookup of the owner of `client`'s connection to `server`.
async fn one(mode: Mode, via: Via, client: SocketAddr, server: SocketAddr) -> bool {
    match mode {
        Mode::Lookup => {
            let (c, s) = (ClientAddr::new(client), DialledAddr(server));
            owner::lookup(c, s).await.is_some()
        }
        Mode::OnThread => socket_owner_via(via, client, server).is_ok(),
        Mode::SpawnBlocking => {
            tokio::task::spawn_blocking(move || socket_owner_via(via, client, server))
                .await
                .is_ok_and(|found| found.is_ok())
        }
    }
}

/// Times `f` on `calls` of the connections, spread over all of them.
fn time_calls(clients: &[SocketAddr], calls: usize, f: impl Fn(SocketAddr)) -> Vec<Duration> {
    let step = (clients.len() / calls).max(1);
    let mut times: Vec<Duration> = clients
        .iter()
        .step_by(step)
        .take(calls)
        .map(|&c| {
            let start = Instant::now();
            f(c);
            start.elapsed()
        })
        .collect();
    times.sort();
    times
}

/// On a single-threaded runtime like a session thread's, one task looks up
/// owners while another only yields; returns the longest gap between that
/// other task's polls during each lookup, sorted.
fn stalls(clients: &[SocketAddr], server: SocketAddr, via: Via, mode: Mode) -> Vec<Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clients = clients.to_vec();
    runtime.block_on(async move {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worst = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let other = {
            let (done, worst) = (done.clone(), worst.clone());
            tokio::spawn(async move {
                let mut last = Instant::now();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::task::yield_now().await;
                    let now = Instant::now();
                    let mut w = worst.lock().unwrap();
                    *w = (*w).max(now - last);
                    last = now;
                }
            })
        };
        tokio::task::yield_now().await;
        let mut gaps = Vec::with_capacity(clients.len());
        for c in clients {
            *worst.lock().unwrap() = Duration::ZERO;
            assert!(one(mode, via, c, server).await);
            // Let the other task run once before its worst gap is read.
            tokio::task::yield_now().await;
            gaps.push(*worst.lock().unwrap());
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        other.await.expect("other task");
        gaps.sort();
        gaps
    })
}

/// The mean CPU time (user and system) the runtime's own thread spends per
/// lookup, the lookups awaited one after another.
fn thread_cpu(clients: &[SocketAddr], server: SocketAddr, via: Via, mode: Mode) -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let cpu = || {
        let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clients = clients.to_vec();
    let n = clients.len() as u32;
    runtime.block_on(async move {
        // The blocking pool's first thread is started outside the count.
        let _ = tokio::task::spawn_blocking(|| ()).await;
        let start = cpu();
        for c in clients {
            assert!(one(mode, via, c, server).await);
        }
        (cpu() - start) / n
    })
}

fn report(what: &str, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {what:<32} calls {:>6}  median {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}",
        sorted.len(),
        at(0.5),
        at(0.99),
        sorted[sorted.len() - 1],
    );
}
