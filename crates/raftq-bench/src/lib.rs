//! raftq-bench
