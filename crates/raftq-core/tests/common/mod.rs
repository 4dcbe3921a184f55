//! Helpers of the state machine's feature tests: a queue, sends, receives, acks and nacks
//! at a given time. Each test file uses some of them.
#![allow(dead_code)]

use raftq_core::{Command, Delivery, NewMessage, Outcome, QueueOptions, Request, StateMachine};

pub fn at(now_ms: u64, command: Command) -> Request {
    Request { now_ms, command }
}

pub fn create(sm: &mut StateMachine, name: &str, options: QueueOptions) {
    sm.apply(at(
        1_000,
        Command::CreateQueue {
            name: name.into(),
            options,
        },
    ))
    .expect("create");
}

pub fn with_queue(options: QueueOptions) -> StateMachine {
    let mut sm = StateMachine::default();
    create(&mut sm, "q", options);
    sm
}

pub fn body(text: &str) -> NewMessage {
    NewMessage {
        body: text.as_bytes().to_vec(),
        ..NewMessage::default()
    }
}

pub fn grouped(text: &str, group: &str) -> NewMessage {
    NewMessage {
        group: group.into(),
        ..body(text)
    }
}

pub fn send_to(
    sm: &mut StateMachine,
    now: u64,
    queue: &str,
    messages: Vec<NewMessage>,
) -> Vec<u64> {
    match sm.apply(at(
        now,
        Command::Send {
            queue: queue.into(),
            messages,
        },
    )) {
        Ok(Outcome::Sent(results)) => results.iter().map(|r| r.message_id).collect(),
        other => panic!("send failed: {other:?}"),
    }
}

pub fn send(sm: &mut StateMachine, now: u64, messages: Vec<NewMessage>) -> Vec<u64> {
    send_to(sm, now, "q", messages)
}

pub fn receive_from(sm: &mut StateMachine, now: u64, queue: &str, max: u32) -> Vec<Delivery> {
    match sm.apply(at(
        now,
        Command::Receive {
            queue: queue.into(),
            max_messages: max,
            lease_ms: 1_000,
        },
    )) {
        Ok(Outcome::Received(deliveries)) => deliveries,
        other => panic!("receive failed: {other:?}"),
    }
}

pub fn receive(sm: &mut StateMachine, now: u64, max: u32) -> Vec<Delivery> {
    receive_from(sm, now, "q", max)
}

pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.clone()).unwrap())
        .collect()
}

pub fn ack(sm: &mut StateMachine, now: u64, delivery: &Delivery) {
    sm.apply(at(
        now,
        Command::Ack {
            queue: "q".into(),
            receipt: delivery.receipt,
        },
    ))
    .expect("ack");
}

pub fn nack(sm: &mut StateMachine, now: u64, delivery: &Delivery) {
    sm.apply(at(
        now,
        Command::Nack {
            queue: "q".into(),
            receipt: delivery.receipt,
            delay_ms: 0,
        },
    ))
    .expect("nack");
}
