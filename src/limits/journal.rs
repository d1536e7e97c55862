//! What the limit engine changed, in order, for the store to persist: the
//! only coupling between the pure engine and the database.

/// Seconds since the Unix epoch (u32: good until 2106).
pub type Time = u32;

/// One change worth keeping across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `count` recipients of `key` were sent (committed) at `at`. All count
    /// in the hourly totals; only `windowed` ones in the key's window, and
    /// so only they are restored into it (not those of exempt or unlimited
    /// keys, observe mode's overflow, or fleet mode, whose windows are in
    /// Redis).
    Sent {
        key: String,
        at: Time,
        count: u32,
        windowed: bool,
    },
    /// A recipient of `key` was refused (or, in observe mode, would have been).
    Refused {
        key: String,
        at: Time,
        observed: bool,
    },
    /// `key` was locked; `until: None` means until an operator unlocks it.
    Locked {
        key: String,
        at: Time,
        until: Option<Time>,
        reason: String,
    },
    /// `key` was unlocked (by an operator, or its lock expired).
    Unlocked { key: String, at: Time },
    /// An operator reset `key`'s counts: the sends before this event are
    /// forgotten (the hourly totals keep them), the sends after it count.
    Reset { key: String, at: Time },
}

/// What the store gives back at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Send times per key within the window asked for, oldest first.
    pub sent: Vec<(String, Vec<Time>)>,
    /// Locks still in force: key, until, reason.
    pub locks: Vec<(String, Option<Time>, String)>,
}
