//! The gRPC services. Each method finds the Raft group its call is for (group 1, or the
//! data group holding its queue: `routing`), then either forwards the call to that
//! group's leader's internal port or serves it here: writes go through Raft, reads wait
//! for a quorum-confirmed read barrier. The public and the internal port serve the same handlers (see `grpc`).

mod acks;
mod admin;
mod consume;
mod leases;
mod message;
mod placing;
mod principals;
mod producers;
mod queue;
mod send_stream;

pub use admin::{AdminApi, PEER_STATUS_TIMEOUT, peer_status};
pub use message::MessageApi;
pub use queue::QueueApi;

/// Forwards the request to the leader and returns its answer when this node does not lead.
macro_rules! forward_to_leader {
    ($context:expr, $request:ident, $client:ty, $method:ident) => {
        if let crate::context::Route::Leader(channel, leader) = $context.route(&$request)? {
            let mut response = <$client>::new(channel)
                .max_decoding_message_size(raftq_proto::wire::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(raftq_proto::wire::MAX_MESSAGE_BYTES)
                .$method($context.forwarded($request))
                .await
                .map_err(|status| crate::error::forward_failed(status, &leader.internal))?;
            // Tell the caller where the leader is, so its next call goes there directly
            // (unless a later hop named the leader it reached).
            if !response
                .metadata()
                .contains_key(raftq_proto::wire::LEADER_ADDRESS_KEY)
                && let Ok(value) = leader.public.parse()
            {
                response
                    .metadata_mut()
                    .insert(raftq_proto::wire::LEADER_ADDRESS_KEY, value);
            }
            return Ok(response);
        }
    };
}
pub(crate) use forward_to_leader;
