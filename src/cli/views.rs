//! The admin API's answers as people read them. Each function takes the
//! server's JSON and `now`, and returns the text to print. The answer types
//! are lenient (missing fields default) so an older or newer server still
//! shows what it can; `--json` is for exact fields.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::render::{Table, limit_text, percent, uptime, utc, value_text, when};

/// An answer the CLI could not read, with why.
pub type ViewResult = Result<String, String>;

fn parse<T: DeserializeOwned>(answer: &Value) -> Result<T, String> {
    T::deserialize(answer).map_err(|e| format!("{e} in {answer}"))
}

// === GET /api/status ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Status {
    version: String,
    uptime_seconds: u64,
    listeners: Vec<Listener>,
    senders_resident: u64,
    senders_locked: u64,
    default_limit: Value,
    action: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Listener {
    name: String,
    bind: String,
    sessions_active: u64,
}

pub fn status(answer: &Value) -> ViewResult {
    let s: Status = parse(answer)?;
    let mut facts = Table::plain(2);
    facts.row(["version", s.version.as_str()]);
    facts.row(["up".to_owned(), uptime(s.uptime_seconds)]);
    facts.row([
        "senders".to_owned(),
        format!(
            "{} resident, {} locked",
            s.senders_resident, s.senders_locked
        ),
    ]);
    facts.row(["default limit".to_owned(), limit_text(&s.default_limit)]);
    facts.row(["over a limit".to_owned(), value_text(&s.action)]);
    let mut listeners = Table::new(&["LISTENER", "BIND", "SESSIONS"]).right(2);
    for l in &s.listeners {
        listeners.row([
            l.name.clone(),
            l.bind.clone(),
            l.sessions_active.to_string(),
        ]);
    }
    Ok(format!("{}\n{}", facts.render(), listeners.render()))
}

// === GET /api/senders/{key} ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sender {
    key: String,
    class: String,
    limit: SenderLimit,
    windows: Vec<Window>,
    next_free: Option<u64>,
    lock: Option<Lock>,
    #[serde(rename = "override")]
    override_: Option<Override>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SenderLimit {
    rates: Value,
    unlimited: bool,
    source: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Window {
    rate: Value,
    recipients: u64,
    pending: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Lock {
    until: Option<u64>,
    reason: Value,
}

/// An override as the API keeps it (set by `raise` or `exempt`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Override {
    key: String,
    exempt: bool,
    limit: Value,
    until: Option<u64>,
    reason: String,
    who: String,
    at: Option<u64>,
}

impl Override {
    /// "500/1h until 2026-12-04 18:00 UTC (in 7 d)", "exempt, lasting".
    fn effect(&self, now: u64) -> String {
        let what = if self.exempt {
            "exempt".to_owned()
        } else {
            limit_text(&self.limit)
        };
        format!("{what} {}", until_text(self.until, now, "lasting"))
    }

    /// `effect`, then who set it, when and why.
    fn full(&self, now: u64) -> String {
        let at = self
            .at
            .map(|t| format!(" at {} UTC", utc(t)))
            .unwrap_or_default();
        format!(
            "{}; set by {}{at}: {}",
            self.effect(now),
            self.who,
            self.reason
        )
    }
}

/// "until 2026-12-04 18:00 UTC (in 7 d)", or `otherwise` with no end.
fn until_text(until: Option<u64>, now: u64, otherwise: &str) -> String {
    match until {
        Some(t) => format!("until {}", when(t, now)),
        None => otherwise.to_owned(),
    }
}

/// "4/12 in the last 1h (+1 pending)" from `rate` "12/1h".
fn window_text(w: &Window) -> String {
    let pending = match w.pending {
        0 => String::new(),
        n => format!(" (+{n} pending)"),
    };
    match w.rate.as_str().and_then(|r| r.split_once('/')) {
        Some((count, span)) => format!("{}/{count} in the last {span}{pending}", w.recipients),
        None => format!("{} of {}{pending}", w.recipients, value_text(&w.rate)),
    }
}

pub fn sender(answer: &Value, now: u64) -> ViewResult {
    let s: Sender = parse(answer)?;
    let mut t = Table::plain(2);
    t.row(["sender".to_owned(), format!("{} ({})", s.key, s.class)]);
    let limit = if s.limit.unlimited {
        "unlimited".to_owned()
    } else {
        limit_text(&s.limit.rates)
    };
    t.row(["limit".to_owned(), format!("{limit} ({})", s.limit.source)]);
    for (i, w) in s.windows.iter().enumerate() {
        t.row([
            if i == 0 { "counts" } else { "" }.to_owned(),
            window_text(w),
        ]);
    }
    let next_free = match s.next_free {
        _ if s.limit.unlimited => "now (no limit)".to_owned(),
        Some(at) if at > now => when(at, now),
        _ => "now".to_owned(),
    };
    t.row(["next free".to_owned(), next_free]);
    let lock = match &s.lock {
        None => "not locked".to_owned(),
        Some(l) => format!(
            "locked {}: {}",
            until_text(l.until, now, "until unlocked"),
            value_text(&l.reason)
        ),
    };
    t.row(["lock".to_owned(), lock]);
    let o = s
        .override_
        .as_ref()
        .map_or_else(|| "none".to_owned(), |o| o.full(now));
    t.row(["override".to_owned(), o]);
    Ok(t.render())
}

// === changes ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Changed {
    key: String,
    #[serde(rename = "override")]
    override_: Option<Override>,
    previous: Option<Override>,
    removed: Option<Override>,
    lock: Option<Lock>,
}

