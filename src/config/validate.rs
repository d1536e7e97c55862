//! Raw file → validated [`Config`]: every value checked, every problem collected.
//!
//! Each problem is one line, `key.path: what is wrong; what is allowed`, with
//! listeners named `listener[NAME]` (or `listener[#N]`, counting from 1, when
//! the name itself is unusable). No file is read; certificate, key and CA files
//! are only opened to check that they exist and are readable, and `[[vhost]]`
//! user names are looked up in the user database. `[limits]`, `[[vhost]]` and
//! `[protect]` are checked in `validate_limits.rs`.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::ServerName;

use super::raw::{
    RawAdmin, RawCertPair, RawConfig, RawListener, RawServer, RawSession, RawState, RawTimeouts,
};
use super::types::{
    AdminConfig, CertPair, ClientTls, Config, ListenerConfig, LogFormat, ProxyVersion,
    ServerConfig, SessionLimits, StateConfig, Timeouts, UpstreamTarget, UpstreamTls,
};

/// Default `admin.bind`: loopback only, the admin API is not for the world.
const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9725));
/// Default `state.dir`.
const DEFAULT_STATE_DIR: &str = "/var/lib/mailbrake";
/// Default `server.hostname` when the machine's own name is unavailable.
const FALLBACK_HOSTNAME: &str = "localhost";
/// Default `server.drain_timeout`.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `listener.max_sessions`.
const DEFAULT_MAX_SESSIONS: NonZeroUsize = NonZeroUsize::new(1000).expect("non-zero");
/// Smallest `session.max_line_length`: RFC 5321 4.5.3.1.4, 512 octets with CRLF.
const MIN_LINE_LENGTH: usize = 512;
/// Smallest `session.max_reply_bytes`: RFC 5321 4.5.3.1.5, one 512-octet reply line.
const MIN_REPLY_BYTES: usize = 512;
/// The `upstream` value that selects the pre-REDIRECT destination.
const ORIGINAL_DESTINATION: &str = "original-destination";

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const CLIENT_TLS: &[(&str, ClientTls)] = &[
    ("none", ClientTls::None),
    ("starttls", ClientTls::StartTls),
    ("implicit", ClientTls::Implicit),
];
const UPSTREAM_TLS: &[(&str, UpstreamTls)] = &[
    ("none", UpstreamTls::None),
    ("starttls", UpstreamTls::StartTls),
    ("implicit", UpstreamTls::Implicit),
    ("opportunistic", UpstreamTls::Opportunistic),
];
const PROXY_VERSIONS: &[(&str, Option<ProxyVersion>)] = &[
    ("none", None),
    ("v1", Some(ProxyVersion::V1)),
    ("v2", Some(ProxyVersion::V2)),
];

/// Checks every value of `raw`; on failure, every problem found, in file order.
pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut p = Problems::default();
    let admin = admin(&mut p, raw.admin);
    let state = state(&mut p, raw.state);
    let server = server(&mut p, raw.server);
    let session = session(&mut p, raw.session);
    let timeouts = timeouts(&mut p, raw.timeouts);
    let listeners = listeners(&mut p, raw.listeners, admin.as_ref().map(|a| a.bind));
    let policy = super::validate_limits::policy(&mut p, raw.limits, raw.vhosts, raw.protect);

    let (
        Some(admin),
        Some(state),
        Some(server),
        Some(session),
        Some(timeouts),
        Some(listeners),
        Some(policy),
    ) = (admin, state, server, session, timeouts, listeners, policy)
    else {
        debug_assert!(!p.0.is_empty(), "a section failed without saying why");
        return Err(p.0);
    };
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        admin,
        state,
        server,
        session,
        timeouts,
        listeners,
        limits: policy.limits,
        vhosts: policy.vhosts,
        protect: policy.protect,
    })
}

/// Problems found so far, each already formatted as `key: message`.
#[derive(Default)]
pub(super) struct Problems(Vec<String>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Display, message: impl Display) {
        self.0.push(format!("{key}: {message}"));
    }
}

// === sections ===

fn admin(p: &mut Problems, raw: RawAdmin) -> Option<AdminConfig> {
    let top = count(
        p,
        "admin.metrics_top_senders",
        raw.metrics_top_senders,
        NonZeroUsize::new(50).expect("non-zero"),
        1,
        "senders",
    );
    let bind = match raw.bind {
        Some(s) => socket_addr(p, "admin.bind", &s)?,
        None => DEFAULT_ADMIN_BIND,
    };
    let token_file = raw.token_file.map(PathBuf::from);
    if let Some(path) = &token_file
        && let Err(e) = std::fs::metadata(path)
    {
        p.add(
            "admin.token_file",
            format!("cannot read {}: {e}", path.display()),
        );
    }
    Some(AdminConfig {
        bind,
        metrics_top_senders: top?,
        token_file,
    })
}

