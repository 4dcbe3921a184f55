//! A scenario's result on a target, and how it is printed: each result as it comes, and
//! the suite's table at the end.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Target;
use crate::scenario::{Load, Measured};

/// One scenario's result on one target.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: Target,
    pub scenario: String,
    pub load: Load,
    pub measured: Measured,
    /// Peak resident memory of each server process during the scenario, MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// CPU each server process used while the scenario ran, % of one core (not for a
    /// backlog, whose fill and drain differ).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_percent: BTreeMap<String, f64>,
    /// Backlog only: fill and drain rates, and (spawned raftq) follower restart time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogFigures>,
    /// Why the scenario could not run to the end (its figures are then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BacklogFigures {
    pub fill_msgs_per_s: f64,
    pub drain_msgs_per_s: f64,
    pub peak_rss_fill_mib: f64,
    pub peak_rss_drain_mib: f64,
    pub restart_ready_seconds: Option<f64>,
}

pub fn max_rss(peaks: &BTreeMap<String, f64>) -> f64 {
    peaks.values().copied().fold(0.0, f64::max)
}

pub fn print_report(report: &Report) {
    let m = &report.measured;
    println!("{:?} / {}", report.target, report.scenario);
    if let Some(error) = &report.error {
        println!("  failed: {error}");
        return;
    }
    if m.sent > 0 {
        println!(
            "  produce: {} msgs in {:.1} s = {:.0} msg/s, {:.1} MiB/s; send->ack ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            m.sent,
            m.produce_seconds,
            m.produce_msgs_per_s,
            m.produce_mib_per_s,
            m.send_to_ack.p50_ms,
            m.send_to_ack.p90_ms,
            m.send_to_ack.p99_ms,
            m.send_to_ack.p999_ms,
            m.send_to_ack.max_ms
        );
    }
    if m.received > 0 {
        println!(
            "  consume: {} msgs in {:.1} s = {:.0} msg/s; send->receive ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}{}",
            m.received,
            m.consume_seconds,
            m.consume_msgs_per_s,
            m.send_to_receive.p50_ms,
            m.send_to_receive.p90_ms,
            m.send_to_receive.p99_ms,
            m.send_to_receive.p999_ms,
            m.send_to_receive.max_ms,
            if m.drain_incomplete {
                " (drain incomplete)"
            } else {
                ""
            }
        );
    }
    if let Some(backlog) = &report.backlog {
        println!(
            "  backlog: fill {:.0} msg/s, drain {:.0} msg/s, peak RSS fill {:.0} MiB, drain {:.0} MiB{}",
            backlog.fill_msgs_per_s,
            backlog.drain_msgs_per_s,
            backlog.peak_rss_fill_mib,
            backlog.peak_rss_drain_mib,
            backlog
                .restart_ready_seconds
                .map(|s| format!(", follower restart ready in {s:.1} s"))
                .unwrap_or_default()
        );
    }
    let rss: Vec<String> = report
        .peak_rss_mib
        .iter()
        .map(|(name, mib)| format!("{name} {mib:.0}"))
        .collect();
    println!("  errors {}; peak RSS MiB: {}", m.errors, rss.join(", "));
    if !report.cpu_percent.is_empty() {
        let cpu: Vec<String> = report
            .cpu_percent
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0}"))
            .collect();
        println!("  CPU % of a core: {}", cpu.join(", "));
    }
}

pub fn print_table(reports: &[Report]) {
    println!();
    println!(
        "| scenario | target | msg/s | MiB/s | p50 ms | p99 ms | p99.9 ms | max ms | peak RSS MiB (max node) | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for report in reports {
        if let Some(error) = &report.error {
            println!(
                "| {} | {:?} | failed: {error} | | | | | | | |",
                report.scenario, report.target
            );
            continue;
        }
        let m = &report.measured;
        let (rate, latency) = if report.load.consumers > 0 && report.backlog.is_none() {
            (m.consume_msgs_per_s, m.send_to_receive)
        } else {
            (m.produce_msgs_per_s, m.send_to_ack)
        };
        println!(
            "| {} | {:?} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            report.scenario,
            report.target,
            rate,
            rate * report.load.size as f64 / (1024.0 * 1024.0),
            latency.p50_ms,
            latency.p99_ms,
            latency.p999_ms,
            latency.max_ms,
            max_rss(&report.peak_rss_mib),
            m.errors
        );
        if let Some(backlog) = &report.backlog {
            println!(
                "| ↳ backlog drain | {:?} | {:.0} | | | | | | {:.0} | |",
                report.target, backlog.drain_msgs_per_s, backlog.peak_rss_drain_mib
            );
            if let Some(seconds) = backlog.restart_ready_seconds {
                println!(
                    "| ↳ follower restart with the backlog | {:?} | ready in {seconds:.1} s | | | | | | | |",
                    report.target
                );
            }
        }
    }
}
