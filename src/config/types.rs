//! Validated configuration: every value here has been checked, so the rest of
//! mailbrake never re-validates. Built by [`super::load`] from the raw file.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// The whole configuration, as validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub server: ServerConfig,
    pub session: SessionLimits,
    pub timeouts: Timeouts,
    pub listeners: Vec<ListenerConfig>,
    pub limits: LimitsConfig,
    pub vhosts: Vec<VhostConfig>,
    pub protect: ProtectConfig,
}

/// `[admin]`: metrics and admin API (filled by later features).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// At most this many senders get their own metric series (those at 80 %
    /// of a limit or more, or locked; the most pressing first). Default 50.
    pub metrics_top_senders: NonZeroUsize,
    /// File holding the admin API's bearer token (required when `bind` is
    /// not loopback, unless `MAILBRAKE_ADMIN_TOKEN` is set).
    pub token_file: Option<PathBuf>,
    /// Without `token_file`: the group that may read the token mailbrake
    /// makes (its file is then 0640 instead of 0600).
    pub token_group: Option<UnixGroup>,
}

/// A Unix group, resolved when the file is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixGroup {
    pub name: String,
    pub gid: u32,
}

/// `[state]`: where mailbrake keeps its data.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// Where counters, reservations, locks and overrides are shared: only
    /// this process (the embedded database), or a fleet through Redis.
    pub fleet: Option<FleetConfig>,
    /// Changes the database could not take yet, kept in memory and retried;
    /// beyond this many, recipients are deferred until it takes them.
    pub max_unsaved_changes: NonZeroUsize,
}

