//! The public gRPC services. Each method either forwards to the leader (once) or serves
//! the call here: writes go through Raft, reads wait for a quorum-confirmed read barrier.

mod admin;
mod message;
mod queue;

pub use admin::AdminApi;
pub use message::MessageApi;
pub use queue::QueueApi;

/// Forwards the request to the leader and returns its answer when this node does not lead.
macro_rules! forward_to_leader {
    ($context:expr, $request:ident, $client:ty, $method:ident) => {
        if let crate::context::Route::Leader(channel) = $context.route(&$request)? {
            return <$client>::new(channel)
                .max_decoding_message_size(crate::MAX_REQUEST_BYTES)
                .max_encoding_message_size(crate::MAX_REQUEST_BYTES)
                .$method(crate::context::forwarded($request))
                .await;
        }
    };
}
pub(crate) use forward_to_leader;
