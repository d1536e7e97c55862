//! Reservations that live as long as their sessions: the ones this process
//! holds in the fleet's Redis (made by a reserve, not yet committed or
//! released), by sender key, and the refresh that keeps them from expiring.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use redis::Value;

use super::{Fleet, FleetError, Time, secs_of};

/// What one [`Fleet::refresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    /// Reservations still held, their expiry moved on.
    pub held: usize,
    /// Reservations gone from Redis before they could be refreshed (expired
    /// while Redis was unreachable, or Redis lost its data); forgotten here.
    pub expired: usize,
}

impl Fleet {
    /// Moves the expiry of every reservation this process holds to `now` +
    /// the reservation TTL, one call per sender key. A key that fails does
    /// not hold up the others; the first failure is returned once all were
    /// tried (the next round tries again).
    pub async fn refresh(&self, now: Time) -> Result<Refreshed, FleetError> {
        let expiry = now.saturating_add(secs_of(self.options.reservation_ttl));
        let mut done = Refreshed {
            held: 0,
            expired: 0,
        };
        let mut failed = None;
        for (key, ids) in self.held.snapshot() {
            match self.refresh_key(&key, &ids, now, expiry).await {
                Ok((gone, expired)) => {
                    done.expired += expired;
                    done.held += ids.len().saturating_sub(gone);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(done), Err)
    }

    /// Refreshes one key's reservations; returns how many Redis no longer
    /// had, and how many of those were still held here (expired).
    async fn refresh_key(
        &self,
        key: &str,
        ids: &[String],
        now: Time,
        expiry: Time,
    ) -> Result<(usize, usize), FleetError> {
        let mut args = vec![now.to_string(), expiry.to_string()];
        args.extend(ids.iter().cloned());
        let reply = self.script("refresh", key, &args).await?;
        let Value::Array(gone) = &reply else {
            return Err(self.bad_reply("refresh", &reply));
        };
        let mut expired = 0;
        for id in gone {
            let Value::BulkString(id) = id else {
                return Err(self.bad_reply("refresh", &reply));
            };
            // Settled since the snapshot (commit, release) is not expired.
            if self.held.remove(key, &String::from_utf8_lossy(id)) {
                expired += 1;
            }
        }
        Ok((gone.len(), expired))
    }

    /// Reservations this process holds now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// Reservation ids by sender key.
#[derive(Debug, Default)]
pub(super) struct Held(Mutex<HashMap<String, HashSet<String>>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        // Sets of strings cannot be left half-changed: keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add(&self, key: &str, id: &str) {
        self.map()
            .entry(key.to_owned())
            .or_default()
            .insert(id.to_owned());
    }

    /// False if `id` was not held (settled already).
    pub(super) fn remove(&self, key: &str, id: &str) -> bool {
        let mut map = self.map();
        let Some(ids) = map.get_mut(key) else {
            return false;
        };
        let removed = ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
        removed
    }

    /// Every sender key with the ids held under it, copied so that no lock
    /// is held across Redis calls.
    pub(super) fn snapshot(&self) -> Vec<(String, Vec<String>)> {
        self.map()
            .iter()
            .map(|(key, ids)| (key.clone(), ids.iter().cloned().collect()))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.map().values().map(HashSet::len).sum()
    }
}
