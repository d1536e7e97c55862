//! `[limits]`, `[[vhost]]` and `[protect]`: raw values → validated policy.
//!
//! Problems are collected into the same list as the rest of validation
//! (`validate.rs`), with the same `key.path: what is wrong; what is allowed`
//! lines. Overrides are named `limits.override[KEY]` and vhosts `vhost[NAME]`
//! (`[#N]`, counting from 1, when the key or name itself is unusable).
//! `[[vhost]]` tables are checked in `validate_vhosts.rs`.
//!
//! [`parse_rate`] and [`parse_limit`] are public so that the admin CLI reads
//! rates and limits exactly as the file does.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawLimits, RawOverride, RawProtect, RawVhost};
use super::types::{
    IdentitySource, Limit, LimitAction, LimitsConfig, Override, ProtectConfig, Rate, VhostConfig,
};
use super::validate::{Problems, check, choice, duration, network};
use super::validate_vhosts::vhost_tables;

/// Largest count of a rate.
const MAX_RATE_COUNT: u32 = 1_000_000;
/// Shortest window of a rate (and of `limits.lock_window`).
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest window of a rate (and of `limits.lock_window`): 31 days.
const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// The limit that counts nothing.
const UNLIMITED: &str = "unlimited";
/// The value that turns a rotation or protection rate off.
const OFF: &str = "off";
/// The `limits.lock_duration` of a lock only an operator lifts.
const UNTIL_UNLOCKED: &str = "until-unlocked";
/// Longest `limits.contact`, in characters: it is quoted in a reply line, and
/// RFC 5321 4.5.3.1.5 caps a reply line at 512 octets, code and CRLF included.
const MAX_CONTACT_LEN: usize = 200;

/// How a rate is written, for messages.
const RATE_FORM: &str = "write N/DURATION like \"12/1h\"";
/// What else a limit may be, appended to [`RATE_FORM`].
const LIMIT_ALTERNATIVES: &str = ", a list of them, or \"unlimited\"";
/// What else a rotation or protection rate may be, appended to [`RATE_FORM`].
const OFF_ALTERNATIVE: &str = ", or \"off\"";
/// How a sender key is written, for messages.
const KEY_FORM: &str = "write \"auth:LOGIN\", \"vhost:NAME\", \"user:UNIX-USER\", \"uid:N\" \
                        or \"ip:ADDRESS\" (or a network, e.g. \"ip:2001:db8::/64\")";
/// Which characters a vhost name may use.
pub(super) const NAME_FORM: &str = "use letters, digits, '-', '_' and '.', e.g. \"shop-42\"";

const ACTIONS: &[(&str, LimitAction)] = &[
    ("defer", LimitAction::Defer),
    ("reject", LimitAction::Reject),
    ("observe", LimitAction::Observe),
];
const IDENTITY_SOURCES: &[(&str, IdentitySource)] = &[
    ("auth", IdentitySource::Auth),
    ("vhost", IdentitySource::Vhost),
    ("user", IdentitySource::User),
    ("ip", IdentitySource::Ip),
];

/// The validated `[limits]`, `[[vhost]]` and `[protect]`.
pub(super) struct Policy {
    pub limits: LimitsConfig,
    pub vhosts: Vec<VhostConfig>,
    pub protect: ProtectConfig,
}

/// Checks the three sections; `None` when anything in them is wrong.
pub(super) fn policy(
    p: &mut Problems,
    limits: RawLimits,
    vhosts: Vec<RawVhost>,
    protect: RawProtect,
) -> Option<Policy> {
    // Names as written, so that a reference to a vhost that has other
    // problems is not reported on top of them.
    let names: HashSet<String> = vhosts.iter().filter_map(|v| v.name.clone()).collect();
    let limits = limits_section(p, limits, &names);
    let vhosts = vhost_tables(p, vhosts);
    let protect = protect_section(p, protect);
    Some(Policy {
        limits: limits?,
        vhosts: vhosts?,
        protect: protect?,
    })
}

// === public parsers ===

