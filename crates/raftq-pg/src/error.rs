//! What can go wrong in raftq-pg.

/// An error of the outbox, the relay or the inbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL answered with an error, or the connection failed.
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// raftq answered with an error, or could not be reached in time.
    #[error("raftq: {0}")]
    Raftq(#[from] raftq_client::ClientError),
    /// A table prefix or queue name that cannot be used.
    #[error("{0}")]
    InvalidName(String),
    /// A message the outbox will not take (too large, say).
    #[error("{0}")]
    InvalidMessage(String),
    /// The relay's state and raftq's disagree in a way it cannot settle by itself.
    #[error("{0}")]
    OutOfStep(String),
    /// The tables are missing or older than this library: run the migration.
    #[error(
        "the raftq-pg tables are at version {found}, this library needs {needed}: run `raftq pg-relay migrate` (or Schema::migrate)"
    )]
    SchemaVersion { found: u32, needed: u32 },
}
