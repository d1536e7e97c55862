use std::time::Duration;

use super::render::csv_field;
use super::*;

/// 2026-11-01 00:00 UTC: the first hour of the test period.
const START: Time = 1_793_491_200;

/// Half an hour into the last hour of a 30-day period starting at [`START`].
const NOW: Time = START + 30 * 86_400 - 1800;

fn rate(count: u32, secs: u64) -> Rate {
    Rate {
        count,
        window: Duration::from_secs(secs),
    }
}

/// `n` recipients tried in hour `h` of the period, enforced under `limit`
/// per hour: the excess refused.
fn enforced(key: &str, h: u32, n: u64, limit: u64) -> HourlyTotal {
    HourlyTotal {
        key: key.to_owned(),
        hour: START + h * HOUR,
        sent: n.min(limit),
        refused: n.saturating_sub(limit),
        observed: 0,
    }
}

/// The same in observe mode: everything sent, the excess observed.
fn observed(key: &str, h: u32, n: u64, limit: u64) -> HourlyTotal {
    HourlyTotal {
        key: key.to_owned(),
        hour: START + h * HOUR,
        sent: n,
        refused: 0,
        observed: n.saturating_sub(limit),
    }
}

/// Lists are exempt, `unl:` keys have an unlimited override, the rest the
/// default 12/1h.
fn story_policy(key: &str) -> (Vec<Rate>, Source) {
    if key.starts_with("auth:list") {
        (Vec::new(), Source::Exempt)
    } else if key.starts_with("auth:unl") {
        (Vec::new(), Source::Override)
    } else {
        (vec![rate(12, 3600)], Source::Default)
    }
}

/// The story's month: 100 senders peaking at 1..=10 per hour (ten each),
/// 3 exempt lists at 500, and two outliers at 200 and 80. Everyone also
/// sends 1 recipient at 09:00 every day.
fn month(row: fn(&str, u32, u64, u64) -> HourlyTotal) -> Vec<HourlyTotal> {
    let mut senders: Vec<(String, u64)> = (0..100)
        .map(|i| (format!("auth:user{i:03}@example.com"), 1 + i % 10))
        .collect();
    senders.extend((0..3).map(|j| (format!("auth:list{j}@example.net"), 500)));
    senders.push(("auth:shop@customer.example".to_owned(), 200));
    senders.push(("vhost:shop-42".to_owned(), 80));
    let mut rows = Vec::new();
    for (i, (key, peak)) in senders.iter().enumerate() {
        let limit = hourly_limit(&story_policy(key).0).unwrap_or(u64::MAX);
        for day in 0..30 {
            rows.push(row(key, day * 24 + 9, 1, limit));
        }
        rows.push(row(key, (i as u32 % 30) * 24 + 14, *peak, limit));
    }
    rows
}

fn build_30(rows: &[HourlyTotal]) -> Report {
    build(rows, &story_policy, 30, NOW)
}

fn only(report: &Report) -> &SenderStats {
    assert_eq!(report.senders.len(), 1, "{report:#?}");
    &report.senders[0]
}

#[test]
fn period_is_whole_clock_hours_ending_with_now() {
    for (days, now, expected) in [
        (30, NOW, (START, START + 30 * 86_400)),
        (1, START + 3600, (START + 7200 - 86_400, START + 7200)),
        (1, START + 3599, (START + 3600 - 86_400, START + 3600)),
        // No days means one day.
        (0, START, (START + 3600 - 86_400, START + 3600)),
        // Longer than the clock has run: from the epoch.
        (u32::MAX, START, (0, START + 3600)),
    ] {
        assert_eq!(period(days, now), expected, "days {days}, now {now}");
    }
}

