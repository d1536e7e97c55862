//! Listeners and the accept loop: session limits, the inbound PROXY header
//! from trusted peers, implicit TLS, dialling the upstream, then the driver.
//! Also reload (SIGHUP: new settings for new sessions, live ones untouched)
//! and drain (SIGTERM: stop accepting, let sessions finish, then close them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ClientTls, Config, ListenerConfig, UpstreamTarget, UpstreamTls};
use crate::driver::{self, DriverEnv};
use crate::leg::Leg;
use crate::limits::enforce::Enforcer;
use crate::limits::shared::FleetLink;
use crate::limits::vhosts::Vhosts;
use crate::limits::{Limiter, Policy, SystemClock};
use crate::metrics as m;
use crate::protect::Protect;
use crate::proxy_protocol::{self, Inbound};
use crate::session::{Failure, Session, SessionConfig};
use crate::upstream::{self, ClientAddr, DialledAddr};

/// Everything a listener needs for one session, rebuilt on reload.
pub struct ListenerRuntime {
    pub cfg: ListenerConfig,
    pub session: Arc<SessionConfig>,
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    pub sessions: Arc<Semaphore>,
    pub tls_handshake: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    /// Every listener's bind address, for loop detection.
    pub binds: Arc<Vec<SocketAddr>>,
    pub vhosts: Arc<Vhosts>,
    /// Sessions in progress (kept across reloads, read by the metrics).
    pub active: Arc<AtomicI64>,
    pub metrics: Arc<m::ListenerMetrics>,
}

impl ListenerRuntime {
    /// Loads certificates and builds the TLS configurations; errors name the
    /// listener and the file.
    pub fn build(config: &Config, l: &ListenerConfig) -> Result<Self, String> {
        let server_tls = match l.tls {
            ClientTls::None => None,
            _ => Some(
                crate::tls::server_config(&l.certs)
                    .map_err(|e| format!("listener[{}]: {e}", l.name))?,
            ),
        };
        let client_tls = match l.upstream_tls {
            UpstreamTls::None => None,
            _ => Some(
                crate::tls::client_config(l.upstream_tls_verify, l.upstream_ca.as_deref())
                    .map_err(|e| format!("listener[{}]: {e}", l.name))?,
            ),
        };
        Ok(ListenerRuntime {
            cfg: l.clone(),
            session: Arc::new(SessionConfig {
                hostname: config.server.hostname.clone(),
                client_tls: l.tls,
                allow_plaintext_auth: l.allow_plaintext_auth,
                upstream_tls: l.upstream_tls,
                xclient: l.xclient,
                limits: config.session.clone(),
                timeouts: config.timeouts,
            }),
            server_tls,
            client_tls,
            sessions: Arc::new(Semaphore::new(l.max_sessions.get())),
            tls_handshake: config.timeouts.tls_handshake,
            connect_timeout: config.timeouts.connect,
            binds: Arc::new(config.listeners.iter().map(|l| l.bind).collect()),
            vhosts: Arc::new(Vhosts::new(&config.vhosts)),
            active: Arc::new(AtomicI64::new(0)),
            metrics: Arc::new(m::ListenerMetrics::new(&l.name)),
        })
    }
}

