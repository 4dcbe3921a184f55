//! raftq-client