/// After `raise` or `exempt`: the new override and the one it replaced.
pub fn override_set(answer: &Value, now: u64) -> ViewResult {
    let c: Changed = parse(answer)?;
    let Some(o) = &c.override_ else {
        return Err(format!("no override in {answer}"));
    };
    let before = match &c.previous {
        Some(p) => format!("; replaces {}", p.effect(now)),
        None => String::new(),
    };
    Ok(format!("{}: {}{before}\n", c.key, o.effect(now)))
}

/// After `clear`.
pub fn override_cleared(answer: &Value, now: u64) -> ViewResult {
    let c: Changed = parse(answer)?;
    Ok(match &c.removed {
        Some(o) => format!(
            "{}: override {} removed; back to the file's policy\n",
            c.key,
            o.effect(now)
        ),
        None => format!("{}: no override; the file's policy applies\n", c.key),
    })
}

pub fn locked(answer: &Value, now: u64) -> ViewResult {
    let c: Changed = parse(answer)?;
    let until = c.lock.as_ref().and_then(|l| l.until);
    Ok(format!(
        "{}: locked {}\n",
        c.key,
        until_text(until, now, "until unlocked")
    ))
}

/// After `unlock` and `reset`: the key and what was done.
pub fn done(answer: &Value, what: &str) -> ViewResult {
    let c: Changed = parse(answer)?;
    Ok(format!("{}: {what}\n", c.key))
}

pub fn reloaded(answer: &Value) -> ViewResult {
    match answer.get("result").or_else(|| answer.get("reloaded")) {
        Some(Value::String(s)) if s != "reloaded" => Ok(format!("configuration {s}\n")),
        _ => Ok("configuration reloaded\n".to_owned()),
    }
}

// === GET /api/top ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Top {
    senders: Vec<TopSender>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TopSender {
    key: String,
    usage: f64,
    recipients: u64,
    locked: bool,
}

pub fn top(answer: &Value) -> ViewResult {
    let top: Top = parse(answer)?;
    if top.senders.is_empty() {
        return Ok("no sender has recipients counted right now\n".to_owned());
    }
    let mut t = Table::new(&["SENDER", "USAGE", "RECIPIENTS", "LOCKED"])
        .right(1)
        .right(2);
    for s in &top.senders {
        t.row([
            s.key.clone(),
            percent(s.usage),
            s.recipients.to_string(),
            if s.locked { "locked" } else { "" }.to_owned(),
        ]);
    }
    Ok(t.render())
}

// === GET /api/audit ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Audit {
    entries: Vec<AuditEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditEntry {
    at: u64,
    who: String,
    action: String,
    key: String,
    old: Option<String>,
    new: Option<String>,
    reason: String,
}

/// Unix times the server writes into audit text ("until 1796407200") as UTC.
fn audit_value(text: Option<&str>) -> String {
    let Some(text) = text else {
        return "-".to_owned();
    };
    let words: Vec<String> = text
        .split(' ')
        .scan(false, |after_until, word| {
            let out = match word.parse::<u64>() {
                Ok(t) if *after_until => utc(t),
                _ => word.to_owned(),
            };
            *after_until = word == "until";
            Some(out)
        })
        .collect();
    words.join(" ")
}

pub fn audit(answer: &Value) -> ViewResult {
    let audit: Audit = parse(answer)?;
    if audit.entries.is_empty() {
        return Ok("no changes recorded\n".to_owned());
    }
    let mut t = Table::new(&[
        "AT (UTC)", "WHO", "ACTION", "SENDER", "BEFORE", "AFTER", "REASON",
    ]);
    for e in &audit.entries {
        t.row([
            utc(e.at),
            e.who.clone(),
            e.action.clone(),
            if e.key.is_empty() {
                "-".to_owned()
            } else {
                e.key.clone()
            },
            audit_value(e.old.as_deref()),
            audit_value(e.new.as_deref()),
            e.reason.clone(),
        ]);
    }
    Ok(t.render())
}

// === GET /api/report ===

fn report(answer: &Value) -> Result<crate::report::Report, String> {
    parse(answer)
}

pub fn report_text(answer: &Value) -> ViewResult {
    report(answer).map(|r| r.to_text())
}

pub fn report_csv(answer: &Value) -> ViewResult {
    report(answer).map(|r| r.to_csv())
}
