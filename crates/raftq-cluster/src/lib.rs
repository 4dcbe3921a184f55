//! raftq-cluster
