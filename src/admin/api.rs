//! The admin API: JSON over HTTP under `/api`, as documented in the README
//! ("The admin API"). Every change is applied to the running limiter, kept
//! in the database, and written to the audit trail. Overrides and
//! exemptions are written with their audit entry in one transaction before
//! they apply; locks, unlocks and resets are changes of the engine, which
//! journals them in order with the sends around them, and the state thread
//! writes them within a second ([`crate::state::FLUSH_INTERVAL`]), as it
//! writes the sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::config::Limit;
use crate::limits::operate::RuntimeOverride;
use crate::limits::policy::{Source, rate_text};
use crate::limits::shared::FleetLink;
use crate::limits::store::{AuditEntry, Store, StoredOverride};
use crate::limits::{Limiter, Lock, LockReason, SenderKey, Time};

/// A reload request and where its outcome goes.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the API works on.
pub struct Api {
    pub limiter: Arc<Limiter>,
    /// The API's own connection to the state database.
    pub store: Mutex<Store>,
    /// Required as a bearer token on every call.
    pub token: Arc<super::token::AdminToken>,
    pub started: std::time::Instant,
    /// (name, bind, sessions in progress).
    pub listeners: super::ActiveSessions,
    pub binds: Vec<String>,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Fleet mode: changes are shared through Redis too.
    pub fleet: Option<Arc<FleetLink>>,
}

/// An error answer: status and `{"error": …}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Applied here, but the fleet's Redis did not take it.
fn fleet_down(e: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::BAD_GATEWAY,
        format!(
            "applied on this instance, but not shared with the fleet: {e}; retry when Redis is back"
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("admin API: {e}");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The routes under `/api`.
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/senders/{key}", get(show))
        .route("/api/senders/{key}/override", put(raise).delete(clear))
        .route("/api/senders/{key}/exempt", post(exempt))
        .route("/api/senders/{key}/lock", post(lock))
        .route("/api/senders/{key}/unlock", post(unlock))
        .route("/api/senders/{key}/reset", post(reset))
        .route("/api/top", get(top))
        .route("/api/audit", get(audit))
        .route("/api/report", get(report))
        .route("/api/reload", post(reload))
        .route_layer(axum::middleware::from_fn_with_state(
            api.token.clone(),
            super::token::authorise,
        ))
        .with_state(api)
}

fn parse_key(text: &str) -> Result<SenderKey, ApiError> {
    SenderKey::parse(text).ok_or_else(|| {
        bad(format!(
            "{text:?} is not a sender key; write auth:LOGIN, vhost:NAME, user:NAME, uid:N or ip:ADDRESS"
        ))
    })
}

fn limit_text(limit: &Limit) -> String {
    match limit {
        Limit::Unlimited => "unlimited".into(),
        Limit::Rates(r) => r.iter().map(rate_text).collect::<Vec<_>>().join(", "),
    }
}

fn source_text(s: Source) -> &'static str {
    s.as_str()
}

/// Who and why, required on every change.
#[derive(Deserialize, Default)]
struct Change {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    who: String,
    /// Humantime duration ("3d").
    #[serde(default, rename = "for")]
    for_: Option<String>,
    /// Unix time.
    #[serde(default)]
    until: Option<Time>,
    /// For overrides: "500/1h", "12/1h, 100/24h" or "unlimited".
    #[serde(default)]
    limit: Option<String>,
}

impl Change {
    fn checked(self) -> Result<Self, ApiError> {
        if self.reason.trim().is_empty() {
            return Err(bad(
                "a reason is required (who asked, the ticket): it goes into the audit trail",
            ));
        }
        Ok(self)
    }

    fn who(&self) -> String {
        if self.who.trim().is_empty() {
            "unknown".into()
        } else {
            self.who.clone()
        }
    }

    /// The end time from `for` or `until`, if any.
    fn until(&self, now: Time) -> Result<Option<Time>, ApiError> {
        match (&self.for_, self.until) {
            (Some(_), Some(_)) => Err(bad("give either for or until, not both")),
            (Some(d), None) => {
                let d = humantime::parse_duration(d).map_err(|e| {
                    bad(format!(
                        "for: {d:?} is not a duration ({e}); write e.g. 3d or 12h"
                    ))
                })?;
                Ok(Some(now.saturating_add(
                    u32::try_from(d.as_secs()).unwrap_or(Time::MAX),
                )))
            }
            (None, Some(u)) if u <= now => Err(bad("until is in the past")),
            (None, u) => Ok(u),
        }
    }
}