/// `[state] backend = "redis"`: several mailbrake processes share one set of
/// limits. The embedded database still keeps the hourly totals, the audit
/// trail and this process's own copy of overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port[/db]`; never logged.
    pub url: String,
    /// Prepended to every Redis key. Default "mailbrake:".
    pub prefix: String,
    /// When Redis cannot be reached: accept recipients (open, the default:
    /// mail flows, unlimited) or defer them (closed).
    pub fail_open: bool,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name used in mailbrake's own EHLO to upstreams and in its local replies.
    pub hostname: String,
    /// How long SIGTERM waits for live sessions before closing them.
    pub drain_timeout: Duration,
    /// Log format: human-readable text or one JSON object per line.
    pub log_format: LogFormat,
    /// Threads that run sessions (default: one per CPU).
    pub threads: NonZeroUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[session]`: bounds on what a client controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Longest command line accepted, CRLF included (RFC 5321 4.5.3.1.4 says 512 at least).
    pub max_line_length: NonZeroUsize,
    /// Longest SASL response line (RFC 4954 section 4 says 12288).
    pub max_auth_line_length: NonZeroUsize,
    /// Commands accepted outside a transaction before the session is closed.
    pub max_commands_without_mail: NonZeroUsize,
    /// Longest reply accepted from the upstream, all lines together.
    pub max_reply_bytes: NonZeroUsize,
    /// A message body (DATA, or one BDAT chunk) must arrive at this many
    /// bytes a second on average, after `timeouts.client_data` of grace, as
    /// Postfix's `smtpd_min_data_rate`: a client trickling its body cannot
    /// hold a session for ever. Default 500.
    pub min_data_rate: NonZeroUsize,
}

/// `[timeouts]`, RFC 5321 section 4.5.3.2 defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to the upstream.
    pub connect: Duration,
    /// One TLS handshake, on either leg.
    pub tls_handshake: Duration,
    /// Client idle between commands (4.5.3.2.7 server timeout: 5 min).
    pub client_command: Duration,
    /// Client silent in the middle of DATA or BDAT (4.5.3.2.5 data block: 3 min).
    pub client_data: Duration,
    /// Upstream greeting (4.5.3.2.1: 5 min).
    pub upstream_greeting: Duration,
    /// Upstream reply to an ordinary command (4.5.3.2.2, .3: 5 min).
    pub upstream_command: Duration,
    /// Upstream reply to DATA (4.5.3.2.4: 2 min).
    pub upstream_data_init: Duration,
    /// Upstream reply to end-of-data or the last BDAT (4.5.3.2.6: 10 min).
    pub upstream_data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(30),
            client_command: Duration::from_secs(300),
            client_data: Duration::from_secs(180),
            upstream_greeting: Duration::from_secs(300),
            upstream_command: Duration::from_secs(300),
            upstream_data_init: Duration::from_secs(120),
            upstream_data_end: Duration::from_secs(600),
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        let n = |v: usize| NonZeroUsize::new(v).expect("non-zero default");
        SessionLimits {
            max_line_length: n(2048),
            max_auth_line_length: n(12288),
            max_commands_without_mail: n(100),
            max_reply_bytes: n(65536),
            min_data_rate: n(500),
        }
    }
}

/// TLS on the client leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    None,
    StartTls,
    Implicit,
}

/// TLS on the upstream leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    None,
    /// STARTTLS required: the session fails if the upstream does not offer it.
    StartTls,
    Implicit,
    /// STARTTLS when the upstream offers it, plaintext otherwise.
    Opportunistic,
}

/// Where a listener's sessions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// A fixed `HOST:PORT` (drop-in mode); the host is resolved at each connect.
    Fixed { host: String, port: u16 },
    /// The address the client dialled before an iptables/nftables REDIRECT.
    OriginalDestination,
}

/// PROXY protocol version written towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// One certificate chain and its key, for the client leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a listener takes connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bind {
    Tcp(SocketAddr),
    /// `unix:PATH`: local clients, known by their peer credentials.
    Unix(UnixBind),
}

/// A Unix socket listener's file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixBind {
    /// Absolute.
    pub path: PathBuf,
    /// Permission bits of the socket file. Default 0o666: every local user
    /// may submit, each counted as itself.
    pub mode: u32,
    /// Owner and group of the socket file; mailbrake's own when absent.
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl Bind {
    /// The TCP address, for a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Bind::Tcp(addr) => Some(*addr),
            Bind::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Tcp(addr) => addr.fmt(f),
            Bind::Unix(u) => write!(f, "unix:{}", u.path.display()),
        }
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: Bind,
    pub tls: ClientTls,
    /// The first pair is the default when the client sends no (or an unknown) SNI name;
    /// the others are chosen by the DNS names in their certificates. Empty when `tls = "none"`.
    pub certs: Vec<CertPair>,
    pub allow_plaintext_auth: bool,
    pub upstream: UpstreamTarget,
    pub upstream_tls: UpstreamTls,
    /// Verify the upstream's certificate (default true).
    pub upstream_tls_verify: bool,
    /// CA bundle for verifying the upstream; system roots when absent.
    pub upstream_ca: Option<PathBuf>,
    /// Name to verify and send as SNI; the upstream host when absent.
    pub upstream_tls_name: Option<String>,
    /// PROXY protocol header written to the upstream on connect.
    pub upstream_proxy_protocol: Option<ProxyVersion>,
    /// Send XCLIENT when the upstream advertises it.
    pub xclient: bool,
    /// Peers allowed (and then required) to send a PROXY protocol header inbound.
    pub proxy_protocol_trusted: Vec<IpNet>,
    /// Concurrent sessions; one more gets `421` and is closed.
    pub max_sessions: NonZeroUsize,
    /// A Unix socket listener's concurrent sessions per Unix user, so that
    /// one site cannot hold them all. At most `max_sessions`.
    pub max_sessions_per_user: NonZeroUsize,
}

impl std::fmt::Display for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientTls::None => "none",
            ClientTls::StartTls => "starttls",
            ClientTls::Implicit => "implicit",
        })
    }
}

impl std::fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamTarget::Fixed { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            UpstreamTarget::Fixed { host, port } => write!(f, "{host}:{port}"),
            UpstreamTarget::OriginalDestination => f.write_str("original-destination"),
        }
    }
}

/// One `N/window` rule: at most `count` recipients in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u32,
    pub window: Duration,
}

/// A limit: no limit at all, or every one of several rates at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    /// Non-empty; at most one rate per window length.
    Rates(Vec<Rate>),
}

/// What happens to a recipient over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// `450 4.7.1`: the client retries later.
    Defer,
    /// `550 5.7.1`.
    Reject,
    /// Accept, but log and count what would have been refused.
    Observe,
}

/// One source of a sender's identity, tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    Auth,
    Vhost,
    /// The local Unix user of the client: a Unix socket's peer, or the
    /// owner of a local TCP connection.
    User,
    Ip,
}

/// `[limits]` and `[[limits.override]]`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// The limit of every key without an override. Default `12/1h`.
    pub default: Limit,
    pub action: LimitAction,
    /// Default auth, vhost, user, ip.
    pub identity: Vec<IdentitySource>,
    /// IPv6 sources are grouped by this prefix length. Default 64.
    pub ipv6_prefix: u8,
    /// Keyed by the full sender key text (`auth:alice@example.com`).
    pub overrides: Vec<Override>,
    /// AUTH usernames never limited.
    pub exempt_users: Vec<String>,
    /// Vhost names never limited.
    pub exempt_vhosts: Vec<String>,
    /// Local Unix user names never limited.
    pub exempt_local_users: Vec<String>,
    /// Client networks never limited (whatever the key).
    pub exempt_networks: Vec<IpNet>,
    /// Distinct MAIL FROM addresses per key allowed in a window; `None` = off.
    /// Default `20/1h`.
    pub rotation: Option<Rate>,
    /// Refusals in `lock_window` after which a key is locked; `None` = never.
    /// Default 50.
    pub lock_after_refusals: Option<u32>,
    /// Default 1h.
    pub lock_window: Duration,
    /// How long an automatic lock lasts; `None` = until an operator unlocks.
    /// Default 24h.
    pub lock_duration: Option<Duration>,
    /// Who a locked sender should contact, named in the lock reply. Optional.
    pub contact: Option<String>,
}

/// One `[[limits.override]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The sender key exactly as logged: `auth:…`, `vhost:…`, `ip:…`.
    pub key: String,
    pub limit: Limit,
}

