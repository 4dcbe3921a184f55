//! The cluster side of the inbound session: which queue an address names, whether it
//! exists (cached briefly), and storing a mail, with the cluster's answers as SMTP replies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftq_client::{Client, ClientError, Message};
use tonic::Code;

use crate::config::InboundConfig;
use crate::reply::Reply;

/// How long a queue's existence and size limit are trusted.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// Most queues remembered.
const CACHE_ENTRIES: usize = 10_000;
/// The longest queue name taken from an address (the cluster's limit is larger).
const MAX_QUEUE_NAME: usize = 200;

/// What was learned of each queue, and when.
type Known = HashMap<String, (Result<u64, Reply>, Instant)>;

pub struct Queues {
    client: Client,
    /// Queue name -> (its max_message_bytes, or the refusal when it does not exist; when
    /// looked up).
    known: Mutex<Known>,
}

impl Queues {
    pub fn new(client: Client) -> Queues {
        Queues {
            client,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The queue `local` names under `config` (an alias, or the local part itself), or the
    /// reply that refuses it.
    pub fn name(config: &InboundConfig, local: &str) -> Result<String, Reply> {
        let name = config
            .aliases
            .get(local)
            .or_else(|| {
                let lower = local.to_ascii_lowercase();
                config
                    .aliases
                    .iter()
                    .find(|(alias, _)| alias.to_ascii_lowercase() == lower)
                    .map(|(_, queue)| queue)
            })
            .cloned()
            .unwrap_or_else(|| local.to_string());
        let is_name = !name.is_empty()
            && name.len() <= MAX_QUEUE_NAME
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
        if !is_name || (!config.queues.is_empty() && !config.queues.contains(&name)) {
            return Err(Reply::new(
                550,
                [5, 1, 1],
                format!("no such mailbox: {local}"),
            ));
        }
        Ok(name)
    }

    /// The queue's size limit, after making sure it exists.
    pub async fn check(&self, queue: &str) -> Result<u64, Reply> {
        if let Some((answer, at)) = self.lock().get(queue)
            && at.elapsed() < CACHE_FOR
        {
            return answer.clone();
        }
        let answer = match self.client.get_queue(queue).await {
            Ok(info) => Ok(info.options.map_or(0, |options| options.max_message_bytes)),
            // Remembered too, so that a client naming unknown queues costs no call each.
            Err(error) if error.code() == Some(Code::NotFound) => Err(refusal(&error, queue)),
            Err(error) => return Err(refusal(&error, queue)),
        };
        let mut known = self.lock();
        if known.len() >= CACHE_ENTRIES {
            known.clear();
        }
        known.insert(queue.to_string(), (answer.clone(), Instant::now()));
        answer
    }

    /// Stores the mail's message in `queue`: 250 naming the message, or why not.
    pub async fn store(&self, queue: &str, message: Message) -> Result<u64, Reply> {
        match self.client.send(queue, message).await {
            Ok(sent) => Ok(sent.message_id),
            Err(error) => {
                self.lock().remove(queue);
                Err(refusal(&error, queue))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The SMTP reply for a call the cluster did not answer with success: permanent (5xx) only
/// when the mail can never be taken as it is; anything else asks the sender to try again.
pub fn refusal(error: &ClientError, queue: &str) -> Reply {
    let message = match error {
        ClientError::Status(status) | ClientError::RetriesExhausted { last: status, .. } => {
            status.message().to_string()
        }
        other => other.to_string(),
    };
    match error.code() {
        Some(Code::NotFound) => Reply::new(550, [5, 1, 1], format!("no such queue: {queue}")),
        Some(Code::InvalidArgument) if message.contains("exceeds the queue's limit") => Reply::new(
            552,
            [5, 3, 4],
            format!("too big for queue {queue}: {message}"),
        ),
        Some(Code::InvalidArgument) => Reply::new(
            554,
            [5, 6, 0],
            format!("queue {queue} refuses this mail: {message}"),
        ),
        // A grant or a token the operator can fix: the sender keeps the mail meanwhile.
        Some(Code::PermissionDenied | Code::Unauthenticated) => Reply::new(
            451,
            [4, 7, 0],
            format!("the bridge may not send to queue {queue}: {message}"),
        ),
        Some(Code::ResourceExhausted) => Reply::new(
            452,
            [4, 3, 1],
            format!("queue {queue} is full or the cluster is busy; try again later"),
        ),
        _ => Reply::new(
            451,
            [4, 3, 0],
            format!("the queue service is unavailable; try again later ({message})"),
        ),
    }
}