/// A rate, `N/DURATION`: at most N (1 to 1,000,000) in any DURATION, a
/// humantime duration from 1s to 31 days (`"12/1h"`, `"100/24h"`, `"5/1h 30m"`).
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    rate(text).map_err(|e| e.message(text, ""))
}

/// A limit: `"unlimited"`, a rate, or several rates separated by commas
/// (`"12/1h, 100/24h"`, the one-line form of a TOML list), at most one per
/// window length.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.trim() == UNLIMITED {
        return Ok(Limit::Unlimited);
    }
    let mut rates = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part == UNLIMITED {
            return Err(format!(
                "\"{text}\": \"unlimited\" cannot be combined with rates; write it alone"
            ));
        }
        rates.push(rate(part).map_err(|e| e.message(part, LIMIT_ALTERNATIVES))?);
    }
    distinct_windows(&rates)?;
    Ok(Limit::Rates(rates))
}

/// Why a text is not a rate.
enum RateError {
    /// Not `N/DURATION` at all.
    Form,
    Count,
    Window,
}

impl RateError {
    /// The message for `text`; `alternatives` lists what else the key accepts.
    fn message(&self, text: &str, alternatives: &str) -> String {
        match self {
            RateError::Form => format!("\"{text}\" is not a rate; {RATE_FORM}{alternatives}"),
            RateError::Count => {
                format!("\"{text}\": the count must be from 1 to {MAX_RATE_COUNT}")
            }
            RateError::Window => {
                format!("\"{text}\": the window must be from \"1s\" to \"31d\"")
            }
        }
    }
}

/// [`parse_rate`], with the reason kept for the caller to phrase.
fn rate(text: &str) -> Result<Rate, RateError> {
    let (count, window) = text.split_once('/').ok_or(RateError::Form)?;
    let (count, window) = (count.trim(), window.trim());
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateError::Form);
    }
    let window = humantime::parse_duration(window).map_err(|_| RateError::Form)?;
    let count = count
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_RATE_COUNT).contains(n))
        .ok_or(RateError::Count)?;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
        return Err(RateError::Window);
    }
    Ok(Rate { count, window })
}

/// At most one rate per window length: two would make one of them pointless.
fn distinct_windows(rates: &[Rate]) -> Result<(), String> {
    for (i, r) in rates.iter().enumerate() {
        if let Some(first) = rates[..i].iter().find(|f| f.window == r.window) {
            return Err(format!(
                "two rates share the window {} ({} and {}); give at most one rate per window length",
                humantime::format_duration(r.window),
                first.count,
                r.count
            ));
        }
    }
    Ok(())
}

// === [limits] ===

