//! A picture of the run: one lane per fault kind with a bar for each fault (injected to
//! healed), above successful sends, acks and errors per second on a ticked time axis.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Event, Op, Outcome};

const WIDTH: f64 = 1200.0;
/// Room at the left for the lane labels and the rate axis.
const LEFT: f64 = 130.0;
const RIGHT: f64 = 20.0;
/// Room above the lanes for the header line.
const TOP: f64 = 26.0;
const LANE: f64 = 16.0;
const BAR: f64 = 10.0;
/// Between the last lane and the plot.
const GAP: f64 = 14.0;
const PLOT_HEIGHT: f64 = 220.0;
/// Below the plot: tick labels, then the legend.
const BOTTOM: f64 = 58.0;
/// Fewest pixels between two time ticks.
const TICK_MIN_PX: f64 = 70.0;
/// Lane colours, in turn (no red: red is the errors' series).
const PALETTE: [&str; 9] = [
    "#e6550d", "#3182bd", "#31a354", "#756bb1", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
];
/// The legend's swatch for a fault bar (each lane has its own colour).
const FAULT_SWATCH: &str = "#999";
/// Tick spacings to choose from, in seconds.
const TICK_STEPS: [u64; 16] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800,
];

struct Series {
    sends: Vec<u64>,
    acks: Vec<u64>,
    errors: Vec<u64>,
}

/// Successful sends, successful acks and every other operation that did not succeed, per
/// second of the run (by the time each ended).
fn per_second(events: &[Event], seconds: usize) -> Series {
    let mut series = Series {
        sends: vec![0; seconds],
        acks: vec![0; seconds],
        errors: vec![0; seconds],
    };
    for event in events {
        let second = ((event.end_ms / 1000) as usize).min(seconds - 1);
        match (&event.op, event.outcome) {
            (Op::Send { .. }, Outcome::Ok) => series.sends[second] += 1,
            (Op::Ack { .. }, Outcome::Ok) => series.acks[second] += 1,
            (Op::Fault { .. }, _) => {}
            (_, Outcome::Ok) => {}
            _ => series.errors[second] += 1,
        }
    }
    series
}

/// The spacing of time ticks for a run of `run_s` seconds drawn `width` pixels wide: the
/// smallest of `TICK_STEPS` that keeps ticks `TICK_MIN_PX` apart.
fn tick_step(run_s: f64, width: f64) -> u64 {
    let most = (width / TICK_MIN_PX).floor().max(1.0);
    TICK_STEPS
        .iter()
        .copied()
        .find(|step| run_s / *step as f64 <= most)
        .unwrap_or(*TICK_STEPS.last().expect("steps"))
}

/// A tick's label: seconds while ticks are less than a minute apart, else minutes (and
/// hours past the first).
fn tick_label(at_s: u64, step: u64) -> String {
    if step < 60 {
        return format!("{at_s} s");
    }
    let minutes = at_s / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The points of a polyline for `values` (one per second), leaving out the inner points of
/// runs of equal values, which lie on the line between the run's ends anyway.
fn polyline_points(values: &[u64], x: impl Fn(f64) -> f64, y: impl Fn(f64) -> f64) -> String {
    let mut points = String::new();
    for (second, value) in values.iter().enumerate() {
        let same_before = second > 0 && values[second - 1] == *value;
        let same_after = values.get(second + 1) == Some(value);
        if same_before && same_after {
            continue;
        }
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x(second as f64 + 0.5),
            y(*value as f64)
        );
    }
    points.trim_end().to_string()
}

