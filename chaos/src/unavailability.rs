//! Unavailable windows (stretches without a successful send) and which fault kind each one
//! is put down to, for the checker's "longest unavailable after each fault kind" table.

use serde::Serialize;

/// A window counts as beginning with a fault injected up to this long after the window's
/// start: the start is the last successful send before the window, which comes a send
/// interval (or a send still in flight at the injection) before the fault itself.
pub const LEAD_MS: u64 = 1_000;

/// How long after a fault is healed a window that begins is still put down to it: restarted
/// nodes catch up, an election settles, clients find the new leader.
pub const RECOVERY_MS: u64 = 10_000;

/// The kind a window is put down to when no fault was active or recovering as it began.
pub const NO_FAULT: &str = "none";

/// The stretch between two consecutive successful send completions (or the start of the run
/// and the first one, or the last one and the end of producing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Its length, less the time in it when a majority of nodes was down.
    pub unavailable_ms: u64,
}

/// Every window between successful send completions from 0 to `run_end_ms`, each less its
/// overlap with `outages` (where a majority was down: no system can be available then).
pub fn windows(mut successes: Vec<u64>, outages: &[(u64, u64)], run_end_ms: u64) -> Vec<Window> {
    successes.retain(|at| *at <= run_end_ms);
    successes.sort_unstable();
    let mut points = vec![0];
    points.extend(successes);
    points.push(run_end_ms);
    points
        .windows(2)
        .map(|pair| {
            let (from, to) = (pair[0], pair[1].max(pair[0]));
            let excused: u64 = outages
                .iter()
                .map(|(start, end)| to.min(*end).saturating_sub(from.max(*start)))
                .sum();
            Window {
                start_ms: from,
                end_ms: to,
                unavailable_ms: (to - from).saturating_sub(excused),
            }
        })
        .collect()
}

/// A fault as the history records it: its kind, when it was injected and when healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpan<'a> {
    pub kind: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// One row of the table: a fault kind (or [`NO_FAULT`]), how many faults of it were
/// injected, and the longest window put down to it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct KindUnavailability {
    pub kind: String,
    pub faults: usize,
    pub longest_unavailable_ms: u64,
    /// Where that window began, ms since the run started; none if no window was put down
    /// to this kind.
    pub window_start_ms: Option<u64>,
}

/// The longest window of unavailability put down to each fault kind.
///
/// A window (see [`windows`]: the same windows, with the same excused time, whose maximum
/// is the run's longest unavailable stretch) is put down to the latest fault injected at
/// or before `LEAD_MS` after the window began, if the window began no later than
/// `RECOVERY_MS` after that fault was healed; that is, the fault was active or recovering
/// when sends stopped succeeding. Any other window (before the first fault, or long after
/// the last heal) is put down to [`NO_FAULT`]. A later fault injected while a window is
/// already open does not take it over.
///
/// Rows come sorted by kind, [`NO_FAULT`] last; every kind with a fault has a row, and so
/// does [`NO_FAULT`].
pub fn by_fault_kind(windows: &[Window], faults: &[FaultSpan]) -> Vec<KindUnavailability> {
    let mut faults = faults.to_vec();
    faults.sort_by_key(|fault| fault.start_ms);
    let mut rows: std::collections::BTreeMap<&str, KindUnavailability> = faults
        .iter()
        .map(|fault| (fault.kind, KindUnavailability::default()))
        .collect();
    for fault in &faults {
        rows.get_mut(fault.kind)
            .expect("every kind has a row")
            .faults += 1;
    }
    let mut none = KindUnavailability::default();
    for window in windows {
        let injected_by = faults.partition_point(|f| f.start_ms <= window.start_ms + LEAD_MS);
        let row = match injected_by.checked_sub(1).map(|i| faults[i]) {
            Some(fault) if window.start_ms <= fault.end_ms + RECOVERY_MS => {
                rows.get_mut(fault.kind).expect("every kind has a row")
            }
            _ => &mut none,
        };
        if row.window_start_ms.is_none() || window.unavailable_ms > row.longest_unavailable_ms {
            row.longest_unavailable_ms = window.unavailable_ms;
            row.window_start_ms = Some(window.start_ms);
        }
    }
    let mut table: Vec<KindUnavailability> = rows
        .into_iter()
        .map(|(kind, row)| KindUnavailability {
            kind: kind.to_string(),
            ..row
        })
        .collect();
    table.push(KindUnavailability {
        kind: NO_FAULT.to_string(),
        ..none
    });
    table
}