fn state(p: &mut Problems, raw: RawState) -> Option<StateConfig> {
    let dir = raw.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if dir.as_os_str().is_empty() {
        p.add(
            "state.dir",
            "must not be empty; give a directory, e.g. \"/var/lib/mailbrake\"",
        );
        return None;
    }
    let fleet = match raw.backend.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            for (key, v) in [
                ("redis_url", &raw.redis_url),
                ("redis_prefix", &raw.redis_prefix),
                ("redis_failure", &raw.redis_failure),
            ] {
                if v.is_some() {
                    p.add(format!("state.{key}"), "only with backend = \"redis\"");
                }
            }
            None
        }
        "redis" => {
            let url = match raw.redis_url {
                Some(u) if u.starts_with("redis://") => Some(u),
                Some(_) => {
                    p.add(
                        "state.redis_url",
                        "must start with redis:// (TLS to Redis is not supported), e.g. \"redis://127.0.0.1:6379/\"",
                    );
                    None
                }
                None => {
                    p.add(
                        "state.redis_url",
                        "is required with backend = \"redis\", e.g. \"redis://127.0.0.1:6379/\"",
                    );
                    None
                }
            };
            let fail_open = match raw.redis_failure.as_deref().unwrap_or("open") {
                "open" => Some(true),
                "closed" => Some(false),
                other => {
                    p.add(
                        "state.redis_failure",
                        format!("\"{other}\" is not allowed; use \"open\" or \"closed\""),
                    );
                    None
                }
            };
            let prefix = raw.redis_prefix.unwrap_or_else(|| "mailbrake:".into());
            match (url, fail_open) {
                (Some(url), Some(fail_open)) => Some(crate::config::FleetConfig {
                    url,
                    prefix,
                    fail_open,
                }),
                _ => return None,
            }
        }
        other => {
            p.add(
                "state.backend",
                format!("\"{other}\" is not allowed; use \"sqlite\" or \"redis\""),
            );
            return None;
        }
    };
    Some(StateConfig { dir, fleet })
}

fn server(p: &mut Problems, raw: RawServer) -> Option<ServerConfig> {
    let hostname = match raw.hostname {
        Some(name) => check(p, "server.hostname", hostname(&name)).map(|()| name),
        None => {
            let name = system_hostname().unwrap_or_else(|| FALLBACK_HOSTNAME.to_owned());
            let checked = hostname(&name).map_err(|e| {
                format!("{e} (this is the machine's host name; set server.hostname explicitly)")
            });
            check(p, "server.hostname", checked).map(|()| name)
        }
    };
    let drain_timeout = duration(
        p,
        "server.drain_timeout",
        raw.drain_timeout,
        DEFAULT_DRAIN_TIMEOUT,
    );
    let log_format = choice(
        p,
        "server.log_format",
        raw.log_format,
        LogFormat::Text,
        LOG_FORMATS,
    );
    let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let threads = count(p, "server.threads", raw.threads, cpus, 1, "threads");
    Some(ServerConfig {
        hostname: hostname?,
        drain_timeout: drain_timeout?,
        log_format: log_format?,
        threads: threads?,
    })
}

fn session(p: &mut Problems, raw: RawSession) -> Option<SessionLimits> {
    let d = SessionLimits::default();
    let max_line_length = count(
        p,
        "session.max_line_length",
        raw.max_line_length,
        d.max_line_length,
        MIN_LINE_LENGTH,
        "bytes, CRLF included; RFC 5321 4.5.3.1.4 requires at least 512",
    );
    let max_auth_line_length = count(
        p,
        "session.max_auth_line_length",
        raw.max_auth_line_length,
        d.max_auth_line_length,
        1,
        "bytes",
    );
    let max_commands_without_mail = count(
        p,
        "session.max_commands_without_mail",
        raw.max_commands_without_mail,
        d.max_commands_without_mail,
        1,
        "commands",
    );
    let max_reply_bytes = count(
        p,
        "session.max_reply_bytes",
        raw.max_reply_bytes,
        d.max_reply_bytes,
        MIN_REPLY_BYTES,
        "bytes; RFC 5321 4.5.3.1.5 allows reply lines of 512",
    );
    if let (Some(line), Some(auth)) = (max_line_length, max_auth_line_length)
        && auth < line
    {
        p.add(
            "session.max_auth_line_length",
            format!(
                "{auth} is less than session.max_line_length ({line}); it must be at least \
                     that (RFC 4954 section 4 suggests 12288)"
            ),
        );
        return None;
    }
    Some(SessionLimits {
        max_line_length: max_line_length?,
        max_auth_line_length: max_auth_line_length?,
        max_commands_without_mail: max_commands_without_mail?,
        max_reply_bytes: max_reply_bytes?,
    })
}