/// Builds every listener's runtime, collecting all errors.
pub fn build_all(config: &Config) -> Result<Vec<ListenerRuntime>, Vec<String>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for l in &config.listeners {
        match ListenerRuntime::build(config, l) {
            Ok(rt) => ok.push(rt),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

/// A running listener's handle for reload.
struct Running {
    name: String,
    bind: SocketAddr,
    tx: watch::Sender<Arc<ListenerRuntime>>,
}

/// Runs mailbrake until SIGTERM/SIGINT; SIGHUP reloads `path`.
pub async fn run(mut config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Before anything says "listening": a signal sent then must not kill us.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    raise_open_files(&config);
    // The recorder first: listeners take their metric handles from it.
    let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    let handle = crate::metrics::install(&names).map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let runtimes = build_all(&config).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    let accepting = CancellationToken::new();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut running = Vec::new();
    let limiter = Arc::new(Limiter::new(
        Policy::new(&config.limits),
        Box::new(SystemClock),
    ));
    let protect = Arc::new(std::sync::RwLock::new(Arc::new(Protect::new(
        &config.protect,
    ))));
    let pruner = {
        let protect = protect.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                current(&protect).prune();
            }
        })
    };
    let fleet = config
        .state
        .fleet
        .as_ref()
        .map(|f| FleetLink::start(f, limiter.policy().longest));
    let keeper = crate::state::start(
        limiter.clone(),
        &config.state.dir,
        config.state.max_unsaved_changes,
    )
    .map_err(|e| anyhow::anyhow!("state.dir {}: {e}", config.state.dir.display()))?;
    let admin_stop = CancellationToken::new();
    let admin = Arc::new(crate::admin::AdminState {
        handle,
        limiter: limiter.clone(),
        active: runtimes
            .iter()
            .map(|rt| (rt.cfg.name.clone(), rt.active.clone()))
            .collect(),
        top: config.admin.metrics_top_senders.get(),
    });
    crate::admin::refresh_once(&admin.limiter, &admin.active, admin.top);
    let (reload_tx, mut reload_requests) = tokio::sync::mpsc::channel(4);
    let api = Arc::new(crate::admin::api::Api {
        limiter: limiter.clone(),
        store: std::sync::Mutex::new(
            crate::limits::store::Store::open(&config.state.dir)
                .map_err(|e| anyhow::anyhow!("state.dir {}: {e}", config.state.dir.display()))?,
        ),
        token: Arc::new(admin_token(&config)?),
        started: std::time::Instant::now(),
        listeners: admin.active.clone(),
        binds: config
            .listeners
            .iter()
            .map(|l| l.bind.to_string())
            .collect(),
        reload: reload_tx,
        fleet: fleet.clone(),
    });
    let admin_listener = TcpListener::bind(config.admin.bind)
        .await
        .map_err(|e| anyhow::anyhow!("admin.bind {}: {e}", config.admin.bind))?;
    let bound = crate::admin::serve(admin_listener, admin.clone(), api, admin_stop.clone())
        .await
        .map_err(|e| anyhow::anyhow!("admin.bind {}: {e}", config.admin.bind))?;
    tracing::info!(bind = %bound, "admin endpoint ready: /metrics");
    tokio::spawn(crate::admin::refresh(admin, admin_stop.clone()));
    let workers = crate::workers::Workers::start(config.server.threads.get())?;
    tracing::info!(
        threads = config.server.threads.get(),
        "session threads started"
    );
    let services = Arc::new(Services {
        limiter: limiter.clone(),
        protect: protect.clone(),
        fleet: fleet.clone(),
    });
    for rt in runtimes {
        let group =
            crate::listen::bind_group(rt.cfg.bind, workers.handles().len()).map_err(|e| {
                anyhow::anyhow!(
                    "listener[{}]: cannot bind {}: {e}",
                    rt.cfg.name,
                    rt.cfg.bind
                )
            })?;
        tracing::info!(listener = %rt.cfg.name, bind = %rt.cfg.bind, tls = %rt.cfg.tls, upstream = %rt.cfg.upstream, "listening");
        let (tx, rx) = watch::channel(Arc::new(rt));
        running.push(Running {
            name: rx.borrow().cfg.name.clone(),
            bind: rx.borrow().cfg.bind,
            tx,
        });
        // Each session thread accepts on its own socket of the group.
        for (socket, thread) in group.into_iter().zip(workers.handles()) {
            let (rx, accepting, stop) = (rx.clone(), accepting.clone(), stop.clone());
            let (tracker, services, name) = (
                tracker.clone(),
                services.clone(),
                rx.borrow().cfg.name.clone(),
            );
            thread.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(l) => accept_loop(l, rx, accepting, stop, tracker, services).await,
                    Err(e) => {
                        tracing::error!(listener = %name, "cannot accept on a session thread: {e}")
                    }
                }
            });
        }
    }

    // SIGHUP and the admin API's reload do the same.
    let apply_reload = |config: &mut Config| -> Result<(), String> {
        let reloaded = reload(&path, &running);
        let result = if reloaded.is_ok() {
            "success"
        } else {
            "failure"
        };
        metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => result).increment(1);
        let new = reloaded?;
        limiter.set_policy(&Policy::new(&new.limits));
        if new.protect != config.protect {
            *protect.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(Protect::new(&new.protect));
            config.protect = new.protect.clone();
        }
        if new.server.log_format != config.server.log_format {
            tracing::warn!("log_format changed: needs a restart");
        }
        if new.admin.bind != config.admin.bind {
            tracing::warn!("admin.bind changed: needs a restart");
        }
        if new.admin.token_file != config.admin.token_file
            || new.admin.token_group != config.admin.token_group
        {
            // The token in force stays the one read at start.
            tracing::warn!("admin.token_file or admin.token_group changed: needs a restart");
        }
        if new.server.threads != config.server.threads {
            tracing::warn!("server.threads changed: needs a restart");
        }
        config.server.drain_timeout = new.server.drain_timeout;
        Ok(())
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = apply_reload(&mut config);
            }
            Some(reply) = reload_requests.recv() => {
                let _ = reply.send(apply_reload(&mut config));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    accepting.cancel();
    tracker.close();
    let drain = config.server.drain_timeout;
    tracing::info!(
        sessions = tracker.len(),
        ?drain,
        "stopped accepting; draining sessions"
    );
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "drain timeout: closing remaining sessions"
        );
        stop.cancel();
        tracker.wait().await;
    }
    pruner.abort();
    admin_stop.cancel();
    keeper.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Raises the open-file limit to its hard maximum (each session holds two
/// descriptors, each listener one per session thread), and says so when even
/// that is below what `max_sessions` allows.
fn raise_open_files(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let threads = config.server.threads.get() as u64;
    let needed: u64 = config
        .listeners
        .iter()
        .map(|l| 2 * l.max_sessions.get() as u64 + threads)
        .sum::<u64>()
        + 256;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                tracing::warn!(soft, hard, "cannot raise the open-file limit: {e}");
            }
            let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
            if now < needed {
                tracing::warn!(
                    open_files = now,
                    needed,
                    "the open-file limit is below what max_sessions allows; raise it (LimitNOFILE in the systemd unit)"
                );
            } else {
                tracing::info!(open_files = now, "open-file limit");
            }
        }
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// The admin API's token (see [`crate::admin::token`]); logs where it is.
fn admin_token(config: &Config) -> anyhow::Result<crate::admin::token::AdminToken> {
    use crate::admin::token::{AdminToken, TOKEN_ENV};
    let env = std::env::var(TOKEN_ENV).ok();
    let token = AdminToken::establish(&config.admin, &config.state.dir, env.as_deref())?;
    tracing::info!(token = %token.origin(), "admin API requires a bearer token");
    Ok(token)
}