fn body(raw: Option<Json<Change>>) -> Change {
    raw.map(|Json(c)| c).unwrap_or_default()
}

/// A change to one sender: its key from the path, who and why from the
/// body (a reason is required).
struct SenderChange(SenderKey, Change);

impl<S: Send + Sync> axum::extract::FromRequest<S> for SenderChange {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let (mut parts, body_bytes) = req.into_parts();
        let Path(key) = <Path<String> as axum::extract::FromRequestParts<S>>::from_request_parts(
            &mut parts, state,
        )
        .await
        .map_err(|e| bad(e.to_string()))?;
        let req = axum::extract::Request::from_parts(parts, body_bytes);
        let raw = <Option<Json<Change>> as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map_err(|e| bad(e.to_string()))?;
        Ok(SenderChange(parse_key(&key)?, body(raw).checked()?))
    }
}

async fn status(State(api): State<Arc<Api>>) -> ApiResult {
    let (hot, locked) = api.limiter.survey(1.1, 0);
    drop(hot);
    let policy = api.limiter.policy();
    let listeners: Vec<Value> = api
        .listeners
        .iter()
        .zip(&api.binds)
        .map(|((name, active), bind)| {
            json!({"name": name, "bind": bind, "sessions_active": active.load(std::sync::atomic::Ordering::Relaxed)})
        })
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": api.started.elapsed().as_secs(),
        "listeners": listeners,
        "senders_resident": api.limiter.len(),
        "senders_locked": locked,
        "default_limit": limit_text(&policy.config.default),
        "action": format!("{:?}", policy.action).to_ascii_lowercase(),
    })))
}

fn sender_json(api: &Api, key: &SenderKey) -> Value {
    let status = api.limiter.status(key, None);
    let o = api.limiter.override_of(key);
    let windows: Vec<Value> = status
        .rates
        .iter()
        .map(|(rate, n)| json!({"rate": rate_text(rate), "recipients": n, "pending": status.pending}))
        .collect();
    json!({
        "key": key.to_string(),
        "class": key.class().as_str(),
        "limit": {
            "rates": status.rates.iter().map(|(r, _)| rate_text(r)).collect::<Vec<_>>(),
            "unlimited": status.rates.is_empty(),
            "source": source_text(status.source),
        },
        "windows": windows,
        "next_free": status.next_free,
        "lock": status.lock.map(|l| json!({"until": l.until, "reason": l.reason.to_string()})),
        "override": o.map(|o| serde_json::to_value(&o.stored).unwrap_or(Value::Null)),
    })
}

async fn show(State(api): State<Arc<Api>>, Path(key): Path<String>) -> ApiResult {
    let key = parse_key(&key)?;
    let mut answer = sender_json(&api, &key);
    if let Some(fleet) = &api.fleet {
        // The fleet's counts, not this instance's.
        let policy = api.limiter.policy();
        let (rates, _) = policy.limit(&key, None);
        let (counts, pending) = fleet
            .counts(&key.to_string(), rates, api.limiter.now())
            .await
            .map_err(fleet_down)?;
        let windows: Vec<Value> = rates
            .iter()
            .zip(counts)
            .map(|(r, n)| json!({"rate": rate_text(r), "recipients": n, "pending": pending}))
            .collect();
        answer["windows"] = json!(windows);
        answer["fleet"] = json!(true);
    }
    Ok(Json(answer))
}