fn timeouts(p: &mut Problems, raw: RawTimeouts) -> Option<Timeouts> {
    let d = Timeouts::default();
    let mut t = |key: &str, value: Option<String>, default: Duration| {
        duration(p, format!("timeouts.{key}"), value, default)
    };
    let connect = t("connect", raw.connect, d.connect);
    let tls_handshake = t("tls_handshake", raw.tls_handshake, d.tls_handshake);
    let client_command = t("client_command", raw.client_command, d.client_command);
    let client_data = t("client_data", raw.client_data, d.client_data);
    let upstream_greeting = t(
        "upstream_greeting",
        raw.upstream_greeting,
        d.upstream_greeting,
    );
    let upstream_command = t("upstream_command", raw.upstream_command, d.upstream_command);
    let upstream_data_init = t(
        "upstream_data_init",
        raw.upstream_data_init,
        d.upstream_data_init,
    );
    let upstream_data_end = t(
        "upstream_data_end",
        raw.upstream_data_end,
        d.upstream_data_end,
    );
    Some(Timeouts {
        connect: connect?,
        tls_handshake: tls_handshake?,
        client_command: client_command?,
        client_data: client_data?,
        upstream_greeting: upstream_greeting?,
        upstream_command: upstream_command?,
        upstream_data_init: upstream_data_init?,
        upstream_data_end: upstream_data_end?,
    })
}

// === listeners ===

/// All `[[listener]]` tables, then what can only be checked across them.
fn listeners(
    p: &mut Problems,
    raw: Vec<RawListener>,
    admin_bind: Option<SocketAddr>,
) -> Option<Vec<ListenerConfig>> {
    if raw.is_empty() {
        p.add("listener", "at least one [[listener]] table is required");
        return None;
    }
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    let mut failed = false;
    for (i, raw) in raw.into_iter().enumerate() {
        let (label, name) = listener_name(p, i, raw.name.as_deref());
        if let Some(name) = &name {
            if let Some(first) = names.get(name) {
                p.add(
                    format!("{label}.name"),
                    format!("\"{name}\" is already the name of {first}; names must be unique"),
                );
            } else {
                names.insert(name.clone(), format!("listener #{}", i + 1));
            }
        }
        match listener(p, &label, name, raw) {
            Some(l) => out.push((label, l)),
            None => failed = true,
        }
    }
    cross_check(p, &out, admin_bind);
    if failed {
        return None;
    }
    Some(out.into_iter().map(|(_, l)| l).collect())
}

/// The label used in messages (`listener[NAME]`, or `listener[#N]` when the
/// name is missing or unusable) and the name when it is usable.
fn listener_name(p: &mut Problems, i: usize, name: Option<&str>) -> (String, Option<String>) {
    let fallback = format!("listener[#{}]", i + 1);
    let allowed = "use letters, digits, '-', '_' and '.', e.g. \"submission\"";
    match name {
        None => {
            p.add(format!("{fallback}.name"), format!("required; {allowed}"));
            (fallback, None)
        }
        Some("") => {
            p.add(
                format!("{fallback}.name"),
                format!("must not be empty; {allowed}"),
            );
            (fallback, None)
        }
        Some(name)
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            p.add(
                format!("{fallback}.name"),
                format!("\"{name}\" is not allowed; {allowed}"),
            );
            (fallback, None)
        }
        Some(name) => (format!("listener[{name}]"), Some(name.to_owned())),
    }
}

