//! The write batcher: writes arriving together are proposed as one log entry, stamped
//! with log time, and each caller is answered with its own command's outcome (with the
//! bodies of the messages it delivers read).

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use raftq_core::{Command, Outcome, QueueError, Request};
use raftq_store::{Applied, SharedState};

use crate::ClusterError;
use crate::clock::LogClock;
use crate::raft::{Raft, client_write_result};

/// Most commands in one batched log entry.
const MAX_BATCH_COMMANDS: usize = 256;
/// A batch takes no more commands once it holds about this many bytes.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batched entries being committed at once. While all are in flight, new writes wait in
/// the queue and then go into the next entry together: batches grow with the load.
const MAX_IN_FLIGHT_BATCHES: usize = 8;
/// Writes waiting to be batched; callers wait while it is full.
pub(crate) const PROPOSAL_QUEUE: usize = 8_192;

pub(crate) type WriteResult = Result<Result<Outcome, QueueError>, ClusterError>;

pub(crate) struct Proposal {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<WriteResult>,
    /// When the write was queued, for the time it waits to be proposed.
    pub(crate) queued: std::time::Instant,
}

/// What proposing a log entry needs: the Raft handle, the applied state (for log time)
/// and the clock.
#[derive(Clone)]
pub(crate) struct Proposer {
    raft: Raft,
    shared: SharedState,
    clock: Arc<LogClock>,
    write_timeout: Duration,
}

impl Proposer {
    pub(crate) fn new(
        raft: Raft,
        shared: SharedState,
        write_timeout: Duration,
        max_clock_skew_ms: u64,
    ) -> Proposer {
        Proposer {
            raft,
            shared,
            clock: Arc::new(LogClock::new(max_clock_skew_ms)),
            write_timeout,
        }
    }

    /// The log time a command proposed now would carry, given the applied state's.
    pub(crate) fn log_time(&self, log_now_ms: u64) -> u64 {
        self.clock.stamp_now(log_now_ms)
    }