/// Sets an override or exemption: limiter, database and audit together.
async fn set_override(
    api: &Api,
    key: &SenderKey,
    limit: Limit,
    exempt: bool,
    c: &Change,
) -> ApiResult {
    let now = api.limiter.now();
    let until = c.until(now)?;
    let stored = StoredOverride {
        key: key.to_string(),
        exempt,
        limit: limit_text(&limit),
        until,
        reason: c.reason.clone(),
        who: c.who(),
        at: now,
    };
    let previous = api.limiter.override_of(key);
    let audit = AuditEntry {
        at: now,
        who: c.who(),
        action: if exempt { "exempt" } else { "raise" }.into(),
        key: key.to_string(),
        old: Some(
            previous
                .as_ref()
                .map_or_else(|| current_limit_text(api, key), |p| p.stored.limit.clone()),
        ),
        new: Some(match until {
            Some(u) => format!(
                "{} until {u}",
                if exempt {
                    "exempt"
                } else {
                    stored.limit.as_str()
                }
            ),
            None => {
                if exempt {
                    "exempt".into()
                } else {
                    stored.limit.clone()
                }
            }
        }),
        reason: c.reason.clone(),
    };
    // The database and the limiter change under one lock, so that two
    // operators changing one key leave the same override in both.
    {
        let mut store = api.store.lock().unwrap_or_else(|e| e.into_inner());
        store.save_override(&stored, &audit).map_err(internal)?;
        api.limiter.set_override(
            key.clone(),
            RuntimeOverride {
                limit,
                stored: stored.clone(),
            },
        );
    }
    tracing::info!(sender = %key, limit = %stored.limit, exempt, ?until, who = %stored.who, reason = %stored.reason, "override set");
    if let Some(fleet) = &api.fleet {
        fleet
            .set_override(&stored.key, &stored.limit, until, now)
            .await
            .map_err(fleet_down)?;
    }
    Ok(Json(json!({
        "key": key.to_string(),
        "override": stored,
        "previous": previous.map(|p| p.stored),
    })))
}

/// The limit a key has now, for the audit trail.
fn current_limit_text(api: &Api, key: &SenderKey) -> String {
    let status = api.limiter.status(key, None);
    if status.rates.is_empty() {
        format!("unlimited ({})", status.source.as_str())
    } else {
        let rates: Vec<String> = status.rates.iter().map(|(r, _)| rate_text(r)).collect();
        format!("{} ({})", rates.join(", "), status.source.as_str())
    }
}

async fn raise(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    let text = c
        .limit
        .clone()
        .ok_or_else(|| bad("limit is required, e.g. \"500/1h\""))?;
    let limit = crate::config::parse_limit(&text).map_err(|e| bad(format!("limit: {e}")))?;
    set_override(&api, &key, limit, false, &c).await
}

async fn exempt(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    set_override(&api, &key, Limit::Unlimited, true, &c).await
}

async fn clear(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    let Some(current) = api.limiter.override_of(&key) else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("{key} has no override to clear"),
        ));
    };
    let audit = AuditEntry {
        at: api.limiter.now(),
        who: c.who(),
        action: "clear".into(),
        key: key.to_string(),
        old: Some(if current.stored.exempt {
            "exempt".into()
        } else {
            current.stored.limit.clone()
        }),
        new: None,
        reason: c.reason.clone(),
    };
    let removed = {
        let mut store = api.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .remove_override(&key.to_string(), &audit)
            .map_err(internal)?;
        api.limiter.remove_override(&key)
    };
    tracing::info!(sender = %key, who = %audit.who, reason = %audit.reason, "override cleared");
    if let Some(fleet) = &api.fleet {
        fleet
            .remove_override(&key.to_string())
            .await
            .map_err(fleet_down)?;
    }
    Ok(Json(
        json!({"key": key.to_string(), "removed": removed.map(|r| r.stored)}),
    ))
}

fn record(api: &Api, entry: AuditEntry) -> Result<(), ApiError> {
    api.store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .audit_append(&entry)
        .map_err(internal)
}

async fn lock(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    let now = api.limiter.now();
    let until = c.until(now)?;
    record(
        &api,
        AuditEntry {
            at: now,
            who: c.who(),
            action: "lock".into(),
            key: key.to_string(),
            old: None,
            new: Some(until.map_or("locked".into(), |u| format!("locked until {u}"))),
            reason: c.reason.clone(),
        },
    )?;
    let lock = Lock {
        until,
        reason: LockReason::Operator(c.reason.clone()),
    };
    api.limiter.lock(&key, lock.clone());
    if let Some(fleet) = &api.fleet {
        fleet
            .lock(&key.to_string(), until, &lock.reason.to_string(), now)
            .await
            .map_err(fleet_down)?;
    }
    tracing::warn!(sender = %key, who = %c.who(), reason = %c.reason, "sender locked by an operator");
    Ok(Json(
        json!({"key": key.to_string(), "lock": {"until": lock.until, "reason": lock.reason.to_string()}}),
    ))
}

