//! The embedded persistent state: one SQLite file, `mailbrake.db` under
//! `[state] dir`, holding send times, hourly totals and locks so that a
//! restart keeps every sliding window and every lock.
//!
//! The engine never touches the database: it emits [`Event`]s, and the store
//! writes a batch of them in one transaction (about once a second); at
//! start-up [`Store::load`] gives the engine back a [`Snapshot`]. All calls
//! block on disk I/O, so the caller runs them off the async runtime (a
//! dedicated thread or `spawn_blocking`).
//!
//! WAL with `synchronous = NORMAL`: a commit survives a crash of mailbrake;
//! a power loss may lose the last batches, never corrupt the file.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Row, TransactionBehavior, params};

use super::journal::{Event, Snapshot, Time};

/// The database file inside the state directory.
pub const FILE_NAME: &str = "mailbrake.db";

/// Seconds in one hourly bucket.
const HOUR: Time = 3600;

/// Schema migrations, in order: migration `i` takes `PRAGMA user_version`
/// from `i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: send times, hourly totals, locks.
    "CREATE TABLE sent (
         key   TEXT    NOT NULL,
         at    INTEGER NOT NULL,
         count INTEGER NOT NULL
     );
     CREATE INDEX sent_key_at ON sent (key, at);
     CREATE TABLE hourly (
         key      TEXT    NOT NULL,
         hour     INTEGER NOT NULL,
         sent     INTEGER NOT NULL DEFAULT 0,
         refused  INTEGER NOT NULL DEFAULT 0,
         observed INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (key, hour)
     ) WITHOUT ROWID;
     CREATE TABLE locks (
         key    TEXT    NOT NULL PRIMARY KEY,
         at     INTEGER NOT NULL,
         until  INTEGER,
         reason TEXT    NOT NULL
     );",
    // 2: operators' overrides and the audit trail.
    "CREATE TABLE overrides (
         key    TEXT    NOT NULL PRIMARY KEY,
         exempt INTEGER NOT NULL,
         limits TEXT    NOT NULL,
         until  INTEGER,
         reason TEXT    NOT NULL,
         who    TEXT    NOT NULL,
         at     INTEGER NOT NULL
     );
     CREATE TABLE audit (
         id     INTEGER PRIMARY KEY,
         at     INTEGER NOT NULL,
         who    TEXT    NOT NULL,
         action TEXT    NOT NULL,
         key    TEXT    NOT NULL,
         old    TEXT,
         new    TEXT,
         reason TEXT    NOT NULL
     );",
];

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const INSERT_SENT: &str = "INSERT INTO sent (key, at, count) VALUES (?1, ?2, ?3)";
const UPSERT_HOURLY: &str = "INSERT INTO hourly (key, hour, sent, refused, observed)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (key, hour) DO UPDATE SET
         sent = sent + excluded.sent,
         refused = refused + excluded.refused,
         observed = observed + excluded.observed";
const UPSERT_LOCK: &str = "INSERT INTO locks (key, at, until, reason) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
         at = excluded.at, until = excluded.until, reason = excluded.reason";
const DELETE_LOCK: &str = "DELETE FROM locks WHERE key = ?1";
/// A reset: the events of a batch are applied in the engine's order, so
/// every send row of the key at this point was sent before the reset.
const DELETE_SENT: &str = "DELETE FROM sent WHERE key = ?1";

/// Why the state could not be opened, read or written. Always ours (never
/// the client's or the MTA's); messages name the directory or database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open the state database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: journal mode is {mode:?}, not WAL (is the directory on a network file system?)", path.display())]
    NotWal { path: PathBuf, mode: String },
    #[error(
        "{}: schema version {found} is newer than this mailbrake understands ({SCHEMA_VERSION}); \
         was it written by a later release?",
        path.display()
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("{}: cannot migrate the schema to version {version}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
    #[error("{}: cannot {action}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: rusqlite::Error,
    },
}

/// One key's totals for one hour, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyTotal {
    pub key: String,
    /// Start of the hour (a multiple of 3600).
    pub hour: Time,
    /// Recipients sent.
    pub sent: u64,
    /// Recipients refused.
    pub refused: u64,
    /// Recipients that would have been refused, in observe mode.
    pub observed: u64,
}

/// The open state database.
pub struct Store {
    conn: Connection,
    /// The database file, for error messages.
    path: PathBuf,
}

// === impl Store ===