    /// Stamps log time (see `clock`) on `command`, replicates it to a quorum and returns the
    /// state machine's outcome, with the bodies of any deliveries not read yet (see
    /// `with_bodies`).
    async fn propose(&self, command: Command) -> WriteResult {
        let log_now_ms = self.shared.read().now_ms();
        let request = Request {
            now_ms: self.clock.stamp_now(log_now_ms),
            command,
        };
        let timeout = self.write_timeout;
        let started = std::time::Instant::now();
        let written = tokio::time::timeout(timeout, self.raft.client_write(request)).await;
        // From proposing an entry to its outcome (a quorum's fsync, then apply), or to the
        // time limit; a node that is not the leader refuses at once and is not counted.
        if !matches!(
            written,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                _
            ))))
        ) {
            metrics::histogram!("raftq_raft_write_seconds").record(started.elapsed().as_secs_f64());
        }
        let written = written.map_err(|_| ClusterError::OutcomeUnknown {
            reason: format!("not committed within {} ms", timeout.as_millis()),
        })?;
        match client_write_result(written)?.data {
            Applied::Queue(outcome) => Ok(*outcome),
            Applied::Internal => Err(ClusterError::internal(
                "a queue command produced no outcome",
            )),
        }
    }

    /// Reads the bodies of the messages each outcome delivers, on a blocking thread (see
    /// `SharedState::fill_bodies` and `read_bodies`). At most `MAX_IN_FLIGHT_BATCHES` reads
    /// run at once, as each holds its batch's slot.
    async fn with_bodies(&self, outcomes: Vec<Result<Outcome, QueueError>>) -> Vec<WriteResult> {
        if !outcomes.iter().any(SharedState::needs_bodies) {
            return outcomes.into_iter().map(Ok).collect();
        }
        let count = outcomes.len();
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || read_bodies(&shared, outcomes)).await {
            Ok(answers) => answers,
            // The read panicked and took the outcomes with it: every command of the entry
            // is answered with the error (a bug, not a missing body).
            Err(error) => (0..count).map(|_| Err(unreadable(&error))).collect(),
        }
    }

    /// Proposes the commands of `batch` as one entry (a single command as itself) and
    /// answers each caller with its own command's result.
    async fn propose_batch(&self, mut batch: Vec<Proposal>) {
        metrics::histogram!("raftq_write_batch_commands").record(batch.len() as f64);
        let waited = metrics::histogram!("raftq_write_queue_seconds");
        for proposal in &batch {
            waited.record(proposal.queued.elapsed().as_secs_f64());
        }
        if batch.len() == 1 {
            let proposal = batch.remove(0);
            let answer = match self.propose(proposal.command).await {
                Ok(outcome) => self
                    .with_bodies(vec![outcome])
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(ClusterError::internal("a command got no answer"))),
                Err(error) => Err(error),
            };
            let _ = proposal.reply.send(answer);
            return;
        }
        let (commands, replies) = splice(batch);
        let count = commands.len();
        match self.propose(Command::Batch(commands)).await {
            Ok(Ok(Outcome::Batch(results))) if results.len() == count => {
                answer_spliced(replies, self.with_bodies(results).await);
            }
            Ok(Ok(other)) => {
                let error = ClusterError::internal(format!("a batch of {count} gave {other:?}"));
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Ok(Err(refused)) => {
                for (reply, _) in replies {
                    let _ = reply.send(Ok(Err(refused.clone())));
                }
            }
            Err(error) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Where a caller's answer is in a batched entry's results: its command's, or (`Some(n)`)
/// the `n` results of the batch it wrote, spliced in.
type Reply = (oneshot::Sender<WriteResult>, Option<usize>);

/// The commands of one batched entry, in order. A write that is itself a batch (commands
/// one caller needs in one entry, such as acks and the receive after them) is spliced in,
/// as a batch holds no batch.
fn splice(batch: Vec<Proposal>) -> (Vec<Command>, Vec<Reply>) {
    let mut commands = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for proposal in batch {
        match proposal.command {
            Command::Batch(inner) => {
                replies.push((proposal.reply, Some(inner.len())));
                commands.extend(inner);
            }
            command => {
                replies.push((proposal.reply, None));
                commands.push(command);
            }
        }
    }
    (commands, replies)
}

/// Answers each caller of a batched entry from its results, one per spliced command: a
/// spliced batch gets its commands' outcomes as one `Outcome::Batch` (or the first
/// error reading their bodies).
fn answer_spliced(replies: Vec<Reply>, answers: Vec<WriteResult>) {
    let mut answers = answers.into_iter();
    for (reply, spliced) in replies {
        let answer = match spliced {
            None => answers
                .next()
                .unwrap_or_else(|| Err(ClusterError::internal("a command got no answer"))),
            Some(len) => answers
                .by_ref()
                .take(len)
                .collect::<Result<Vec<_>, _>>()
                .map(|results| Ok(Outcome::Batch(results))),
        };
        let _ = reply.send(answer);
    }
}

/// Fills in the bodies that each outcome delivers, each on its own: a body that cannot be
/// read fails only the command that delivered it, and the other commands of the entry
/// get their outcomes. Blocks on RocksDB reads.
fn read_bodies(
    shared: &SharedState,
    outcomes: Vec<Result<Outcome, QueueError>>,
) -> Vec<WriteResult> {
    outcomes
        .into_iter()
        .map(|mut outcome| {
            if SharedState::needs_bodies(&outcome) {
                shared
                    .fill_bodies(&mut outcome)
                    .map_err(|error| unreadable(&error))?;
            }
            Ok(outcome)
        })
        .collect()
}

fn unreadable(error: &dyn std::fmt::Display) -> ClusterError {
    ClusterError::Storage {
        reason: format!("reading the bodies of delivered messages: {error}"),
    }
}

/// Takes writes off the queue and proposes them, as many per entry as have queued up
/// while earlier entries were being committed.
pub(crate) async fn run_batcher(proposer: Proposer, mut proposals: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    while let Some(first) = proposals.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.command.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match proposals.try_recv() {
                Ok(proposal) => {
                    bytes += proposal.command.approx_bytes();
                    batch.push(proposal);
                }
                Err(_) => break,
            }
        }
        let proposer = proposer.clone();
        tokio::spawn(async move {
            proposer.propose_batch(batch).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures::stream;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use raftq_core::{
        Command, Delivery, NewMessage, Outcome, QueueError, QueueOptions, Receipt, Request,
    };
    use raftq_store::{Db, Entry, OpenOptions, SharedState, StateMachineStore};

    use super::read_bodies;
    use crate::ClusterError;

    fn entry(index: u64, command: Command) -> Entry {
        Entry::new_normal(
            openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            Request {
                now_ms: 1_000 + index,
                command,
            },
        )
    }

    /// A delivery of `message_id` as apply leaves it: its body (`len` bytes under key
    /// `message_id`) still to be read.
    fn unread(message_id: u64, len: u64) -> Delivery {
        Delivery {
            message_id,
            sequence: message_id,
            body: Vec::new(),
            body_ref: raftq_core::BodyRef {
                key: message_id,
                len,
            },
            headers: BTreeMap::new(),
            properties: Default::default(),
            group: String::new(),
            priority: 0,
            receipt: Receipt {
                message_id,
                attempt: 1,
            },
            enqueued_at_ms: 0,
            lease_expires_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_read_fails_only_the_receive_that_delivered_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db, 1).unwrap();
        let create = Command::CreateQueue {
            name: "q".into(),
            options: QueueOptions::default(),
        };
        let send = Command::Send {
            queue: "q".into(),
            messages: vec![NewMessage {
                body: b"kept".to_vec(),
                ..Default::default()
            }],
        };
        let entries = [entry(1, create), entry(2, send)].map(|e| Ok((e, None)));
        sm.apply(stream::iter(entries)).await.unwrap();
        let shared: SharedState = sm.shared();

        // One entry's outcomes: an ack, a receive of the stored body, a receive of a body
        // that is gone, a refusal.
        let answers = read_bodies(
            &shared,
            vec![
                Ok(Outcome::Acked {
                    already_acked: false,
                }),
                Ok(Outcome::Received(vec![unread(1, 4)])),
                Ok(Outcome::Received(vec![unread(99, 4)])),
                Err(QueueError::QueueNotFound { name: "r".into() }),
            ],
        );
        assert_eq!(answers.len(), 4);
        assert!(matches!(
            answers[0],
            Ok(Ok(Outcome::Acked {
                already_acked: false
            }))
        ));
        match &answers[1] {
            Ok(Ok(Outcome::Received(deliveries))) => assert_eq!(deliveries[0].body, b"kept"),
            other => panic!("the readable receive: {other:?}"),
        }
        assert!(
            matches!(&answers[2], Err(ClusterError::Storage { reason }) if reason.contains("99")),
            "{:?}",
            answers[2]
        );
        assert!(matches!(
            answers[3],
            Ok(Err(QueueError::QueueNotFound { .. }))
        ));
    }

    #[test]
    fn a_batch_written_by_one_caller_is_spliced_into_the_entry_and_answered_whole() {
        let ack = |message_id| Command::Ack {
            queue: "q".into(),
            receipt: Receipt {
                message_id,
                attempt: 1,
            },
        };
        let (proposals, mut answers): (Vec<_>, Vec<_>) =
            [ack(1), Command::Batch(vec![ack(2), ack(3)]), ack(4)]
                .into_iter()
                .map(|command| {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let queued = std::time::Instant::now();
                    (
                        super::Proposal {
                            command,
                            reply,
                            queued,
                        },
                        answer,
                    )
                })
                .unzip();
        let (commands, replies) = super::splice(proposals);
        assert_eq!(commands, [ack(1), ack(2), ack(3), ack(4)]);
        let acked = |already_acked| Ok(Ok(Outcome::Acked { already_acked }));
        super::answer_spliced(
            replies,
            vec![acked(false), acked(true), acked(false), acked(true)],
        );
        let mut answer = |i: usize| answers[i].try_recv().expect("answered").expect("written");
        assert_eq!(
            answer(0),
            Ok(Outcome::Acked {
                already_acked: false
            })
        );
        assert_eq!(
            answer(1),
            Ok(Outcome::Batch(vec![
                Ok(Outcome::Acked {
                    already_acked: true
                }),
                Ok(Outcome::Acked {
                    already_acked: false
                }),
            ]))
        );
        assert_eq!(
            answer(2),
            Ok(Outcome::Acked {
                already_acked: true
            })
        );
    }
}
