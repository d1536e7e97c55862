//! mailbrake: an SMTP submission proxy that counts recipients per sender.
//!
//! # Layout
//!
//! - [`admin`]: the `[admin] bind` HTTP endpoint (`/metrics`, the `/api` and
//!   its bearer token) and the refresh of read gauges.
//! - [`cli`]: the operator's commands (`status`, `sender …`, `top`, `audit`,
//!   `report`, `reload`): one admin API call each, tables or `--json`.
//! - [`metrics`]: every metric's name, help, buckets and start-up series.
//! - [`config`]: the TOML file, read → parse → validate, every error at once.
//! - [`session`]: the SMTP dialogue as a pure state machine: client bytes,
//!   upstream bytes, TLS and policy events in; bytes to send, TLS upgrades and
//!   close requests out. No sockets, no clock reads.
//! - [`driver`]: the thin async loop that feeds one session from its two
//!   sockets, its timer and the stop token, and asks its policy; a decision
//!   that waits (the fleet's Redis) does not stop the rest.
//! - [`clock`]: the only place the clock is read (`clippy.toml` enforces it).
//! - [`leg`]: one side of a session, plain or TLS, upgradable in place.
//! - [`identity`]: who a connection is, asked once per session: the client
//!   address (IPv4-mapped unmapped once), the Unix user owning a local
//!   client's socket (netlink `sock_diag`, `/proc/net/tcp` off the session
//!   thread) or a Unix socket's peer credentials and the user's name,
//!   mailbrake's own connections redirected back, `[[vhost]]` matching, the
//!   AUTH user, and the order of sources that picks the sender key.
//! - [`upstream`]: choosing and dialling the upstream (fixed, or the original
//!   destination of a REDIRECT), refusing to dial mailbrake itself, the
//!   outbound PROXY header.
//! - [`orig_dst`]: `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
//! - [`proxy_protocol`]: PROXY protocol v1/v2, inbound (trusted peers only) and outbound.
//! - [`tls`]: rustls configurations for both legs, certificates chosen by SNI.
//! - [`server`]: listeners, reload and drain; the accept loop (TCP or Unix
//!   socket, connection rate, session limits) and each connection's setup
//!   (PROXY header or peer credentials, identity, TLS, dialling) in files
//!   of their own.
//! - [`workers`]: the session threads, one single-threaded runtime each,
//!   each accepting and running its own sessions.
//! - [`listen`]: one listening socket per session thread (`SO_REUSEPORT`),
//!   or one Unix socket and its duplicates, its file put in place whole.
//! - [`logbuf`]: log lines to stderr, gathered on session threads until they go idle.
//! - [`limits`]: the sender key type and the recipient limits (engine,
//!   policy, store, fleet, the session's enforcer). Every limit decision, the
//!   engine's or the fleet's, is one type, and one function turns it into the
//!   verdict, the reply, the log line and the metric (`limits::decide`).
//! - [`protect`]: short-term rate limits (connections, AUTH failures, RCPT pace).
//! - [`state`]: restoring and flushing the limits to the embedded database.
//! - [`sendmail`]: the sendmail(8)-compatible command for PHP's `mail()`
//!   and cron: standard input read whole, then one all-or-nothing SMTP
//!   submission over mailbrake's Unix socket, and a sysexits status.
//! - [`report`]: `mailbrake report`: peaks per sender from the hourly totals,
//!   and the default limit they suggest. Pure.

#![forbid(unsafe_code)]
// Tests wait and time themselves on the real clock; the code under test reads
// it only through `clock` (clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod driver;
pub mod identity;
pub mod leg;
pub mod limits;
pub mod listen;
pub mod logbuf;
pub mod metrics;
pub mod orig_dst;
pub mod protect;
pub mod proxy_protocol;
pub mod report;
pub mod sendmail;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod workers;
