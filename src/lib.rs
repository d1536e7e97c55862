//! mailbrake: an SMTP submission proxy that counts recipients per sender.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, read → parse → validate, every error at once.
//! - [`session`]: the SMTP dialogue as a pure state machine: client bytes,
//!   upstream bytes, TLS and policy events in; bytes to send, TLS upgrades and
//!   close requests out. No sockets, no clock reads.
//! - [`driver`]: the thin async loop that feeds one session from its two sockets.
//! - [`leg`]: one side of a session, plain or TLS, upgradable in place.
//! - [`upstream`]: choosing and dialling the upstream (fixed, or the original
//!   destination of a REDIRECT), loop detection, the outbound PROXY header.
//! - [`orig_dst`]: `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
//! - [`proxy_protocol`]: PROXY protocol v1/v2, inbound (trusted peers only) and outbound.
//! - [`tls`]: rustls configurations for both legs, certificates chosen by SNI.
//! - [`server`]: listeners, the accept loop, session limits, reload and drain.

#![forbid(unsafe_code)]

pub mod config;
pub mod driver;
pub mod leg;
pub mod orig_dst;
pub mod proxy_protocol;
pub mod server;
pub mod session;
pub mod tls;
pub mod upstream;
