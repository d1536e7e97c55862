//! Fleet mode: several mailbrake processes share one exact window per
//! sender — sends, reservations, locks and overrides — in Redis, so that
//! together they enforce one limit as a single process would.
//!
//! Every decision is one Lua script (`fleet/window.lua`) that Redis runs
//! atomically with the caller's `now`: window edges, pending reservations
//! and `next_free` are exactly those of [`super::window`]. Redis's own
//! clock only drives key TTLs, which collect what no window can need.
//!
//! # Data model
//!
//! Per sender key `K` (`{K}` is a hash tag: one Cluster slot per sender,
//! which is why the prefix may not contain braces):
//!
//! | key             | type   | content                                               | TTL                    |
//! |-----------------|--------|-------------------------------------------------------|------------------------|
//! | `{prefix}s:{K}` | ZSET   | sends: member = reservation id, score = send time     | longest window + 60 s  |
//! | `{prefix}r:{K}` | ZSET   | reservations: member = id, score = expiry time        | latest expiry + 60 s   |
//! | `{prefix}l:{K}` | string | lock: `UNTIL\|reason` (`UNTIL` empty: until unlocked) | `until - now`, or none |
//! | `{prefix}o:{K}` | string | override: `UNTIL\|unlimited`, `UNTIL\|12/3600s, 100/86400s` | `until - now`, or none |
//!
//! Reserving keeps only the newest max-N sends within the longest window
//! (all a window needs; N and the window over both the file's rates and the
//! override). Overrides are parsed by [`crate::config::parse_limit`] and
//! stored in seconds for the script.
//!
//! # Reservations live as long as their sessions
//!
//! A reservation expires after the reservation TTL (5 min by default)
//! unless refreshed: each process remembers the reservations it holds and
//! [`Fleet::refresh`] (every minute, from [`super::shared`]) moves their
//! expiry to now + the TTL, so a session that takes an hour keeps its
//! recipients counted for the hour. When a process dies nothing refreshes
//! its reservations, and they free its senders' quotas within the TTL. A
//! reservation that did expire (Redis unreachable for longer than the TTL)
//! is never revived; a commit after that still counts the send.
//!
//! # Bytes per key
//!
//! `MEMORY USAGE` on Redis 7.0 (jemalloc), prefix `mb:`, key
//! `auth:user@example.com`, ids from [`Fleet::new_id`] (10 to 12 bytes);
//! Redis's entry for each key's TTL comes on top. The sends ZSET: about 100
//! bytes, plus 15 to 18 per send up to 128 sends (a listpack), about 100 per
//! send beyond (a skiplist): 12 sends 264 bytes, 100 sends 1.9 kB, 1,000
//! sends 100 kB. The reservations ZSET: 104 bytes with one reservation, 15
//! to 18 more per further one. A lock or an override: about 104 bytes each.
//! A longer prefix costs its extra length once per key. An idle sender costs
//! nothing: every key expires.
//!
//! Every call is bounded by a timeout (2 s by default): an unreachable Redis
//! is an error, quickly, never a hang. The connection reconnects by itself
//! when Redis comes back; a call that meets a broken connection is tried
//! once more on the new one (every operation here is safe to repeat).

mod refresh;
#[cfg(test)]
mod test_redis;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_refresh;

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script, Value};

use super::journal::Time;
use crate::config::{Limit, Rate};
pub use refresh::Refreshed;

/// How long a reservation lives unless committed, released or refreshed:
/// how long a dead process can hold its senders' quotas.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(5 * 60);
/// How often a process refreshes the reservations it holds: a Redis outage
/// shorter than the TTL minus this loses none of them.
pub const DEFAULT_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Longest any Redis call may take, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why Redis could not answer. Always ours or Redis's, never the client's;
/// messages name the Redis address, never the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The URL did not parse (the URL itself is not repeated: it may hold a password).
    #[error("the Redis URL is not usable: {0}")]
    Url(String),
    #[error("the fleet key prefix {0:?} may not contain '{{' or '}}' (they make Redis hash tags)")]
    Prefix(String),
    #[error("Redis at {addr}: {op} did not finish within {after:?}")]
    Timeout {
        op: &'static str,
        addr: String,
        after: Duration,
    },
    #[error("Redis at {addr}: {op} failed: {source}")]
    Redis {
        op: &'static str,
        addr: String,
        source: redis::RedisError,
    },
    #[error("Redis at {addr}: unexpected reply to {op}: {reply}")]
    Reply {
        op: &'static str,
        addr: String,
        reply: String,
    },
    /// An override's limit text is not a limit.
    #[error("{0}")]
    Limit(String),
}