fn limits_section(
    p: &mut Problems,
    raw: RawLimits,
    vhost_names: &HashSet<String>,
) -> Option<LimitsConfig> {
    let d = LimitsConfig::default();
    let default = match raw.default {
        Some(value) => limit_value(p, "limits.default", value),
        None => Some(d.default),
    };
    let action = choice(p, "limits.action", raw.action, d.action, ACTIONS);
    let identity = match raw.identity {
        Some(words) => identity(p, words),
        None => Some(d.identity),
    };
    let ipv6_prefix = match raw.ipv6_prefix {
        None => Some(d.ipv6_prefix),
        Some(n) => {
            let prefix = u8::try_from(n).ok().filter(|n| (1..=128).contains(n));
            if prefix.is_none() {
                p.add(
                    "limits.ipv6_prefix",
                    format!("{n} is out of range; give a prefix length from 1 to 128 (bits)"),
                );
            }
            prefix
        }
    };
    let overrides = overrides(p, raw.overrides, vhost_names);

    let exempt_users = each(p, "limits.exempt_users", raw.exempt_users, |user| {
        if user.is_empty() {
            Err("must not be empty; give an AUTH login".to_owned())
        } else {
            Ok(user)
        }
    });
    let exempt_vhosts = each(p, "limits.exempt_vhosts", raw.exempt_vhosts, |name| {
        vhost_reference(&name, vhost_names).map(|()| name)
    });
    let exempt_local_users = each(
        p,
        "limits.exempt_local_users",
        raw.exempt_local_users,
        |name| local_user(&name).map(|()| name),
    );
    let exempt_networks = each(p, "limits.exempt_networks", raw.exempt_networks, |net| {
        network(&net)
    });

    let rotation = off_or_rate(p, "limits.rotation", raw.rotation, d.rotation);
    let lock_after_refusals = match raw.lock_after_refusals {
        None => Some(d.lock_after_refusals),
        Some(0) => Some(None),
        Some(n) => match u32::try_from(n) {
            Ok(n) => Some(Some(n)),
            Err(_) => {
                p.add(
                    "limits.lock_after_refusals",
                    format!(
                        "{n} is out of range; give a number of refusals from 1 to {}, or 0 to \
                         never lock",
                        u32::MAX
                    ),
                );
                None
            }
        },
    };
    let lock_window = window(p, "limits.lock_window", raw.lock_window, d.lock_window);
    let lock_duration = match raw.lock_duration {
        None => Some(d.lock_duration),
        Some(word) if word == UNTIL_UNLOCKED => Some(None),
        Some(text) => check(p, "limits.lock_duration", lock_duration(&text)).map(Some),
    };
    let contact = match raw.contact {
        None => Some(None),
        Some(text) => check(p, "limits.contact", contact(&text)).map(|()| Some(text)),
    };

    Some(LimitsConfig {
        default: default?,
        action: action?,
        identity: identity?,
        ipv6_prefix: ipv6_prefix?,
        overrides: overrides?,
        exempt_users: exempt_users?,
        exempt_vhosts: exempt_vhosts?,
        exempt_local_users: exempt_local_users?,
        exempt_networks: exempt_networks?,
        rotation: rotation?,
        lock_after_refusals: lock_after_refusals?,
        lock_window: lock_window?,
        lock_duration: lock_duration?,
        contact: contact?,
    })
}

/// A limit as TOML allows it: a string for [`parse_limit`], or a list of rates.
fn limit_value(p: &mut Problems, key: &str, value: toml::Value) -> Option<Limit> {
    let items = match value {
        toml::Value::String(text) => return check(p, key, parse_limit(&text)),
        toml::Value::Array(items) => items,
        other => {
            p.add(
                key,
                format!("{other} is not a limit; {RATE_FORM}{LIMIT_ALTERNATIVES}"),
            );
            return None;
        }
    };
    if items.is_empty() {
        p.add(
            key,
            format!("must not be empty; {RATE_FORM}{LIMIT_ALTERNATIVES}"),
        );
        return None;
    }
    let mut rates = Some(Vec::with_capacity(items.len()));
    for (i, item) in items.into_iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let parsed = match item {
            toml::Value::String(text) if text.trim() == UNLIMITED => Err(
                "\"unlimited\" cannot be combined with rates; write it alone, not in a list"
                    .to_owned(),
            ),
            toml::Value::String(text) => rate(&text).map_err(|e| e.message(&text, "")),
            other => Err(format!("{other} is not a string; {RATE_FORM}")),
        };
        match (&mut rates, check(p, item_key, parsed)) {
            (Some(rates), Some(rate)) => rates.push(rate),
            _ => rates = None,
        }
    }
    let rates = rates?;
    check(p, key, distinct_windows(&rates)).map(|()| Limit::Rates(rates))
}

/// `limits.identity`: sources, each at most once, at least one.
fn identity(p: &mut Problems, words: Vec<String>) -> Option<Vec<IdentitySource>> {
    if words.is_empty() {
        p.add(
            "limits.identity",
            "must not be empty; list one or more of \"auth\", \"vhost\", \"user\", \"ip\"",
        );
        return None;
    }
    let mut seen = Vec::with_capacity(words.len());
    let mut ok = true;
    for (i, word) in words.into_iter().enumerate() {
        let key = format!("limits.identity[{i}]");
        let default = IdentitySource::Ip; // Unused: the word is given.
        match choice(p, &key, Some(word.clone()), default, IDENTITY_SOURCES) {
            Some(source) if seen.contains(&source) => {
                p.add(
                    key,
                    format!("\"{word}\" is listed twice; name each source at most once"),
                );
                ok = false;
            }
            Some(source) => seen.push(source),
            None => ok = false,
        }
    }
    ok.then_some(seen)
}

