//! A transaction's commit request: its acknowledgements and its sends.

use raftq_core::{Command, QueueError, TransactionAck, TransactionSend};

use crate::{new_message, pb, receipt};

/// The `Commit` command a request asks for. Queue names and limits are checked by the
/// caller before it proposes the command (and again by the state machine).
pub fn commit(request: pb::CommitRequest) -> Result<Command, QueueError> {
    let acks = request
        .acks
        .into_iter()
        .map(|ack| {
            Ok(TransactionAck {
                receipt: receipt(&ack.receipt)?,
                queue: ack.queue,
            })
        })
        .collect::<Result<Vec<_>, QueueError>>()?;
    let sends = request
        .sends
        .into_iter()
        .map(|send| {
            let message = send.message.ok_or_else(|| {
                QueueError::invalid("sends.message", "every send needs a message")
            })?;
            Ok(TransactionSend {
                queue: send.queue,
                message: new_message(message),
            })
        })
        .collect::<Result<Vec<_>, QueueError>>()?;
    Ok(Command::Commit {
        transaction_id: request.transaction_id,
        acks,
        sends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_carries_every_part_in_order_and_refuses_a_send_without_a_message() {
        let request = pb::CommitRequest {
            transaction_id: "t1".into(),
            acks: vec![pb::TransactionAck {
                queue: "in".into(),
                receipt: "4:2".into(),
            }],
            sends: vec![pb::TransactionSend {
                queue: "out".into(),
                message: Some(pb::OutgoingMessage {
                    body: b"x".to_vec(),
                    ..pb::OutgoingMessage::default()
                }),
            }],
            producer: None,
        };
        let Command::Commit {
            transaction_id,
            acks,
            sends,
        } = commit(request.clone()).unwrap()
        else {
            panic!("not a commit");
        };
        assert_eq!(transaction_id, "t1");
        assert_eq!(
            (acks[0].queue.as_str(), acks[0].receipt.to_string()),
            ("in", "4:2".into())
        );
        assert_eq!(
            (sends[0].queue.as_str(), sends[0].message.body.as_slice()),
            ("out", &b"x"[..])
        );

        let mut missing = request.clone();
        missing.sends[0].message = None;
        assert!(matches!(
            commit(missing),
            Err(QueueError::InvalidArgument { field, .. }) if field == "sends.message"
        ));
        let mut malformed = request;
        malformed.acks[0].receipt = "4".into();
        assert!(matches!(
            commit(malformed),
            Err(QueueError::InvalidArgument { field, .. }) if field == "receipt"
        ));
    }
}
