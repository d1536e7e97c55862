//! Running mailbrake: the listeners and what their sessions share, reload
//! (SIGHUP: new settings for new sessions, live ones untouched) and drain
//! (SIGTERM: stop accepting, remove the Unix sockets' files, let sessions
//! finish, then close them).
//!
//! - `server/accept.rs`: each session thread's accept loop, on a TCP or a
//!   Unix socket: connection rate and session limits, session ids, a Unix
//!   client's peer credentials, backing off while accepts fail.
//! - `server/per_user.rs`: a Unix socket listener's sessions per Unix user.
//! - `server/connection.rs`: one accepted connection: the inbound PROXY
//!   header from trusted peers (TCP), who the client is
//!   ([`crate::identity`]), implicit TLS, dialling the upstream, then the
//!   driver.

mod accept;
mod connection;
mod per_user;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Bind, ClientTls, Config, ListenerConfig, UpstreamTls};
use crate::identity::Resolver;
use crate::limits::shared::FleetLink;
use crate::limits::{Limiter, Policy, SystemClock};
use crate::metrics as m;
use crate::protect::Protect;
use crate::session::SessionConfig;

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
    /// How this listener's clients are recognised.
    pub identity: Resolver,
    /// Sessions in progress (kept across reloads, read by the metrics).
    pub active: Arc<AtomicI64>,
    /// A Unix socket's sessions per user (kept across reloads).
    pub per_user: Arc<per_user::UserSessions>,
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
            binds: Arc::new(
                config
                    .listeners
                    .iter()
                    .filter_map(|l| l.bind.tcp())
                    .collect(),
            ),
            identity: Resolver::new(l, &config.vhosts, &config.limits.identity),
            active: Arc::new(AtomicI64::new(0)),
            per_user: Arc::default(),
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
    bind: Bind,
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
        started: crate::clock::now(),
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
    let mut unix_sockets = Vec::new();
    for rt in runtimes {
        let group = crate::listen::bind(&rt.cfg.bind, workers.handles().len()).map_err(|e| {
            anyhow::anyhow!(
                "listener[{}]: cannot bind {}: {e}",
                rt.cfg.name,
                rt.cfg.bind
            )
        })?;
        if let Bind::Unix(u) = &rt.cfg.bind {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::symlink_metadata(&u.path).map_or(0, |m| m.ino());
            unix_sockets.push((u.path.clone(), ino));
        }
        tracing::info!(listener = %rt.cfg.name, bind = %rt.cfg.bind, tls = %rt.cfg.tls, upstream = %rt.cfg.upstream, "listening");
        let (tx, rx) = watch::channel(Arc::new(rt));
        running.push(Running {
            name: rx.borrow().cfg.name.clone(),
            bind: rx.borrow().cfg.bind.clone(),
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
                match accept::Socket::register(socket) {
                    Ok(l) => accept::accept_loop(l, rx, accepting, stop, tracker, services).await,
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
    for (path, ino) in &unix_sockets {
        crate::listen::unlink_unix(path, *ino);
    }
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

/// Whether a reloaded listener still listens where it did: the same TCP
/// address, or the same Unix socket path (its file's mode, owner and group
/// are set when it is made, and changing them needs a restart).
fn same_socket(running: &Bind, reloaded: &Bind) -> bool {
    match (running, reloaded) {
        (Bind::Unix(a), Bind::Unix(b)) => a.path == b.path,
        (a, b) => a == b,
    }
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
            Some(r) if same_socket(&r.bind, &rt.cfg.bind) => {
                if r.bind != rt.cfg.bind {
                    tracing::warn!(listener = %r.name, "socket_mode, socket_owner or socket_group changed: needs a restart; the other settings apply");
                }
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
                rt.per_user = old.per_user.clone();
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
