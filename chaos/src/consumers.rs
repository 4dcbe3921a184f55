//! The consumers of the workload: plain receivers that ack each message, consumers on
//! consume streams, and transactional movers; each records every call in the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftq_client::{Client, ClientError, Code, Message, pb};

use crate::history::{Delivered, Op, Outcome};
use crate::recorder::Recorder;
use crate::workload::{TX_IN, TX_OUT, outcome_of};

pub async fn consume(
    client: Client,
    recorder: Recorder,
    name: String,
    queue: &'static str,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let start = recorder.now_ms();
        let received = client
            .receive(
                queue,
                50,
                Duration::from_millis(300),
                Some(Duration::from_secs(5)),
            )
            .await;
        let Some(messages) = record_receive(&recorder, &name, start, received) else {
            continue;
        };
        for message in messages {
            let value = String::from_utf8_lossy(&message.body).into_owned();
            let start = recorder.now_ms();
            let (outcome, error) = match client.ack(queue, &message.receipt).await {
                Ok(_) => (Outcome::Ok, String::new()),
                Err(error) if error.code() == Some(Code::FailedPrecondition) => {
                    (Outcome::Failed, error.to_string())
                }
                Err(error) => (outcome_of(&error), error.to_string()),
            };
            recorder.record(&name, Op::Ack { value }, start, outcome, error);
        }
    }
}

/// Records the result of a streamed ack given at `start`.
fn record_streamed_ack(
    recorder: &Recorder,
    name: &str,
    (value, start): (String, u64),
    result: Option<&pb::AckResult>,
) {
    let (outcome, error) = match result {
        Some(result) if result.code == 0 => (Outcome::Ok, String::new()),
        Some(result) => (Outcome::Failed, result.error.clone()),
        None => (Outcome::Unknown, "not answered".to_string()),
    };
    recorder.record(name, Op::Ack { value }, start, outcome, error);
}

/// A consumer on a consume stream. A delivery is recorded as a receive that started when
/// its stream opened (the leader may have handed it out any time since), an ack from when
/// it was given until its result came back on the stream.
pub async fn consume_stream(
    client: Client,
    recorder: Recorder,
    name: String,
    queue: &'static str,
    stop: Arc<AtomicBool>,
) {
    use std::collections::HashMap;
    let options = raftq_client::ConsumeOptions {
        prefetch: 50,
        max_messages: 25,
        lease: Some(Duration::from_secs(5)),
    };
    // Receipt -> (value, when its ack was given).
    let mut acking: HashMap<String, (String, u64)> = HashMap::new();
    let mut stream: Option<(raftq_client::Consumer, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (consumer, opened) = match stream.as_mut() {
            Some(open) => open,
            None => {
                let opened = recorder.now_ms();
                match client.consume(queue, options.clone()).await {
                    Ok(consumer) => stream.insert((consumer, opened)),
                    Err(error) => {
                        record_receive(&recorder, &name, opened, Err(error));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let opened = *opened;
        let delivery = match tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
        {
            Err(_) => continue,
            Ok(Ok(delivery)) => delivery,
            Ok(Err(error)) => {
                record_receive(&recorder, &name, opened, Err(error));
                stream = None;
                continue;
            }
        };
        for (receipt, result) in &delivery.acks {
            if let Some(given) = acking.remove(receipt) {
                record_streamed_ack(&recorder, &name, given, Some(result));
            }
        }
        let Some(messages) = record_receive(&recorder, &name, opened, Ok(delivery.messages)) else {
            continue;
        };
        let now = recorder.now_ms();
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        for message in messages {
            let value = String::from_utf8_lossy(&message.body).into_owned();
            acking.insert(message.receipt, (value, now));
        }
        // Receipts from the server are well formed: the client refuses no others.
        let _ = consumer.ack(&receipts).await;
    }
    if let Some((consumer, _)) = stream
        && let Ok(results) = consumer.close().await
    {
        for (receipt, result) in &results.acks {
            if let Some(given) = acking.remove(receipt) {
                record_streamed_ack(&recorder, &name, given, Some(result));
            }
        }
    }
    for given in acking.into_values() {
        record_streamed_ack(&recorder, &name, given, None);
    }
}

/// Records a receive started at `start`: the values it handed out, or its error. Returns
/// the messages, or `None` after an error.
fn record_receive(
    recorder: &Recorder,
    name: &str,
    start: u64,
    received: Result<Vec<pb::ReceivedMessage>, ClientError>,
) -> Option<Vec<pb::ReceivedMessage>> {
    match received {
        Ok(messages) => {
            let delivered = messages.iter().map(Delivered::from).collect();
            recorder.record(
                name,
                Op::Receive { delivered },
                start,
                Outcome::Ok,
                String::new(),
            );
            Some(messages)
        }
        Err(error) => {
            let delivered = Vec::new();
            let outcome = outcome_of(&error);
            recorder.record(
                name,
                Op::Receive { delivered },
                start,
                outcome,
                error.to_string(),
            );
            None
        }
    }
}

/// Moves values from `TX_IN` to `TX_OUT` in transactions: receive a few, then commit their
/// acks together with a send of `out:<value>` for each. The history records the receive,
/// and for the commit an ack of each value and a send of each `out:` value, all with the
/// commit's outcome, so the checker sees each value consumed once and each `out:` value
/// produced and consumed once.
pub async fn mover(client: Client, recorder: Recorder, name: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let start = recorder.now_ms();
        let mut tx = client.begin();
        let received = tx
            .receive(
                TX_IN,
                20,
                Duration::from_millis(300),
                Some(Duration::from_secs(5)),
            )
            .await;
        let Some(messages) = record_receive(&recorder, &name, start, received) else {
            continue;
        };
        let values: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        if values.is_empty() {
            continue;
        }
        for value in &values {
            tx.send(TX_OUT, Message::new(format!("out:{value}")));
        }
        let start = recorder.now_ms();
        let (outcome, error) = match tx.commit().await {
            Ok(_) => (Outcome::Ok, String::new()),
            // A lease ran out: nothing of the transaction was applied.
            Err(error) if error.code() == Some(Code::FailedPrecondition) => {
                (Outcome::Failed, error.to_string())
            }
            Err(error) => (outcome_of(&error), error.to_string()),
        };
        for value in values {
            recorder.record(
                &name,
                Op::Ack {
                    value: value.clone(),
                },
                start,
                outcome,
                error.clone(),
            );
            recorder.record(
                &name,
                Op::Send {
                    value: format!("out:{value}"),
                },
                start,
                outcome,
                error.clone(),
            );
        }
    }
}