/// One `[[vhost]]`: a hosting customer recognised by source network or by
/// the Unix user owning the connecting socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostConfig {
    pub name: String,
    pub networks: Vec<IpNet>,
    /// Unix uids, user names already resolved to uids.
    pub uids: Vec<u32>,
}

/// `[protect]`: short-term rate limits (GCRA via governor), not the hourly limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectConfig {
    /// New connections per source address. Default `60/1m`; `None` = off.
    pub connections_per_ip: Option<Rate>,
    /// Failed AUTH per source address. Default `10/10m`.
    pub auth_failures_per_ip: Option<Rate>,
    /// Failed AUTH per username. Default `10/10m`.
    pub auth_failures_per_user: Option<Rate>,
    /// RCPT per key (burst smoothing). Default off.
    pub rcpt_pace: Option<Rate>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default: Limit::Rates(vec![Rate {
                count: 12,
                window: Duration::from_secs(3600),
            }]),
            action: LimitAction::Defer,
            identity: vec![
                IdentitySource::Auth,
                IdentitySource::Vhost,
                IdentitySource::User,
                IdentitySource::Ip,
            ],
            ipv6_prefix: 64,
            overrides: Vec::new(),
            exempt_users: Vec::new(),
            exempt_vhosts: Vec::new(),
            exempt_local_users: Vec::new(),
            exempt_networks: Vec::new(),
            rotation: Some(Rate {
                count: 20,
                window: Duration::from_secs(3600),
            }),
            lock_after_refusals: Some(50),
            lock_window: Duration::from_secs(3600),
            lock_duration: Some(Duration::from_secs(24 * 3600)),
            contact: None,
        }
    }
}

impl Default for ProtectConfig {
    fn default() -> Self {
        ProtectConfig {
            connections_per_ip: Some(Rate {
                count: 60,
                window: Duration::from_secs(60),
            }),
            auth_failures_per_ip: Some(Rate {
                count: 10,
                window: Duration::from_secs(600),
            }),
            auth_failures_per_user: Some(Rate {
                count: 10,
                window: Duration::from_secs(600),
            }),
            rcpt_pace: None,
        }
    }
}