#[test]
fn the_story_month() {
    let report = build_30(&month(enforced));
    assert_eq!(
        (report.days, report.from, report.to),
        (30, START, START + 30 * 86_400)
    );
    assert_eq!(report.suggestion.limit, 12);
    assert_eq!(
        report.suggestion.outliers,
        ["auth:shop@customer.example", "vhost:shop-42"]
    );
    assert!(
        report
            .suggestion
            .rule
            .contains("max(8 + 3 × 5, 2 × 6) = 23; 2 are above it."),
        "{}",
        report.suggestion.rule
    );
    assert!(
        report
            .suggestion
            .rule
            .contains("highest peak hour of the others (10) plus 20 % rounded up, and at least 2 more: 12 recipients per hour"),
        "{}",
        report.suggestion.rule
    );
    let s = &report.summary;
    assert_eq!(
        (s.senders, s.at_or_under, s.over, s.exempt),
        (105, 10, 2, 3)
    );
    assert_eq!(
        s.text,
        "105 senders over 30 days; all but 2 stayed at or under 10 recipients per hour; \
         exempt: 3 (auth:list0@example.net, auth:list1@example.net, auth:list2@example.net). \
         Suggested default: 12/1h."
    );

    // Busiest first, ties by key.
    let order: Vec<(&str, u64)> = report.senders[..6]
        .iter()
        .map(|s| (s.key.as_str(), s.peak_hour))
        .collect();
    assert_eq!(
        order,
        [
            ("auth:list0@example.net", 500),
            ("auth:list1@example.net", 500),
            ("auth:list2@example.net", 500),
            ("auth:shop@customer.example", 200),
            ("vhost:shop-42", 80),
            ("auth:user009@example.com", 10),
        ]
    );

    let shop = &report.senders[3];
    assert_eq!(shop.class, "auth");
    assert_eq!(
        (shop.limit.as_str(), shop.source.as_str()),
        ("12/1h", "default")
    );
    // 30 hours of 1, one of 200 on day 103 % 30 = 13 at 14:00.
    assert_eq!(shop.total, 230);
    assert_eq!(shop.active_hours, 31);
    assert_eq!(shop.peak_at, START + (13 * 24 + 14) * HOUR);
    assert_eq!(shop.hours_over_limit, 1);
    assert_eq!(shop.refused, 188);
    // 31 active hours of 720: the 8th busiest is a 1.
    assert_eq!(shop.p99_hour, 1);

    let list = &report.senders[0];
    assert_eq!(
        (list.limit.as_str(), list.source.as_str()),
        ("unlimited", "exempt")
    );
    assert_eq!(list.hours_over_limit, 0);
    assert!(list.is_exempt());
    assert_eq!(report.senders[5].class, "auth");
    assert_eq!(
        report
            .senders
            .iter()
            .find(|s| s.key == "vhost:shop-42")
            .unwrap()
            .class,
        "vhost"
    );
}

#[test]
fn observe_mode_data_reads_like_enforced_data() {
    let enforced = build_30(&month(enforced));
    let observed = build_30(&month(observed));
    assert_eq!(observed.suggestion, enforced.suggestion);
    assert_eq!(observed.summary, enforced.summary);
    for (o, e) in observed.senders.iter().zip(&enforced.senders) {
        assert_eq!(
            (
                &o.key,
                o.total,
                o.peak_hour,
                o.peak_at,
                o.p99_hour,
                o.hours_over_limit
            ),
            (
                &e.key,
                e.total,
                e.peak_hour,
                e.peak_at,
                e.p99_hour,
                e.hours_over_limit
            ),
        );
        // What enforcement refused, observe mode accepted and noted.
        assert_eq!((o.refused, o.observed), (0, e.refused), "{}", o.key);
        assert_eq!(e.observed, 0);
    }
    // Observe-mode exempt senders are never over a limit; the others are.
    let shop = observed
        .senders
        .iter()
        .find(|s| s.key == "vhost:shop-42")
        .unwrap();
    assert_eq!((shop.peak_hour, shop.observed), (80, 68));
}

#[test]
fn hourly_equivalents() {
    for (rate, expected) in [
        (rate(12, 3600), 12),
        (rate(100, 86_400), 4),
        (rate(5, 600), 30),
        (rate(30, 1800), 60),
        (rate(1, 86_400), 1), // 0.04 an hour, at least 1
        (rate(7, 5400), 4),   // 4.67, rounded down
    ] {
        assert_eq!(hourly_rate(&rate), expected, "{rate:?}");
    }
    for (rates, expected) in [
        (vec![], None),
        (vec![rate(12, 3600)], Some(12)),
        (vec![rate(100, 86_400)], Some(4)),
        // The hour bounds a clock hour; the day only its average.
        (vec![rate(12, 3600), rate(100, 86_400)], Some(12)),
        (vec![rate(12, 3600), rate(3, 600)], Some(12)),
        (vec![rate(12, 3600), rate(1, 600)], Some(6)),
        (vec![rate(100, 86_400), rate(300, 7 * 86_400)], Some(1)),
    ] {
        assert_eq!(hourly_limit(&rates), expected, "{rates:?}");
    }
}

