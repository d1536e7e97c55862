//! Every metric mailbrake exports, in one place: names (Prometheus
//! conventions: `mailbrake_` prefix, `_total` counters, base units), help
//! texts, histogram buckets, and the label values each starts with, so that
//! every series exists from start-up, before any traffic.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const BUILD_INFO: &str = "mailbrake_build_info";
pub const CONNECTIONS_ACCEPTED: &str = "mailbrake_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "mailbrake_connections_refused_total";
pub const SESSIONS_ACTIVE: &str = "mailbrake_sessions_active";
pub const SESSION_DURATION: &str = "mailbrake_session_duration_seconds";
pub const TLS_HANDSHAKES: &str = "mailbrake_tls_handshakes_total";
pub const AUTH_ATTEMPTS: &str = "mailbrake_auth_attempts_total";
pub const MESSAGES: &str = "mailbrake_messages_total";
pub const RELAYED_BYTES: &str = "mailbrake_relayed_bytes_total";
pub const RECIPIENTS: &str = "mailbrake_recipients_total";
pub const LIMIT_DECISIONS: &str = "mailbrake_limit_decisions_total";
pub const LOCKS: &str = "mailbrake_locks_total";
pub const SENDERS_LOCKED: &str = "mailbrake_senders_locked";
pub const SENDERS_RESIDENT: &str = "mailbrake_senders_resident";
pub const UPSTREAM_CONNECT_FAILURES: &str = "mailbrake_upstream_connect_failures_total";
pub const UPSTREAM_CONNECT_SECONDS: &str = "mailbrake_upstream_connect_seconds";
pub const END_OF_DATA_SECONDS: &str = "mailbrake_end_of_data_seconds";
pub const CONFIG_RELOADS: &str = "mailbrake_config_reloads_total";
pub const STATE_WRITE_ERRORS: &str = "mailbrake_state_write_errors_total";
pub const FLEET_ERRORS: &str = "mailbrake_fleet_errors_total";
pub const SENDER_USAGE: &str = "mailbrake_sender_window_usage_ratio";
pub const SENDER_RECIPIENTS: &str = "mailbrake_sender_window_recipients";
pub const SENDER_LOCKED: &str = "mailbrake_sender_locked";

/// Per-sender series disappear this long after their last update (a sender
/// that calms down stops being refreshed).
pub const SENDER_SERIES_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// Label values known in advance, so every series exists from start-up.
pub const KEY_CLASSES: &[&str] = &["auth", "vhost", "user", "uid", "ip"];
pub const RCPT_OUTCOMES: &[&str] = &["accepted", "deferred", "rejected", "observed"];
pub const DECISIONS: &[&str] = &["accepted", "over_limit", "locked", "observed"];
pub const LOCK_REASONS: &[&str] = &["refusals", "rotation", "operator"];
pub const REFUSAL_REASONS: &[&str] = &[
    "max_sessions",
    "max_sessions_per_user",
    "connection_rate",
    "out_of_files",
];
pub const UPSTREAM_FAILURES: &[&str] = &["unreachable", "loop", "tls"];
pub const TLS_LEGS: &[&str] = &["client", "upstream"];
pub const TLS_VERSIONS: &[&str] = &["TLSv1.2", "TLSv1.3"];
pub const AUTH_MECHANISMS: &[&str] = &[
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "DIGEST-MD5",
    "XOAUTH2",
    "OAUTHBEARER",
    "SCRAM",
    "other",
];
pub const AUTH_RESULTS: &[&str] = &["success", "failure", "blocked"];
pub const DIRECTIONS: &[&str] = &["client_to_upstream", "upstream_to_client"];
pub const FLEET_OPS: &[&str] = &[
    "connect", "reserve", "commit", "release", "refresh", "admin",
];

