//! Receipts and the per-receipt results of acks and nacks.

use raftq_core::{QueueError, Receipt};

use crate::{code_of, pb};

/// A receipt as the caller sent it, in its text form `<message_id>:<attempt>`.
pub fn receipt(text: &str) -> Result<Receipt, QueueError> {
    text.parse()
}

/// Every receipt of a request; the first malformed one refuses them all.
pub fn receipts(texts: &[String]) -> Result<Vec<Receipt>, QueueError> {
    texts.iter().map(|text| receipt(text)).collect()
}

/// The result of one receipt: `already_acked` when a retried ack found the message
/// acknowledged before.
pub fn ack_result(result: Result<bool, QueueError>) -> pb::AckResult {
    match result {
        Ok(already_acked) => pb::AckResult {
            already_acked,
            ..pb::AckResult::default()
        },
        Err(error) => refused(&error),
    }
}

/// A receipt an ack or nack refused: the code its call would have failed with.
pub fn refused(error: &QueueError) -> pb::AckResult {
    pb::AckResult {
        code: code_of(error) as i32,
        error: error.to_string(),
        already_acked: false,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_malformed_receipt_is_an_invalid_argument_naming_the_field() {
        let error = receipts(&["1:1".into(), "1:x".into()]).unwrap_err();
        assert!(
            matches!(error, QueueError::InvalidArgument { ref field, .. } if field == "receipt")
        );
        assert_eq!(receipt("7:2").unwrap().to_string(), "7:2");
    }

    /// Frozen bytes: what a client decodes for each receipt must not drift.
    #[test]
    fn ack_result_wire_format_is_frozen() {
        assert_eq!(ack_result(Ok(false)).encode_to_vec(), [0u8; 0]);
        assert_eq!(ack_result(Ok(true)).encode_to_vec(), [0x18, 0x01]);
        let stale = ack_result(Err(QueueError::StaleReceipt {
            receipt: "5:1".into(),
            reason: "x".into(),
        }));
        assert_eq!(stale.code, tonic::Code::FailedPrecondition as i32);
        let text = b"receipt 5:1 is stale: x";
        assert_eq!(
            stale.encode_to_vec(),
            [&[0x08, 0x09, 0x12, text.len() as u8][..], text].concat()
        );
    }
}
