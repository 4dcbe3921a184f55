//! Message calls: sends, receives, acks and leases, transactions, redrive and peek.

use std::time::Duration;

use crate::client::Channel;

use super::retry::with_timeout;
use super::{Client, Message};
use crate::error::ClientError;
use crate::pb::{self, message_service_client::MessageServiceClient};
use raftq_proto::wire::MAX_MESSAGE_BYTES;

impl Client {
    pub(crate) fn messages(channel: Channel) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Sends one message. The idempotency key (given or generated) is fixed before the
    /// first attempt and reused by every retry.
    pub async fn send(
        &self,
        queue: &str,
        message: Message,
    ) -> Result<pb::SendResponse, ClientError> {
        let request = pb::SendRequest {
            queue: queue.to_string(),
            message: Some(message.into_proto()),
            producer: None,
        };
        if let Some(pipe) = self.pipe(queue) {
            let streamed =
                tokio::time::timeout(self.config.attempt_timeout, pipe.send(request.clone()));
            if let Ok(Some(answer)) = streamed.await {
                return answer.map_err(ClientError::Status);
            }
            // Not answered on the stream: the call below retries it under the same key.
        }
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).send(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Sends up to 1,000 messages atomically (all stored or none).
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<pb::SendResponse>, ClientError> {
        let request = pb::SendBatchRequest {
            queue: queue.to_string(),
            messages: messages.into_iter().map(Message::into_proto).collect(),
            producer: None,
        };
        self.send_batch_request(request).await
    }

    /// Receives up to `max` messages under a lease, waiting up to `wait` for one to arrive.
    /// `lease: None` uses the queue's default lease.
    pub async fn receive(
        &self,
        queue: &str,
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<pb::ReceivedMessage>, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            ..pb::ReceiveRequest::default()
        };
        Ok(self.receive_request(request, wait).await?.messages)
    }

    /// Selective receive: only the message `message_id` (when not 0) and/or messages with
    /// `correlation_id` (when not empty), waiting up to `wait` for one to be ready.
    pub async fn receive_selected(
        &self,
        queue: &str,
        message_id: u64,
        correlation_id: &str,
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<pb::ReceivedMessage>, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            message_id,
            correlation_id: correlation_id.to_string(),
            ..pb::ReceiveRequest::default()
        };
        Ok(self.receive_request(request, wait).await?.messages)
    }

    /// Acknowledges `acks` (earlier deliveries of `queue`) and receives up to `max`
    /// messages, in one call and one log entry: what a consumer working batch by batch
    /// needs, at one round trip per batch. The acks are applied at once even when the
    /// receive then waits up to `wait` for a message; their results come back in order,
    /// as from [`Client::ack_batch`]. Retrying is safe for the acks, as each ack is.
    pub async fn ack_and_receive(
        &self,
        queue: &str,
        acks: &[String],
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<pb::ReceiveResponse, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            ack_receipts: acks.to_vec(),
            ..pb::ReceiveRequest::default()
        };
        let response = self.receive_request(request, wait).await?;
        if response.ack_results.len() != acks.len() {
            // A server that predates `ack_receipts` ignores them: nothing was acknowledged.
            return Err(ClientError::Status(tonic::Status::unimplemented(format!(
                "the server answered {} of {} acks sent with a receive; it may not support \
                 acknowledging with a receive",
                response.ack_results.len(),
                acks.len()
            ))));
        }
        Ok(response)
    }

    async fn receive_request(
        &self,
        request: pb::ReceiveRequest,
        wait: Duration,
    ) -> Result<pb::ReceiveResponse, ClientError> {
        let response = self
            .retry_queue(&request.queue, wait, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).receive(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Acknowledges a delivery. Retrying an ack that already succeeded is answered with
    /// `already_acked = true`; a stale receipt is FAILED_PRECONDITION.
    pub async fn ack(&self, queue: &str, receipt: &str) -> Result<pb::AckResponse, ClientError> {
        let request = pb::AckRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).ack(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Acknowledges many deliveries of `queue` in one call. Each receipt's result comes
    /// back in order (`code` 0: acknowledged); retrying the call is safe, as each ack is.
    pub async fn ack_batch(
        &self,
        queue: &str,
        receipts: &[String],
    ) -> Result<Vec<pb::AckResult>, ClientError> {
        let request = pb::AckBatchRequest {
            queue: queue.to_string(),
            receipts: receipts.to_vec(),
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).ack_batch(request).await }
            })
            .await?;
        Ok(response.into_inner().results)
    }

    pub async fn nack(
        &self,
        queue: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<pb::NackResponse, ClientError> {
        let request = pb::NackRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            delay_ms: delay.as_millis() as u64,
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).nack(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Takes a leased message out of its queue for good: to its dead-letter queue with
    /// `detail`, or discarded when it has none.
    pub async fn reject(
        &self,
        queue: &str,
        receipt: &str,
        detail: &str,
    ) -> Result<pb::RejectResponse, ClientError> {
        let request = pb::RejectRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            detail: detail.to_string(),
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).reject(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn extend_lease(
        &self,
        queue: &str,
        receipt: &str,
        lease: Duration,
    ) -> Result<pb::ExtendLeaseResponse, ClientError> {
        let request = pb::ExtendLeaseRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            lease_ms: lease.as_millis() as u64,
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).extend_lease(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Starts a transaction: receive and send inside it, then commit or abort.
    pub fn begin(&self) -> crate::Transaction {
        crate::Transaction::new(self.clone())
    }

    /// Commits a transaction built by hand; see [`crate::Transaction`] for the usual way.
    pub async fn commit(
        &self,
        request: pb::CommitRequest,
    ) -> Result<pb::CommitResponse, ClientError> {
        let response = self
            .retry_queue(first_queue(&request), Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).commit(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Moves messages out of a dead-letter queue: `ids`, or with none up to `max` from the
    /// head; back where each came from, or to `to` when it is not empty. Moving by id is
    /// safe to retry; moving by count after an uncertain outcome may move a second batch.
    pub async fn redrive(
        &self,
        queue: &str,
        ids: &[u64],
        max: u32,
        to: &str,
    ) -> Result<u64, ClientError> {
        let request = pb::RedriveRequest {
            queue: queue.to_string(),
            message_ids: ids.to_vec(),
            max_messages: max,
            to: to.to_string(),
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).redrive(request).await }
            })
            .await?;
        Ok(response.into_inner().moved)
    }

    pub async fn peek(
        &self,
        queue: &str,
        after_sequence: u64,
        max: u32,
    ) -> Result<Vec<pb::PeekedMessage>, ClientError> {
        self.peek_selected(queue, after_sequence, max, 0, "").await
    }

    /// Browse (page with `after_sequence`) only the message `message_id` (when not 0)
    /// and/or messages with `correlation_id` (when not empty), without leasing them.
    pub async fn peek_selected(
        &self,
        queue: &str,
        after_sequence: u64,
        max: u32,
        message_id: u64,
        correlation_id: &str,
    ) -> Result<Vec<pb::PeekedMessage>, ClientError> {
        let request = pb::PeekRequest {
            queue: queue.to_string(),
            after_sequence,
            max_messages: max,
            message_id,
            correlation_id: correlation_id.to_string(),
        };
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).peek(request).await }
            })
            .await?;
        Ok(response.into_inner().messages)
    }
}

/// The first queue a commit names: every queue of one commit lives in one group.
fn first_queue(request: &pb::CommitRequest) -> &str {
    let acked = request.acks.first().map(|ack| ack.queue.as_str());
    let sent = || request.sends.first().map(|send| send.queue.as_str());
    acked.or_else(sent).unwrap_or_default()
}