/// Every `[[limits.override]]`; keys must be unique.
fn overrides(
    p: &mut Problems,
    raw: Vec<RawOverride>,
    vhost_names: &HashSet<String>,
) -> Option<Vec<Override>> {
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut out = Some(Vec::with_capacity(raw.len()));
    for (i, raw) in raw.into_iter().enumerate() {
        let fallback = format!("limits.override[#{}]", i + 1);
        let key = match raw.key {
            Some(text) => check(p, format!("{fallback}.key"), sender_key(&text, vhost_names)),
            None => {
                p.add(format!("{fallback}.key"), format!("required; {KEY_FORM}"));
                None
            }
        };
        let label = key
            .as_ref()
            .map_or(fallback, |k| format!("limits.override[{k}]"));
        let mut unique = true;
        if let Some(key) = &key {
            if let Some(first) = first_of.get(key) {
                p.add(
                    format!("{label}.key"),
                    format!(
                        "\"{key}\" is already the key of override #{first}; keys must be unique"
                    ),
                );
                unique = false;
            } else {
                first_of.insert(key.clone(), i + 1);
            }
        }
        let limit = match raw.limit {
            Some(value) => limit_value(p, &format!("{label}.limit"), value),
            None => {
                p.add(
                    format!("{label}.limit"),
                    format!("required; {RATE_FORM}{LIMIT_ALTERNATIVES}"),
                );
                None
            }
        };
        match (&mut out, key, limit) {
            (Some(out), Some(key), Some(limit)) if unique => out.push(Override { key, limit }),
            _ => out = None,
        }
    }
    out
}

/// A sender key as logged. `ip:` keys are returned in canonical form (IPv6
/// compressed and lower-case, IPv4-mapped as IPv4, host bits cleared, a
/// full-length network as a bare address), so that two spellings of one key
/// are one key.
fn sender_key(text: &str, vhost_names: &HashSet<String>) -> Result<String, String> {
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(format!("\"{text}\" is not a sender key; {KEY_FORM}"));
    };
    if !matches!(kind, "auth" | "vhost" | "user" | "uid" | "ip") {
        return Err(format!(
            "\"{text}\" does not start with auth:, vhost:, user:, uid: or ip:; {KEY_FORM}"
        ));
    }
    if rest.is_empty() {
        return Err(format!(
            "\"{text}\" has nothing after \"{kind}:\"; {KEY_FORM}"
        ));
    }
    match kind {
        "vhost" => vhost_reference(rest, vhost_names).map(|()| text.to_owned()),
        "ip" => ip_key(rest).map(|canonical| format!("ip:{canonical}")),
        "user" => local_user(rest).map(|()| text.to_owned()),
        "uid" => match rest.parse::<u32>() {
            Ok(uid) => Ok(format!("uid:{uid}")),
            Err(_) => Err(format!(
                "\"{rest}\" after \"uid:\" is not a number from 0 to {}",
                u32::MAX
            )),
        },
        _ => Ok(text.to_owned()),
    }
}

/// A local Unix user's name, as a key or an exemption names it. Whether the
/// user exists is not checked: a site may be added after the file is written.
fn local_user(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a Unix user name (printable, no ':' or spaces, not empty)"
        ))
    }
}

/// The part of an `ip:` key after the colon, canonical.
fn ip_key(text: &str) -> Result<String, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        // As the engine writes it: an IPv4-mapped address is IPv4.
        return Ok(crate::identity::normalize_ip(ip).to_string());
    }
    match text.parse::<IpNet>() {
        Ok(net) if net.prefix_len() == net.max_prefix_len() => Ok(net.addr().to_string()),
        Ok(net) => Ok(net.trunc().to_string()),
        Err(_) => Err(format!(
            "\"{text}\" after \"ip:\" is neither an address nor a network; write e.g. \
             \"ip:192.0.2.1\" or \"ip:2001:db8::/64\""
        )),
    }
}

