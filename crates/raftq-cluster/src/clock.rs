//! Log time: the time a leader stamps on every command it proposes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time a leader stamps on commands: its wall clock, but
/// - never less than the log's time advanced by the real time elapsed since this node last
///   saw it move. So when an earlier leader's clock ran ahead, log time neither goes back
///   nor stalls until this node's clock catches up: leases and delays keep expiring at the
///   real rate;
/// - never more than `max_skew_ms` ahead of the log time another node stamped (the last
///   this node saw beyond its own stamps) advanced by the real time elapsed since. So a
///   leader whose clock runs ahead (an hour, say) does not end every lease, delay, time to
///   live and dedup window early by as much: they end at most `max_skew_ms` early.
///
/// On a log no node has stamped yet (a new cluster), the first leader's clock is taken as
/// it is: there is nothing to compare it with.
pub(crate) struct LogClock {
    anchors: std::sync::Mutex<Anchors>,
    max_skew_ms: u64,
}

#[derive(Default)]
struct Anchors {
    /// Largest log time seen, and when (monotonic) it was seen.
    floor: (u64, Option<Instant>),
    /// Log time stamped by another node, and when it was seen.
    ceiling: Option<(u64, Instant)>,
    /// Largest stamp this node gave.
    issued: u64,
}

impl LogClock {
    pub(crate) fn new(max_skew_ms: u64) -> LogClock {
        LogClock {
            anchors: std::sync::Mutex::new(Anchors::default()),
            max_skew_ms,
        }
    }

    /// The stamp for a command proposed now: `log_now_ms` is the applied state's time,
    /// `wall_ms` this node's wall clock, `now` the monotonic clock.
    pub(crate) fn stamp(&self, log_now_ms: u64, wall_ms: u64, now: Instant) -> u64 {
        let mut anchors = crate::lock(&self.anchors);
        if log_now_ms > anchors.floor.0 || anchors.floor.1.is_none() {
            anchors.floor = (log_now_ms.max(anchors.floor.0), Some(now));
        }
        // A log time beyond every stamp this node gave came from another leader.
        if log_now_ms > 0 && (anchors.ceiling.is_none() || log_now_ms > anchors.issued) {
            anchors.ceiling = Some((log_now_ms, now));
        }
        let since = |seen: Instant| now.saturating_duration_since(seen).as_millis() as u64;
        let floor = anchors.floor.0 + anchors.floor.1.map_or(0, since);
        let mut stamp = wall_ms.max(floor);
        if let Some((at, seen)) = anchors.ceiling {
            let ceiling = (at + since(seen)).saturating_add(self.max_skew_ms);
            stamp = stamp.min(ceiling).max(floor);
        }
        anchors.issued = anchors.issued.max(stamp);
        // How far this node's clock runs ahead of the log's (negative: behind).
        metrics::gauge!("raftq_clock_ahead_of_log_ms").set(wall_ms as f64 - stamp as f64);
        stamp
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

    const HOUR: u64 = 3_600_000;

    #[test]
    fn stamps_follow_the_wall_clock_within_the_skew() {
        let clock = LogClock::new(1_000);
        assert_eq!(clock.stamp(1_000_000, 1_000_500, Instant::now()), 1_000_500);
    }

    #[test]
    fn stamps_keep_advancing_from_log_time_when_an_earlier_leader_ran_ahead() {
        let clock = LogClock::new(1_000);
        let start = Instant::now();
        // The log is an hour ahead of this node's wall clock.
        let first = clock.stamp(HOUR, 1_000, start);
        assert_eq!(first, HOUR);
        let later = clock.stamp(HOUR, 1_020, start + Duration::from_millis(20));
        assert_eq!(later, first + 20, "log time advances at the real rate");
    }

    #[test]
    fn a_leader_whose_clock_runs_an_hour_ahead_stamps_at_most_the_skew_ahead() {
        let clock = LogClock::new(1_000);
        let start = Instant::now();
        let log = 5 * HOUR;
        let first = clock.stamp(log, log + HOUR, start);
        assert_eq!(first, log + 1_000);
        // Its own stamps, applied, do not move the ceiling: no ratchet.
        let mut applied = first;
        for step in 1..=100u64 {
            let at = start + Duration::from_millis(step * 10);
            applied = clock.stamp(applied, log + HOUR + step * 10, at);
            assert!(
                applied <= log + step * 10 + 1_000,
                "step {step}: {applied} runs more than the skew ahead"
            );
        }
        assert_eq!(applied, log + 1_000 + 1_000);
    }

    #[test]
    fn time_another_leader_stamped_moves_the_ceiling() {
        let clock = LogClock::new(1_000);
        let start = Instant::now();
        let ours = clock.stamp(HOUR, 2 * HOUR, start);
        assert_eq!(ours, HOUR + 1_000);
        // Another leader, ten minutes on, stamped beyond anything this node gave.
        let later = start + Duration::from_secs(600);
        let theirs = HOUR + 600_000 + 500;
        assert_eq!(clock.stamp(theirs, 2 * HOUR, later), theirs + 1_000);
    }

    #[test]
    fn the_first_stamp_of_a_new_log_is_the_wall_clock() {
        let clock = LogClock::new(1_000);
        assert_eq!(clock.stamp(0, 7 * HOUR, Instant::now()), 7 * HOUR);
    }
}