/// One listener on its own; `None` when anything in it is wrong.
fn listener(
    p: &mut Problems,
    label: &str,
    name: Option<String>,
    raw: RawListener,
) -> Option<ListenerConfig> {
    let key = |field: &str| format!("{label}.{field}");

    let bind = required(
        p,
        key("bind"),
        raw.bind,
        "e.g. \"0.0.0.0:587\" or \"[::]:587\"",
    )
    .and_then(|s| socket_addr(p, key("bind"), &s));

    let tls = choice(p, key("tls"), raw.tls, ClientTls::None, CLIENT_TLS);
    let certs = match tls {
        // Certificates given with `tls = "none"` are ignored.
        Some(ClientTls::None) => Some(Vec::new()),
        _ => certs(p, label, raw.cert, raw.key, raw.extra_certs, tls.is_some()),
    };

    let upstream = required(
        p,
        key("upstream"),
        raw.upstream,
        "give \"HOST:PORT\" or \"original-destination\"",
    )
    .and_then(|s| check(p, key("upstream"), upstream(&s)));

    let upstream_tls = choice(
        p,
        key("upstream_tls"),
        raw.upstream_tls,
        UpstreamTls::None,
        UPSTREAM_TLS,
    );
    let no_upstream_tls = upstream_tls == Some(UpstreamTls::None);
    let only_with_tls = "has no effect with upstream_tls = \"none\"; remove it, or set \
                         upstream_tls to \"starttls\", \"implicit\" or \"opportunistic\"";

    let upstream_ca = match raw.upstream_ca {
        Some(path) => {
            let readable = readable_file(p, key("upstream_ca"), &path);
            if no_upstream_tls {
                p.add(key("upstream_ca"), only_with_tls);
                None
            } else {
                readable.then_some(Some(path))
            }
        }
        None => Some(None),
    };

    let upstream_tls_name = match raw.upstream_tls_name {
        Some(_) if no_upstream_tls => {
            p.add(key("upstream_tls_name"), only_with_tls);
            None
        }
        Some(name) => match ServerName::try_from(name.as_str()) {
            Ok(_) => Some(Some(name)),
            Err(_) => {
                p.add(
                    key("upstream_tls_name"),
                    format!("\"{name}\" is neither a DNS name nor an IP address"),
                );
                None
            }
        },
        None => Some(None),
    };

    let upstream_proxy_protocol = choice(
        p,
        key("upstream_proxy_protocol"),
        raw.upstream_proxy_protocol,
        None,
        PROXY_VERSIONS,
    );

    let mut proxy_protocol_trusted = Some(Vec::with_capacity(raw.proxy_protocol_trusted.len()));
    for (i, s) in raw.proxy_protocol_trusted.iter().enumerate() {
        let net = check(p, key(&format!("proxy_protocol_trusted[{i}]")), network(s));
        match (&mut proxy_protocol_trusted, net) {
            (Some(nets), Some(net)) => nets.push(net),
            _ => proxy_protocol_trusted = None,
        }
    }

    let max_sessions = count(
        p,
        key("max_sessions"),
        raw.max_sessions,
        DEFAULT_MAX_SESSIONS,
        1,
        "concurrent sessions",
    );

    Some(ListenerConfig {
        name: name?,
        bind: bind?,
        tls: tls?,
        certs: certs?,
        allow_plaintext_auth: raw.allow_plaintext_auth.unwrap_or(false),
        upstream: upstream?,
        upstream_tls: upstream_tls?,
        upstream_tls_verify: raw.upstream_tls_verify.unwrap_or(true),
        upstream_ca: upstream_ca?,
        upstream_tls_name: upstream_tls_name?,
        upstream_proxy_protocol: upstream_proxy_protocol?,
        xclient: raw.xclient.unwrap_or(false),
        proxy_protocol_trusted: proxy_protocol_trusted?,
        max_sessions: max_sessions?,
    })
}

/// The listener's certificates, `cert`/`key` first, then `extra_certs` in order.
/// `required` is false when `tls` itself was invalid: the files given are
/// still checked, but missing ones are not reported on top.
fn certs(
    p: &mut Problems,
    label: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    extra: Vec<RawCertPair>,
    required: bool,
) -> Option<Vec<CertPair>> {
    let mut ok = true;
    let mut file = |p: &mut Problems, field: String, path: Option<PathBuf>, what: &str| match path {
        Some(path) if readable_file(p, &field, &path) => Some(path),
        Some(_) => {
            ok = false;
            None
        }
        None => {
            if required {
                p.add(
                    field,
                    format!("required when tls is not \"none\"; give the {what}"),
                );
            }
            ok = false;
            None
        }
    };
    let first = (
        file(
            p,
            format!("{label}.cert"),
            cert,
            "certificate chain file (PEM)",
        ),
        file(p, format!("{label}.key"), key, "private key file (PEM)"),
    );
    let mut pairs = Vec::with_capacity(1 + extra.len());
    if let (Some(cert), Some(key)) = first {
        pairs.push(CertPair { cert, key });
    }
    for (i, pair) in extra.into_iter().enumerate() {
        let prefix = format!("{label}.extra_certs[{i}]");
        let cert = file(
            p,
            format!("{prefix}.cert"),
            pair.cert,
            "certificate chain file (PEM)",
        );
        let key = file(
            p,
            format!("{prefix}.key"),
            pair.key,
            "private key file (PEM)",
        );
        if let (Some(cert), Some(key)) = (cert, key) {
            pairs.push(CertPair { cert, key });
        }
    }
    ok.then_some(pairs)
}

