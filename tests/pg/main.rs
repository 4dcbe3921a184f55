//! raftq-pg against a real PostgreSQL server (Debian's, started by the harness on a
//! loopback port) and real `raftq` processes. Each test names the promise it checks.

mod common;
mod crashes;
mod inbox;
mod outbox;
mod tls;
