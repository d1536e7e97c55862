//! The exact sliding window of one key: the send times of its recent
//! recipients, and how many are reserved but not yet sent.
//!
//! A recipient is accepted only if, for every rate `N/w` of the key's limit,
//! fewer than `N` were sent in the preceding `w` (pending reservations
//! counted as sent). Only the newest `max N` send times can matter to any of
//! the key's rates, so that is all a key keeps: 4 bytes each.

use std::collections::VecDeque;

use super::journal::Time;
use crate::config::Rate;

/// Send times (oldest first) and pending reservations of one key.
#[derive(Debug, Default, Clone)]
pub struct Window {
    sent: VecDeque<Time>,
    pending: u32,
}

/// Why a window is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The rate that is reached.
    pub rate: Rate,
    /// When a recipient will be accepted again, if nothing else is sent; `None`
    /// while pending reservations alone fill the window.
    pub next_free: Option<Time>,
}

fn secs(rate: &Rate) -> Time {
    u32::try_from(rate.window.as_secs()).unwrap_or(Time::MAX)
}

impl Window {
    /// Send times within `w` seconds before `now`.
    fn sent_within(&self, w: Time, now: Time) -> usize {
        match now.checked_sub(w) {
            Some(start) => self.sent.len() - self.sent.partition_point(|&t| t <= start),
            None => self.sent.len(),
        }
    }

    /// Whether one more recipient fits every rate at `now`; the first full rate otherwise.
    pub fn check(&self, rates: &[Rate], now: Time) -> Result<(), Full> {
        for rate in rates {
            let w = secs(rate);
            let used = self.sent_within(w, now) as u64 + u64::from(self.pending);
            if used >= u64::from(rate.count) {
                // Free once the (N - pending)-th newest send leaves the window.
                let k = u64::from(rate.count).saturating_sub(u64::from(self.pending)) as usize;
                let next_free = (k > 0 && k <= self.sent.len())
                    .then(|| self.sent[self.sent.len() - k].saturating_add(w));
                return Err(Full {
                    rate: *rate,
                    next_free,
                });
            }
        }
        Ok(())
    }

    pub fn reserve(&mut self) {
        self.pending += 1;
    }

    pub fn release(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// A reserved recipient was sent at `now`; keeps at most `keep` send times.
    pub fn commit(&mut self, now: Time, keep: usize) {
        self.pending = self.pending.saturating_sub(1);
        self.record(now, keep);
    }

    /// Adds a send time (also used when restoring from the store).
    pub fn record(&mut self, at: Time, keep: usize) {
        // Times arrive in order except when the clock steps back: keep sorted.
        let pos = self.sent.partition_point(|&t| t <= at);
        self.sent.insert(pos, at);
        while self.sent.len() > keep {
            self.sent.pop_front();
        }
    }

    /// Drops send times older than `longest` seconds; true when nothing is left.
    pub fn prune(&mut self, longest: Time, now: Time) -> bool {
        if let Some(start) = now.checked_sub(longest) {
            while self.sent.front().is_some_and(|&t| t <= start) {
                self.sent.pop_front();
            }
        }
        self.sent.is_empty() && self.pending == 0
    }

    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Send times within `w` seconds before `now` (for status displays).
    pub fn count(&self, w: Time, now: Time) -> usize {
        self.sent_within(w, now)
    }

    /// Heap bytes held (for the memory figure per key).
    pub fn heap_bytes(&self) -> usize {
        self.sent.capacity() * std::mem::size_of::<Time>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn window_edges_are_exact() {
        let rates = [rate(3, 3600)];
        let mut w = Window::default();
        for t in [1000, 1100, 1200] {
            assert!(w.check(&rates, t).is_ok());
            w.reserve();
            w.commit(t, 3);
        }
        // Full until the first send is a whole window old.
        let full = w.check(&rates, 4599).unwrap_err();
        assert_eq!(full.next_free, Some(4600));
        assert!(
            w.check(&rates, 4600).is_ok(),
            "at exactly 1000 + 3600 the first send left the window"
        );
    }

    #[test]
    fn pending_reservations_count() {
        let rates = [rate(2, 60)];
        let mut w = Window::default();
        w.reserve();
        w.reserve();
        assert_eq!(
            w.check(&rates, 10),
            Err(Full {
                rate: rates[0],
                next_free: None
            })
        );
        w.release();
        assert!(w.check(&rates, 10).is_ok());
        w.commit(10, 2);
        // One sent at 10, none pending: one more fits.
        assert!(w.check(&rates, 11).is_ok());
        w.reserve();
        assert_eq!(w.check(&rates, 11).unwrap_err().next_free, Some(70));
    }

    #[test]
    fn several_rates_and_bounded_memory() {
        let rates = [rate(2, 60), rate(3, 3600)];
        let mut w = Window::default();
        for t in [0, 1] {
            w.reserve();
            w.commit(t, 3);
        }
        assert_eq!(w.check(&rates, 2).unwrap_err().rate, rates[0]);
        assert!(w.check(&rates, 61).is_ok());
        w.reserve();
        w.commit(61, 3);
        assert_eq!(w.check(&rates, 200).unwrap_err().rate, rates[1]);
        assert_eq!(w.check(&rates, 200).unwrap_err().next_free, Some(3600));
        for t in 5000..5100 {
            w.record(t, 3);
        }
        assert_eq!(
            w.count(100_000, 5200),
            3,
            "only the newest max-N times are kept"
        );
        assert!(!w.prune(3600, 5200));
        assert!(w.prune(3600, 9000));
    }

    /// Never more than N sent in any window, whatever the order of events.
    #[test]
    fn never_more_than_n_in_any_window() {
        let rates = [rate(5, 100)];
        let mut w = Window::default();
        let mut sent = Vec::new();
        let mut x: u64 = 42;
        let mut t: Time = 0;
        let mut pending = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 7) as Time;
            match x % 3 {
                0 if w.check(&rates, t).is_ok() => {
                    w.reserve();
                    pending += 1;
                }
                1 if pending > 0 => {
                    w.commit(t, 5);
                    sent.push(t);
                    pending -= 1;
                }
                2 if pending > 0 => {
                    w.release();
                    pending -= 1;
                }
                _ => {}
            }
        }
        assert!(sent.len() > 1000, "the walk sent {} recipients", sent.len());
        for (i, &start) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&s| s < start + 100).count();
            assert!(in_window <= 5, "{in_window} sent within 100 s of {start}");
        }
    }
}
