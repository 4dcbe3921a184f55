//! raftq-bench: a load generator that prints figures. It drives a running cluster through
//! the Rust client: producers send (one message per call, or batches), optionally
//! consumers receive and ack, and it reports throughput and latency percentiles.
//!
//! It must not assert anything: speed is reported, never tested.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use raftq_client::{Client, ClientConfig, Message, pb};
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(name = "raftq-bench", about = "Load generator for a raftq cluster")]
struct Args {
    /// Cluster addresses (comma-separated).
    #[arg(long, default_value = "127.0.0.1:7401")]
    addr: String,
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Concurrent consumers (0: produce only).
    #[arg(long, default_value_t = 0)]
    consumers: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per send call (1: Send, more: SendBatch).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Messages per receive call.
    #[arg(long, default_value_t = 100)]
    receive_max: u32,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    output: String,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::new(std::slice::from_ref(&args.addr), ClientConfig::default())?;
    match client
        .create_queue(&args.queue, pb::QueueOptions::default())
        .await
    {
        Ok(_) => {}
        Err(error) if error.code() == Some(raftq_client::Code::AlreadyExists) => {}
        Err(error) => return Err(error.into()),
    }
    let body = vec![b'x'; args.size];
    let per_producer = args.messages / args.producers as u64;
    let total = per_producer * args.producers as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let (client, args, body, sent, errors) = (
            client.clone(),
            args.clone(),
            body.clone(),
            sent.clone(),
            errors.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut done = 0u64;
            while done < per_producer {
                let count = (args.batch as u64).min(per_producer - done);
                let begin = Instant::now();
                let result = if count == 1 {
                    client
                        .send(&args.queue, Message::new(body.clone()))
                        .await
                        .map(|_| ())
                } else {
                    let batch = (0..count).map(|_| Message::new(body.clone())).collect();
                    client.send_batch(&args.queue, batch).await.map(|_| ())
                };
                match result {
                    Ok(()) => {
                        let _ = latencies.record(begin.elapsed().as_micros() as u64);
                        sent.fetch_add(count, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done += count;
            }
            latencies
        }));
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (client, args, received, errors) = (
            client.clone(),
            args.clone(),
            received.clone(),
            errors.clone(),
        );
        consumers.push(tokio::spawn(async move {
            while received.load(Ordering::Relaxed) < total {
                match client
                    .receive(
                        &args.queue,
                        args.receive_max,
                        Duration::from_millis(500),
                        None,
                    )
                    .await
                {
                    Ok(messages) => {
                        for message in messages {
                            if client.ack(&args.queue, &message.receipt).await.is_ok() {
                                received.fetch_add(1, Ordering::Relaxed);
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let progress = {
        let (sent, received) = (sent.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprint!(
                    "\r{:>6.1}s sent {:>9} received {:>9}",
                    started.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut latencies = histogram();
    for producer in producers {
        latencies.add(producer.await?)?;
    }
    let produce_elapsed = started.elapsed();
    for consumer in consumers {
        consumer.await?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    eprintln!();
    let sent = sent.load(Ordering::Relaxed);
    let rate = sent as f64 / produce_elapsed.as_secs_f64();
    let mib = rate * args.size as f64 / (1024.0 * 1024.0);
    let e2e_rate = (args.consumers > 0)
        .then(|| received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64());
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "messages": sent,
        "size": args.size,
        "producers": args.producers,
        "batch": args.batch,
        "consumers": args.consumers,
        "produce_seconds": produce_elapsed.as_secs_f64(),
        "produce_msgs_per_s": rate,
        "produce_mib_per_s": mib,
        "end_to_end_msgs_per_s": e2e_rate,
        "send_latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": latencies.max() as f64 / 1000.0},
        "errors": errors.load(Ordering::Relaxed),
    });
    if args.output == "json" {
        println!("{report}");
    } else {
        println!(
            "sent {sent} x {} B with {} producers, batch {}: {rate:.0} msg/s, {mib:.1} MiB/s",
            args.size, args.producers, args.batch
        );
        if let Some(e2e) = e2e_rate {
            println!(
                "end to end (send, receive, ack) with {} consumers: {e2e:.0} msg/s",
                args.consumers
            );
        }
        println!(
            "send latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            latencies.max() as f64 / 1000.0
        );
        println!("errors: {}", errors.load(Ordering::Relaxed));
    }
    Ok(())
}
