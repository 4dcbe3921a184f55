//! What can go wrong in raftq-pg.

/// An error of the outbox, the relay or the inbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL answered with an error, or the connection failed.
    #[error("postgresql: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// raftq answered with an error, or could not be reached in time.
    #[error("raftq: {0}")]
    Raftq(#[from] raftq_client::ClientError),
    /// A table prefix or queue name that cannot be used.
    #[error("{0}")]
    InvalidName(String),
    /// TLS to the database could not be set up (an unreadable or invalid CA file).
    #[error("TLS to the database: {0}")]
    Tls(String),
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

/// The error and its causes, "error: cause: cause" (tokio-postgres says "error performing
/// TLS handshake" and leaves why to its source).
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