/// A vhost named in `[limits]` must be a `[[vhost]]`: a typo would
/// otherwise exempt or raise nobody, silently.
fn vhost_reference(name: &str, vhost_names: &HashSet<String>) -> Result<(), String> {
    if vhost_names.contains(name) {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not the name of any [[vhost]]; define it, or fix the name"
        ))
    }
}

/// `limits.lock_duration` other than `"until-unlocked"`: a non-zero duration.
fn lock_duration(text: &str) -> Result<Duration, String> {
    let form = "write e.g. \"24h\" or \"7d\", or \"until-unlocked\"";
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("must not be zero; {form}")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("\"{text}\" is not a duration ({e}); {form}")),
    }
}

/// `limits.contact`: reply text (RFC 5321 4.2, tab and printable ASCII), short.
fn contact(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty; remove the key for no contact".to_owned());
    }
    if !text.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        return Err(
            "must be one line of printable ASCII (no CR, LF or other control characters; \
             it is quoted in SMTP replies)"
                .to_owned(),
        );
    }
    if text.chars().count() > MAX_CONTACT_LEN {
        return Err(format!(
            "is longer than {MAX_CONTACT_LEN} characters; it must fit in one SMTP reply line"
        ));
    }
    Ok(())
}

/// A duration from 1s to 31 days, like the window of a rate.
fn window(
    p: &mut Problems,
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Option<Duration> {
    let Some(text) = value else {
        return Some(default);
    };
    let window = duration(p, key, Some(text.clone()), default)?;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
        p.add(
            key,
            format!("\"{text}\" is out of range; give a window from \"1s\" to \"31d\""),
        );
        return None;
    }
    Some(window)
}

/// `"off"`, or a rate.
fn off_or_rate(
    p: &mut Problems,
    key: &str,
    value: Option<String>,
    default: Option<Rate>,
) -> Option<Option<Rate>> {
    match value {
        None => Some(default),
        Some(word) if word == OFF => Some(None),
        Some(text) => {
            let parsed = rate(&text).map_err(|e| e.message(&text, OFF_ALTERNATIVE));
            check(p, key, parsed).map(Some)
        }
    }
}

/// Checks every entry of a list with `f`, reporting each under `key[i]`.
fn each<T>(
    p: &mut Problems,
    key: &str,
    items: Vec<String>,
    mut f: impl FnMut(String) -> Result<T, String>,
) -> Option<Vec<T>> {
    let mut out = Some(Vec::with_capacity(items.len()));
    for (i, item) in items.into_iter().enumerate() {
        match (&mut out, check(p, format!("{key}[{i}]"), f(item))) {
            (Some(out), Some(v)) => out.push(v),
            _ => out = None,
        }
    }
    out
}

// === [protect] ===

fn protect_section(p: &mut Problems, raw: RawProtect) -> Option<ProtectConfig> {
    let d = ProtectConfig::default();
    let connections_per_ip = off_or_rate(
        p,
        "protect.connections_per_ip",
        raw.connections_per_ip,
        d.connections_per_ip,
    );
    let auth_failures_per_ip = off_or_rate(
        p,
        "protect.auth_failures_per_ip",
        raw.auth_failures_per_ip,
        d.auth_failures_per_ip,
    );
    let auth_failures_per_user = off_or_rate(
        p,
        "protect.auth_failures_per_user",
        raw.auth_failures_per_user,
        d.auth_failures_per_user,
    );
    let rcpt_pace = off_or_rate(p, "protect.rcpt_pace", raw.rcpt_pace, d.rcpt_pace);
    Some(ProtectConfig {
        connections_per_ip: connections_per_ip?,
        auth_failures_per_ip: auth_failures_per_ip?,
        auth_failures_per_user: auth_failures_per_user?,
        rcpt_pace: rcpt_pace?,
    })
}
