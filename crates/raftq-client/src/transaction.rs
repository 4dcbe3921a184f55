//! MSMQ-style transactions on top of the atomic `Commit` call: begin, receive and send
//! inside the transaction, then commit (all or nothing) or abort.

use std::time::Duration;

use crate::client::{Client, Message};
use crate::error::ClientError;
use crate::pb;

/// A transaction in progress. Messages received through it stay leased until the commit
/// acknowledges them; sends are held here and stored only by the commit. If the
/// transaction is neither committed nor aborted, its leases run out (the transaction's
/// timeout) and the messages are delivered again; nothing it sent was stored.
pub struct Transaction {
    client: Client,
    id: String,
    acks: Vec<pb::TransactionAck>,
    sends: Vec<pb::TransactionSend>,
}

impl Transaction {
    pub(crate) fn new(client: Client) -> Transaction {
        Transaction {
            client,
            id: uuid::Uuid::now_v7().to_string(),
            acks: Vec::new(),
            sends: Vec::new(),
        }
    }

    /// The id the commit carries; a retried commit with it is applied once.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Receives under a lease; the messages are acknowledged by the commit. The lease is
    /// the time the transaction has to commit them.
    pub async fn receive(
        &mut self,
        queue: &str,
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<pb::ReceivedMessage>, ClientError> {
        let messages = self.client.receive(queue, max, wait, lease).await?;
        for message in &messages {
            self.ack(queue, &message.receipt);
        }
        Ok(messages)
    }

    /// Adds the acknowledgement of a delivery received some other way.
    pub fn ack(&mut self, queue: &str, receipt: &str) {
        self.acks.push(pb::TransactionAck {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
        });
    }

    /// Adds a send; it is stored only if the transaction commits.
    pub fn send(&mut self, queue: &str, message: Message) {
        self.sends.push(pb::TransactionSend {
            queue: queue.to_string(),
            message: Some(message.into_proto()),
        });
    }

    /// Applies every ack and send, or none. Retried within the client's deadline with the
    /// same transaction id, so it is applied at most once; FAILED_PRECONDITION means a
    /// lease ran out (the transaction timed out) and nothing was applied.
    pub async fn commit(self) -> Result<pb::CommitResponse, ClientError> {
        let client = self.client.clone();
        client.commit(self.into_request()).await
    }

    /// The commit request of the transaction as it stands.
    pub(crate) fn into_request(self) -> pb::CommitRequest {
        pb::CommitRequest {
            transaction_id: self.id,
            acks: self.acks,
            sends: self.sends,
            producer: None,
        }
    }

    /// Releases every message received through the transaction at once; nothing it sent
    /// is stored.
    pub async fn abort(self) -> Result<(), ClientError> {
        for ack in &self.acks {
            match self
                .client
                .nack(&ack.queue, &ack.receipt, Duration::ZERO)
                .await
            {
                Ok(_) => {}
                // Its lease already ended: it is released anyway.
                Err(error) if error.code() == Some(tonic::Code::FailedPrecondition) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}