/// SIGHUP: reads the file again; new settings and certificates apply to new
/// sessions. A listener added, removed or re-bound needs a restart, and so
/// does a new log format. Returns the new configuration if it was applied.
fn reload(path: &std::path::Path, running: &[Running]) -> Result<Config, String> {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            return Err(e.to_string());
        }
    };
    let runtimes = match build_all(&config) {
        Ok(r) => r,
        Err(errors) => {
            let text = errors.join("; ");
            tracing::error!("reload failed, keeping the running configuration: {text}");
            return Err(text);
        }
    };
    for mut rt in runtimes {
        match running.iter().find(|r| r.name == rt.cfg.name) {
            Some(r) if r.bind == rt.cfg.bind => {
                // Keep counting live sessions against the same semaphore.
                let old = r.tx.borrow().clone();
                let (was, now) = (old.cfg.max_sessions.get(), rt.cfg.max_sessions.get());
                if now > was {
                    old.sessions.add_permits(now - was);
                } else {
                    // Permits held by live sessions are taken back as they end.
                    let owed = (was - now) - old.sessions.forget_permits(was - now);
                    if owed > 0 {
                        let sessions = old.sessions.clone();
                        tokio::spawn(async move {
                            if let Ok(p) = sessions
                                .acquire_many_owned(u32::try_from(owed).unwrap_or(u32::MAX))
                                .await
                            {
                                p.forget();
                            }
                        });
                    }
                }
                rt.sessions = old.sessions.clone();
                rt.active = old.active.clone();
                let _ = r.tx.send(Arc::new(rt));
            }
            Some(r) => {
                tracing::warn!(listener = %r.name, old = %r.bind, new = %rt.cfg.bind, "bind address changed: needs a restart")
            }
            None => tracing::warn!(listener = %rt.cfg.name, "new listener: needs a restart"),
        }
    }
    for r in running {
        if !config.listeners.iter().any(|l| l.name == r.name) {
            tracing::warn!(listener = %r.name, "listener removed from the file: needs a restart");
        }
    }
    tracing::info!(path = %path.display(), "configuration reloaded");
    Ok(config)
}

/// What every session shares, whichever listener accepted it.
struct Services {
    limiter: Arc<Limiter>,
    protect: Shared<Protect>,
    fleet: Option<Arc<FleetLink>>,
}

/// A value replaced on reload and read by every new session.
type Shared<T> = Arc<std::sync::RwLock<Arc<T>>>;

fn current<T>(shared: &Shared<T>) -> Arc<T> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// A short session id, unique in this process and across restarts in practice.
fn session_id() -> String {
    let n = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() & 0xffff)
        .unwrap_or(0);
    format!("{boot:04x}{n:06x}")
}

