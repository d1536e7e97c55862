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
}

/// `[admin]`: metrics and admin API (filled by later features).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// `[state]`: where mailbrake keeps its data.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
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

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
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