#[test]
fn hours_over_the_current_limit() {
    for (rates, source, hours, expected) in [
        (
            vec![rate(12, 3600)],
            Source::Default,
            vec![15, 15, 12, 5, 15],
            3,
        ),
        (vec![rate(12, 3600)], Source::Override, vec![12, 12], 0),
        (vec![rate(100, 86_400)], Source::Default, vec![5, 4, 3], 1),
        (vec![rate(5, 600)], Source::Default, vec![31, 30], 1),
        (vec![], Source::Override, vec![500, 500], 0),
        (vec![], Source::Exempt, vec![500], 0),
    ] {
        let rows: Vec<HourlyTotal> = hours
            .iter()
            .enumerate()
            .map(|(h, &n)| observed("auth:a@example.com", h as u32 * 5, n, 12))
            .collect();
        let limit = (rates.clone(), source);
        let report = build(&rows, &|_| limit.clone(), 30, NOW);
        let s = only(&report);
        assert_eq!(s.hours_over_limit, expected, "{rates:?} {hours:?}");
        assert_eq!(s.source, source.as_str());
    }
}

#[test]
fn p99_counts_the_quiet_hours() {
    // 30 days are 720 hours: p99 is the value at rank 713, the 8th busiest.
    for (days, hours, expected) in [
        (30, vec![100; 7], 0),
        (30, vec![100; 8], 100),
        (30, (1..=10).collect::<Vec<u64>>(), 3),
        (30, vec![5; 720], 5),
        // One day is 24 hours: rank 24, the busiest.
        (1, vec![3, 9, 4], 9),
    ] {
        let last = START + days * 86_400 - 3600;
        let rows: Vec<HourlyTotal> = hours
            .iter()
            .enumerate()
            .map(|(h, &n)| HourlyTotal {
                hour: last - h as u32 * HOUR,
                ..observed("ip:192.0.2.7", 0, n, 12)
            })
            .collect();
        let report = build(&rows, &story_policy, days, last + 60);
        let s = only(&report);
        assert_eq!(s.p99_hour, expected, "{days} days, {hours:?}");
        assert_eq!(s.class, "ip");
    }
}

#[test]
fn outliers_are_at_most_one_percent() {
    // Ten senders: the fence is max(1 + 0, 2 × 1) = 2, two are above it, but
    // 1 % of ten rounds up to one: the 60 is set aside, the 50 sets the limit.
    let mut rows: Vec<HourlyTotal> = (0..8)
        .map(|i| observed(&format!("ip:192.0.2.{i}"), 0, 1, 12))
        .collect();
    rows.push(observed("ip:192.0.2.50", 3, 50, 12));
    rows.push(observed("ip:192.0.2.60", 4, 60, 12));
    let report = build_30(&rows);
    assert_eq!(report.suggestion.outliers, ["ip:192.0.2.60"]);
    assert_eq!(report.suggestion.limit, 60);
    assert!(
        report.suggestion.rule.contains(
            "max(1 + 3 × 0, 2 × 1) = 2; 2 are above it; at most 1 % of them are set aside, \
             rounded up: the 1 highest."
        ),
        "{}",
        report.suggestion.rule
    );
    assert_eq!((report.summary.at_or_under, report.summary.over), (50, 1));
}

#[test]
fn suggestion_headroom() {
    // The highest peak plus 20 % rounded up, at least 2.
    for (peak, expected) in [(0, 2), (1, 3), (10, 12), (11, 14), (15, 18), (100, 120)] {
        let rows = [observed("auth:a@example.com", 0, peak, 12)];
        let report = build_30(&rows);
        assert_eq!(report.suggestion.limit, expected, "peak {peak}");
        assert!(report.suggestion.outliers.is_empty());
        assert!(report.suggestion.rule.contains("none is above it"));
    }
}

#[test]
fn summaries() {
    let many: Vec<HourlyTotal> = (0..1842)
        .map(|i| observed(&format!("auth:u{i}@example.com"), 0, 1 + i % 10, 12))
        .collect();
    let lists: Vec<HourlyTotal> = (0..5)
        .map(|j| observed(&format!("auth:list{j}@example.net"), 0, 400, 12))
        .collect();
    let unlimited = [observed("auth:unl@example.net", 0, 900, 12)];
    for (rows, text) in [
        (
            many.clone(),
            "1,842 senders over 30 days; all stayed at or under 10 recipients per hour; \
             exempt: none. Suggested default: 12/1h.",
        ),
        (
            [lists.clone(), unlimited.to_vec()].concat(),
            "6 senders over 30 days; none has a limit; exempt: 6 (auth:unl@example.net, \
             auth:list0@example.net, auth:list1@example.net, …). No suggestion.",
        ),
        (
            vec![observed("auth:a@example.com", 0, 1, 12)],
            "1 sender over 30 days; all stayed at or under 1 recipient per hour; \
             exempt: none. Suggested default: 3/1h.",
        ),
    ] {
        assert_eq!(build_30(&rows).summary.text, text);
    }
}

