//! What operators do at run time, through the admin API: overrides and
//! exemptions that outlive restarts (the store keeps them) and expire on
//! their own, resets, locks.

use super::store::StoredOverride;
use super::{Limiter, SenderKey, Time};
use crate::config::Limit;

/// An override in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOverride {
    pub limit: Limit,
    pub stored: StoredOverride,
}

impl RuntimeOverride {
    /// From its stored form; `None` if its key or limit no longer parse.
    pub fn from_stored(stored: StoredOverride) -> Option<(SenderKey, RuntimeOverride)> {
        let key = SenderKey::parse(&stored.key)?;
        let limit = if stored.exempt {
            Limit::Unlimited
        } else {
            crate::config::parse_limit(&stored.limit).ok()?
        };
        Some((key, RuntimeOverride { limit, stored }))
    }
}

impl Limiter {
    pub(super) fn runtime_entries(&self) -> Vec<(SenderKey, Limit, bool)> {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, o)| (k.clone(), o.limit.clone(), o.stored.exempt))
            .collect()
    }

    /// Re-applies the file's policy with the current overrides on top.
    fn rebuild(&self) {
        let base = super::Policy::new(&self.policy().config);
        self.set_policy(&base);
    }

    /// Sets `key`'s override; returns the one it replaced.
    pub fn set_override(&self, key: SenderKey, o: RuntimeOverride) -> Option<RuntimeOverride> {
        let old = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, o);
        self.rebuild();
        old
    }

    /// Removes `key`'s override; returns it.
    pub fn remove_override(&self, key: &SenderKey) -> Option<RuntimeOverride> {
        let old = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if old.is_some() {
            self.rebuild();
        }
        old
    }

    /// `key`'s override, if any.
    pub fn override_of(&self, key: &SenderKey) -> Option<RuntimeOverride> {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Loads the stored overrides at start-up (expired ones are dropped by
    /// the next [`Limiter::expire_overrides`]).
    pub fn restore_overrides(&self, stored: Vec<StoredOverride>) {
        let mut map = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        for s in stored {
            match RuntimeOverride::from_stored(s) {
                Some((k, o)) => {
                    map.insert(k, o);
                }
                None => tracing::warn!("a stored override no longer parses; ignored"),
            }
        }
        drop(map);
        self.rebuild();
    }

    /// Removes the overrides whose time is up; returns them.
    pub fn expire_overrides(&self, now: Time) -> Vec<RuntimeOverride> {
        let mut map = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<SenderKey> = map
            .iter()
            .filter(|(_, o)| o.stored.until.is_some_and(|u| u <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let gone: Vec<RuntimeOverride> = expired.iter().filter_map(|k| map.remove(k)).collect();
        drop(map);
        if !gone.is_empty() {
            self.rebuild();
        }
        gone
    }

    /// Forgets `key`'s counts.
    pub fn reset(&self, key: &SenderKey) {
        let now = self.now();
        self.shard(key).reset(key, now);
    }
}
