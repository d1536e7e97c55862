//! The async driver of one session: reads both legs, feeds the pure
//! [`Session`], and carries out its actions. This is the only place where a
//! session meets sockets, TLS handshakes, timers and the clock.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::leg::Leg;
use crate::metrics as m;
use crate::session::{Action, Mechanism, RcptCheck, Session, TxEvent, Username, Verdict};

mod outbox;
mod wait;

use outbox::{Outbox, Sent};
use wait::Wakeups;

/// Read buffers per leg: small while a session idles (thousands may be
/// open), grown while data streams (a full read doubles it), shrunk back
/// when reads come in small again.
const READ_BUF_MIN: usize = 1024;
pub(crate) const READ_BUF_MAX: usize = 64 * 1024;

/// A read buffer that follows the traffic.
pub(crate) struct ReadBuf(pub(crate) Vec<u8>);

impl ReadBuf {
    fn new() -> Self {
        ReadBuf(vec![0; READ_BUF_MIN])
    }

    /// After a read of `n` bytes: grow when it filled the buffer, shrink when
    /// it used little of a grown one.
    pub(crate) fn fit(&mut self, n: usize) {
        let len = self.0.len();
        if n == len && len < READ_BUF_MAX {
            self.0.resize(len * 2, 0);
        } else if len > READ_BUF_MIN && n < len / 8 {
            self.0 = vec![0; READ_BUF_MIN];
        }
    }
}

/// Decides, per recipient, whether a RCPT goes upstream, and learns what
/// became of the recipients it accepted. One per session; the limits plug in
/// here.
pub trait SessionPolicy: Send {
    /// May wait (a shared limit in Redis); a local limit answers at once.
    fn check_rcpt<'a>(&'a mut self, check: &'a RcptCheck) -> Pending<'a, Verdict>;
    fn on_tx(&mut self, _event: TxEvent) {}
    /// Whether this client (and `user`, when known) may try AUTH now.
    fn check_auth(&mut self, _user: Option<&Username>) -> bool {
        true
    }
    fn on_auth(&mut self, _user: Option<&Username>, _mechanism: Mechanism, _ok: bool) {}
}

/// A policy answer that may have to wait.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the driver needs besides the two legs.
pub struct DriverEnv {
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub upstream_tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub tls_handshake: Duration,
    /// Longest wait for a peer to take bytes written to it (a client that
    /// never reads its replies must not hold a session forever).
    pub write_timeout: Duration,
    /// Cancelled when mailbrake stops waiting for sessions to finish.
    pub stop: CancellationToken,
    /// The listener's metric handles.
    pub metrics: Arc<m::ListenerMetrics>,
}

/// Runs `session` until it closes.
pub async fn drive<C, U>(
    session: &mut Session,
    client: &mut Leg<C>,
    upstream: &mut Leg<U>,
    policy: &mut dyn SessionPolicy,
    env: &DriverEnv,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Outbox::default();
    run(session, client, upstream, policy, env, &mut out).await;
    env.metrics.bytes_to_client.increment(out.to_client);
    env.metrics.bytes_to_upstream.increment(out.to_upstream);
}

async fn run<C, U>(
    session: &mut Session,
    client: &mut Leg<C>,
    upstream: &mut Leg<U>,
    policy: &mut dyn SessionPolicy,
    env: &DriverEnv,
    out: &mut Outbox,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut cbuf = ReadBuf::new();
    let mut ubuf = ReadBuf::new();
    let mut pending: VecDeque<Action> = VecDeque::new();
    let timer = tokio::time::sleep_until(wait::far());
    tokio::pin!(timer);
    // Registered once: every session shares the token, so a fresh wait on
    // each turn of the loop would contend for its lock.
    let stopped = env.stop.cancelled();
    tokio::pin!(stopped);
    let mut wake = Wakeups::new(timer, stopped);
    loop {
        // Carry out every action, in order. Consecutive bytes for a leg are
        // gathered and written in one go (one system call, one TCP segment)
        // before any action that must come after them.
        while let Some(action) = pending.pop_front() {
            let Some(action) = out.gather(action) else {
                continue;
            };
            match action {
                // The policy's part needs nothing written first.
                Action::CheckRcpt(check) => {
                    let legs = (&mut *client, &mut *upstream);
                    let bufs = (&mut cbuf, &mut ubuf);
                    let io = (&mut *out, &mut pending, env);
                    match wait::decide(check, session, legs, policy, &mut wake, bufs, io).await {
                        Some(actions) => pending.extend(actions),
                        None => return,
                    }
                }
                policy_action @ (Action::Tx(_)
                | Action::CheckAuth(_)
                | Action::AuthResult { .. }) => {
                    let go_on = act(
                        policy_action,
                        session,
                        client,
                        upstream,
                        policy,
                        env,
                        &mut pending,
                    );
                    if !go_on.await {
                        return;
                    }
                }
                other => {
                    match out.send(client, upstream, env).await {
                        Sent::Ok => {}
                        Sent::ClientGone => return,
                        Sent::UpstreamGone => pending.extend(session.on_upstream_eof(now())),
                    }
                    if !act(other, session, client, upstream, policy, env, &mut pending).await {
                        return;
                    }
                }
            }
        }
        match out.send(client, upstream, env).await {
            Sent::Ok => {}
            Sent::ClientGone => return,
            Sent::UpstreamGone => {
                pending.extend(session.on_upstream_eof(now()));
                continue;
            }
        }
        if session.is_closed() {
            return;
        }
        wake.arm(session);
        tokio::select! {
            r = client.read(&mut cbuf.0), if session.wants_client_bytes() => {
                pending.extend(match r {
                    Ok(0) | Err(_) => session.on_client_eof(now()),
                    Ok(n) => {
                        let actions = session.on_client_bytes(&cbuf.0[..n], now());
                        cbuf.fit(n);
                        actions
                    }
                });
            }
            r = upstream.read(&mut ubuf.0) => {
                pending.extend(match r {
                    Ok(0) | Err(_) => session.on_upstream_eof(now()),
                    Ok(n) => {
                        let actions = session.on_upstream_bytes(&ubuf.0[..n], now());
                        ubuf.fit(n);
                        actions
                    }
                });
            }
            w = wake.next() => pending.extend(wake.handle(w, session)),
        }
    }
}