/// Buckets in seconds: connecting to an MTA on the same network takes
/// milliseconds; end of data includes the MTA's content filters.
const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const END_OF_DATA_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Installs the recorder (once per process) and describes every metric.
pub fn install(listeners: &[String]) -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_CONNECT_SECONDS.into()),
            CONNECT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(END_OF_DATA_SECONDS.into()),
                END_OF_DATA_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SESSION_DURATION.into()), SESSION_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(SENDER_SERIES_IDLE),
        )
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    start_series(listeners);
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which mailbrake runs."
    );
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused at once, by reason."
    );
    describe_gauge!(SESSIONS_ACTIVE, "Sessions in progress.");
    describe_histogram!(
        SESSION_DURATION,
        Unit::Seconds,
        "Session duration, connect to close."
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes by leg, result and protocol version."
    );
    describe_counter!(
        AUTH_ATTEMPTS,
        "AUTH exchanges by mechanism and result (blocked: refused by the failure rate limit)."
    );
    describe_counter!(
        MESSAGES,
        "Messages whose end of data the upstream answered, by its answer."
    );
    describe_counter!(RELAYED_BYTES, Unit::Bytes, "Bytes relayed, by direction.");
    describe_counter!(
        RECIPIENTS,
        "Recipients by sender key class and limit outcome."
    );
    describe_counter!(LIMIT_DECISIONS, "Recipient limit decisions by result.");
    describe_counter!(LOCKS, "Senders locked, by reason.");
    describe_gauge!(SENDERS_LOCKED, "Senders locked now.");
    describe_gauge!(SENDERS_RESIDENT, "Sender keys held in memory.");
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Failures to reach the upstream, by reason."
    );
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to the upstream."
    );
    describe_histogram!(
        END_OF_DATA_SECONDS,
        Unit::Seconds,
        "Time from the end of data to the upstream's reply."
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads (SIGHUP) by result.");
    describe_counter!(
        STATE_WRITE_ERRORS,
        "Failed attempts to write the limits database (the changes are kept and retried every second)."
    );
    describe_counter!(
        FLEET_ERRORS,
        "Failed calls to the fleet's Redis (backend = \"redis\"), by operation."
    );
    describe_gauge!(
        SENDER_USAGE,
        "Share of its tightest limit a sender has used (pending included); only senders at 80 % or more, or locked."
    );
    describe_gauge!(
        SENDER_RECIPIENTS,
        "Recipients in the tightest window of a sender at 80 % or more of its limit, or locked."
    );
    describe_gauge!(SENDER_LOCKED, "1 while the sender is locked.");
}

/// Creates every series whose labels are known, at zero.
fn start_series(listeners: &[String]) {
    use metrics::{counter, gauge, histogram};
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for l in listeners {
        let l = l.clone();
        counter!(CONNECTIONS_ACCEPTED, "listener" => l.clone()).absolute(0);
        for r in REFUSAL_REASONS {
            counter!(CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => *r).absolute(0);
        }
        gauge!(SESSIONS_ACTIVE, "listener" => l.clone()).set(0.0);
        for r in ["accepted", "refused"] {
            counter!(MESSAGES, "listener" => l.clone(), "result" => r).absolute(0);
        }
        for d in DIRECTIONS {
            counter!(RELAYED_BYTES, "listener" => l.clone(), "direction" => *d).absolute(0);
        }
        for r in UPSTREAM_FAILURES {
            counter!(UPSTREAM_CONNECT_FAILURES, "listener" => l.clone(), "reason" => *r)
                .absolute(0);
        }
        let _ = histogram!(UPSTREAM_CONNECT_SECONDS, "listener" => l.clone());
        let _ = histogram!(END_OF_DATA_SECONDS, "listener" => l.clone());
        let _ = histogram!(SESSION_DURATION, "listener" => l);
    }
    for leg in TLS_LEGS {
        for result in ["ok", "failed"] {
            for v in TLS_VERSIONS.iter().chain(&["unknown"]) {
                counter!(TLS_HANDSHAKES, "leg" => *leg, "result" => result, "version" => *v)
                    .absolute(0);
            }
        }
    }
    for m in AUTH_MECHANISMS {
        for r in AUTH_RESULTS {
            counter!(AUTH_ATTEMPTS, "mechanism" => *m, "result" => *r).absolute(0);
        }
    }
    for c in KEY_CLASSES {
        for o in RCPT_OUTCOMES {
            counter!(RECIPIENTS, "class" => *c, "outcome" => *o).absolute(0);
        }
    }
    for d in DECISIONS {
        counter!(LIMIT_DECISIONS, "result" => *d).absolute(0);
    }
    for r in LOCK_REASONS {
        counter!(LOCKS, "reason" => *r).absolute(0);
    }
    gauge!(SENDERS_LOCKED).set(0.0);
    gauge!(SENDERS_RESIDENT).set(0.0);
    for r in ["success", "failure"] {
        counter!(CONFIG_RELOADS, "result" => r).absolute(0);
    }
    counter!(STATE_WRITE_ERRORS).absolute(0);
    for op in FLEET_OPS {
        counter!(FLEET_ERRORS, "op" => *op).absolute(0);
    }
}

