//! The gRPC channels to the other nodes: one per peer node, shared by every Raft group this
//! node serves. Each group's calls and replication streams are HTTP/2 streams of that one
//! connection, so more groups add no connections (nor TLS handshakes) between two nodes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::errors::Unreachable;
use raftq_proto::raft_pb::raft_service_client::RaftServiceClient;
use raftq_store::{NodeId, TypeConfig};
use raftq_tls::Transport;
use tonic::transport::{Channel, Endpoint};

use crate::{MAX_RAFT_MESSAGE_BYTES, lock};

pub(crate) struct Connections {
    /// Plaintext, or mutual TLS with this node's certificate.
    transport: Transport,
    /// Per peer node: the internal address its channel was made for, and the channel.
    /// Bounded by the nodes that were ever members of one of this node's groups.
    channels: Mutex<HashMap<NodeId, (String, RaftServiceClient<Channel>)>>,
}

impl Connections {
    pub(crate) fn new(transport: Transport) -> Connections {
        Connections {
            transport,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The client for node `target` at `address`. The channel connects on first use and
    /// again after a failure; a node known at a new address gets a new channel.
    pub(crate) fn client(
        &self,
        target: NodeId,
        address: &str,
    ) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        let mut channels = lock(&self.channels);
        if let Some((known, client)) = channels.get(&target)
            && known == address
        {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(Unreachable::from_string)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let client = RaftServiceClient::new(self.transport.channel(&endpoint))
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        channels.insert(target, (address.to_string(), client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::Connections;

    #[tokio::test]
    async fn every_group_gets_the_same_channel_to_a_node_until_its_address_changes() {
        let connections = Connections::new(raftq_tls::Transport::Plaintext);
        connections.client(2, "127.0.0.1:1").unwrap();
        connections.client(2, "127.0.0.1:1").unwrap();
        connections.client(3, "127.0.0.1:2").unwrap();
        assert_eq!(super::lock(&connections.channels).len(), 2);
        connections.client(2, "127.0.0.1:3").unwrap();
        let channels = super::lock(&connections.channels);
        assert_eq!(channels.len(), 2);
        assert_eq!(channels[&2].0, "127.0.0.1:3");
    }
}
