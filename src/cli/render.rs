//! Text for people: aligned tables, UTC times, "in 12 min". Pure functions,
//! no clock reads: every relative time takes `now` from the caller.

use serde_json::Value;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table whose columns are as wide as their widest cell, two spaces apart.
#[derive(Debug, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header line; every column left-aligned.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: Some(header.iter().map(|h| (*h).to_owned()).collect()),
            align: vec![Align::Left; header.len()],
            rows: Vec::new(),
        }
    }

    /// A table without a header (label/value lines).
    pub fn plain(columns: usize) -> Self {
        Table {
            header: None,
            align: vec![Align::Left; columns],
            rows: Vec::new(),
        }
    }

    /// Right-aligns `column` (numbers).
    pub fn right(mut self, column: usize) -> Self {
        if let Some(a) = self.align.get_mut(column) {
            *a = Align::Right;
        }
        self
    }

    /// Adds a row; missing cells are blank, extra cells are kept.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row, each ending in `\n`, no trailing spaces.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if i > 0 {
                    text.push_str("  ");
                }
                match self.align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Left => {
                        text.push_str(cell);
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        text.extend(std::iter::repeat_n(' ', pad));
                        text.push_str(cell);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

// === times ===

/// The civil date (year, month, day) of a count of days since 1970-01-01
/// (H. Hinnant's `civil_from_days`, proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (year, month as u32, day as u32)
}

/// A unix time on the UTC clock, to the minute: "2026-11-27 14:32".
pub fn utc(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(days);
    let secs = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// A length of time, rounded up to one unit: "40 s", "12 min", "5 h", "3 d".
pub fn span(secs: u64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 2 * 3600 {
        format!("{} min", secs.div_ceil(60))
    } else if secs < 2 * 86_400 {
        format!("{} h", secs.div_ceil(3600))
    } else {
        format!("{} d", secs.div_ceil(86_400))
    }
}

/// `at` seen from `now`: "in 12 min", "3 h ago", "now".
pub fn relative(at: u64, now: u64) -> String {
    match at.cmp(&now) {
        std::cmp::Ordering::Equal => "now".to_owned(),
        std::cmp::Ordering::Greater => format!("in {}", span(at - now)),
        std::cmp::Ordering::Less => format!("{} ago", span(now - at)),
    }
}

/// "2026-11-27 14:32 UTC (in 12 min)".
pub fn when(at: u64, now: u64) -> String {
    format!("{} UTC ({})", utc(at), relative(at, now))
}

/// An uptime in its two largest units, rounded down: "3 d 4 h", "2 h 5 min", "40 s".
pub fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{secs} s")
    }
}

// === values ===

/// A share of a limit: 0.834 → "83 %".
pub fn percent(ratio: f64) -> String {
    format!("{:.0} %", ratio * 100.0)
}

/// Any JSON value as one short line: strings bare, lists joined by ", ",
/// null as "-".
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(value_text).collect::<Vec<_>>().join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// A limit as the API writes it: "500/1h", a list of rates, "unlimited", or
/// an object with a `limit`, `rates` or `unlimited` field.
pub fn limit_text(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            if o.get("unlimited").and_then(Value::as_bool) == Some(true) {
                "unlimited".to_owned()
            } else if let Some(l) = o.get("limit").or_else(|| o.get("rates")) {
                limit_text(l)
            } else {
                v.to_string()
            }
        }
        other => value_text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let mut t = Table::new(&["SENDER", "USAGE", "NOTE"]).right(1);
        t.row(["auth:alice@example.com", "83 %", ""]);
        t.row(["ip:192.0.2.7", "100 %", "locked"]);
        assert_eq!(
            t.render(),
            "SENDER                  USAGE  NOTE\n\
             auth:alice@example.com   83 %\n\
             ip:192.0.2.7            100 %  locked\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::plain(2);
        t.row(["é", "x"]);
        t.row(["ab", "y"]);
        assert_eq!(t.render(), "é   x\nab  y\n");
    }

    #[test]
    fn table_fills_short_rows_and_keeps_long_ones() {
        let mut t = Table::plain(2);
        t.row(["a"]);
        t.row(["bb", "c", "d"]);
        assert_eq!(t.render(), "a\nbb  c  d\n");
        assert!(Table::new(&["A"]).is_empty());
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn civil_dates() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (11_016, (2000, 2, 29)),
            (11_017, (2000, 3, 1)),
            (20_784, (2026, 11, 27)),
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }

    #[test]
    fn utc_times() {
        for (unix, text) in [
            (0, "1970-01-01 00:00"),
            (1_795_790_000, "2026-11-27 14:33"),
            (1_795_789_959, "2026-11-27 14:32"),
            (1_796_407_200, "2026-12-04 18:00"),
            (951_782_400, "2000-02-29 00:00"),
            (u64::from(u32::MAX), "2106-02-07 06:28"),
        ] {
            assert_eq!(utc(unix), text, "{unix}");
        }
    }

    #[test]
    fn spans_and_relative_times() {
        for (secs, text) in [
            (0, "0 s"),
            (59, "59 s"),
            (60, "1 min"),
            (61, "2 min"),
            (720, "12 min"),
            (7199, "120 min"),
            (7200, "2 h"),
            (43_200, "12 h"),
            (172_799, "48 h"),
            (172_800, "2 d"),
            (259_200, "3 d"),
        ] {
            assert_eq!(span(secs), text, "{secs}");
        }
        assert_eq!(relative(1000, 1000), "now");
        assert_eq!(relative(1720, 1000), "in 12 min");
        assert_eq!(relative(1000, 1720), "12 min ago");
        assert_eq!(
            when(1_796_407_200, 1_796_407_200 - 3 * 3600),
            "2026-12-04 18:00 UTC (in 3 h)"
        );
    }

    #[test]
    fn uptimes() {
        for (secs, text) in [
            (40, "40 s"),
            (60, "1 min"),
            (7500, "2 h 5 min"),
            (3 * 86_400 + 4 * 3600 + 59, "3 d 4 h"),
        ] {
            assert_eq!(uptime(secs), text);
        }
    }

    #[test]
    fn values_and_limits() {
        assert_eq!(percent(0.834), "83 %");
        assert_eq!(percent(1.0), "100 %");
        assert_eq!(value_text(&json!(null)), "-");
        assert_eq!(value_text(&json!("500/1h")), "500/1h");
        assert_eq!(value_text(&json!(["12/1h", "100/1d"])), "12/1h, 100/1d");
        assert_eq!(value_text(&json!([])), "-");
        assert_eq!(value_text(&json!(3)), "3");
        assert_eq!(
            limit_text(&json!({"rates": ["12/1h"], "unlimited": false})),
            "12/1h"
        );
        assert_eq!(
            limit_text(&json!({"rates": [], "unlimited": true})),
            "unlimited"
        );
        assert_eq!(
            limit_text(&json!({"limit": "500/1h", "until": 5})),
            "500/1h"
        );
        assert_eq!(limit_text(&json!("unlimited")), "unlimited");
    }
}
