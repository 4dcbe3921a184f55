//! The openraft instance type, and how its errors become [`ClusterError`]s.

use openraft::errors::{ChangeMembershipError, ClientWriteError, PreconditionFailed, RaftError};
use raftq_store::{StateMachineStore, TypeConfig};

use crate::ClusterError;

pub(crate) type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Raft stopped (a fatal error, a storage failure): this node serves nothing more.
pub(crate) fn stopped(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Stopped {
        reason: error.to_string(),
    }
}

pub(crate) fn client_write_result<T>(
    result: Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
) -> Result<T, ClusterError> {
    match result {
        Ok(value) => Ok(value),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ClusterError::NotLeader {
                leader_id: forward.leader_id,
                leader_address: forward.leader_node.map(|node| node.public),
            })
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
            Err(ClusterError::OutcomeUnknown {
                reason: "the leader changed before the write was committed".to_string(),
            })
        }
        // Two nodes joining at once: the second change waits for the first to commit.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(in_progress),
        ))) => Err(ClusterError::MembershipBusy {
            reason: in_progress.to_string(),
        }),
        // Another change committed between this one's reading of the membership and its
        // proposal: the change is made again on the new membership.
        Err(RaftError::APIError(ClientWriteError::PreconditionFailed(
            mismatch @ PreconditionFailed::LastMembershipLogIdMismatch { .. },
        ))) => Err(ClusterError::MembershipBusy {
            reason: mismatch.to_string(),
        }),
        Err(RaftError::APIError(error)) => Err(ClusterError::Membership {
            reason: error.to_string(),
        }),
        Err(RaftError::Fatal(fatal)) => Err(stopped(fatal)),
    }
}