/// Redis's answer for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetDecision {
    /// Held: commit it when sent, release it otherwise. (Under an unlimited
    /// override nothing is held, but a commit still records the send.)
    Reserved,
    /// `rates[rate_index]` (or the override's) is reached; `next_free` as
    /// in [`super::window::Full`].
    Full {
        rate_index: usize,
        next_free: Option<Time>,
    },
    Locked {
        until: Option<Time>,
        reason: String,
    },
}

/// Tuning for [`Fleet::connect_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetOptions {
    /// Reservations not committed, released or refreshed by then are dropped.
    pub reservation_ttl: Duration,
    /// How often [`Fleet::refresh`] runs (well below the TTL).
    pub refresh_every: Duration,
    /// Bound on every call, connecting included.
    pub timeout: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            refresh_every: DEFAULT_REFRESH_EVERY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A connection to the fleet's Redis. Cheap to share behind an `Arc`;
/// calls run concurrently over one multiplexed connection.
pub struct Fleet {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    options: FleetOptions,
    /// `host:port` (or socket path), for messages.
    addr: String,
    /// This process's part of [`Fleet::new_id`].
    nonce: String,
    ids: AtomicU64,
    /// Reservations made here and not yet settled, to refresh.
    held: refresh::Held,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The four Redis keys of one sender.
struct Keys([String; 4]);

/// A rate's window in seconds, saturating like the engine.
fn secs(rate: &Rate) -> Time {
    u32::try_from(rate.window.as_secs()).unwrap_or(Time::MAX)
}

fn secs_of(d: Duration) -> Time {
    u32::try_from(d.as_secs()).unwrap_or(Time::MAX)
}

/// `n` in base 36, for short ids.
fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

/// A lock's or override's value: `UNTIL|rest`.
fn stamped(until: Option<Time>, rest: &str) -> String {
    match until {
        Some(t) => format!("{t}|{rest}"),
        None => format!("|{rest}"),
    }
}

/// An override's limit as the script reads it: `unlimited` or
/// `12/3600s, 100/86400s` (which [`crate::config::parse_limit`] reads back).
fn canonical(limit: &Limit) -> String {
    match limit {
        Limit::Unlimited => "unlimited".to_owned(),
        Limit::Rates(rates) => rates
            .iter()
            .map(|r| format!("{}/{}s", r.count, secs(r)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

impl Fleet {
    /// Connects (bounded by the default timeout); `prefix` namespaces every
    /// key (e.g. `"mailbrake:"`).
    pub async fn connect(url: &str, prefix: &str) -> Result<Fleet, FleetError> {
        Self::connect_with(url, prefix, FleetOptions::default()).await
    }

    /// Connects with the given reservation TTL and timeout.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        options: FleetOptions,
    ) -> Result<Fleet, FleetError> {
        if prefix.contains(['{', '}']) {
            return Err(FleetError::Prefix(prefix.to_owned()));
        }
        // Redis's messages about a URL never quote it.
        let client = redis::Client::open(url).map_err(|e| FleetError::Url(e.to_string()))?;
        let addr = client.get_connection_info().addr.to_string();
        // One connection attempt per reconnection: every failed call starts
        // the next one, so the backoff would only delay recovery.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(options.timeout)
            .set_response_timeout(options.timeout);
        let connecting = ConnectionManager::new_with_config(client, config);
        let conn = match tokio::time::timeout(options.timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(error("connect", addr, options.timeout, source)),
            Err(_) => {
                return Err(FleetError::Timeout {
                    op: "connect",
                    addr,
                    after: options.timeout,
                });
            }
        };
        let nonce = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Ok(Fleet {
            conn,
            script: Script::new(include_str!("fleet/window.lua")),
            prefix: prefix.to_owned(),
            options,
            addr,
            nonce: base36(nonce % 36u64.pow(8)),
            ids: AtomicU64::new(0),
            held: refresh::Held::default(),
        })
    }

    /// A reservation id unique across the fleet (a random per-process part
    /// and a counter): ids are the members of the sends and reservations
    /// sets, so a shared id would merge two recipients.
    pub fn new_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{}.{}", self.nonce, base36(n))
    }

    fn keys(&self, key: &str) -> Keys {
        let p = &self.prefix;
        Keys(["s", "r", "l", "o"].map(|kind| format!("{p}{kind}:{{{key}}}")))
    }

    /// Runs one call under the timeout. A call that failed on the
    /// connection (broken, or a reconnection that failed earlier) is tried
    /// once more, on the new connection the manager has started by then:
    /// so the first call after Redis is back succeeds. Every operation here
    /// is safe to repeat.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, FleetError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match f(self.conn.clone()).await {
                Err(e) if e.is_io_error() && !e.is_timeout() => f(self.conn.clone()).await,
                done => done,
            }
        };
        match tokio::time::timeout(self.options.timeout, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(error(op, self.addr.clone(), self.options.timeout, source)),
            Err(_) => Err(FleetError::Timeout {
                op,
                addr: self.addr.clone(),
                after: self.options.timeout,
            }),
        }
    }

