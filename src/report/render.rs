//! The report as text for an operator and as CSV.

use std::borrow::Cow;

use super::*;

// === impl Report ===

impl Report {
    /// For people: the summary, the suggestion with its rule, then a table
    /// busiest first.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Recipients per sender, {} {}: {} to {}\n\n",
            self.days,
            plural(u64::from(self.days), "day", "days"),
            clock_text(self.from, 0),
            clock_text(self.to, 0),
        );
        wrap(&mut out, &self.summary.text, "");
        out.push('\n');
        if self.suggestion.limit > 0 {
            out.push_str(&format!(
                "Suggested default: {}/1h, by this rule:\n",
                self.suggestion.limit
            ));
        }
        wrap(&mut out, &self.suggestion.rule, "  ");
        if !self.suggestion.outliers.is_empty() {
            let listed: Vec<String> = self
                .suggestion
                .outliers
                .iter()
                .map(|key| {
                    let peak = self.senders.iter().find(|s| &s.key == key);
                    format!(
                        "{key} (peak {}/h)",
                        thousands(peak.map_or(0, |s| s.peak_hour))
                    )
                })
                .collect();
            wrap(
                &mut out,
                &format!("Consider exempting: {}.", listed.join(", ")),
                "",
            );
        }
        if self.senders.is_empty() {
            return out;
        }
        out.push('\n');

        let header = [
            "key",
            "limit",
            "source",
            "peak/h",
            "peak at",
            "p99/h",
            "hours over",
            "total",
            "refused",
            "observed",
        ];
        // Left-aligned: key, limit, source, peak at; the rest are numbers.
        let left = [
            true, true, true, false, true, false, false, false, false, false,
        ];
        let rows: Vec<[String; 10]> = self
            .senders
            .iter()
            .map(|s| {
                [
                    s.key.clone(),
                    s.limit.clone(),
                    s.source.clone(),
                    thousands(s.peak_hour),
                    if s.peak_hour == 0 {
                        "-".to_owned()
                    } else {
                        clock_text(s.peak_at, 0)
                    },
                    thousands(s.p99_hour),
                    thousands(u64::from(s.hours_over_limit)),
                    thousands(s.total),
                    thousands(s.refused),
                    thousands(s.observed),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if left[i] {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// For spreadsheets: one row per sender after a header row, RFC 4180
    /// (CRLF line ends; a field with a comma, quote or line break quoted, its
    /// quotes doubled). Times are unix seconds.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        csv_row(
            &mut out,
            &[
                "key",
                "class",
                "limit",
                "source",
                "total",
                "active_hours",
                "peak_hour",
                "peak_at",
                "p99_hour",
                "hours_over_limit",
                "refused",
                "observed",
            ],
        );
        for s in &self.senders {
            csv_row(
                &mut out,
                &[
                    &s.key,
                    &s.class,
                    &s.limit,
                    &s.source,
                    &s.total.to_string(),
                    &s.active_hours.to_string(),
                    &s.peak_hour.to_string(),
                    &s.peak_at.to_string(),
                    &s.p99_hour.to_string(),
                    &s.hours_over_limit.to_string(),
                    &s.refused.to_string(),
                    &s.observed.to_string(),
                ],
            );
        }
        out
    }
}

fn csv_row(out: &mut String, fields: &[&str]) {
    let fields: Vec<Cow<'_, str>> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&fields.join(","));
    out.push_str("\r\n");
}

pub(super) fn csv_field(field: &str) -> Cow<'_, str> {
    if field.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(field)
    }
}

/// Appends `text` wrapped at [`WIDTH`], every line starting with `indent`.
fn wrap(out: &mut String, text: &str, indent: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty()
            && indent.len() + line.chars().count() + 1 + word.chars().count() > WIDTH
        {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
}

/// `1842` as "1,842".
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

pub(super) fn are(n: usize) -> &'static str {
    plural(n as u64, "is", "are")
}
