//! `mailbrake report`: what each sender actually sent over the last days,
//! from the store's hourly per-key totals, and the default limit that would
//! fit them. Pure: the caller reads the store (from [`period`]'s start) and
//! the running policy, and passes `now`; nothing here does I/O or reads a clock.
//!
//! Two counting rules hold throughout:
//!
//! - **Hours are clock hours** (14:00–14:59 UTC), as the store buckets them:
//!   what an operator means by "recipients in an hour". The enforcer's window
//!   slides, so a burst straddling hh:00 can put up to twice a clock hour's
//!   peak into one sliding hour; the suggestion's headroom covers part of that.
//! - **Recipients are those the sender tried**: sent + refused. In observe
//!   mode nothing is refused and `sent` holds everything (`observed` is the
//!   part over the limit); under enforcement the refusals are what the limit
//!   held back. Either way the numbers show the sender's intent, so a report
//!   on observe-mode data reads like one on enforced data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Rate;
use crate::limits::Time;
use crate::limits::key::SenderKey;
use crate::limits::policy::{Source, clock_text, rate_text};
use crate::limits::store::HourlyTotal;

/// Seconds in one clock hour (the store's bucket).
const HOUR: Time = 3600;

/// Seconds in one day.
const DAY: u64 = 86_400;

/// The `limit` of a sender without one.
const UNLIMITED: &str = "unlimited";

/// Exempt senders named in the summary before "…".
const SUMMARY_NAMES: usize = 3;

/// Width the text output wraps its prose at.
const WIDTH: usize = 78;

/// The whole report, as `mailbrake report --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Days covered.
    pub days: u32,
    /// Start of the first hour covered (unix time).
    pub from: u32,
    /// End of the last hour covered, exclusive (unix time): the end of the
    /// hour holding `now`, so the current hour counts as far as it went.
    pub to: u32,
    /// Every sender with mail in the period, busiest peak hour first.
    pub senders: Vec<SenderStats>,
    pub summary: Summary,
    pub suggestion: Suggestion,
}

/// One sender over the period. Recipients are attempted ones (sent + refused).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SenderStats {
    /// The sender key (`auth:alice@example.com`).
    pub key: String,
    /// `auth`, `vhost`, `ip`, or `unknown` for a key that does not parse.
    pub class: String,
    /// Recipients over the whole period.
    pub total: u64,
    /// Clock hours with at least one recipient.
    pub active_hours: u32,
    /// Recipients in the busiest clock hour.
    pub peak_hour: u64,
    /// Start of the busiest clock hour (the earliest, on a tie; 0 if none).
    pub peak_at: u32,
    /// 99th percentile of recipients per clock hour over every hour of the
    /// period, hours without mail counting as 0 (nearest rank): at most 1 %
    /// of the period's hours were busier.
    pub p99_hour: u64,
    /// Clock hours over the current limit's hourly equivalent.
    pub hours_over_limit: u32,
    /// Recipients refused (enforced mode).
    pub refused: u64,
    /// Recipients accepted although over the limit (observe mode).
    pub observed: u64,
    /// The current limit as configured (`12/1h`, `12/1h, 100/1day`) or `unlimited`.
    pub limit: String,
    /// Where the limit comes from: `default`, `override` or `exempt`.
    pub source: String,
}

/// The report in the operator's terms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Senders with mail in the period, exempt ones included.
    pub senders: usize,
    /// The highest peak hour among the senders with a limit once the
    /// outliers are set aside: the base of the suggestion (0 if none).
    pub at_or_under: u64,
    /// Senders with a limit whose peak hour was above `at_or_under`.
    pub over: usize,
    /// Exempt senders: exempt, or an unlimited override.
    pub exempt: usize,
    /// One paragraph: "1,842 senders over 30 days; all but 8 stayed at or
    /// under 10 recipients per hour; exempt: 3 (…). Suggested default: 12/1h."
    /// "All but" counts the senders with a limit; the exempt are listed apart.
    pub text: String,
}

/// The suggested default limit and the senders to consider exempting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Suggestion {
    /// Recipients per hour; 0 when no sender with a limit sent mail.
    pub limit: u64,
    /// How `limit` and `outliers` were found, with this period's numbers.
    pub rule: String,
    /// Keys whose peaks are far above everyone else's, highest first.
    pub outliers: Vec<String>,
}

/// The period a report for `days` days at `now` covers: whole clock hours,
/// `[from, to)`, ending with the hour holding `now`. Read the store from `from`.
pub fn period(days: u32, now: Time) -> (Time, Time) {
    let to = hour_of(now).saturating_add(HOUR);
    let span = u64::from(days.max(1)) * DAY;
    let from = u64::from(to).saturating_sub(span);
    (Time::try_from(from).unwrap_or(0), to)
}

