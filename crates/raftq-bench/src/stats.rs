//! Counters, latency histograms, the live progress line and per-process peak memory.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            samples: histogram.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }
}

/// Counters shared by every task of a scenario.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Counts one failed call; the first few are printed, the rest only counted.
    pub fn count_error(&self, what: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("{what}");
        }
    }
}

/// Prints a progress line to stderr every second until dropped: in place on a terminal,
/// every fifth second as its own line otherwise.
pub struct Progress {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: String, counters: Arc<Counters>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let tty = std::io::stderr().is_terminal();
                let started = Instant::now();
                let mut last = (0u64, 0u64);
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Look at the stop flag often, print once a second.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tick += 1;
                    if !tick.is_multiple_of(10) {
                        continue;
                    }
                    let now = (counters.sent(), counters.received());
                    let line = format!(
                        "{label} {:>5.0}s  sent {:>9} ({:>7}/s)  received {:>9} ({:>7}/s)  errors {}",
                        started.elapsed().as_secs_f64(),
                        now.0,
                        now.0 - last.0,
                        now.1,
                        now.1 - last.1,
                        counters.errors()
                    );
                    last = now;
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else if tick.is_multiple_of(50) {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprint!("\r\x1b[K");
                }
            })
        };
        Progress { stop, task }
    }

    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// Samples the resident memory of a set of processes every 250 ms and keeps each one's
/// peak, in MiB.
pub struct RssMonitor {
    peaks: Arc<std::sync::Mutex<BTreeMap<String, f64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssMonitor {
    pub fn start(processes: Vec<(String, u32)>) -> RssMonitor {
        let peaks = Arc::new(std::sync::Mutex::new(BTreeMap::<String, f64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (peaks, stop) = (peaks.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    for (label, pid) in &processes {
                        if let Some(mib) = rss_mib(*pid) {
                            let mut peaks = peaks.lock().unwrap_or_else(|p| p.into_inner());
                            let peak: &mut f64 = peaks.entry(label.clone()).or_insert(0.0);
                            *peak = peak.max(mib);
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        RssMonitor { peaks, stop, task }
    }

    pub async fn finish(self) -> BTreeMap<String, f64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let peaks = self.peaks.lock().unwrap_or_else(|p| p.into_inner());
        peaks.clone()
    }
}

/// The resident set of `pid` in MiB, read from /proc (None once it has exited).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Every running process whose command name is `name` and whose command line holds
/// `argument` (when given), labelled `name-<pid>`.
pub fn processes_named(name: &str, argument: Option<&str>) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(String, u32)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter(|pid| {
            argument.is_none_or(|argument| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline
                        .split(|byte| *byte == 0)
                        .any(|arg| arg == argument.as_bytes())
                })
            })
        })
        .map(|pid| (format!("{name}-{pid}"), pid))
        .collect();
    found.sort();
    found
}

/// The CPU each process used over a stretch, as a percentage of one core.
pub struct CpuMeter {
    started: Instant,
    before: Vec<(String, u32, u64)>,
}

impl CpuMeter {
    pub fn start(processes: &[(String, u32)]) -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            before: processes
                .iter()
                .map(|(label, pid)| (label.clone(), *pid, cpu_ticks(*pid)))
                .collect(),
        }
    }

    pub fn finish(self) -> BTreeMap<String, f64> {
        let seconds = self.started.elapsed().as_secs_f64().max(f64::EPSILON);
        let ticks_per_second = clock_ticks_per_second();
        self.before
            .into_iter()
            .map(|(label, pid, before)| {
                let used = cpu_ticks(pid).saturating_sub(before) as f64 / ticks_per_second;
                (label, 100.0 * used / seconds)
            })
            .collect()
    }
}

/// User and system CPU time `pid` has used, in clock ticks (0 once it has exited).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name, in parentheses, may hold spaces: count fields after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let field = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
