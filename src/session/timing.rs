//! A session's clocks: how long each side may take, and how slowly a
//! message body may come (`min_data_rate`).

use std::time::{Duration, Instant};

use super::{Expect, Failure, Phase, Session, Slot};
use crate::config::Timeouts;

impl Expect {
    pub(super) fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            Expect::Greeting => t.upstream_greeting,
            Expect::Data => t.upstream_data_init,
            Expect::DataEnd | Expect::Bdat { last: true } => t.upstream_data_end,
            _ => t.upstream_command,
        }
    }
}

impl Session {
    pub(super) fn next_timeout(&self) -> Option<(Instant, Failure)> {
        if matches!(self.phase, Phase::Closed | Phase::ClientTlsHandshake) {
            return None;
        }
        let t = &self.cfg.timeouts;
        let upstream = self.queue.iter().find_map(|slot| match slot {
            Slot::Upstream { expect, since } => Some((*expect, *since)),
            Slot::Local { .. } => None,
        });
        if let Some((expect, since)) = upstream {
            let d = expect.timeout(t);
            return Some((since + d, Failure::UpstreamTimeout(d)));
        }
        if self.pending_rcpt.is_some() || self.pending_auth.is_some() || self.client_eof {
            return None;
        }
        let d = if self.in_body() {
            t.client_data
        } else {
            t.client_command
        };
        let idle = (self.last_client_activity + d, Failure::ClientTimeout(d));
        // Silent for too long, or a message too slow on the whole (RFC 5321
        // 4.5.3.2.5 times each block; Postfix's smtpd_min_data_rate the whole).
        let Some((since, bytes)) = self.body_clock else {
            return Some(idle);
        };
        let rate = self.cfg.limits.min_data_rate.get() as u64;
        let whole = since + t.client_data + Duration::from_secs(bytes / rate);
        Some(if whole < idle.0 {
            (whole, Failure::ClientTooSlow(rate))
        } else {
            idle
        })
    }

    pub(super) fn in_body(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::DiscardData(_) | Phase::Bdat { .. }
        )
    }

    /// A body (or a BDAT chunk) begins: a message's clock starts with its
    /// first, and runs until it ends.
    pub(super) fn start_body(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.body_clock.get_or_insert((now, 0));
    }

    /// Body bytes read, for the message's rate.
    pub(super) fn count_body(&mut self, n: usize) {
        if let Some((_, bytes)) = &mut self.body_clock {
            *bytes += n as u64;
        }
    }
}