/// Builds the report for the `days` days up to `now` (at least one day).
/// `limit_of(key)` gives the key's current limit (rates, source) from the
/// running policy. Totals outside [`period`] are ignored; duplicates add up.
pub fn build(
    totals: &[HourlyTotal],
    limit_of: &dyn Fn(&str) -> (Vec<Rate>, Source),
    days: u32,
    now: Time,
) -> Report {
    let days = days.max(1);
    let (from, to) = period(days, now);
    let period_hours = u64::from((to - from) / HOUR);

    let mut by_key: BTreeMap<&str, BTreeMap<Time, Counts>> = BTreeMap::new();
    for t in totals.iter().filter(|t| (from..to).contains(&t.hour)) {
        let counts = by_key
            .entry(&t.key)
            .or_default()
            .entry(hour_of(t.hour))
            .or_default();
        counts.attempted += t.sent + t.refused;
        counts.refused += t.refused;
        counts.observed += t.observed;
    }

    let mut senders: Vec<SenderStats> = by_key
        .into_iter()
        .map(|(key, hours)| sender_stats(key, &hours, period_hours, limit_of(key)))
        .collect();
    senders.sort_by(|a, b| {
        b.peak_hour
            .cmp(&a.peak_hour)
            .then_with(|| a.key.cmp(&b.key))
    });

    let (suggestion, at_or_under) = suggest(&senders);
    let summary = summarize(&senders, &suggestion, at_or_under, days);
    Report {
        days,
        from,
        to,
        senders,
        summary,
        suggestion,
    }
}

/// A rate's hourly equivalent: its count for a 1 h window, else
/// `count × 3600 / window` rounded down, at least 1.
pub fn hourly_rate(rate: &Rate) -> u64 {
    let window = rate.window.as_secs().max(1);
    (u64::from(rate.count) * u64::from(HOUR) / window).max(1)
}

/// A limit's hourly equivalent; `None` for unlimited. With several rates the
/// strictest of those with windows up to an hour: they bound a clock hour,
/// while a longer window (`100/24h`) allows its whole count in one hour and
/// only its average per hour over the day, so it counts only when the limit
/// has no rate of an hour or less.
pub fn hourly_limit(rates: &[Rate]) -> Option<u64> {
    let short = rates
        .iter()
        .filter(|r| r.window.as_secs() <= u64::from(HOUR))
        .map(hourly_rate)
        .min();
    short.or_else(|| rates.iter().map(hourly_rate).min())
}

// === impl SenderStats ===

impl SenderStats {
    /// Exempt from limits: exempt, or an unlimited override. Left out of the
    /// suggestion (a limited default does not apply to them).
    pub fn is_exempt(&self) -> bool {
        self.source == Source::Exempt.as_str()
            || (self.source == Source::Override.as_str() && self.limit == UNLIMITED)
    }
}

/// One key's counts for one clock hour.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Sent + refused.
    attempted: u64,
    refused: u64,
    observed: u64,
}

fn sender_stats(
    key: &str,
    hours: &BTreeMap<Time, Counts>,
    period_hours: u64,
    (rates, source): (Vec<Rate>, Source),
) -> SenderStats {
    let hourly = hourly_limit(&rates);
    let (mut peak_hour, mut peak_at) = (0, 0);
    for (&hour, c) in hours {
        if c.attempted > peak_hour {
            (peak_hour, peak_at) = (c.attempted, hour);
        }
    }
    let mut active: Vec<u64> = hours
        .values()
        .map(|c| c.attempted)
        .filter(|&n| n > 0)
        .collect();
    active.sort_unstable();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    SenderStats {
        key: key.to_owned(),
        class: SenderKey::parse(key)
            .map_or("unknown", |k| k.class().as_str())
            .to_owned(),
        total: active.iter().sum(),
        active_hours: count(active.len()),
        peak_hour,
        peak_at,
        p99_hour: percentile_with_zeros(&active, period_hours, 99),
        hours_over_limit: hourly.map_or(0, |limit| {
            count(active.iter().filter(|&&n| n > limit).count())
        }),
        refused: hours.values().map(|c| c.refused).sum(),
        observed: hours.values().map(|c| c.observed).sum(),
        limit: if rates.is_empty() {
            UNLIMITED.to_owned()
        } else {
            rates.iter().map(rate_text).collect::<Vec<_>>().join(", ")
        },
        source: source.as_str().to_owned(),
    }
}