async fn accept_loop(
    listener: TcpListener,
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
        let (stream, peer) = match accepted {
            Ok(a) => {
                if let Some((_, failures)) = failing_since.take() {
                    tracing::info!(failures, "accepting again");
                }
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin. The
                // connection waits in the backlog until a session ends.
                let now = std::time::Instant::now();
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
        if !protect.allow_connection(peer.ip()) {
            rt.metrics.refused_connection_rate.increment(1);
            let host = rt.session.hostname.clone();
            let span = tracing::error_span!("session", listener = %rt.cfg.name, client = %peer);
            tokio::spawn(
                async move { refuse(stream, &Failure::ConnectionRate, &host).await }
                    .instrument(span),
            );
            continue;
        }
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
            client = %peer,
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
                        refuse(stream, &Failure::TooManySessions(max), &rt.session.hostname).await;
                        return;
                    }
                };
                let started = tokio::time::Instant::now();
                let (active, metrics) = (rt.active.clone(), rt.metrics.clone());
                active.fetch_add(1, Ordering::Relaxed);
                serve(stream, peer, rt, env, limiter, protect, fleet).await;
                active.fetch_sub(1, Ordering::Relaxed);
                metrics
                    .session_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            .instrument(span),
        );
    }
}

/// Writes a failure's reply and closes.
async fn refuse(mut stream: TcpStream, failure: &Failure, host: &str) {
    tracing::warn!(fault = %failure.fault(), "{failure}");
    if let Some(reply) = failure.reply(host) {
        let _ = stream.write_all(&reply).await;
    }
    let _ = stream.shutdown().await;
}

/// Reads a PROXY header from a trusted peer. Returns the client it names and
/// any bytes read past the header (there should be none: the client waits
/// for the greeting).
async fn read_proxy_header(
    stream: &mut TcpStream,
    limit: std::time::Duration,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), String> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy_protocol::parse_inbound(&buf) {
                Ok(Inbound::Incomplete) => {}
                Ok(Inbound::Proxied {
                    source,
                    destination,
                    consumed,
                }) => return Ok((Some(source), Some(destination), consumed)),
                Ok(Inbound::Local { consumed }) => return Ok((None, None, consumed)),
                Err(e) => return Err(format!("bad PROXY header from a trusted peer: {e}")),
            }
            let mut byte = [0u8; 1];
            // One byte at a time: nothing after the header may be consumed.
            match stream.read(&mut byte).await {
                Ok(0) => return Err("closed before the PROXY header ended".into()),
                Ok(_) => buf.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok((src, dst, consumed))) => {
            debug_assert_eq!(consumed, buf.len());
            Ok((src, dst))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no PROXY header within {limit:?}")),
    }
}

