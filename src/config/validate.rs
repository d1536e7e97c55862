//! Raw file → validated [`Config`]: every value checked, every problem collected.
//!
//! Each problem is one line, `key.path: what is wrong; what is allowed`, with
//! listeners named `listener[NAME]` (or `listener[#N]`, counting from 1, when
//! the name itself is unusable). No file is read; certificate, key and CA files
//! are only opened to check that they exist and are readable, and `[[vhost]]`
//! user names and `admin.token_group` are looked up in the user database.
//! `[limits]`, `[[vhost]]` and `[protect]` are checked in
//! `validate_limits.rs`, `[[listener]]` in `validate_listeners.rs`.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawAdmin, RawConfig, RawServer, RawSession, RawState, RawTimeouts};
use super::types::{
    AdminConfig, Config, LogFormat, ServerConfig, SessionLimits, StateConfig, Timeouts, UnixGroup,
};

/// Default `admin.bind`: loopback only, the admin API is not for the world.
const DEFAULT_ADMIN_BIND: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9725));
/// Default `state.dir`.
const DEFAULT_STATE_DIR: &str = "/var/lib/mailbrake";
/// Default `state.max_unsaved_changes`: about 10 MB of changes, hours of a
/// small ISP's traffic, before mail is deferred.
const DEFAULT_MAX_UNSAVED: usize = 100_000;
/// Default `server.hostname` when the machine's own name is unavailable.
const FALLBACK_HOSTNAME: &str = "localhost";
/// Default `server.drain_timeout`.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `server.threads`: far more than CPUs only costs memory.
const MAX_THREADS: usize = 1024;
/// Smallest `session.max_line_length`: RFC 5321 4.5.3.1.4, 512 octets with CRLF.
const MIN_LINE_LENGTH: usize = 512;
/// Smallest `session.max_reply_bytes`: RFC 5321 4.5.3.1.5, one 512-octet reply line.
const MIN_REPLY_BYTES: usize = 512;

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

/// Checks every value of `raw`; on failure, every problem found, in file order.
pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut p = Problems::default();
    let admin = admin(&mut p, raw.admin);
    let state = state(&mut p, raw.state);
    let server = server(&mut p, raw.server);
    let session = session(&mut p, raw.session);
    let timeouts = timeouts(&mut p, raw.timeouts);
    let listeners =
        super::validate_listeners::listeners(&mut p, raw.listeners, admin.as_ref().map(|a| a.bind));
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
    let token_group = raw
        .token_group
        .and_then(|name| token_group(p, name, token_file.is_some()));
    Some(AdminConfig {
        bind,
        metrics_top_senders: top?,
        token_file,
        token_group,
    })
}

/// `admin.token_group`: an existing group, for the token mailbrake makes.
fn token_group(p: &mut Problems, name: String, token_file: bool) -> Option<UnixGroup> {
    const KEY: &str = "admin.token_group";
    if token_file {
        p.add(
            KEY,
            "applies only to the token mailbrake makes; with token_file, give that file its group yourself",
        );
        return None;
    }
    match nix::unistd::Group::from_name(&name) {
        Ok(Some(g)) => Some(UnixGroup {
            name,
            gid: g.gid.as_raw(),
        }),
        Ok(None) => {
            p.add(KEY, format!("no group named {name:?} on this system"));
            None
        }
        Err(e) => {
            p.add(KEY, format!("cannot look up group {name:?}: {e}"));
            None
        }
    }
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
    let max_unsaved_changes = count(
        p,
        "state.max_unsaved_changes",
        raw.max_unsaved_changes,
        NonZeroUsize::new(DEFAULT_MAX_UNSAVED).expect("non-zero"),
        1,
        "changes",
    );
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
    Some(StateConfig {
        dir,
        fleet,
        max_unsaved_changes: max_unsaved_changes?,
    })
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
    let threads = count(p, "server.threads", raw.threads, cpus, 1, "threads").and_then(|n| {
        let ok = n.get() <= MAX_THREADS;
        if !ok {
            p.add(
                "server.threads",
                format!("{n} is too many; give at most {MAX_THREADS} (one per CPU is the default)"),
            );
        }
        ok.then_some(n)
    });
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
    let min_data_rate = count(
        p,
        "session.min_data_rate",
        raw.min_data_rate,
        d.min_data_rate,
        1,
        "bytes a second",
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
        min_data_rate: min_data_rate?,
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
pub(super) fn required<T>(
    p: &mut Problems,
    key: impl Display,
    value: Option<T>,
    hint: &str,
) -> Option<T> {
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
pub(super) fn count(
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
pub(super) fn socket_addr(p: &mut Problems, key: impl Display, value: &str) -> Option<SocketAddr> {
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
pub(super) fn readable_file(p: &mut Problems, key: impl Display, path: &Path) -> bool {
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
pub(super) fn hostname(name: &str) -> Result<(), String> {
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
