//! One session thread's accept loop, on a TCP or a Unix socket: the
//! connection rate (per client address; a Unix socket's clients have none,
//! and are held by `max_sessions_per_user` instead), session limits (each
//! refused with a reply, never silently dropped), session ids, a Unix
//! client's peer credentials read at accept, and a pause while accepts fail
//! (out of descriptors) instead of a spin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{ListenerRuntime, Services, connection, current};
use crate::driver::DriverEnv;
use crate::identity::{ClientAddr, PeerCred};
use crate::session::Failure;

/// One session thread's listening socket.
pub(super) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One accepted connection and who is at the other end.
enum Accepted {
    Tcp(TcpStream, std::net::SocketAddr),
    Unix(UnixStream, PeerCred),
}

/// Who is at the other end, as the session's log lines name it.
#[derive(Clone, Copy)]
enum Client {
    Tcp(std::net::SocketAddr),
    Unix(PeerCred),
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Tcp(addr) => addr.fmt(f),
            Client::Unix(cred) => cred.fmt(f),
        }
    }
}

impl Socket {
    /// `bound`, registered with this thread's runtime.
    pub(super) fn register(bound: crate::listen::Bound) -> std::io::Result<Self> {
        match bound {
            crate::listen::Bound::Tcp(l) => TcpListener::from_std(l).map(Socket::Tcp),
            crate::listen::Bound::Unix(l) => UnixListener::from_std(l).map(Socket::Unix),
        }
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Socket::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            Socket::Unix(l) => {
                let (s, _) = l.accept().await?;
                let cred = PeerCred::of(&s)?;
                Ok(Accepted::Unix(s, cred))
            }
        }
    }
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A short session id, unique in this process and across restarts in practice.
fn session_id() -> String {
    let n = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let boot = crate::clock::unix_seconds() & 0xffff;
    format!("{boot:04x}{n:06x}")
}
/// Accepts on one session thread's socket of a listener until `accepting`
/// is cancelled; each session runs on this thread.
pub(super) async fn accept_loop(
    listener: Socket,
    rx: watch::Receiver<Arc<ListenerRuntime>>,
    accepting: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
    services: Arc<Services>,
) {
    // This thread's own node of the token: its sessions wait on it without
    // contending with other threads' sessions for the shared one's lock.
    let stop = stop.child_token();
    // While out of descriptors every accept fails: say so once a second.
    let mut failing_since: Option<(std::time::Instant, u64)> = None;
    loop {
        let accepted = tokio::select! {
            biased; // after SIGTERM, accept nothing more
            _ = accepting.cancelled() => return,
            r = listener.accept() => r,
        };
        let accepted = match accepted {
            Ok(a) => {
                if let Some((_, failures)) = failing_since.take() {
                    tracing::info!(failures, "accepting again");
                }
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin. The
                // connection waits in the backlog until a session ends.
                let now = crate::clock::now();
                match &mut failing_since {
                    Some((last, failures)) if now.duration_since(*last).as_secs() < 1 => {
                        *failures += 1;
                    }
                    _ => {
                        let failures = failing_since.map_or(1, |(_, n)| n + 1);
                        tracing::error!(error = %e, failures, "accept failed; retrying every 50 ms");
                        failing_since = Some((now, failures));
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let rt = rx.borrow().clone();
        let protect = current(&services.protect);
        let client = match &accepted {
            Accepted::Tcp(_, peer) => Client::Tcp(*peer),
            Accepted::Unix(_, cred) => Client::Unix(*cred),
        };
        let too_fast = match &accepted {
            Accepted::Tcp(_, peer) => !protect.allow_connection(ClientAddr::new(*peer)),
            Accepted::Unix(..) => false,
        };
        if too_fast {
            rt.metrics.refused_connection_rate.increment(1);
            let host = rt.session.hostname.clone();
            let span = tracing::error_span!("session", listener = %rt.cfg.name, %client);
            tokio::spawn(
                async move { refuse(accepted, &Failure::ConnectionRate, &host).await }
                    .instrument(span),
            );
            continue;
        }
        // A Unix socket's client takes one of its user's sessions first.
        let user_session = match &accepted {
            Accepted::Unix(_, cred) => {
                match rt
                    .per_user
                    .enter(cred.uid, rt.cfg.max_sessions_per_user.get())
                {
                    Some(s) => Some(s),
                    None => {
                        rt.metrics.refused_user_sessions.increment(1);
                        let f = Failure::TooManyUserSessions(rt.cfg.max_sessions_per_user.get());
                        let host = rt.session.hostname.clone();
                        let span =
                            tracing::error_span!("session", listener = %rt.cfg.name, %client);
                        tokio::spawn(
                            async move { refuse(accepted, &f, &host).await }.instrument(span),
                        );
                        continue;
                    }
                }
            }
            Accepted::Tcp(..) => None,
        };
        let permit = rt.sessions.clone().try_acquire_owned().ok();
        if permit.is_none() {
            rt.metrics.refused_max_sessions.increment(1);
        } else {
            rt.metrics.accepted.increment(1);
        }
        // At the highest level so that it is never filtered out: a warning
        // logged with MAILBRAKE_LOG=warn still names its session and client.
        let span = tracing::error_span!(
            "session",
            id = %session_id(),
            listener = %rt.cfg.name,
            %client,
            sender = tracing::field::Empty,
            tls = tracing::field::Empty
        );
        let (limiter, fleet) = (services.limiter.clone(), services.fleet.clone());
        let env = DriverEnv {
            server_tls: rt.server_tls.clone(),
            upstream_tls: None,
            tls_handshake: rt.tls_handshake,
            write_timeout: rt.session.timeouts.client_command,
            stop: stop.clone(),
            metrics: rt.metrics.clone(),
        };
        tracker.spawn(
            async move {
                let _permit = match permit {
                    Some(p) => p,
                    None => {
                        let max = rt.cfg.max_sessions.get();
                        let f = Failure::TooManySessions(max);
                        refuse(accepted, &f, &rt.session.hostname).await;
                        return;
                    }
                };
                let _user_session = user_session;
                let started = crate::clock::now();
                let (active, metrics) = (rt.active.clone(), rt.metrics.clone());
                active.fetch_add(1, Ordering::Relaxed);
                let shared = connection::Shared {
                    rt,
                    env,
                    limiter,
                    protect,
                    fleet,
                };
                match accepted {
                    Accepted::Tcp(stream, peer) => {
                        connection::serve_tcp(stream, peer, shared).await
                    }
                    Accepted::Unix(stream, cred) => {
                        connection::serve_unix(stream, cred, shared).await
                    }
                }
                active.fetch_sub(1, Ordering::Relaxed);
                metrics
                    .session_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            .instrument(span),
        );
    }
}

/// Writes a failure's reply to a connection not yet served, and closes.
async fn refuse(accepted: Accepted, failure: &Failure, host: &str) {
    match accepted {
        Accepted::Tcp(stream, _) => refuse_on(stream, failure, host).await,
        Accepted::Unix(stream, _) => refuse_on(stream, failure, host).await,
    }
}

/// Writes a failure's reply and closes.
pub(super) async fn refuse_on<S: AsyncWrite + Unpin>(mut stream: S, failure: &Failure, host: &str) {
    tracing::warn!(fault = %failure.fault(), "{failure}");
    if let Some(reply) = failure.reply(host) {
        let _ = stream.write_all(&reply).await;
    }
    let _ = stream.shutdown().await;
}
