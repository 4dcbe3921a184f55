//! Log time: the time a leader stamps on every command it proposes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time a leader stamps on commands: its wall clock, but never less than the log's
/// time advanced by the real time elapsed since this node last saw it move. So when an
/// earlier leader's clock ran ahead, log time neither goes back nor stalls until this
/// node's clock catches up: leases and delays keep expiring at the real rate.
#[derive(Default)]
pub(crate) struct LogClock {
    /// Largest log time seen, and when (monotonic) it was seen.
    anchor: std::sync::Mutex<(u64, Option<Instant>)>,
}

impl LogClock {
    /// The stamp for a command proposed now: `log_now_ms` is the applied state's time,
    /// `wall_ms` this node's wall clock, `now` the monotonic clock.
    pub(crate) fn stamp(&self, log_now_ms: u64, wall_ms: u64, now: Instant) -> u64 {
        let mut anchor = crate::lock(&self.anchor);
        if log_now_ms > anchor.0 || anchor.1.is_none() {
            *anchor = (log_now_ms.max(anchor.0), Some(now));
        }
        let elapsed = anchor.1.map_or(0, |seen| {
            now.saturating_duration_since(seen).as_millis() as u64
        });
        wall_ms.max(anchor.0 + elapsed)
    }

    /// [`LogClock::stamp`] at this moment, by this node's clocks.
    pub(crate) fn stamp_now(&self, log_now_ms: u64) -> u64 {
        self.stamp(log_now_ms, wall_clock_ms(), Instant::now())
    }
}

/// This node's wall clock, in milliseconds since the Unix epoch.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::LogClock;

    #[test]
    fn stamps_follow_the_wall_clock_when_it_is_ahead_of_log_time() {
        let clock = LogClock::default();
        assert_eq!(clock.stamp(1_000, 5_000, Instant::now()), 5_000);
    }

    #[test]
    fn stamps_keep_advancing_from_log_time_when_an_earlier_leader_ran_ahead() {
        let clock = LogClock::default();
        let start = Instant::now();
        // The log is an hour ahead of this node's wall clock.
        let first = clock.stamp(3_600_000, 1_000, start);
        assert_eq!(first, 3_600_000);
        let later = clock.stamp(3_600_000, 1_020, start + Duration::from_millis(20));
        assert_eq!(later, first + 20, "log time advances at the real rate");
    }
}
