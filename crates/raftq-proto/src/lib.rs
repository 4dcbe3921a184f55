//! raftq-proto
