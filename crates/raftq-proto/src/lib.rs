//! raftq-proto: the generated gRPC code, the one place where protobuf messages and
//! domain types are converted into each other, and the wire constants client and server
//! share (`wire`).
//!
//! It must not hold behaviour: no validation beyond what a conversion needs, no IO.

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    //! The public API, package `raftq.v1`.
    tonic::include_proto!("raftq.v1");
}

#[allow(clippy::all, clippy::pedantic)]
pub mod raft_pb {
    //! Internal Raft transport, package `raftq.raft.v1`.
    tonic::include_proto!("raftq.raft.v1");
}

/// Encoded `FileDescriptorSet` of the public API (not the internal Raft protocol), for
/// gRPC server reflection on the public port.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raftq_public.bin"));

mod convert;
pub mod wire;

pub use convert::{
    ack_result, code_of, commit, message_state_name, new_message, queue_in_group, queue_options,
    reason_of, receipt, receipts, refused, streamed_send_result,
};
