//! What operators change: overrides set through the admin API (they outlive
//! restarts and expire on their own) and the audit trail of every change.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, sql_err};
use crate::limits::Time;

/// An override set by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredOverride {
    pub key: String,
    /// An exemption (no limit at all) rather than a different limit.
    pub exempt: bool,
    /// The limit as written: "500/1h", "12/1h, 100/24h" or "unlimited".
    pub limit: String,
    pub until: Option<Time>,
    pub reason: String,
    pub who: String,
    pub at: Time,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: Time,
    pub who: String,
    /// raise, exempt, clear, lock, unlock, reset, expire, reload.
    pub action: String,
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: String,
}

impl Store {
    /// Sets `o` (replacing any override of its key) and records `audit`, in
    /// one transaction.
    pub fn save_override(
        &mut self,
        o: &StoredOverride,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let err = sql_err(&self.path, "save an override");
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO overrides (key, exempt, limits, until, reason, who, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (key) DO UPDATE SET exempt = excluded.exempt, limits = excluded.limits,
                 until = excluded.until, reason = excluded.reason, who = excluded.who, at = excluded.at",
            params![o.key, o.exempt, o.limit, o.until, o.reason, o.who, o.at],
        )
        .map_err(err)?;
        insert_audit(&tx, audit).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Removes `key`'s override (if any) and records `audit`; returns what was removed.
    pub fn remove_override(
        &mut self,
        key: &str,
        audit: &AuditEntry,
    ) -> Result<Option<StoredOverride>, StoreError> {
        let err = sql_err(&self.path, "remove an override");
        let tx = self.conn.transaction().map_err(err)?;
        let old = tx
            .query_row(
                "SELECT key, exempt, limits, until, reason, who, at FROM overrides WHERE key = ?1",
                params![key],
                row_override,
            )
            .optional()
            .map_err(err)?;
        tx.execute("DELETE FROM overrides WHERE key = ?1", params![key])
            .map_err(err)?;
        insert_audit(&tx, audit).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(old)
    }

    /// Removes `key`'s override if it has expired at `now`, recording
    /// `audit`; false (and no audit) if the key's override is one still in
    /// force, set since the caller saw the expired one, or none.
    pub fn expire_override(
        &mut self,
        key: &str,
        now: Time,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let err = sql_err(&self.path, "expire an override");
        let tx = self.conn.transaction().map_err(err)?;
        let gone = tx
            .execute(
                "DELETE FROM overrides WHERE key = ?1 AND until IS NOT NULL AND until <= ?2",
                params![key, now],
            )
            .map_err(err)?;
        if gone > 0 {
            insert_audit(&tx, audit).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(gone > 0)
    }

    /// Every override, expired ones included (the caller expires them).
    pub fn overrides(&self) -> Result<Vec<StoredOverride>, StoreError> {
        let err = sql_err(&self.path, "read overrides");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, exempt, limits, until, reason, who, at FROM overrides ORDER BY key",
            )
            .map_err(err)?;
        let rows = stmt.query_map([], row_override).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Appends to the audit trail.
    pub fn audit_append(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let err = sql_err(&self.path, "write the audit trail");
        insert_audit(&self.conn, entry).map(drop).map_err(err)
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let err = sql_err(&self.path, "read the audit trail");
        let mut stmt = self
            .conn
            .prepare("SELECT at, who, action, key, old, new, reason FROM audit ORDER BY id DESC LIMIT ?1")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    who: r.get(1)?,
                    action: r.get(2)?,
                    key: r.get(3)?,
                    old: r.get(4)?,
                    new: r.get(5)?,
                    reason: r.get(6)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

fn row_override(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredOverride> {
    Ok(StoredOverride {
        key: r.get(0)?,
        exempt: r.get(1)?,
        limit: r.get(2)?,
        until: r.get(3)?,
        reason: r.get(4)?,
        who: r.get(5)?,
        at: r.get(6)?,
    })
}

fn insert_audit(conn: &rusqlite::Connection, e: &AuditEntry) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO audit (at, who, action, key, old, new, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.at, e.who, e.action, e.key, e.old, e.new, e.reason],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, key: &str) -> AuditEntry {
        AuditEntry {
            at: 1000,
            who: "ops".into(),
            action: action.into(),
            key: key.into(),
            old: None,
            new: Some("500/1h".into()),
            reason: "ticket 42".into(),
        }
    }

    #[test]
    fn overrides_and_audit_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let o = StoredOverride {
            key: "auth:shop@example.com".into(),
            exempt: false,
            limit: "500/1h".into(),
            until: Some(5000),
            reason: "campaign".into(),
            who: "ops".into(),
            at: 1000,
        };
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.save_override(&o, &entry("raise", &o.key)).unwrap();
            let replaced = StoredOverride {
                limit: "600/1h".into(),
                ..o.clone()
            };
            s.save_override(&replaced, &entry("raise", &o.key)).unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let all = s.overrides().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].limit, "600/1h");
        let removed = s.remove_override(&o.key, &entry("clear", &o.key)).unwrap();
        assert_eq!(removed.map(|r| r.limit), Some("600/1h".into()));
        assert!(s.overrides().unwrap().is_empty());
        assert_eq!(
            s.remove_override(&o.key, &entry("clear", &o.key)).unwrap(),
            None
        );
        let trail = s.audit(10).unwrap();
        let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["clear", "clear", "raise", "raise"],
            "newest first"
        );
        assert_eq!(s.audit(1).unwrap().len(), 1);
    }

    #[test]
    fn expiring_keeps_an_override_set_since() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let o = |limit: &str, until| StoredOverride {
            key: "auth:shop@example.com".into(),
            exempt: false,
            limit: limit.into(),
            until,
            reason: "campaign".into(),
            who: "ops".into(),
            at: 1000,
        };
        // The state thread took an expired override from memory; an operator
        // has set another since (lasting, then for a while): it stays.
        for newer in [o("600/1h", None), o("700/1h", Some(9000))] {
            s.save_override(&newer, &entry("raise", &newer.key))
                .unwrap();
            assert!(
                !s.expire_override(&newer.key, 5000, &entry("expire", &newer.key))
                    .unwrap()
            );
            assert_eq!(s.overrides().unwrap(), [newer]);
        }
        // Its own time up, it goes, audited.
        assert!(
            s.expire_override(
                "auth:shop@example.com",
                9000,
                &entry("expire", "auth:shop@example.com")
            )
            .unwrap()
        );
        assert!(s.overrides().unwrap().is_empty());
        let actions: Vec<_> = s.audit(10).unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["expire", "raise", "raise"]);
    }
}