/// One accepted connection, from first byte to close.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    mut env: DriverEnv,
    limiter: Arc<Limiter>,
    protect: Arc<Protect>,
    fleet: Option<Arc<FleetLink>>,
) {
    let started = tokio::time::Instant::now();
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut client = ClientAddr(crate::orig_dst::normalize(peer));
    let mut dialled = DialledAddr(local);
    let mut proxied = false;
    if proxy_protocol::is_trusted(peer.ip(), &rt.cfg.proxy_protocol_trusted) {
        match read_proxy_header(&mut stream, rt.tls_handshake).await {
            Ok((src, dst)) => {
                if let Some(src) = src {
                    client = ClientAddr(src);
                    proxied = true;
                    tracing::info!(proxied_client = %src, "PROXY header accepted");
                }
                if let Some(dst) = dst {
                    dialled = DialledAddr(dst);
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        }
    }
    let dest = match upstream::destination(&rt.cfg.upstream, &stream, peer) {
        Ok(d) => d,
        Err(f) => {
            rt.metrics.upstream_unreachable.increment(1);
            return refuse(stream, &f, &rt.session.hostname).await;
        }
    };
    if let upstream::Destination::Addr(a) = &dest
        && rt.cfg.upstream == UpstreamTarget::OriginalDestination
    {
        dialled = DialledAddr(*a);
    }

    let transparent = rt.cfg.upstream == UpstreamTarget::OriginalDestination;
    let owner = if !proxied && (transparent || rt.vhosts.by_uid()) {
        socket_owner(client, dialled)
    } else {
        None
    };
    if transparent && owner == Some(nix::unistd::getuid().as_raw()) {
        // mailbrake's own outgoing connection came back through the REDIRECT.
        let f = Failure::UpstreamLoop(format!(
            "a connection from mailbrake's own user (uid {}) was redirected to it; \
             exclude that user from the REDIRECT rule (config/iptables.sh)",
            owner.unwrap_or_default()
        ));
        rt.metrics.upstream_loop.increment(1);
        return refuse(stream, &f, &rt.session.hostname).await;
    }
    let vhost = rt.vhosts.find(client.0.ip(), owner).map(str::to_owned);
    if owner.is_some() || vhost.is_some() {
        tracing::debug!(?owner, ?vhost, "sender lookup");
    }
    let mut policy = Enforcer::new(limiter, protect, client.0.ip(), vhost, fleet);

    let mut client_leg = Leg::Plain(stream);
    if rt.cfg.tls == ClientTls::Implicit {
        let Some(cfg) = rt.server_tls.clone() else {
            return;
        };
        if let Err(e) = driver::secure_client(&mut client_leg, cfg, rt.tls_handshake).await {
            return tracing::info!(error = %e, "client TLS handshake failed");
        }
    }
    tracing::info!(upstream = %dest, client = %client.0, "session start");

    let host = rt.session.hostname.clone();
    let tls_name = match &rt.client_tls {
        None => None,
        Some(cfg) => {
            let name = rt
                .cfg
                .upstream_tls_name
                .clone()
                .unwrap_or_else(|| match &dest {
                    upstream::Destination::Host { host, .. } => host.clone(),
                    upstream::Destination::Addr(a) => a.ip().to_string(),
                });
            match crate::tls::server_name(&name) {
                Ok(n) => Some((cfg.clone(), n)),
                Err(e) => {
                    let f = Failure::UpstreamTls(e.to_string());
                    return finish_early(client_leg, &f, &host, &rt.metrics).await;
                }
            }
        }
    };
    env.upstream_tls = tls_name;

    let dialling = tokio::time::Instant::now();
    let mut up = match upstream::connect(&dest, local, &rt.binds, rt.connect_timeout).await {
        Ok(s) => s,
        Err(f) => return finish_early(client_leg, &f, &host, &rt.metrics).await,
    };
    rt.metrics
        .connect_seconds
        .record(dialling.elapsed().as_secs_f64());
    if let Some(version) = rt.cfg.upstream_proxy_protocol
        && let Err(f) = upstream::send_proxy_header(&mut up, version, client, dialled).await
    {
        return finish_early(client_leg, &f, &host, &rt.metrics).await;
    }
    let mut up_leg = Leg::Plain(up);
    if rt.cfg.upstream_tls == UpstreamTls::Implicit {
        let Some((cfg, name)) = env.upstream_tls.clone() else {
            return;
        };
        if let Err(e) = driver::secure_upstream(&mut up_leg, cfg, name, rt.tls_handshake).await {
            let f = Failure::UpstreamTls(e);
            return finish_early(client_leg, &f, &host, &rt.metrics).await;
        }
    }
    let now = tokio::time::Instant::now().into_std();
    let mut session = Session::new(
        rt.session.clone(),
        client.0,
        client_leg.is_tls(),
        up_leg.is_tls(),
        now,
    );
    driver::drive(
        &mut session,
        &mut client_leg,
        &mut up_leg,
        &mut policy,
        &env,
    )
    .await;
    tracing::info!(
        duration_ms = started.elapsed().as_millis() as u64,
        user = %session.user().map_or("", |u| u.as_str()),
        "session end"
    );
}

/// The Unix user owning the client's end of a local connection.
fn socket_owner(client: ClientAddr, dialled: DialledAddr) -> Option<u32> {
    match crate::owner::socket_owner(client.0, dialled.0) {
        Ok(uid) => Some(uid),
        Err(e) => {
            tracing::debug!(error = %e, "no local owner for this connection");
            None
        }
    }
}

/// The upstream could not be reached: tell the client and close.
async fn finish_early(
    mut client: Leg<TcpStream>,
    failure: &Failure,
    host: &str,
    metrics: &m::ListenerMetrics,
) {
    tracing::warn!(fault = %failure.fault(), "{failure}");
    match failure {
        Failure::UpstreamLoop(_) => metrics.upstream_loop.increment(1),
        Failure::UpstreamTls(_) | Failure::UpstreamNoStartTls => metrics.upstream_tls.increment(1),
        Failure::OutOfFiles(_) => metrics.refused_out_of_files.increment(1),
        _ => metrics.upstream_unreachable.increment(1),
    }
    if let Some(reply) = failure.reply(host) {
        let _ = client.write_all(&reply).await;
        let _ = client.flush().await;
    }
    let _ = client.shutdown().await;
}