/// The rows as a plain-text table, one line each after a header.
pub fn table(rows: &[KindUnavailability]) -> String {
    let header = ("fault kind", "faults", "longest unavailable after it");
    let width = rows
        .iter()
        .map(|row| row.kind.len())
        .chain([header.0.len()])
        .max()
        .unwrap_or(0);
    let mut text = format!("{:<width$} | {} | {}\n", header.0, header.1, header.2);
    for row in rows {
        let faults = if row.kind == NO_FAULT {
            "-".to_string()
        } else {
            row.faults.to_string()
        };
        let longest = match row.window_start_ms {
            Some(start) => format!(
                "{:.1} s (from {:.1} s)",
                row.longest_unavailable_ms as f64 / 1000.0,
                start as f64 / 1000.0
            ),
            None => "-".to_string(),
        };
        text.push_str(&format!("{:<width$} | {faults:>6} | {longest}\n", row.kind));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: &str, start_ms: u64, end_ms: u64) -> FaultSpan<'_> {
        FaultSpan {
            kind,
            start_ms,
            end_ms,
        }
    }

    fn row<'a>(rows: &'a [KindUnavailability], kind: &str) -> &'a KindUnavailability {
        rows.iter()
            .find(|row| row.kind == kind)
            .unwrap_or_else(|| panic!("no row for {kind} in {rows:?}"))
    }

    #[test]
    fn windows_are_the_gaps_between_successes_less_majority_outages() {
        let found = windows(vec![1_000, 400], &[(500, 700)], 1_500);
        let lengths: Vec<(u64, u64, u64)> = found
            .iter()
            .map(|w| (w.start_ms, w.end_ms, w.unavailable_ms))
            .collect();
        assert_eq!(
            lengths,
            vec![(0, 400, 400), (400, 1_000, 400), (1_000, 1_500, 500)]
        );
    }

    #[test]
    fn each_window_goes_to_the_fault_active_or_recovering_when_it_began() {
        // Successful sends every 100 ms, except where a fault stopped them.
        let mut successes: Vec<u64> = (1..=600).map(|i| i * 100).collect();
        let quiet = |from: u64, to: u64, at: &u64| *at <= from || *at >= to;
        // A kill-leader at 10 s (healed 12 s): nothing succeeds from 9.9 s to 14.9 s. The
        // window begins with the last success before the injection, within LEAD_MS of it.
        successes.retain(|at| quiet(9_900, 14_900, at));
        // A pause-leader at 20 s (healed 21 s): 20.0 s to 21.5 s.
        successes.retain(|at| quiet(20_000, 21_500, at));
        // A second kill-leader at 30 s (healed 31 s): a 2 s window that begins at 38 s,
        // within its recovery period.
        successes.retain(|at| quiet(38_000, 40_000, at));
        // A clock-ahead at 45 s (healed 46 s) with no window of its own: its row holds the
        // send interval. Then 2.5 s without a success from 57 s, after every recovery
        // period: no fault's.
        successes.retain(|at| quiet(57_000, 59_500, at));
        let faults = [
            fault("kill-leader", 10_000, 12_000),
            fault("pause-leader", 20_000, 21_000),
            fault("kill-leader", 30_000, 31_000),
            fault("clock-ahead", 45_000, 46_000),
        ];
        let found = windows(successes, &[], 60_000);
        let rows = by_fault_kind(&found, &faults);

        let kinds: Vec<&str> = rows.iter().map(|row| row.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["clock-ahead", "kill-leader", "pause-leader", "none"]
        );

        let kill = row(&rows, "kill-leader");
        assert_eq!(kill.faults, 2);
        assert_eq!(kill.longest_unavailable_ms, 5_000);
        assert_eq!(kill.window_start_ms, Some(9_900));

        let pause = row(&rows, "pause-leader");
        assert_eq!(pause.faults, 1);
        assert_eq!(pause.longest_unavailable_ms, 1_500);
        assert_eq!(pause.window_start_ms, Some(20_000));

        let clock = row(&rows, "clock-ahead");
        assert_eq!(clock.faults, 1);
        assert_eq!(clock.longest_unavailable_ms, 100);

        let none = row(&rows, NO_FAULT);
        assert_eq!(none.faults, 0);
        assert_eq!(none.longest_unavailable_ms, 2_500);
        assert_eq!(none.window_start_ms, Some(57_000));
    }

    #[test]
    fn a_fault_injected_while_a_window_is_open_does_not_take_it_over() {
        let faults = [
            fault("restart-all", 2_000, 3_000),
            fault("kill-follower", 5_000, 6_000),
        ];
        // Nothing succeeds from 1.5 s to 9 s: the restart-all's window, though a
        // kill-follower was injected in it. The window before, from the start of the run,
        // began with no fault about.
        let found = windows(vec![1_500, 9_000, 9_100], &[], 9_100);
        let rows = by_fault_kind(&found, &faults);
        assert_eq!(row(&rows, "restart-all").longest_unavailable_ms, 7_500);
        assert_eq!(row(&rows, "kill-follower").longest_unavailable_ms, 100);
        assert_eq!(row(&rows, NO_FAULT).longest_unavailable_ms, 1_500);
        assert_eq!(row(&rows, NO_FAULT).window_start_ms, Some(0));
    }

    #[test]
    fn the_table_has_a_header_and_a_line_per_kind() {
        let rows = by_fault_kind(
            &windows(vec![1_500, 9_000], &[], 9_000),
            &[fault("restart-all", 2_000, 3_000)],
        );
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("fault kind"), "{text}");
        assert!(lines[1].starts_with("restart-all"), "{text}");
        assert!(
            lines[1].ends_with("|      1 | 7.5 s (from 1.5 s)"),
            "{text}"
        );
        assert!(lines[2].starts_with("none"), "{text}");
        assert!(
            lines[2].ends_with("|      - | 1.5 s (from 0.0 s)"),
            "{text}"
        );
    }
}