async fn unlock(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    let locked_here = api.limiter.status(&key, None).lock.is_some();
    let locked_in_fleet = match &api.fleet {
        Some(fleet) => fleet.unlock(&key.to_string()).await.map_err(fleet_down)?,
        None => false,
    };
    if !locked_here && !locked_in_fleet {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("{key} is not locked"),
        ));
    }
    record(
        &api,
        AuditEntry {
            at: api.limiter.now(),
            who: c.who(),
            action: "unlock".into(),
            key: key.to_string(),
            old: Some("locked".into()),
            new: None,
            reason: c.reason.clone(),
        },
    )?;
    api.limiter.unlock(&key);
    tracing::info!(sender = %key, who = %c.who(), reason = %c.reason, "sender unlocked");
    Ok(Json(json!({"key": key.to_string()})))
}

async fn reset(State(api): State<Arc<Api>>, SenderChange(key, c): SenderChange) -> ApiResult {
    let before = api.limiter.status(&key, None);
    record(
        &api,
        AuditEntry {
            at: api.limiter.now(),
            who: c.who(),
            action: "reset".into(),
            key: key.to_string(),
            old: Some(
                before
                    .rates
                    .iter()
                    .map(|(r, n)| format!("{n} in {}", rate_text(r)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            new: Some("0".into()),
            reason: c.reason.clone(),
        },
    )?;
    api.limiter.reset(&key);
    if let Some(fleet) = &api.fleet {
        fleet.reset(&key.to_string()).await.map_err(fleet_down)?;
    }
    tracing::info!(sender = %key, who = %c.who(), reason = %c.reason, "sender counts reset");
    Ok(Json(json!({"key": key.to_string()})))
}

#[derive(Deserialize)]
struct Limited {
    limit: Option<usize>,
}

async fn top(State(api): State<Arc<Api>>, Query(q): Query<Limited>) -> ApiResult {
    let n = q.limit.unwrap_or(20).min(1000);
    let (hot, _) = api.limiter.survey(0.0, n);
    let senders: Vec<Value> = hot
        .into_iter()
        .filter(|s| s.recipients > 0 || s.locked)
        .map(|s| json!({"key": s.key.to_string(), "usage": s.usage, "recipients": s.recipients, "locked": s.locked}))
        .collect();
    Ok(Json(json!({"senders": senders})))
}

async fn audit(State(api): State<Arc<Api>>, Query(q): Query<Limited>) -> ApiResult {
    let n = q.limit.unwrap_or(50).min(10_000);
    let entries = api
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .audit(n)
        .map_err(internal)?;
    Ok(Json(json!({"entries": entries})))
}

#[derive(Deserialize)]
struct Days {
    days: Option<u32>,
}

async fn report(State(api): State<Arc<Api>>, Query(q): Query<Days>) -> ApiResult {
    let days = q.days.unwrap_or(30).clamp(1, 35);
    let now = api.limiter.now();
    let since = now.saturating_sub(days * 86_400);
    let totals = api
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hourly(since)
        .map_err(internal)?;
    let policy = api.limiter.policy();
    let limit_of = |key: &str| match SenderKey::parse(key) {
        Some(k) => {
            let (rates, source) = policy.limit(&k, None);
            (rates.to_vec(), source)
        }
        None => (Vec::new(), Source::Default),
    };
    let report = crate::report::build(&totals, &limit_of, days, now);
    serde_json::to_value(&report).map(Json).map_err(internal)
}

async fn reload(State(api): State<Arc<Api>>, raw: Option<Json<Change>>) -> ApiResult {
    let c = body(raw);
    let (tx, rx) = oneshot::channel();
    api.reload.send(tx).await.map_err(internal)?;
    let outcome = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| internal("reload did not finish"))?
        .map_err(internal)?;
    match outcome {
        Ok(()) => {
            record(
                &api,
                AuditEntry {
                    at: api.limiter.now(),
                    who: c.who(),
                    action: "reload".into(),
                    key: String::new(),
                    old: None,
                    new: None,
                    reason: if c.reason.is_empty() {
                        "reload".into()
                    } else {
                        c.reason
                    },
                },
            )?;
            Ok(Json(json!({"result": "reloaded"})))
        }
        Err(e) => Err(bad(e)),
    }
}