#[test]
fn empty_period() {
    // Rows outside the period do not count.
    let rows = [
        HourlyTotal {
            hour: START - 3600,
            ..observed("auth:a@example.com", 0, 5, 12)
        },
        HourlyTotal {
            hour: START + 30 * 86_400,
            ..observed("auth:a@example.com", 0, 5, 12)
        },
    ];
    for rows in [&rows[..], &[]] {
        let report = build_30(rows);
        assert!(report.senders.is_empty());
        assert_eq!(
            report.summary.text,
            "No mail in the period (30 days); no suggestion."
        );
        assert_eq!((report.summary.senders, report.summary.exempt), (0, 0));
        assert_eq!(report.suggestion.limit, 0);
        assert!(report.suggestion.outliers.is_empty());
        assert!(report.suggestion.rule.starts_with("No suggestion"));
        let text = report.to_text();
        assert!(text.contains("No mail in the period"), "{text}");
        assert!(!text.contains("peak/h"), "{text}");
        assert_eq!(report.to_csv().lines().count(), 1);
    }
}

#[test]
fn duplicate_rows_add_up() {
    let rows = [
        observed("auth:a@example.com", 2, 7, 12),
        enforced("auth:a@example.com", 2, 9, 5),
    ];
    let report = build_30(&rows);
    let s = only(&report);
    assert_eq!(
        (s.peak_hour, s.active_hours, s.total, s.refused),
        (16, 1, 16, 4)
    );
}

#[test]
fn csv_is_rfc_4180() {
    let rows = [observed("auth:smith, \"jo\"@example.com", 1, 15, 12)];
    let limit = (vec![rate(12, 3600), rate(100, 86_400)], Source::Override);
    let report = build(&rows, &|_| limit.clone(), 30, NOW);
    assert_eq!(
        report.to_csv(),
        format!(
            "key,class,limit,source,total,active_hours,peak_hour,peak_at,p99_hour,\
             hours_over_limit,refused,observed\r\n\
             \"auth:smith, \"\"jo\"\"@example.com\",auth,\"12/1h, 100/1day\",override,\
             15,1,15,{},0,1,0,3\r\n",
            START + 3600
        )
    );
    for (field, expected) in [
        ("plain", "plain"),
        ("a,b", "\"a,b\""),
        ("say \"hi\"", "\"say \"\"hi\"\"\""),
        ("two\nlines", "\"two\nlines\""),
        ("cr\r", "\"cr\r\""),
        ("", ""),
    ] {
        assert_eq!(csv_field(field), expected);
    }
}

#[test]
fn json_round_trips() {
    let report = build_30(&month(observed));
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["suggestion"]["limit"], 12);
    assert_eq!(value["senders"][3]["key"], "auth:shop@customer.example");
    assert_eq!(value["senders"][3]["peak_hour"], 200);
}

#[test]
fn text_report() {
    let report = build_30(&month(enforced));
    let text = report.to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Recipients per sender, 30 days: 2026-11-01 00:00 UTC to 2026-12-01 00:00 UTC"
    );
    assert!(
        text.contains("\nSuggested default: 12/1h, by this rule:\n  Hours are"),
        "{text}"
    );
    assert!(
        text.contains(
            "Consider exempting: auth:shop@customer.example (peak 200/h), vhost:shop-42\n(peak 80/h)."
        ),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.chars().count() <= WIDTH || l.contains("  "))
    );
    assert!(lines.iter().all(|l| l.trim_end() == *l));

    let header = lines
        .iter()
        .position(|l| l.starts_with("key "))
        .expect(&text);
    assert_eq!(
        lines[header],
        "key                         limit      source   peak/h  peak at               \
         p99/h  hours over  total  refused  observed"
    );
    assert_eq!(
        lines[header + 4],
        "auth:shop@customer.example  12/1h      default     200  2026-11-14 14:00 UTC      \
         1           1    230      188         0"
    );
    assert_eq!(lines.len() - header - 1, 105);
    // Aligned: the last column is a number, right-aligned.
    for line in &lines[header + 1..] {
        assert_eq!(
            line.chars().count(),
            lines[header].chars().count(),
            "{line}"
        );
    }
}

#[test]
fn thousands_separators() {
    for (n, text) in [
        (0, "0"),
        (999, "999"),
        (1000, "1,000"),
        (1842, "1,842"),
        (123_456, "123,456"),
        (1_000_000, "1,000,000"),
    ] {
        assert_eq!(thousands(n), text);
    }
}
