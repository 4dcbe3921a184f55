//! The retry loop: attempts within a deadline, leader hints, how answers are judged.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::client::Channel;

use super::Client;
use crate::error::{ClientError, is_retryable};
use raftq_proto::wire::{LEADER_ADDRESS_KEY, RETRY_AFTER_MS_KEY};

/// The leader an UNAVAILABLE answer names, if any.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDRESS_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

impl Client {
    /// After `status` from `address` on a call on `queue`: that queue's calls go to the
    /// leader it names, or else to the preferred node, which moves on to the next seed.
    pub(crate) fn reroute_queue_after(&self, queue: &str, address: &str, status: &tonic::Status) {
        self.reroute_queue(Some(queue), address, leader_hint(status));
    }

    fn reroute_queue(&self, queue: Option<&str>, address: &str, hint: Option<String>) {
        match (queue, hint) {
            (Some(queue), Some(leader)) if leader != address => {
                self.remember_leader(Some(queue), &leader);
            }
            (Some(queue), _) => {
                self.forget_leader(queue);
                self.reroute(address, None);
            }
            (None, hint) => self.reroute(address, hint),
        }
    }

    /// After a failure at `address`: go to the hinted leader, or try the next seed address.
    fn reroute(&self, address: &str, leader_hint: Option<String>) {
        let mut nodes = self.lock();
        match leader_hint {
            Some(leader) if leader != address => nodes.preferred = leader,
            _ => {
                if nodes.addresses.is_empty() {
                    return;
                }
                let index = nodes.next_seed % nodes.addresses.len();
                nodes.next_seed += 1;
                nodes.preferred = nodes.addresses[index].clone();
            }
        }
    }

    /// Any call, made as the client makes its own: to the leader (following hints), again
    /// on retryable answers until the retry deadline. `call` gets a connection and the time
    /// the attempt has (for the request's timeout); a call that may wait (a long poll)
    /// asks for `extra_timeout` more. For calls the client has no method of its own for,
    /// such as a proxy passing requests through.
    pub async fn call<T, F, Fut>(
        &self,
        extra_timeout: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.retry(extra_timeout, call).await
    }

    /// Runs `call` until it succeeds, fails for good, or the retry deadline passes.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        extra_timeout: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.retry_at(None, extra_timeout, call).await
    }

    /// [`Client::retry`] for a call on `queue`: it goes to the node that leads the
    /// queue's group when a hint named it, and hints update that queue's entry only.
    pub(crate) async fn retry_queue<T, F, Fut>(
        &self,
        queue: &str,
        extra_timeout: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let queue = Some(queue).filter(|queue| !queue.is_empty());
        self.retry_at(queue, extra_timeout, call).await
    }

    async fn retry_at<T, F, Fut>(
        &self,
        queue: Option<&str>,
        extra_timeout: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.config.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (address, channel) = self.channel(queue)?;
            let timeout = self.config.attempt_timeout + extra_timeout;
            let status = match tokio::time::timeout(timeout, call(channel, timeout)).await {
                Ok(Ok(response)) => {
                    // A forwarded call names the leader: go there directly next time.
                    if let Some(leader) = response
                        .metadata()
                        .get(LEADER_ADDRESS_KEY)
                        .and_then(|value| value.to_str().ok())
                        && leader != address
                    {
                        self.remember_leader(queue, leader);
                    }
                    return Ok(response);
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "no answer from {address} within {timeout:?}"
                )),
            };
            if !is_retryable(&status) {
                return Err(ClientError::Status(status));
            }
            let hint = leader_hint(&status);
            let retry_after = status
                .metadata()
                .get(RETRY_AFTER_MS_KEY)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_millis);
            let followed_hint = hint.as_deref().is_some_and(|leader| leader != address);
            self.reroute_queue(queue, &address, hint);
            let elapsed = started.elapsed();
            if elapsed >= self.config.retry_deadline {
                return Err(ClientError::RetriesExhausted {
                    attempts,
                    elapsed_ms: elapsed.as_millis() as u64,
                    last: status,
                });
            }
            let pause = if followed_hint {
                Duration::ZERO
            } else {
                retry_after.unwrap_or(backoff).min(self.config.max_backoff)
            };
            tokio::time::sleep(pause.min(self.config.retry_deadline - elapsed)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

pub(super) fn missing<T>(value: Option<T>, field: &str) -> Result<T, ClientError> {
    value.ok_or_else(|| {
        ClientError::Status(tonic::Status::internal(format!("response lacks {field}")))
    })
}
