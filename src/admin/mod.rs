//! The `[admin] bind` listener: `GET /metrics` (Prometheus exposition) and
//! the admin API (`/api`, see [`api`]). Loopback by default. Every `/api`
//! call needs the bearer token (see [`token`]), and so does `/metrics` when
//! the operator chose the token. Also the periodic refresh of gauges that are
//! read rather than counted: sessions in progress, locked and resident
//! senders, and the per-sender series of the senders close to their limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::limits::Limiter;
use crate::metrics as m;

pub mod api;
pub mod token;

#[cfg(test)]
mod tests;

/// Senders at this share of a limit or more get series of their own.
pub const HOT_THRESHOLD: f64 = 0.8;
/// How often read gauges are refreshed (well under the idle expiry).
pub const REFRESH: Duration = Duration::from_secs(15);

/// What the admin endpoint reads.
pub struct AdminState {
    pub handle: PrometheusHandle,
    pub limiter: Arc<Limiter>,
    pub active: ActiveSessions,
    /// At most this many per-sender series.
    pub top: usize,
}

/// Binds the admin listener and serves it until `stop`; returns the bound
/// address (the configured one may have port 0). Each scrape first refreshes
/// the read gauges, so per-sender series are never staler than the scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    api: Arc<api::Api>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                refresh_once(&state.limiter, &state.active, state.top);
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    state.handle.render(),
                )
                    .into_response()
            }
        }),
    );
    // A token the operator chose guards the metrics too; the one mailbrake
    // made guards only /api, so that Prometheus scrapes loopback without it.
    let metrics = if api.token.is_configured() {
        metrics.route_layer(axum::middleware::from_fn_with_state(
            api.token.clone(),
            token::authorise,
        ))
    } else {
        metrics
    };
    let app = api::routes(api).merge(metrics);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("admin listener failed: {e}");
        }
    });
    Ok(local)
}

/// Sessions in progress per listener, counted by the accept loop.
pub type ActiveSessions = Vec<(String, Arc<AtomicI64>)>;

/// Refreshes the read gauges and runs the exporter's upkeep every
/// [`REFRESH`] until `stop`, scraped or not.
pub async fn refresh(state: Arc<AdminState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        refresh_once(&state.limiter, &state.active, state.top);
        state.handle.run_upkeep();
    }
}

/// One refresh (also called right after start-up and by tests).
pub fn refresh_once(limiter: &Limiter, active: &ActiveSessions, top: usize) {
    gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for (listener, n) in active {
        gauge!(m::SESSIONS_ACTIVE, "listener" => listener.clone())
            .set(n.load(Ordering::Relaxed) as f64);
    }
    let (hot, locked) = limiter.survey(HOT_THRESHOLD, top);
    gauge!(m::SENDERS_LOCKED).set(locked as f64);
    gauge!(m::SENDERS_RESIDENT).set(limiter.len() as f64);
    for s in hot {
        let labels = [
            ("sender", s.key.to_string()),
            ("class", s.key.class().as_str().to_owned()),
        ];
        gauge!(m::SENDER_USAGE, &labels).set(s.usage);
        gauge!(m::SENDER_RECIPIENTS, &labels).set(s.recipients as f64);
        gauge!(m::SENDER_LOCKED, &labels).set(if s.locked { 1.0 } else { 0.0 });
    }
}