    /// Runs the script's `op` on `key`'s four keys with `args`.
    async fn script(
        &self,
        op: &'static str,
        key: &str,
        args: &[String],
    ) -> Result<Value, FleetError> {
        let Keys(keys) = self.keys(key);
        self.call(op, |mut conn| {
            let mut invocation = self.script.prepare_invoke();
            invocation.key(&keys).arg(op).arg(args);
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
    }

    fn bad_reply(&self, op: &'static str, reply: &Value) -> FleetError {
        FleetError::Reply {
            op,
            addr: self.addr.clone(),
            reply: format!("{reply:?}"),
        }
    }

    /// Reserves one recipient of `key` as `id` at `now`, or says why not:
    /// the key's lock, else its shared override (if set) or `rates`.
    pub async fn reserve(
        &self,
        key: &str,
        rates: &[Rate],
        now: Time,
        id: &str,
    ) -> Result<FleetDecision, FleetError> {
        let expiry = now.saturating_add(secs_of(self.options.reservation_ttl));
        let mut args = vec![now.to_string(), expiry.to_string(), id.to_owned()];
        for rate in rates {
            args.push(rate.count.to_string());
            args.push(secs(rate).to_string());
        }
        let reply = self.script("reserve", key, &args).await?;
        let decision = parse_decision(&reply).ok_or_else(|| self.bad_reply("reserve", &reply))?;
        // Nothing is held under an unlimited override: nothing to refresh.
        if decision == FleetDecision::Reserved && holds(&reply) {
            self.held.add(key, id);
        }
        Ok(decision)
    }

    /// Reservation `id` becomes a send at `now`; `key`'s sends expire after
    /// `longest` seconds (the longest window that may apply to it).
    pub async fn commit(
        &self,
        key: &str,
        id: &str,
        now: Time,
        longest: Time,
    ) -> Result<(), FleetError> {
        self.held.remove(key, id);
        let args = [now.to_string(), id.to_owned(), longest.to_string()];
        self.script("commit", key, &args).await.map(drop)
    }

    /// Reservation `id` was not sent.
    pub async fn release(&self, key: &str, id: &str) -> Result<(), FleetError> {
        self.held.remove(key, id);
        let Keys([_, reserved, ..]) = self.keys(key);
        self.call("release", |mut conn| {
            let cmd = redis::cmd("ZREM").arg(&reserved).arg(id).clone();
            async move { cmd.query_async::<i64>(&mut conn).await }
        })
        .await
        .map(drop)
    }

    /// Sets (or replaces) `key`'s lock: until `until` (the Redis key lives
    /// `until - now` seconds), or until unlocked.
    pub async fn lock(
        &self,
        key: &str,
        until: Option<Time>,
        reason: &str,
        now: Time,
    ) -> Result<(), FleetError> {
        let Keys([_, _, lock, _]) = self.keys(key);
        self.set_stamped("lock", lock, until, &stamped(until, reason), now)
            .await
    }

    /// Lifts `key`'s lock; false if it was not locked.
    pub async fn unlock(&self, key: &str) -> Result<bool, FleetError> {
        let Keys([_, _, lock, _]) = self.keys(key);
        self.delete("unlock", lock).await
    }

    /// Sets `key`'s shared override: `limit_text` as in the configuration
    /// file (`"500/1h"`, `"12/1h, 100/24h"`, `"unlimited"`), until `until`.
    pub async fn set_override(
        &self,
        key: &str,
        limit_text: &str,
        until: Option<Time>,
        now: Time,
    ) -> Result<(), FleetError> {
        let limit = crate::config::parse_limit(limit_text).map_err(FleetError::Limit)?;
        let Keys([_, _, _, over]) = self.keys(key);
        let value = stamped(until, &canonical(&limit));
        self.set_stamped("set override", over, until, &value, now)
            .await
    }

    /// Removes `key`'s override; false if there was none.
    pub async fn remove_override(&self, key: &str) -> Result<bool, FleetError> {
        let Keys([_, _, _, over]) = self.keys(key);
        self.delete("remove override", over).await
    }

    /// Forgets `key`'s sends; its live reservations stay (their
    /// transactions still end).
    pub async fn reset(&self, key: &str) -> Result<(), FleetError> {
        let Keys([sends, ..]) = self.keys(key);
        self.delete("reset", sends).await.map(drop)
    }

    /// Sends in each of `rates`' windows at `now`, and live reservations,
    /// for status displays.
    pub async fn counts(
        &self,
        key: &str,
        rates: &[Rate],
        now: Time,
    ) -> Result<(Vec<u64>, u64), FleetError> {
        let mut args = vec![now.to_string()];
        for rate in rates {
            args.push(rate.count.to_string());
            args.push(secs(rate).to_string());
        }
        let reply = self.script("counts", key, &args).await?;
        let counts: Option<Vec<u64>> = match &reply {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match counts {
            Some(mut counts) if counts.len() == rates.len() + 1 => {
                let pending = counts.pop().expect("length checked");
                Ok((counts, pending))
            }
            _ => Err(self.bad_reply("counts", &reply)),
        }
    }

    /// SET with a TTL reaching `until`; an `until` already past deletes.
    async fn set_stamped(
        &self,
        op: &'static str,
        redis_key: String,
        until: Option<Time>,
        value: &str,
        now: Time,
    ) -> Result<(), FleetError> {
        if until.is_some_and(|u| u <= now) {
            return self.delete(op, redis_key).await.map(drop);
        }
        self.call(op, |mut conn| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&redis_key).arg(value);
            if let Some(u) = until {
                cmd.arg("EX").arg(u - now);
            }
            async move { cmd.query_async::<()>(&mut conn).await }
        })
        .await
    }

    /// DEL; true if the key existed.
    async fn delete(&self, op: &'static str, redis_key: String) -> Result<bool, FleetError> {
        self.call(op, |mut conn| {
            let cmd = redis::cmd("DEL").arg(&redis_key).clone();
            async move { cmd.query_async::<i64>(&mut conn).await }
        })
        .await
        .map(|n| n > 0)
    }
}

/// A failed call: its own timeout (connecting, or waiting for the reply)
/// reads like ours.
fn error(op: &'static str, addr: String, after: Duration, source: redis::RedisError) -> FleetError {
    if source.is_timeout() {
        FleetError::Timeout { op, addr, after }
    } else {
        FleetError::Redis { op, addr, source }
    }
}

/// Whether a `reserved` reply holds a reservation in Redis (`{'reserved', 1}`).
fn holds(reply: &Value) -> bool {
    matches!(reply, Value::Array(items) if items.get(1) == Some(&Value::Int(1)))
}

/// The script's reply to `reserve`.
fn parse_decision(reply: &Value) -> Option<FleetDecision> {
    let Value::Array(items) = reply else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    // -1 stands for "none".
    let time = |v: &Value| match v {
        Value::Int(-1) => Some(None),
        Value::Int(n) => Time::try_from(*n).ok().map(Some),
        _ => None,
    };
    match (items.first().and_then(text)?.as_str(), items.len()) {
        ("reserved", 2) => Some(FleetDecision::Reserved),
        ("full", 3) => Some(FleetDecision::Full {
            rate_index: match items[1] {
                Value::Int(i) => usize::try_from(i).ok()?,
                _ => return None,
            },
            next_free: time(&items[2])?,
        }),
        ("locked", 3) => Some(FleetDecision::Locked {
            until: time(&items[1])?,
            reason: text(&items[2])?,
        }),
        _ => None,
    }
}