/// Checks that need every listener: unique binds, admin clash, self-loops.
fn cross_check(p: &mut Problems, all: &[(String, ListenerConfig)], admin_bind: Option<SocketAddr>) {
    let mut binds: HashMap<SocketAddr, &str> = HashMap::new();
    for (label, l) in all {
        // Port 0 asks the kernel for a fresh port each time: never a clash.
        if l.bind.port() == 0 {
            continue;
        }
        if Some(l.bind) == admin_bind {
            p.add(
                format!("{label}.bind"),
                format!("{} is also admin.bind; use another address", l.bind),
            );
        }
        if let Some(first) = binds.get(&l.bind) {
            p.add(
                format!("{label}.bind"),
                format!(
                    "{} is already the address of {first}; addresses must be unique",
                    l.bind
                ),
            );
        } else {
            binds.insert(l.bind, label);
        }
    }
    for (label, l) in all {
        let UpstreamTarget::Fixed { host, port } = &l.upstream else {
            continue;
        };
        let Ok(ip) = host.parse::<IpAddr>() else {
            continue;
        };
        let looped = all.iter().find(|(_, other)| {
            let bind = other.bind;
            bind.port() == *port
                && (bind.ip() == ip || (bind.ip().is_unspecified() && ip.is_loopback()))
        });
        if let Some((other, _)) = looped {
            p.add(
                format!("{label}.upstream"),
                format!(
                    "{} is served by {other}: mailbrake would connect to itself",
                    host_port(host, *port)
                ),
            );
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// === values ===

/// Reports `result`'s error under `key`.
pub(super) fn check<T>(
    p: &mut Problems,
    key: impl Display,
    result: Result<T, String>,
) -> Option<T> {
    result.map_err(|e| p.add(key, e)).ok()
}

/// A key without a default: reports it missing with `hint`.
fn required<T>(p: &mut Problems, key: impl Display, value: Option<T>, hint: &str) -> Option<T> {
    if value.is_none() {
        p.add(key, format!("required; {hint}"));
    }
    value
}

/// One of a fixed set of words; the message lists the allowed ones.
pub(super) fn choice<T: Copy>(
    p: &mut Problems,
    key: impl Display,
    value: Option<String>,
    default: T,
    table: &[(&str, T)],
) -> Option<T> {
    let Some(value) = value else {
        return Some(default);
    };
    if let Some((_, v)) = table.iter().find(|(word, _)| *word == value) {
        return Some(*v);
    }
    let allowed: Vec<String> = table
        .iter()
        .map(|(word, _)| format!("\"{word}\""))
        .collect();
    p.add(
        key,
        format!(
            "\"{value}\" is not allowed; use one of {}",
            allowed.join(", ")
        ),
    );
    None
}

/// A non-zero humantime duration such as `"30s"`, `"5m"` or `"1h 30m"`.
pub(super) fn duration(
    p: &mut Problems,
    key: impl Display,
    value: Option<String>,
    default: Duration,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    match humantime::parse_duration(&value) {
        Ok(d) if d.is_zero() => {
            p.add(
                key,
                "must not be zero; give a duration such as \"30s\" or \"5m\"",
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            p.add(
                key,
                format!(
                    "\"{value}\" is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"1h 30m\""
                ),
            );
            None
        }
    }
}

/// A count of at least `min` (and at least 1), `unit` naming what is counted.
fn count(
    p: &mut Problems,
    key: impl Display,
    value: Option<i64>,
    default: NonZeroUsize,
    min: usize,
    unit: &str,
) -> Option<NonZeroUsize> {
    let Some(value) = value else {
        return Some(default);
    };
    let min = min.max(1);
    match usize::try_from(value)
        .ok()
        .filter(|v| *v >= min)
        .and_then(NonZeroUsize::new)
    {
        Some(v) => Some(v),
        None => {
            p.add(
                key,
                format!("{value} is too small; give at least {min} ({unit})"),
            );
            None
        }
    }
}

/// An `IP:PORT` socket address; IPv6 in brackets.
fn socket_addr(p: &mut Problems, key: impl Display, value: &str) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.add(
                key,
                format!("\"{value}\" is not an IP:PORT address; write e.g. \"0.0.0.0:587\" or \"[::]:587\""),
            );
            None
        }
    }
}

/// Opens `path` to check that it is a readable file; reports why not.
fn readable_file(p: &mut Problems, key: impl Display, path: &Path) -> bool {
    if path.as_os_str().is_empty() {
        p.add(key, "must not be empty; give a file path");
        return false;
    }
    let result = std::fs::File::open(path).and_then(|f| f.metadata());
    match result {
        Ok(meta) if meta.is_file() => true,
        Ok(_) => {
            p.add(key, format!("{} is not a regular file", path.display()));
            false
        }
        Err(e) => {
            p.add(
                key,
                format!(
                    "cannot read {}{}: {e}",
                    path.display(),
                    relative_to_cwd(path)
                ),
            );
            false
        }
    }
}

/// For a relative `path`, says what it was relative to.
fn relative_to_cwd(path: &Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => {
            format!(" (relative to the working directory {})", cwd.display())
        }
        _ => String::new(),
    }
}

