//! A picture of the run: faults as bands, successful sends and acks per second, errors.

use crate::history::{Event, Op, Outcome};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 40.0;

pub fn render(events: &[Event], run_end_ms: u64) -> String {
    let seconds = (run_end_ms / 1000 + 1) as usize;
    let mut sends = vec![0u64; seconds];
    let mut acks = vec![0u64; seconds];
    let mut errors = vec![0u64; seconds];
    for event in events {
        let second = ((event.end_ms / 1000) as usize).min(seconds - 1);
        match (&event.op, event.outcome) {
            (Op::Send { .. }, Outcome::Ok) => sends[second] += 1,
            (Op::Ack { .. }, Outcome::Ok) => acks[second] += 1,
            (Op::Fault { .. }, _) => {}
            (_, Outcome::Ok) => {}
            _ => errors[second] += 1,
        }
    }
    let peak = sends
        .iter()
        .chain(&acks)
        .chain(&errors)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |second: f64| MARGIN + second / seconds as f64 * (WIDTH - 2.0 * MARGIN);
    let y = |value: f64| HEIGHT - MARGIN - value / peak * (HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for event in events {
        if let Op::Fault { kind, nodes, .. } = &event.op {
            let (from, to) = (
                x(event.start_ms as f64 / 1000.0),
                x(event.end_ms as f64 / 1000.0),
            );
            svg.push_str(&format!(
                "<rect x=\"{from:.1}\" y=\"{MARGIN}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"orange\" opacity=\"0.25\"/>\n<text x=\"{from:.1}\" y=\"{:.1}\">{kind} {nodes:?}</text>\n",
                (to - from).max(1.0),
                HEIGHT - 2.0 * MARGIN,
                MARGIN - 4.0
            ));
        }
    }
    for (series, color, label) in [
        (&sends, "steelblue", "sends/s"),
        (&acks, "green", "acks/s"),
        (&errors, "red", "errors/s"),
    ] {
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(second, value)| format!("{:.1},{:.1}", x(second as f64 + 0.5), y(*value as f64)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        let legend_y = match label {
            "sends/s" => 14.0,
            "acks/s" => 26.0,
            _ => 38.0,
        };
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{legend_y}\" fill=\"{color}\">{label}</text>\n",
            WIDTH - 100.0
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{MARGIN}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"black\"/>\n<text x=\"{MARGIN}\" y=\"{2:.1}\">0 s</text>\n<text x=\"{1:.1}\" y=\"{2:.1}\" text-anchor=\"end\">{seconds} s</text>\n<text x=\"4\" y=\"{3:.1}\">{peak}</text>\n</svg>\n",
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN + 14.0,
        MARGIN + 4.0
    ));
    svg
}