/// The `p`-th percentile (nearest rank: the value at rank ⌈p × n / 100⌉,
/// counting from 1) of ascending `sorted`; 0 when empty.
fn nearest_rank(sorted: &[u64], p: u64) -> u64 {
    let n = sorted.len() as u64;
    if n == 0 {
        return 0;
    }
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// [`nearest_rank`] over `hours` values: the ascending non-zero `active`
/// ones and zeros for the rest. Counting the quiet hours answers "busier
/// than this in only 1 % of the period", the question a limit asks; over
/// active hours only, a sender mailing 10 once a month would look like one
/// mailing 10 every hour.
fn percentile_with_zeros(active: &[u64], hours: u64, p: u64) -> u64 {
    let n = hours.max(active.len() as u64);
    if n == 0 {
        return 0;
    }
    let rank = (p * n).div_ceil(100).clamp(1, n);
    let zeros = n - active.len() as u64;
    if rank <= zeros {
        0
    } else {
        active[(rank - zeros - 1) as usize]
    }
}

/// The suggestion from `senders` (busiest first), and its base: the highest
/// remaining peak.
fn suggest(senders: &[SenderStats]) -> (Suggestion, u64) {
    let limited: Vec<&SenderStats> = senders.iter().filter(|s| !s.is_exempt()).collect();
    if limited.is_empty() {
        let rule = "No suggestion: no sender with a limit sent mail in the period \
                    (exempt senders, and those with an unlimited override, are left out)."
            .to_owned();
        let suggestion = Suggestion {
            limit: 0,
            rule,
            outliers: Vec::new(),
        };
        return (suggestion, 0);
    }

    let mut peaks: Vec<u64> = limited.iter().map(|s| s.peak_hour).collect();
    peaks.sort_unstable();
    let q1 = nearest_rank(&peaks, 25);
    let median = nearest_rank(&peaks, 50);
    let q3 = nearest_rank(&peaks, 75);
    let iqr = q3 - q1;
    let fence = q3
        .saturating_add(iqr.saturating_mul(3))
        .max(median.saturating_mul(2));
    let above = limited.iter().filter(|s| s.peak_hour > fence).count();
    let cap = limited.len().div_ceil(100);
    // `limited` is busiest first: the highest peaks are set aside first.
    let outliers: Vec<String> = limited
        .iter()
        .take(above.min(cap))
        .map(|s| s.key.clone())
        .collect();
    let base = limited.get(outliers.len()).map_or(0, |s| s.peak_hour);
    let headroom = base.div_ceil(5).max(2);
    let limit = base.saturating_add(headroom);

    let n = limited.len();
    let set_aside = match (above, outliers.len()) {
        (0, _) => "none is above it".to_owned(),
        (a, o) if a == o => format!("{} {} above it", thousands(a as u64), are(a)),
        (a, o) => format!(
            "{} {} above it; at most 1 % of them are set aside, rounded up: the {} highest",
            thousands(a as u64),
            are(a),
            thousands(o as u64)
        ),
    };
    let rule = format!(
        "Hours are clock hours; recipients are those a sender tried (sent + refused). \
         Exempt senders (exempt, or an unlimited override) are left out. \
         Outliers: of the {n} {senders} with a limit, those whose peak hour is above \
         the larger of Q3 + 3 × IQR and 2 × median of their peak hours (nearest rank), \
         at most 1 % of them (rounded up), highest first: max({q3} + 3 × {iqr}, 2 × {median}) \
         = {fence}; {set_aside}. Suggested default: the highest peak hour of the others \
         ({base}) plus 20 % rounded up, and at least 2 more: {limit} recipients per hour.",
        n = thousands(n as u64),
        senders = plural(n as u64, "sender", "senders"),
    );
    let suggestion = Suggestion {
        limit,
        rule,
        outliers,
    };
    (suggestion, base)
}

fn summarize(
    senders: &[SenderStats],
    suggestion: &Suggestion,
    at_or_under: u64,
    days: u32,
) -> Summary {
    let exempt: Vec<&str> = senders
        .iter()
        .filter(|s| s.is_exempt())
        .map(|s| s.key.as_str())
        .collect();
    let limited = senders.len() - exempt.len();
    let over = senders
        .iter()
        .filter(|s| !s.is_exempt() && s.peak_hour > at_or_under)
        .count();
    let days_text = format!(
        "{} {}",
        thousands(u64::from(days)),
        plural(u64::from(days), "day", "days")
    );

    let text = if senders.is_empty() {
        format!("No mail in the period ({days_text}); no suggestion.")
    } else {
        let per_hour = format!(
            "{} {} per hour",
            thousands(at_or_under),
            plural(at_or_under, "recipient", "recipients")
        );
        let stayed = match (limited, over) {
            (0, _) => "none has a limit".to_owned(),
            (_, 0) => format!("all stayed at or under {per_hour}"),
            (_, o) => format!(
                "all but {} stayed at or under {per_hour}",
                thousands(o as u64)
            ),
        };
        let exempt_text = match exempt.len() {
            0 => "none".to_owned(),
            n => {
                let mut names = exempt[..n.min(SUMMARY_NAMES)].join(", ");
                if n > SUMMARY_NAMES {
                    names.push_str(", …");
                }
                format!("{} ({names})", thousands(n as u64))
            }
        };
        let suggested = match suggestion.limit {
            0 => "No suggestion.".to_owned(),
            l => format!("Suggested default: {l}/1h."),
        };
        format!(
            "{} {} over {days_text}; {stayed}; exempt: {exempt_text}. {suggested}",
            thousands(senders.len() as u64),
            plural(senders.len() as u64, "sender", "senders"),
        )
    };
    Summary {
        senders: senders.len(),
        at_or_under,
        over,
        exempt: exempt.len(),
        text,
    }
}

/// Start of the clock hour holding `at`.
fn hour_of(at: Time) -> Time {
    at - at % HOUR
}

mod render;

use render::{are, plural, thousands};

#[cfg(test)]
mod tests;