/// `upstream`: `"original-destination"`, `"HOST:PORT"` or `"[IPV6]:PORT"`.
/// IPv6 hosts are stored without brackets, ready for `(host, port)` lookups.
fn upstream(value: &str) -> Result<UpstreamTarget, String> {
    if value == ORIGINAL_DESTINATION {
        return Ok(UpstreamTarget::OriginalDestination);
    }
    let form = "write \"HOST:PORT\" (e.g. \"127.0.0.1:10587\", \"[::1]:10587\", \
                \"mta.internal:25\") or \"original-destination\"";
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once("]:") else {
            return Err(format!("\"{value}\" is not HOST:PORT; {form}"));
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "\"{v6}\" in brackets is not an IPv6 address; {form}"
            ));
        }
        (v6, port)
    } else {
        let Some((host, port)) = value.rsplit_once(':') else {
            return Err(format!("\"{value}\" has no port; {form}"));
        };
        if host.contains(':') {
            return Err(format!(
                "\"{value}\": an IPv6 address needs brackets, e.g. \"[::1]:25\""
            ));
        }
        if host.is_empty() {
            return Err(format!("\"{value}\" has no host; {form}"));
        }
        if host.parse::<Ipv4Addr>().is_err() {
            hostname(host).map_err(|e| format!("host \"{host}\": {e}"))?;
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(UpstreamTarget::Fixed {
            host: host.to_owned(),
            port,
        }),
        _ => Err(format!(
            "port \"{port}\" in \"{value}\" is not a number from 1 to 65535"
        )),
    }
}

/// An entry of `proxy_protocol_trusted` (or another list of networks): a CIDR network or a bare address
/// (a /32 or /128). Host bits below the prefix are cleared.
pub(super) fn network(value: &str) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "\"{value}\" is neither a network nor an address; write e.g. \"10.0.0.0/8\", \
         \"192.0.2.1\", \"2001:db8::/32\""
    ))
}

/// A host name as SMTP allows it in EHLO (RFC 5321 4.1.2 Domain), or an
/// address literal such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn hostname(name: &str) -> Result<(), String> {
    let allowed = "use a DNS name (letters, digits, '-' and dots, e.g. \"mx.example\") or an \
                   address literal such as \"[192.0.2.1]\"";
    if name.is_empty() {
        return Err(format!("must not be empty; {allowed}"));
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ok = inner.parse::<Ipv4Addr>().is_ok()
            || inner
                .strip_prefix("IPv6:")
                .is_some_and(|v6| v6.parse::<Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "\"{name}\" is not a valid address literal; {allowed}"
            ))
        };
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() > 255 || !name.split('.').all(label_ok) {
        return Err(format!("\"{name}\" is not a valid host name; {allowed}"));
    }
    Ok(())
}

/// The machine's host name, for the `server.hostname` default.
///
/// This is what `gethostname(2)` returns (the UTS nodename); read from procfs
/// because `nix::unistd::gethostname` needs nix's `hostname` feature.
fn system_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}
