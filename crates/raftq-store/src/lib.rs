//! raftq-store