/// Counts one TLS handshake.
pub fn tls_handshake(leg: &'static str, version: Option<&'static str>) {
    let (result, version) = match version {
        Some(v) => ("ok", v),
        None => ("failed", "unknown"),
    };
    metrics::counter!(TLS_HANDSHAKES, "leg" => leg, "result" => result, "version" => version)
        .increment(1);
}

/// One listener's metric handles, looked up once (a labelled lookup on
/// every session and message would cost more than the counting).
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub accepted: metrics::Counter,
    pub refused_max_sessions: metrics::Counter,
    pub refused_user_sessions: metrics::Counter,
    pub refused_connection_rate: metrics::Counter,
    pub refused_out_of_files: metrics::Counter,
    pub messages_accepted: metrics::Counter,
    pub messages_refused: metrics::Counter,
    pub bytes_to_upstream: metrics::Counter,
    pub bytes_to_client: metrics::Counter,
    pub upstream_unreachable: metrics::Counter,
    pub upstream_loop: metrics::Counter,
    pub upstream_tls: metrics::Counter,
    pub connect_seconds: metrics::Histogram,
    pub end_of_data_seconds: metrics::Histogram,
    pub session_seconds: metrics::Histogram,
}

impl ListenerMetrics {
    /// Handles for `listener` (call after [`install`]).
    pub fn new(listener: &str) -> Self {
        use metrics::{counter, histogram};
        let l = listener.to_owned();
        ListenerMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, "listener" => l.clone()),
            refused_max_sessions: counter!(CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => "max_sessions"),
            refused_user_sessions: counter!(CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => "max_sessions_per_user"),
            refused_connection_rate: counter!(CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => "connection_rate"),
            refused_out_of_files: counter!(CONNECTIONS_REFUSED, "listener" => l.clone(), "reason" => "out_of_files"),
            messages_accepted: counter!(MESSAGES, "listener" => l.clone(), "result" => "accepted"),
            messages_refused: counter!(MESSAGES, "listener" => l.clone(), "result" => "refused"),
            bytes_to_upstream: counter!(RELAYED_BYTES, "listener" => l.clone(), "direction" => "client_to_upstream"),
            bytes_to_client: counter!(RELAYED_BYTES, "listener" => l.clone(), "direction" => "upstream_to_client"),
            upstream_unreachable: counter!(UPSTREAM_CONNECT_FAILURES, "listener" => l.clone(), "reason" => "unreachable"),
            upstream_loop: counter!(UPSTREAM_CONNECT_FAILURES, "listener" => l.clone(), "reason" => "loop"),
            upstream_tls: counter!(UPSTREAM_CONNECT_FAILURES, "listener" => l.clone(), "reason" => "tls"),
            connect_seconds: histogram!(UPSTREAM_CONNECT_SECONDS, "listener" => l.clone()),
            end_of_data_seconds: histogram!(END_OF_DATA_SECONDS, "listener" => l.clone()),
            session_seconds: histogram!(SESSION_DURATION, "listener" => l),
        }
    }
}

/// `mailbrake_recipients_total{class, outcome}` and
/// `mailbrake_limit_decisions_total{result}`, counted together, with handles
/// looked up once per process.
pub fn count_recipient(class: &str, outcome: &'static str, decision: &'static str) {
    use std::sync::OnceLock;
    static RCPT: OnceLock<Vec<((&'static str, &'static str), metrics::Counter)>> = OnceLock::new();
    static DECISION: OnceLock<Vec<(&'static str, metrics::Counter)>> = OnceLock::new();
    let rcpt = RCPT.get_or_init(|| {
        KEY_CLASSES
            .iter()
            .flat_map(|c| RCPT_OUTCOMES.iter().map(move |o| (*c, *o)))
            .map(|(c, o)| {
                (
                    (c, o),
                    metrics::counter!(RECIPIENTS, "class" => c, "outcome" => o),
                )
            })
            .collect()
    });
    let decisions = DECISION.get_or_init(|| {
        DECISIONS
            .iter()
            .map(|d| (*d, metrics::counter!(LIMIT_DECISIONS, "result" => *d)))
            .collect()
    });
    if let Some((_, c)) = rcpt.iter().find(|((c, o), _)| *c == class && *o == outcome) {
        c.increment(1);
    }
    if let Some((_, c)) = decisions.iter().find(|(d, _)| *d == decision) {
        c.increment(1);
    }
}