impl Store {
    /// Opens (creating) `dir/mailbrake.db`, sets WAL, creates or migrates the
    /// schema (its version is `PRAGMA user_version`). A directory it creates
    /// is closed to other users (0750): the database holds every sender's
    /// login and the audit trail, which the admin API gives only with its token.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(FILE_NAME);
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let mut store = Store { conn, path };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Persists a batch of events in one transaction: all or nothing.
    pub fn apply(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let err = sql_err(&self.path, "write events");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut insert_sent = tx.prepare_cached(INSERT_SENT).map_err(err)?;
            let mut upsert_hourly = tx.prepare_cached(UPSERT_HOURLY).map_err(err)?;
            let mut upsert_lock = tx.prepare_cached(UPSERT_LOCK).map_err(err)?;
            let mut delete_lock = tx.prepare_cached(DELETE_LOCK).map_err(err)?;
            let mut delete_sent = tx.prepare_cached(DELETE_SENT).map_err(err)?;
            for event in events {
                match event {
                    Event::Sent {
                        key,
                        at,
                        count,
                        windowed,
                    } => {
                        if *windowed {
                            insert_sent.execute(params![key, at, count]).map_err(err)?;
                        }
                        upsert_hourly
                            .execute(params![key, hour_of(*at), count, 0, 0])
                            .map_err(err)?;
                    }
                    Event::Refused { key, at, observed } => {
                        let (refused, observed) = if *observed { (0, 1) } else { (1, 0) };
                        upsert_hourly
                            .execute(params![key, hour_of(*at), 0, refused, observed])
                            .map_err(err)?;
                    }
                    Event::Locked {
                        key,
                        at,
                        until,
                        reason,
                    } => {
                        upsert_lock
                            .execute(params![key, at, until, reason])
                            .map_err(err)?;
                    }
                    Event::Unlocked { key, at: _ } => {
                        delete_lock.execute(params![key]).map_err(err)?;
                    }
                    Event::Reset { key, at: _ } => {
                        delete_sent.execute(params![key]).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// Send times per key with `at >= since` (keys in order, oldest first per
    /// key, a row of count n giving n times), and the locks in force at `now`.
    pub fn load(&self, since: Time, now: Time) -> Result<Snapshot, StoreError> {
        let err = sql_err(&self.path, "load the state");
        let mut snapshot = Snapshot::default();

        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, at, count FROM sent WHERE at >= ?1 ORDER BY key, at")
            .map_err(err)?;
        let mut rows = stmt.query(params![since]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let key: String = row.get(0).map_err(err)?;
            let at: Time = row.get(1).map_err(err)?;
            let count: u32 = row.get(2).map_err(err)?;
            let times = match snapshot.sent.last_mut() {
                Some((last, times)) if *last == key => times,
                _ => {
                    snapshot.sent.push((key, Vec::new()));
                    &mut snapshot.sent.last_mut().expect("just pushed").1
                }
            };
            times.extend(std::iter::repeat_n(at, count as usize));
        }

        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, until, reason FROM locks
                 WHERE until IS NULL OR until > ?1 ORDER BY key",
            )
            .map_err(err)?;
        snapshot.locks = stmt
            .query_map(params![now], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .and_then(Iterator::collect)
            .map_err(err)?;
        Ok(snapshot)
    }

    /// Deletes send times older than `sent_before` and hourly totals older
    /// than `hourly_before`, in one transaction; returns the rows deleted.
    pub fn prune(&mut self, sent_before: Time, hourly_before: Time) -> Result<usize, StoreError> {
        let err = sql_err(&self.path, "prune old rows");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let sent = tx
            .execute("DELETE FROM sent WHERE at < ?1", params![sent_before])
            .map_err(err)?;
        let hourly = tx
            .execute("DELETE FROM hourly WHERE hour < ?1", params![hourly_before])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(sent + hourly)
    }

    /// Hourly totals with `hour >= since`, ordered by key then hour.
    pub fn hourly(&self, since: Time) -> Result<Vec<HourlyTotal>, StoreError> {
        let err = sql_err(&self.path, "read hourly totals");
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, hour, sent, refused, observed FROM hourly
                 WHERE hour >= ?1 ORDER BY key, hour",
            )
            .map_err(err)?;
        stmt.query_map(params![since], |row| {
            Ok(HourlyTotal {
                key: row.get(0)?,
                hour: row.get(1)?,
                sent: get_u64(row, 2)?,
                refused: get_u64(row, 3)?,
                observed: get_u64(row, 4)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(err)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// WAL, `synchronous = NORMAL`, and a check that WAL took.
    fn configure(&self) -> Result<(), StoreError> {
        let open = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: self.path.clone(),
                mode,
            });
        }
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        // The state thread and the admin API each hold a connection.
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)
    }

    /// Brings the schema from its `user_version` up to [`SCHEMA_VERSION`], one
    /// transaction per migration (SQLite DDL and `user_version` are both
    /// transactional, so a crash leaves a whole version).
    fn migrate(&mut self) -> Result<(), StoreError> {
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| StoreError::Open {
                path: self.path.clone(),
                source,
            })?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        for (from, sql) in (found..).zip(&MIGRATIONS[found as usize..]) {
            let version = from + 1;
            let err = |source| StoreError::Migrate {
                path: self.path.clone(),
                version,
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }
}

/// Maps a SQLite error to one naming the file and what was being done.
fn sql_err(path: &Path, action: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + Copy {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Start of the hour holding `at`.
fn hour_of(at: Time) -> Time {
    at - at % HOUR
}

/// A non-negative INTEGER column as u64 (rusqlite maps u64 only with a
/// feature we do not need).
fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

mod operator;
pub use operator::{AuditEntry, StoredOverride};

#[cfg(test)]
mod tests;
