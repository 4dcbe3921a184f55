//! Transactions: all of their acks and sends or none, and committed ids remembered.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StateMachine;
use crate::QueueError;
use crate::command::{NewMessage, Outcome, SendResult, TransactionAck, TransactionSend};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CommittedTransaction {
    sent: Vec<SendResult>,
}

impl StateMachine {
    pub(super) fn forget_transactions(&mut self) {
        while let Some((at, _)) = self.transaction_expiry.first() {
            if *at > self.now_ms {
                break;
            }
            if let Some((_, id)) = self.transaction_expiry.pop_first() {
                self.transactions.remove(&id);
            }
        }
    }

    /// All of `acks` and `sends` or nothing: every part is checked (queues exist, receipts
    /// are current, messages valid, queues have room) before anything changes.
    pub(super) fn commit(
        &mut self,
        transaction_id: String,
        acks: Vec<TransactionAck>,
        sends: Vec<TransactionSend>,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_transaction_id(&transaction_id)?;
        if let Some(committed) = self.transactions.get(&transaction_id) {
            return Ok(Outcome::Committed {
                sent: committed.sent.clone(),
                already_committed: true,
            });
        }
        self.limits
            .check_transaction_parts(acks.len(), sends.iter().map(|send| &send.message))?;
        self.check_acknowledgement_queues(sends.iter().map(|send| &send.message))?;
        for ack in &acks {
            self.queue_mut(&ack.queue)?
                .check_current(ack.receipt, now)?;
        }
        let mut by_queue: BTreeMap<&str, Vec<&NewMessage>> = BTreeMap::new();
        for send in &sends {
            by_queue
                .entry(send.queue.as_str())
                .or_default()
                .push(&send.message);
        }
        for (name, messages) in &by_queue {
            // Checked without the acks' effect: a full queue aborts even when the same
            // transaction consumes from it.
            self.queue_mut(name)?.check_send(messages.iter().copied())?;
        }
        for ack in acks {
            self.queue_mut(&ack.queue)?.ack(ack.receipt, now)?;
        }
        for (name, messages) in by_queue {
            self.queue_mut(name)?.make_room(messages);
        }
        let mut sent = Vec::with_capacity(sends.len());
        for send in sends {
            let message_id = self.next_message_id;
            let result = self
                .queue_mut(&send.queue)?
                .send(send.message, message_id, now);
            if !result.duplicate {
                self.next_message_id += 1;
            }
            sent.push(result);
        }
        let forget_at = now.saturating_add(self.limits.transaction_window_ms);
        self.transaction_expiry
            .insert((forget_at, transaction_id.clone()));
        self.transactions
            .insert(transaction_id, CommittedTransaction { sent: sent.clone() });
        Ok(Outcome::Committed {
            sent,
            already_committed: false,
        })
    }
}