/// Carries out one action other than writing bytes. False when the session
/// is over.
async fn act<C, U>(
    action: Action,
    session: &mut Session,
    client: &mut Leg<C>,
    upstream: &mut Leg<U>,
    policy: &mut dyn SessionPolicy,
    env: &DriverEnv,
    pending: &mut VecDeque<Action>,
) -> bool
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match action {
        Action::ToClient(_) | Action::ToUpstream(_) => unreachable!("gathered by the caller"),
        Action::StartClientTls => {
            let result = match &env.server_tls {
                Some(cfg) => secure_client(client, cfg.clone(), env.tls_handshake).await,
                None => Err("no certificate configured".to_string()),
            };
            pending.extend(session.on_client_tls(result, now()));
        }
        Action::StartUpstreamTls => {
            let result = match &env.upstream_tls {
                Some((cfg, name)) => {
                    secure_upstream(upstream, cfg.clone(), name.clone(), env.tls_handshake).await
                }
                None => Err("upstream TLS not configured".to_string()),
            };
            pending.extend(session.on_upstream_tls(result, now()));
        }
        Action::CheckRcpt(_) => unreachable!("decided by the caller"),
        Action::Tx(event) => {
            if let TxEvent::End {
                delivered,
                message: info,
            } = event
            {
                let metrics = &env.metrics;
                match delivered {
                    true => metrics.messages_accepted.increment(1),
                    false => metrics.messages_refused.increment(1),
                }
                metrics
                    .end_of_data_seconds
                    .record(info.waited.as_secs_f64());
            }
            policy.on_tx(event);
        }
        Action::CheckAuth(user) => {
            let allowed = policy.check_auth(user.as_ref());
            pending.extend(session.on_auth_verdict(allowed, now()));
        }
        Action::AuthResult {
            user,
            mechanism,
            ok,
        } => policy.on_auth(user.as_ref(), mechanism, ok),
        Action::CloseClient => {
            let _ = client.flush().await;
            let _ = client.shutdown().await;
        }
        Action::Close => {
            let _ = client.flush().await;
            let _ = client.shutdown().await;
            // The upstream gets nothing more, not even a TLS close_notify:
            // an unfinished message stays unfinished.
            return false;
        }
    }
    true
}

/// An I/O step that must finish within `limit`. Most writes finish at once;
/// the clock is started only for one that has to wait.
pub(crate) async fn bounded<F: std::future::Future<Output = std::io::Result<()>>>(
    fut: F,
    limit: Duration,
) -> std::io::Result<()> {
    let mut fut = std::pin::pin!(fut);
    if let Some(r) = ready_now(&mut fut).await {
        return r;
    }
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress within {limit:?}"),
        ))
    })
}

/// Polls `fut` once: its output if it is ready without waiting.
pub(crate) async fn ready_now<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut *fut).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// TLS as server on the client leg (implicit TLS, or after STARTTLS) within
/// `limit`: counted, and noted in the session's span and log.
pub async fn secure_client<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Leg<C>,
    cfg: Arc<rustls::ServerConfig>,
    limit: Duration,
) -> Result<(), String> {
    let r = handshake(Box::pin(client.accept_tls(cfg)), limit).await;
    m::tls_handshake("client", r.as_ref().ok().map(|i| i.version));
    r.map(|info| {
        tracing::Span::current().record("tls", info.version);
        tracing::info!(version = info.version, sni = ?info.sni, "client TLS established");
    })
}

/// TLS as client on the upstream leg (implicit TLS, or after STARTTLS)
/// within `limit`: counted and logged.
pub async fn secure_upstream<U: AsyncRead + AsyncWrite + Unpin>(
    upstream: &mut Leg<U>,
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    limit: Duration,
) -> Result<(), String> {
    let r = handshake(Box::pin(upstream.connect_tls(cfg, name)), limit).await;
    m::tls_handshake("upstream", r.as_ref().ok().map(|i| i.version));
    r.map(|info| tracing::info!(version = info.version, "upstream TLS established"))
}

async fn handshake<F, T>(fut: F, limit: Duration) -> Result<T, String>
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {limit:?}")),
    }
}

#[cfg(test)]
mod tests;