/// The SVG of the run: self-contained, one lane per fault kind present (sorted by name)
/// and one rect per fault, the series bucketed by second.
pub fn render(events: &[Event], run_end_ms: u64) -> String {
    let run_s = run_end_ms.max(1) as f64 / 1000.0;
    let seconds = (run_end_ms / 1000 + 1) as usize;
    let series = per_second(events, seconds);
    let mut lanes: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in events {
        if let Op::Fault { kind, .. } = &event.op {
            lanes.entry(kind).or_default().push(event);
        }
    }
    let fault_count: usize = lanes.values().map(Vec::len).sum();

    let lanes_top = TOP;
    let plot_top = lanes_top + lanes.len() as f64 * LANE + GAP;
    let plot_bottom = plot_top + PLOT_HEIGHT;
    let height = plot_bottom + BOTTOM;
    let right = WIDTH - RIGHT;
    let x = |second: f64| LEFT + second.clamp(0.0, run_s) / run_s * (right - LEFT);
    let peak = series
        .sends
        .iter()
        .chain(&series.acks)
        .chain(&series.errors)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y = |value: f64| plot_bottom - value / peak * PLOT_HEIGHT;

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"16\" font-weight=\"bold\">faults: {fault_count} in {} kinds, each a bar from injection to heal</text>",
        lanes.len()
    );

    // Time ticks: a light line through lanes and plot, a label under the plot.
    let step = tick_step(run_s, right - LEFT);
    let mut at = 0;
    while at as f64 <= run_s {
        let tick_x = x(at as f64);
        let _ = writeln!(
            svg,
            "<line x1=\"{tick_x:.1}\" y1=\"{lanes_top}\" x2=\"{tick_x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n<text x=\"{tick_x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            plot_bottom + 4.0,
            plot_bottom + 16.0,
            tick_label(at, step)
        );
        at += step;
    }

    // Lanes: a label at the left, a faint stripe, one bar per fault.
    for (index, (kind, faults)) in lanes.iter().enumerate() {
        let lane_top = lanes_top + index as f64 * LANE;
        let color = PALETTE[index % PALETTE.len()];
        let _ = writeln!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{lane_top:.1}\" width=\"{:.1}\" height=\"{LANE}\" fill=\"{}\"/>\n<text class=\"lane\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n<g fill=\"{color}\">",
            right - LEFT,
            if index % 2 == 0 { "#f4f4f4" } else { "#fbfbfb" },
            LEFT - 6.0,
            lane_top + LANE / 2.0 + 4.0,
            escape(kind)
        );
        let bar_top = lane_top + (LANE - BAR) / 2.0;
        for fault in faults {
            let from = x(fault.start_ms as f64 / 1000.0);
            let to = x(fault.end_ms as f64 / 1000.0);
            let _ = writeln!(
                svg,
                "<rect class=\"fault\" x=\"{from:.1}\" y=\"{bar_top:.1}\" width=\"{:.1}\" height=\"{BAR}\"/>",
                (to - from).max(1.0)
            );
        }
        svg.push_str("</g>\n");
    }

    // The plot: a frame, rate ticks at 0, half and peak, the three series.
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{plot_top:.1}\" width=\"{:.1}\" height=\"{PLOT_HEIGHT}\" fill=\"none\" stroke=\"#999\"/>",
        right - LEFT
    );
    for value in [0.0, (peak / 2.0).round(), peak] {
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/>\n<text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{value}/s</text>",
            y(value),
            right,
            LEFT - 6.0,
            y(value) + 4.0
        );
    }
    let named = [
        (&series.sends, "steelblue", "sends ok"),
        (&series.acks, "green", "acks ok"),
        (&series.errors, "red", "errors (failed or unknown)"),
    ];
    for (values, color, _) in named {
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\" points=\"{}\"/>",
            polyline_points(values, x, y)
        );
    }

    // The legend, under the time axis.
    let legend_y = plot_bottom + 40.0;
    let mut legend_x = LEFT;
    for (_, color, label) in named {
        let _ = writeln!(
            svg,
            "<line x1=\"{legend_x:.1}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{2:.1}\" y=\"{legend_y:.1}\">{label} per second</text>",
            legend_y - 4.0,
            legend_x + 18.0,
            legend_x + 22.0
        );
        legend_x += 40.0 + 6.5 * (label.len() + " per second".len()) as f64;
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{legend_x:.1}\" y=\"{:.1}\" width=\"18\" height=\"{BAR}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{legend_y:.1}\">fault (a lane per kind), injected to healed</text>\n</svg>",
        legend_y - 9.0,
        FAULT_SWATCH,
        legend_x + 22.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: &str, start_ms: u64, end_ms: u64) -> Event {
        Event {
            process: "nemesis".into(),
            op: Op::Fault {
                kind: kind.into(),
                nodes: vec![1],
                majority_down: false,
                detail: String::new(),
            },
            start_ms,
            end_ms,
            outcome: Outcome::Ok,
            error: String::new(),
        }
    }

    fn send(at_ms: u64, outcome: Outcome) -> Event {
        Event {
            process: "p1".into(),
            op: Op::Send {
                value: format!("v{at_ms}"),
            },
            start_ms: at_ms,
            end_ms: at_ms + 3,
            outcome,
            error: String::new(),
        }
    }

    fn lane_labels(svg: &str) -> Vec<&str> {
        svg.split("<text class=\"lane\"")
            .skip(1)
            .map(|rest| {
                let text = &rest[rest.find('>').expect("tag end") + 1..];
                &text[..text.find('<').expect("text end")]
            })
            .collect()
    }

    #[test]
    fn one_lane_label_per_fault_kind_and_one_bar_per_fault() {
        let mut events: Vec<Event> = (0..40).map(|i| send(i * 250, Outcome::Ok)).collect();
        let faults = [
            fault("kill-leader", 1_000, 2_000),
            fault("pause-leader", 3_000, 3_500),
            fault("kill-leader", 4_000, 5_000),
            fault("restart-all", 6_000, 7_000),
            fault("kill-leader", 8_000, 8_200),
        ];
        events.extend(faults.iter().cloned());
        events.push(send(9_000, Outcome::Unknown));
        let svg = render(&events, 10_000);
        assert_eq!(
            lane_labels(&svg),
            ["kill-leader", "pause-leader", "restart-all"]
        );
        assert_eq!(svg.matches("<rect class=\"fault\"").count(), faults.len());
    }

    #[test]
    fn a_two_hour_run_with_a_thousand_faults_stays_small() {
        let kinds = [
            "kill-leader",
            "kill-follower",
            "pause-leader",
            "restart-all",
            "clock-ahead",
            "partition-halves",
            "wipe-disk",
        ];
        let run_ms = 2 * 3600 * 1000;
        let mut events: Vec<Event> = (0..1_200)
            .map(|i| {
                let start = i * 6_000;
                fault(kinds[i as usize % kinds.len()], start, start + 2_500)
            })
            .collect();
        // Sends whose rate changes every second, and errors now and then.
        for second in 0..run_ms / 1000 {
            for k in 0..(second % 7 + 1) {
                events.push(send(second * 1000 + k * 100, Outcome::Ok));
            }
            if second % 13 == 0 {
                events.push(send(second * 1000 + 900, Outcome::Failed));
            }
        }
        let svg = render(&events, run_ms);
        assert_eq!(svg.matches("<rect class=\"fault\"").count(), 1_200);
        assert_eq!(lane_labels(&svg).len(), kinds.len());
        assert!(svg.len() < 400_000, "{} bytes", svg.len());
        // Ticks every 10 minutes, labelled in hours and minutes.
        assert!(svg.contains(">1 h 50 min</text>"), "no 1 h 50 min tick");
    }

    #[test]
    fn ticks_are_seconds_for_short_runs_and_minutes_for_longer_ones() {
        assert_eq!(tick_step(90.0, 1000.0), 10);
        assert_eq!(tick_label(30, 10), "30 s");
        assert_eq!(tick_step(1800.0, 1000.0), 300);
        assert_eq!(tick_label(1500, 300), "25 min");
        assert_eq!(tick_label(7200, 600), "2 h");
    }

    #[test]
    fn a_run_without_faults_has_no_lanes() {
        let svg = render(&[send(10, Outcome::Ok)], 1_000);
        assert!(lane_labels(&svg).is_empty());
        assert!(svg.ends_with("</svg>\n"));
    }
}
