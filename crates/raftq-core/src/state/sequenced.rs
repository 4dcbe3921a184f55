//! Producers' numbered sends and commits: checked against the producer's session, applied
//! as a plain send or commit when next in sequence, answered with the first outcome when
//! repeated (see [`crate::producers`]).

use super::StateMachine;
use crate::QueueError;
use crate::command::{Command, NewMessage, Outcome, TransactionAck, TransactionSend};
use crate::producers::{ProducerId, Standing, Stream};

impl StateMachine {
    pub(super) fn register_producer(
        &mut self,
        name: &str,
        idle_expiry_ms: u64,
        max_producers: u64,
    ) -> Result<Outcome, QueueError> {
        let producer_id =
            self.producers
                .register(name, idle_expiry_ms, max_producers, self.now_ms)?;
        Ok(Outcome::ProducerRegistered {
            producer_id,
            idle_expiry_ms,
        })
    }

    pub(super) fn producer_send(
        &mut self,
        producer: ProducerId,
        first_sequence: u64,
        max_sessions: u64,
        queue: String,
        messages: Vec<NewMessage>,
    ) -> Result<Outcome, QueueError> {
        let stream = Stream::Queue(queue.clone());
        let count = messages.len() as u64;
        self.numbered(
            producer,
            stream,
            first_sequence,
            count,
            max_sessions,
            Command::Send { queue, messages },
        )
    }

    pub(super) fn producer_commit(
        &mut self,
        producer: ProducerId,
        sequence: u64,
        transaction_id: String,
        acks: Vec<TransactionAck>,
        sends: Vec<TransactionSend>,
    ) -> Result<Outcome, QueueError> {
        self.numbered(
            producer,
            Stream::Transactions,
            sequence,
            1,
            u64::MAX,
            Command::Commit {
                transaction_id,
                acks,
                sends,
            },
        )
    }

    /// `command` (a send or a commit, never numbered itself) as the producer's numbers
    /// `first ..= first + count - 1` on `stream`.
    fn numbered(
        &mut self,
        producer: ProducerId,
        stream: Stream,
        first: u64,
        count: u64,
        max_sessions: u64,
        command: Command,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        match self
            .producers
            .check(producer, &stream, first, count, max_sessions)?
        {
            Standing::Repeat(outcome) => {
                self.producers.touch(producer, now);
                Ok((*outcome).repeated())
            }
            Standing::Next => {
                let outcome = self.apply_command(command)?;
                self.producers
                    .record(producer, stream, first, count, outcome.clone(), now);
                Ok(outcome)
            }
        }
    }
}
