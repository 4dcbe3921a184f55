//! Queue calls: create, get, list, delete and purge.

use std::time::Duration;

use crate::client::Channel;

use super::Client;
use super::retry::{missing, with_timeout};
use crate::error::ClientError;
use crate::pb::{self, queue_service_client::QueueServiceClient};
use raftq_proto::wire::MAX_MESSAGE_BYTES;

impl Client {
    fn queues(channel: Channel) -> QueueServiceClient<Channel> {
        QueueServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub async fn create_queue(
        &self,
        name: &str,
        options: pb::QueueOptions,
    ) -> Result<pb::Queue, ClientError> {
        self.create_queue_beside(name, options, "").await
    }

    /// Creates a queue in the data group of `colocate_with` (empty: wherever the cluster
    /// places it), so that one transaction may take from and send to both.
    pub async fn create_queue_beside(
        &self,
        name: &str,
        options: pb::QueueOptions,
        colocate_with: &str,
    ) -> Result<pb::Queue, ClientError> {
        let request = pb::CreateQueueRequest {
            name: name.to_string(),
            options: Some(options),
            colocate_with: colocate_with.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).create_queue(request).await }
            })
            .await?;
        missing(response.into_inner().queue, "queue")
    }

    pub async fn get_queue(&self, name: &str) -> Result<pb::Queue, ClientError> {
        let request = pb::GetQueueRequest {
            name: name.to_string(),
        };
        let response = self
            .retry_queue(&request.name, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).get_queue(request).await }
            })
            .await?;
        missing(response.into_inner().queue, "queue")
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::Queue>, ClientError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let request = pb::ListQueuesRequest {
                after: after.clone(),
                limit: 0,
            };
            let page = self
                .retry(Duration::ZERO, |channel, timeout| {
                    let request = with_timeout(request.clone(), timeout);
                    async move { Self::queues(channel).list_queues(request).await }
                })
                .await?
                .into_inner()
                .queues;
            match page.last() {
                Some(last) => after = last.name.clone(),
                None => return Ok(all),
            }
            all.extend(page);
        }
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::DeleteQueueRequest {
            name: name.to_string(),
        };
        self.retry(Duration::ZERO, |channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { Self::queues(channel).delete_queue(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn purge_queue(&self, name: &str) -> Result<u64, ClientError> {
        let request = pb::PurgeQueueRequest {
            name: name.to_string(),
        };
        let response = self
            .retry_queue(&request.name, Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).purge_queue(request).await }
            })
            .await?;
        Ok(response.into_inner().removed)
    }
}
