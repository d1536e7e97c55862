//! The Grafana dashboard and the Prometheus alerting rules in `grafana/`:
//! promtool (Debian package `prometheus`) checks the rules, runs their unit
//! tests and parses every PromQL query of the dashboard; and every metric,
//! label and label value they name is one mailbrake exports ([`CONTRACT`]).
//!
//! These tests never skip: without promtool they fail and say what to
//! install.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const DASHBOARD: &str = "grafana/mailbrake-dashboard.json";
const RULES: &str = "grafana/alerts/mailbrake.rules.yml";
const RULES_TESTS: &str = "grafana/alerts/mailbrake.rules.test.yml";

/// One metric family mailbrake exports, as `# TYPE` names it.
struct Metric {
    name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    kind: &'static str,
    /// Label names, each with its possible values (empty: free-form, such
    /// as a listener's name).
    labels: &'static [(&'static str, &'static [&'static str])],
}

const LISTENER: (&str, &[&str]) = ("listener", &[]);
const KEY_CLASS: (&str, &[&str]) = ("class", &["auth", "vhost", "user", "uid", "ip"]);
const SENDER: (&str, &[&str]) = ("sender", &[]);

/// Every metric family mailbrake exports: the contract the dashboard and
/// the alerts are written against.
const CONTRACT: &[Metric] = &[
    Metric {
        name: "mailbrake_build_info",
        kind: "gauge",
        labels: &[("version", &[])],
    },
    Metric {
        name: "mailbrake_connections_accepted_total",
        kind: "counter",
        labels: &[LISTENER],
    },
    Metric {
        name: "mailbrake_connections_refused_total",
        kind: "counter",
        labels: &[
            LISTENER,
            (
                "reason",
                &[
                    "max_sessions",
                    "max_sessions_per_user",
                    "connection_rate",
                    "out_of_files",
                ],
            ),
        ],
    },
    Metric {
        name: "mailbrake_sessions_active",
        kind: "gauge",
        labels: &[LISTENER],
    },
    Metric {
        name: "mailbrake_session_duration_seconds",
        kind: "histogram",
        labels: &[LISTENER],
    },
    Metric {
        name: "mailbrake_tls_handshakes_total",
        kind: "counter",
        labels: &[
            ("leg", &["client", "upstream"]),
            ("result", &["ok", "failed"]),
            ("version", &["TLSv1.2", "TLSv1.3", "unknown"]),
        ],
    },
    Metric {
        name: "mailbrake_auth_attempts_total",
        kind: "counter",
        labels: &[
            ("mechanism", &[]),
            ("result", &["success", "failure", "blocked"]),
        ],
    },
    Metric {
        name: "mailbrake_messages_total",
        kind: "counter",
        labels: &[LISTENER, ("result", &["accepted", "refused"])],
    },
    Metric {
        name: "mailbrake_relayed_bytes_total",
        kind: "counter",
        labels: &[
            LISTENER,
            ("direction", &["client_to_upstream", "upstream_to_client"]),
        ],
    },
    Metric {
        name: "mailbrake_recipients_total",
        kind: "counter",
        labels: &[
            KEY_CLASS,
            ("outcome", &["accepted", "deferred", "rejected", "observed"]),
        ],
    },
    Metric {
        name: "mailbrake_limit_decisions_total",
        kind: "counter",
        labels: &[("result", &["accepted", "over_limit", "locked", "observed"])],
    },
    Metric {
        name: "mailbrake_locks_total",
        kind: "counter",
        labels: &[("reason", &["refusals", "rotation", "operator"])],
    },
    Metric {
        name: "mailbrake_senders_locked",
        kind: "gauge",
        labels: &[],
    },
    Metric {
        name: "mailbrake_senders_resident",
        kind: "gauge",
        labels: &[],
    },
    Metric {
        name: "mailbrake_upstream_connect_failures_total",
        kind: "counter",
        labels: &[LISTENER, ("reason", &["unreachable", "loop", "tls"])],
    },
    Metric {
        name: "mailbrake_upstream_connect_seconds",
        kind: "histogram",
        labels: &[LISTENER],
    },
    Metric {
        name: "mailbrake_end_of_data_seconds",
        kind: "histogram",
        labels: &[LISTENER],
    },
    Metric {
        name: "mailbrake_config_reloads_total",
        kind: "counter",
        labels: &[("result", &["success", "failure"])],
    },
    Metric {
        name: "mailbrake_state_write_errors_total",
        kind: "counter",
        labels: &[],
    },
    Metric {
        name: "mailbrake_fleet_errors_total",
        kind: "counter",
        labels: &[(
            "op",
            &[
                "connect", "reserve", "commit", "release", "refresh", "admin",
            ],
        )],
    },
    Metric {
        name: "mailbrake_sender_window_usage_ratio",
        kind: "gauge",
        labels: &[SENDER, KEY_CLASS],
    },
    Metric {
        name: "mailbrake_sender_window_recipients",
        kind: "gauge",
        labels: &[SENDER, KEY_CLASS],
    },
    Metric {
        name: "mailbrake_sender_locked",
        kind: "gauge",
        labels: &[SENDER, KEY_CLASS],
    },
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The series a histogram family exposes besides its name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

// === The tests ===

#[test]
fn alert_rules_pass_promtool_check() {
    promtool(&["check", "rules", RULES]);
}

#[test]
fn alert_rules_unit_tests_pass() {
    promtool(&["test", "rules", RULES_TESTS]);
}

/// Every query of the dashboard, Grafana's variables replaced, parses as
/// PromQL: promtool checks them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 30,
        "only {} queries found in {DASHBOARD}",
        queries.len()
    );
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut index = BTreeMap::new();
    for (i, q) in queries.iter().enumerate() {
        let expr = substitute_variables(&q.expr);
        assert!(
            !expr.contains('$'),
            "{}: a Grafana variable the test does not replace: {expr}",
            q.place
        );
        let record = format!("dashboard:query_{i}");
        rules.push_str(&format!("      - record: {record}\n        expr: |-\n"));
        for line in expr.lines() {
            rules.push_str(&format!("          {line}\n"));
        }
        index.insert(record, &q.place);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = run_promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.success,
        "promtool rejects dashboard queries (record name → panel: {index:#?}):\n{}\n{rules}",
        out.text
    );
}

