//! The file as written: serde mirrors of the TOML, nothing checked yet.
//!
//! Every field is optional, and enums, durations, addresses and networks are
//! kept as strings, so that serde fails only on syntax, unknown keys and wrong
//! TOML types; `validate.rs` then checks every value and reports every problem
//! together. `deny_unknown_fields` everywhere turns a typo into an error.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// `[[listener]]` tables, in file order.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub limits: RawLimits,
    /// `[[vhost]]` tables, in file order.
    #[serde(default, rename = "vhost")]
    pub vhosts: Vec<RawVhost>,
    #[serde(default)]
    pub protect: RawProtect,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub bind: Option<String>,
    pub metrics_top_senders: Option<i64>,
    pub token_file: Option<String>,
    pub token_group: Option<String>,
}

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub dir: Option<PathBuf>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub redis_failure: Option<String>,
    pub max_unsaved_changes: Option<i64>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub hostname: Option<String>,
    pub drain_timeout: Option<String>,
    pub log_format: Option<String>,
    pub threads: Option<i64>,
}

/// `[session]`. Integers are `i64` (TOML's own type) so that a negative value
/// is reported by validation, alongside every other problem.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    pub max_line_length: Option<i64>,
    pub max_auth_line_length: Option<i64>,
    pub max_commands_without_mail: Option<i64>,
    pub max_reply_bytes: Option<i64>,
    pub min_data_rate: Option<i64>,
}

/// `[timeouts]`, humantime strings such as `"30s"` or `"5m"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub connect: Option<String>,
    pub tls_handshake: Option<String>,
    pub client_command: Option<String>,
    pub client_data: Option<String>,
    pub upstream_greeting: Option<String>,
    pub upstream_command: Option<String>,
    pub upstream_data_init: Option<String>,
    pub upstream_data_end: Option<String>,
}

/// One `[[listener]]`. Required keys are optional here too, so that a missing
/// one is reported with the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Option<String>,
    pub bind: Option<String>,
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    pub tls: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub extra_certs: Vec<RawCertPair>,
    pub allow_plaintext_auth: Option<bool>,
    pub upstream: Option<String>,
    pub upstream_tls: Option<String>,
    pub upstream_tls_verify: Option<bool>,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_tls_name: Option<String>,
    pub upstream_proxy_protocol: Option<String>,
    pub xclient: Option<bool>,
    #[serde(default)]
    pub proxy_protocol_trusted: Vec<String>,
    pub max_sessions: Option<i64>,
    pub max_sessions_per_user: Option<i64>,
}

/// One entry of `extra_certs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertPair {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[limits]`. A limit may be a string or a list of strings, so limits are
/// kept as TOML values and their type is checked by validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub default: Option<toml::Value>,
    pub action: Option<String>,
    /// `None` when absent, so that an empty list can be reported.
    pub identity: Option<Vec<String>>,
    pub ipv6_prefix: Option<i64>,
    #[serde(default)]
    pub exempt_users: Vec<String>,
    #[serde(default)]
    pub exempt_vhosts: Vec<String>,
    #[serde(default)]
    pub exempt_local_users: Vec<String>,
    #[serde(default)]
    pub exempt_networks: Vec<String>,
    pub rotation: Option<String>,
    pub lock_after_refusals: Option<i64>,
    pub lock_window: Option<String>,
    pub lock_duration: Option<String>,
    pub contact: Option<String>,
    /// `[[limits.override]]` tables, in file order.
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawOverride>,
}

/// One `[[limits.override]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverride {
    pub key: Option<String>,
    pub limit: Option<toml::Value>,
}

/// One `[[vhost]]`. `uids` are `i64` so that a negative one is reported by validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVhost {
    pub name: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub uids: Vec<i64>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// `[protect]`: each a rate such as `"60/1m"`, or `"off"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtect {
    pub connections_per_ip: Option<String>,
    pub auth_failures_per_ip: Option<String>,
    pub auth_failures_per_user: Option<String>,
    pub rcpt_pace: Option<String>,
}
