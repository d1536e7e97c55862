//! `[[listener]]` tables → validated [`ListenerConfig`]s, and what can only
//! be checked across them (names and addresses unique, none on the admin
//! endpoint). Problems are reported under `listener[NAME].key`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use rustls::pki_types::ServerName;

use super::raw::{RawCertPair, RawListener};
use super::types::{
    Bind, CertPair, ClientTls, ListenerConfig, ProxyVersion, UpstreamTarget, UpstreamTls,
};
use super::validate::{Problems, check, choice, count, hostname, network, readable_file, required};

/// Default `listener.max_sessions_per_user` (a Unix socket's), or
/// `max_sessions` when that is lower.
const DEFAULT_MAX_SESSIONS_PER_USER: NonZeroUsize = NonZeroUsize::new(50).expect("non-zero");
/// Default `listener.max_sessions`.
const DEFAULT_MAX_SESSIONS: NonZeroUsize = NonZeroUsize::new(1000).expect("non-zero");
/// The `upstream` value that selects the pre-REDIRECT destination.
const ORIGINAL_DESTINATION: &str = "original-destination";

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

/// All `[[listener]]` tables, then what can only be checked across them.
pub(super) fn listeners(
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

    let socket = super::validate_socket::SocketFile {
        mode: raw.socket_mode,
        owner: raw.socket_owner,
        group: raw.socket_group,
    };
    let bind = required(
        p,
        key("bind"),
        raw.bind,
        "e.g. \"0.0.0.0:587\", \"[::]:587\" or \"unix:/run/mailbrake/submit.sock\"",
    )
    .and_then(|s| super::validate_socket::bind(p, label, &s, socket));

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

    let max_sessions_per_user = match (raw.max_sessions_per_user, max_sessions) {
        (Some(_), _) if !matches!(bind, Some(Bind::Unix(_))) => {
            if bind.is_some() {
                p.add(
                    key("max_sessions_per_user"),
                    "only a Unix socket listener (bind = \"unix:PATH\") knows its clients' \
                     users; remove it",
                );
            }
            None
        }
        (None, Some(max)) => Some(DEFAULT_MAX_SESSIONS_PER_USER.min(max)),
        (Some(n), Some(max)) => count(
            p,
            key("max_sessions_per_user"),
            Some(n),
            DEFAULT_MAX_SESSIONS_PER_USER,
            1,
            "concurrent sessions of one user",
        )
        .filter(|n| {
            let fits = *n <= max;
            if !fits {
                p.add(
                    key("max_sessions_per_user"),
                    format!("{n} is more than max_sessions ({max}); give at most {max}"),
                );
            }
            fits
        }),
        (_, None) => None,
    };

    let listener = ListenerConfig {
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
        max_sessions_per_user: max_sessions_per_user?,
    };
    super::validate_socket::unix_fits(p, label, &listener).then_some(listener)
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
    // A Unix socket is one path, whatever its mode, owner and group.
    let mut binds: HashMap<BindKey, &str> = HashMap::new();
    for (label, l) in all {
        // Port 0 asks the kernel for a fresh port each time: never a clash.
        if l.bind.tcp().is_some_and(|a| a.port() == 0) {
            continue;
        }
        if l.bind.tcp().is_some() && l.bind.tcp() == admin_bind {
            p.add(
                format!("{label}.bind"),
                format!("{} is also admin.bind; use another address", l.bind),
            );
        }
        let bind_key = match &l.bind {
            Bind::Tcp(addr) => BindKey::Tcp(*addr),
            Bind::Unix(u) => BindKey::Unix(&u.path),
        };
        if let Some(first) = binds.get(&bind_key) {
            p.add(
                format!("{label}.bind"),
                format!(
                    "{} is already the address of {first}; addresses must be unique",
                    l.bind
                ),
            );
        } else {
            binds.insert(bind_key, label);
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
            let Some(bind) = other.bind.tcp() else {
                return false;
            };
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

/// What two listeners may not share.
#[derive(PartialEq, Eq, Hash)]
enum BindKey<'a> {
    Tcp(SocketAddr),
    Unix(&'a std::path::Path),
}

/// `host:port`, with brackets around an IPv6 host.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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
