//! The clock, read here and nowhere else (`clippy.toml` refuses
//! `Instant::now` and `SystemTime::now` elsewhere): the session's driver,
//! the limits' [`crate::limits::SystemClock`], the server's timings and the
//! CLI all take their time from these two functions.

/// The monotonic clock: tokio's, so that tests with paused time move it.
#[allow(clippy::disallowed_methods)]
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock, in seconds since the Unix epoch (0 before it).
#[allow(clippy::disallowed_methods)]
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
