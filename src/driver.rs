//! The async driver of one session: reads both legs, feeds the pure
//! [`Session`], and carries out its actions. This is the only place where a
//! session meets sockets, TLS handshakes, timers and the clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::leg::Leg;
use crate::metrics as m;
use crate::session::{Action, Failure, Mechanism, RcptCheck, Session, TxEvent, Username, Verdict};

/// Read buffers per leg: small while a session idles (thousands may be
/// open), grown while data streams (a full read doubles it), shrunk back
/// when reads come in small again.
const READ_BUF_MIN: usize = 1024;
const READ_BUF_MAX: usize = 64 * 1024;

/// A read buffer that follows the traffic.
struct ReadBuf(Vec<u8>);

impl ReadBuf {
    fn new() -> Self {
        ReadBuf(vec![0; READ_BUF_MIN])
    }

    /// After a read of `n` bytes: grow when it filled the buffer, shrink when
    /// it used little of a grown one.
    fn fit(&mut self, n: usize) {
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

/// The clock seam: the only clock read on a session's path.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
    let (mut to_client, mut to_upstream) = (0u64, 0u64);
    run(
        session,
        client,
        upstream,
        policy,
        env,
        &mut to_client,
        &mut to_upstream,
    )
    .await;
    env.metrics.bytes_to_client.increment(to_client);
    env.metrics.bytes_to_upstream.increment(to_upstream);
}

async fn run<C, U>(
    session: &mut Session,
    client: &mut Leg<C>,
    upstream: &mut Leg<U>,
    policy: &mut dyn SessionPolicy,
    env: &DriverEnv,
    to_client: &mut u64,
    to_upstream: &mut u64,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut cbuf = ReadBuf::new();
    let mut ubuf = ReadBuf::new();
    let mut pending: VecDeque<Action> = VecDeque::new();
    // One timer for the whole session. It is moved earlier when the session's
    // deadline comes sooner, and otherwise left to fire and be re-armed: most
    // events push the deadline later, and resetting a timer on each of them
    // costs more than an early wake-up (the session ignores one that comes
    // before its deadline).
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let timer = tokio::time::sleep_until(far());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // Registered once: every session shares the token, so a fresh wait on
    // each turn of the loop would contend for its lock.
    let stopped = env.stop.cancelled();
    tokio::pin!(stopped);
    let mut stopping = false;
    let mut out = Outbox::default();
    loop {
        // Carry out every action, in order. Consecutive bytes for a leg are
        // gathered and written in one go (one system call, one TCP segment)
        // before any action that must come after them.
        while let Some(action) = pending.pop_front() {
            match action {
                Action::ToClient(bytes) => {
                    *to_client += bytes.len() as u64;
                    out.client.push(bytes);
                }
                Action::ToUpstream(bytes) => {
                    *to_upstream += bytes.len() as u64;
                    out.upstream.push(bytes);
                }
                // The policy's part needs nothing written first.
                policy_action @ (Action::CheckRcpt(_)
                | Action::Tx(_)
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
        let deadline = session.deadline();
        if deadline.is_some_and(|d| armed.is_none_or(|a| d < a)) {
            armed = deadline;
            timer
                .as_mut()
                .reset(deadline.map_or_else(far, tokio::time::Instant::from_std));
        }
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
            _ = &mut timer => {
                pending.extend(session.on_timeout(now()));
                // Re-arm from the session's deadline now, whether this was
                // it or an earlier one that has since moved.
                armed = session.deadline();
                timer
                    .as_mut()
                    .reset(armed.map_or_else(far, tokio::time::Instant::from_std));
            }
            _ = &mut stopped, if !stopping => {
                stopping = true;
                pending.extend(session.on_failure(Failure::ShuttingDown));
            }
        }
    }
}

/// Bytes gathered for each leg during one turn of the driver's loop.
#[derive(Default)]
struct Outbox {
    client: Gathered,
    upstream: Gathered,
}

/// What became of an [`Outbox::send`].
enum Sent {
    Ok,
    /// The client does not take its replies: the session ends.
    ClientGone,
    /// The upstream cannot be written to: the session hears of it as an EOF.
    UpstreamGone,
}

impl Outbox {
    /// Writes and flushes what was gathered, client first.
    async fn send<C, U>(
        &mut self,
        client: &mut Leg<C>,
        upstream: &mut Leg<U>,
        env: &DriverEnv,
    ) -> Sent
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(bytes) = self.client.take()
            && let Err(e) = bounded(write_flush(client, &bytes), env.write_timeout).await
        {
            tracing::info!(error = %e, "client not reading; closing");
            return Sent::ClientGone;
        }
        if let Some(bytes) = self.upstream.take()
            && let Err(e) = bounded(write_flush(upstream, &bytes), env.write_timeout).await
        {
            tracing::debug!(error = %e, "upstream write failed");
            return Sent::UpstreamGone;
        }
        Sent::Ok
    }
}

/// Byte strings for one leg, joined without a copy when there is only one
/// (the usual case), and holding no memory once taken.
#[derive(Default)]
struct Gathered(Option<Vec<u8>>);

impl Gathered {
    fn push(&mut self, bytes: Vec<u8>) {
        match &mut self.0 {
            None => self.0 = Some(bytes),
            Some(buf) => buf.extend_from_slice(&bytes),
        }
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        self.0.take()
    }
}

async fn write_flush<T: AsyncWrite + Unpin>(leg: &mut T, bytes: &[u8]) -> std::io::Result<()> {
    leg.write_all(bytes).await?;
    leg.flush().await
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
        Action::CheckRcpt(check) => {
            let verdict = policy.check_rcpt(&check).await;
            pending.extend(session.on_rcpt_verdict(verdict, now()));
        }
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
async fn bounded<F: std::future::Future<Output = std::io::Result<()>>>(
    fut: F,
    limit: Duration,
) -> std::io::Result<()> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(r) = first {
        return r;
    }
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress within {limit:?}"),
        ))
    })
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
mod tests {
    use super::*;

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
}
