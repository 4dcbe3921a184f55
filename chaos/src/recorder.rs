//! `Recorder`: where every process of the workload writes down what it did, with times
//! counted from the start of the run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::history::{Event, Op, Outcome};

#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One operation of `process`, started at `start_ms` and ending now.
    pub fn record(&self, process: &str, op: Op, start_ms: u64, outcome: Outcome, error: String) {
        self.record_at(process, op, start_ms, self.now_ms(), outcome, error);
    }

    /// One operation of `process` that started at `start_ms` and ended at `end_ms`.
    pub fn record_at(
        &self,
        process: &str,
        op: Op,
        start_ms: u64,
        end_ms: u64,
        outcome: Outcome,
        error: String,
    ) {
        let event = Event {
            process: process.to_string(),
            op,
            start_ms,
            end_ms,
            outcome,
            error,
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// Every event so far, in the order recorded.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