/// Importable anywhere: the Prometheus data source is the `datasource`
/// variable in every panel and query, never a UID of one Grafana.
#[test]
fn dashboard_uses_the_datasource_variable_everywhere() {
    let dash = dashboard();
    assert!(
        dash.get("__inputs").is_none(),
        "no import inputs: the datasource variable does their job"
    );
    assert!(dash.get("schemaVersion").and_then(JsonExt::as_num).unwrap() >= 36.0);

    let vars = dash.get("templating").and_then(|t| t.get("list")).unwrap();
    let var = |name: &str| {
        vars.items()
            .into_iter()
            .find(|v| v.get("name").and_then(Json::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let ds = var("datasource");
    assert_eq!(ds.get("type").and_then(Json::as_str), Some("datasource"));
    assert_eq!(ds.get("query").and_then(Json::as_str), Some("prometheus"));
    let listener = var("listener");
    assert_eq!(listener.get("type").and_then(Json::as_str), Some("query"));
    assert_eq!(
        query_text(listener.get("query").unwrap()),
        Some("label_values(mailbrake_sessions_active, listener)")
    );
    assert_eq!(listener.get("multi").and_then(Json::as_bool), Some(true));
    assert_eq!(
        listener.get("includeAll").and_then(Json::as_bool),
        Some(true)
    );

    // Every `datasource` anywhere is the variable.
    let mut bad = Vec::new();
    let mut uids = 0;
    walk(&dash, "$", &mut |path, value| {
        if let Some(ds) = value.get("datasource") {
            uids += 1;
            let ok = ds.get("type").and_then(Json::as_str) == Some("prometheus")
                && ds.get("uid").and_then(Json::as_str) == Some("${datasource}");
            if !ok {
                bad.push(format!("{path}.datasource"));
            }
        }
        if let Some(uid) = value.get("uid")
            && path != "$"
            && !path.ends_with(".datasource")
        {
            bad.push(format!("{path}.uid = {uid:?}"));
        }
    });
    assert!(bad.is_empty(), "hard-coded data sources or UIDs: {bad:#?}");

    // Every panel and query says which data source, and panel ids are unique.
    let mut ids = BTreeSet::new();
    for panel in panels(&dash) {
        let title = panel.get("title").and_then(Json::as_str).unwrap_or("?");
        let id = panel.get("id").and_then(JsonExt::as_num).unwrap();
        assert!(ids.insert(id as u64), "panel id {id} twice ({title})");
        if panel.get("type").and_then(Json::as_str) == Some("row") {
            continue;
        }
        assert!(panel.get("datasource").is_some(), "{title}: no datasource");
        let targets = panel.get("targets").map(JsonExt::items).unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert!(
                t.get("datasource").is_some(),
                "{title}: a query without datasource"
            );
        }
    }
    assert!(uids > 30, "only {uids} datasource references");
}

/// Every metric the dashboard, the rules and the rule tests name exists, with
/// those labels and label values.
#[test]
fn every_referenced_metric_is_in_the_contract() {
    let names = referenced_metric_names();
    for expected in [
        "mailbrake_build_info",
        "mailbrake_sender_window_usage_ratio",
        "mailbrake_upstream_connect_seconds",
    ] {
        assert!(names.contains(expected), "{expected} not found: {names:?}");
    }
    let unknown: Vec<_> = names.iter().filter(|n| contract(n).is_none()).collect();
    assert!(
        unknown.is_empty(),
        "not in the metrics contract (tests/grafana.rs CONTRACT): {unknown:?}"
    );

    let mut bad = Vec::new();
    for (place, text) in referencing_texts() {
        for (name, matchers) in selectors(&text) {
            let Some(metric) = contract(&family(&name)) else {
                continue;
            };
            for (label, value) in matchers {
                if let Some(problem) = check_matcher(metric, &name, &label, &value) {
                    bad.push(format!("{place}: {name}{{{label}…{value:?}}}: {problem}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "labels not in the contract: {bad:#?}");
}

// === Metric names and selectors ===

/// The metric families (names as in the contract and in `# TYPE` lines:
/// histograms without `_bucket`, `_sum` or `_count`) of every `mailbrake_*`
/// name in the dashboard's queries and variables, and anywhere in the alert
/// rules and their unit tests (comments included, so none can name a metric
/// that does not exist either).
fn referenced_metric_names() -> BTreeSet<String> {
    referencing_texts()
        .iter()
        .flat_map(|(_, text)| selectors(text))
        .map(|(name, _)| family(&name))
        .collect()
}

/// What references metrics: (where, text).
fn referencing_texts() -> Vec<(String, String)> {
    let mut texts: Vec<_> = dashboard_queries()
        .into_iter()
        .map(|q| (q.place, q.expr))
        .collect();
    for file in [RULES, RULES_TESTS] {
        texts.push((file.to_string(), read(file)));
    }
    texts
}

/// The family a series name belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
fn family(name: &str) -> String {
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix)
            && contract(base).is_some_and(|m| m.kind == "histogram")
        {
            return base.to_string();
        }
    }
    name.to_string()
}

fn contract(name: &str) -> Option<&'static Metric> {
    CONTRACT.iter().find(|m| m.name == name)
}

/// Every `mailbrake_*` name in `text`, with the matchers of the `{…}` that
/// follows it, if any: (label, value).
fn selectors(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("mailbrake_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        rest = &tail[len..];
        if before.is_some_and(ident) {
            continue;
        }
        let name = tail[..len].to_string();
        let matchers = match rest.strip_prefix('{') {
            Some(body) => {
                let (matchers, after) = matchers(body);
                rest = after;
                matchers
            }
            None => Vec::new(),
        };
        found.push((name, matchers));
    }
    found
}

/// Parses `label op "value", …}`; returns the matchers and what follows `}`.
fn matchers(mut s: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if let Some(after) = s.strip_prefix('}') {
            return (out, after);
        }
        let len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        assert!(len > 0, "cannot parse a label matcher at: {s:.60}");
        let label = s[..len].to_string();
        s = s[len..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| s.starts_with(op))
            .unwrap_or_else(|| panic!("no operator after {label} at: {s:.60}"));
        s = s[op.len()..].trim_start();
        let quote = s.chars().next().expect("a quoted label value");
        assert!(quote == '"' || quote == '\'', "unquoted value at: {s:.60}");
        let mut value = String::new();
        let mut chars = s[1..].char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                Some((i, c)) if c == quote => break i + 2,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value at: {s:.60}"),
            }
        };
        out.push((label, value));
        s = &s[end..];
    }
}

/// Whether `label` exists on the metric and `value` (each alternative of a
/// regex made of plain words) is one it takes.
fn check_matcher(metric: &Metric, series: &str, label: &str, value: &str) -> Option<String> {
    if TARGET_LABELS.contains(&label) || (label == "le" && series.ends_with("_bucket")) {
        return None;
    }
    let Some((_, values)) = metric.labels.iter().find(|(l, _)| *l == label) else {
        return Some(format!("{} has no label {label}", metric.name));
    };
    if values.is_empty() {
        return None;
    }
    // Alternatives with regex syntax beyond `|` (`.*`, `$listener`) are
    // not checked; a `.` (TLSv1.2) is taken literally.
    value
        .split('|')
        .filter(|v| !v.contains(['*', '+', '?', '[', '(', '{', '^', '$', '\\']))
        .find(|v| !values.contains(v))
        .map(|v| format!("{label} is one of {values:?}, never {v:?}"))
}

// === The dashboard's queries ===

/// One PromQL query of the dashboard (or the metric of a `label_values`).
struct Query {
    /// Where it is: the panel's title and the query's refId, or the variable.
    place: String,
    expr: String,
}

fn dashboard_queries() -> Vec<Query> {
    let dash = dashboard();
    let mut queries = Vec::new();
    for panel in panels(&dash) {
        let title = panel.get("title").and_then(Json::as_str).unwrap_or("?");
        for t in panel.get("targets").map(JsonExt::items).unwrap_or_default() {
            let expr = t.get("expr").and_then(Json::as_str);
            let expr = expr.unwrap_or_else(|| panic!("{title}: a query without expr"));
            let ref_id = t.get("refId").and_then(Json::as_str).unwrap_or("?");
            queries.push(Query {
                place: format!("panel {title:?} query {ref_id}"),
                expr: expr.to_string(),
            });
        }
    }
    let vars = dash.get("templating").and_then(|t| t.get("list"));
    for var in vars.map(JsonExt::items).unwrap_or_default() {
        if var.get("type").and_then(Json::as_str) != Some("query") {
            continue;
        }
        let name = var.get("name").and_then(Json::as_str).unwrap_or("?");
        let text = var.get("query").and_then(query_text).unwrap_or("");
        let place = format!("variable {name}");
        if let Some(metric) = label_values_metric(text) {
            // Not PromQL: only its metric selector is.
            queries.push(Query {
                place,
                expr: metric.to_string(),
            });
        } else if let Some(inner) = text
            .strip_prefix("query_result(")
            .and_then(|t| t.strip_suffix(')'))
        {
            queries.push(Query {
                place,
                expr: inner.to_string(),
            });
        } else {
            panic!("{place}: a query the test does not understand: {text:?}");
        }
    }
    queries
}

/// The series selector of `label_values(SELECTOR, label)`, if `text` is one
/// with a selector.
fn label_values_metric(text: &str) -> Option<&str> {
    let args = text
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, _label) = args.rsplit_once(',')?;
    Some(selector.trim())
}

/// A variable's query: a string, or Grafana 10's `{"query": "..."}`.
fn query_text(query: &Json) -> Option<&str> {
    query
        .as_str()
        .or_else(|| query.get("query").and_then(Json::as_str))
}

/// The query with Grafana's variables replaced by values promtool accepts.
fn substitute_variables(expr: &str) -> String {
    [
        ("$__rate_interval", "5m"),
        ("$__interval", "5m"),
        ("$__range", "5m"),
        ("${listener}", ".*"),
        ("$listener", ".*"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (var, value)| e.replace(var, value))
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, those inside collapsed rows included.
fn panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash.get("panels").map(JsonExt::items).unwrap_or_default() {
        out.push(p);
        out.extend(p.get("panels").map(JsonExt::items).unwrap_or_default());
    }
    out
}

/// Calls `f` on every object in `value`, with its path.
fn walk(value: &Json, path: &str, f: &mut impl FnMut(&str, &Json)) {
    match value {
        Json::Object(fields) => {
            f(path, value);
            for (k, v) in fields {
                walk(v, &format!("{path}.{k}"), f);
            }
        }
        Json::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

// === promtool ===

struct Output {
    success: bool,
    text: String,
}

/// Runs promtool in the repository; fails the test if it is missing.
fn run_promtool(args: &[&str]) -> Output {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "GRAFANA TEST CANNOT RUN: promtool: {e}. \
                 Install the Debian package `prometheus` (.ci/run does)."
            )
        });
    Output {
        success: out.status.success(),
        text: String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

/// Runs promtool and asserts it succeeds.
fn promtool(args: &[&str]) {
    let out = run_promtool(args);
    assert!(
        out.success,
        "promtool {} failed:\n{}",
        args.join(" "),
        out.text
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// === A small JSON reader (no serde_json in the dependencies) ===

/// The dashboard as JSON (serde_json), with the few accessors the checks use.
type Json = serde_json::Value;

trait JsonExt {
    fn items(&self) -> Vec<&Json>;
    fn as_num(&self) -> Option<f64>;
}

impl JsonExt for Json {
    fn items(&self) -> Vec<&Json> {
        self.as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    fn as_num(&self) -> Option<f64> {
        self.as_f64()
    }
}

#[test]
fn selectors_find_names_labels_and_values() {
    let found = selectors(
        r#"sum(rate(mailbrake_x_bucket{le="0.1", listener=~"$listener"}[5m])) / up{a="b"} or mailbrake_y and not_mailbrake_z"#,
    );
    let names: Vec<_> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["mailbrake_x_bucket", "mailbrake_y"]);
    assert_eq!(
        found[0].1,
        [
            ("le".to_string(), "0.1".to_string()),
            ("listener".to_string(), "$listener".to_string())
        ]
    );
    assert_eq!(
        family("mailbrake_end_of_data_seconds_bucket"),
        "mailbrake_end_of_data_seconds"
    );
    assert_eq!(
        family("mailbrake_messages_total"),
        "mailbrake_messages_total"
    );
    let recipients = contract("mailbrake_recipients_total").unwrap();
    let check = |label, value| check_matcher(recipients, recipients.name, label, value);
    assert_eq!(check("outcome", "deferred|rejected"), None);
    assert!(check("outcome", "deffered").is_some());
    assert!(check("outcome", "accepted|defered").is_some());
    assert!(check("listener", "x").is_some());
    assert_eq!(check("instance", "mx1"), None);
    assert_eq!(check("class", ".*"), None);
}

mod common;

/// The dashboard and the rules name only metrics a real mailbrake exports,
/// and the contract above is exactly what it exports. One sender is pushed to
/// its limit so the per-sender series exist too.
#[tokio::test(flavor = "multi_thread")]
async fn every_referenced_metric_is_in_a_real_scrape() {
    use common::upstream::{Opts, Upstream};
    let up = Upstream::start(Opts::default()).await;
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nhostname = \"mb.test\"\n[state]\ndir = {:?}\n[limits]\ndefault = \"1/1h\"\n",
        dir.path().join("state")
    ) + &common::listener("l", port, "none", None, &up.addr.to_string(), "");
    let mut mb = common::Mailbrake::start(&cfg);
    let admin = common::admin_addr(&mut mb);
    let mut c = common::Raw::greeted(port).await;
    common::expect(&c.cmd("MAIL FROM:<a@example.com>").await, "250");
    common::expect(&c.cmd("RCPT TO:<b@example.net>").await, "250");
    let text = common::scrape(admin).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<_> = referenced_metric_names()
        .into_iter()
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported: {missing:?}"
    );
    let contract: BTreeSet<String> = CONTRACT.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(contract, exported, "the contract and a real scrape differ");
}
