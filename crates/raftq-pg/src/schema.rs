//! The tables' names and the migration that creates them.

use tokio_postgres::GenericClient;

use crate::Error;

/// The migrations, in order: version N is the Nth. Each is applied once, in one
/// transaction, and recorded in the versions table.
const MIGRATIONS: &[&str] = &[include_str!("../sql/001_outbox_inbox.sql")];

/// Advisory lock class of raftq-pg (the first key of the two-key form), so its locks do not
/// meet an application's own.
pub(crate) const LOCK_CLASS: i32 = 0x7271_7067; // "rqpg"

/// The names of raftq-pg's tables, from one prefix: `raftq` gives `raftq_outbox`,
/// `raftq_relay`, `raftq_relay_sequences`, `raftq_inbox`, `raftq_schema_versions` and the
/// notification channel `raftq_outbox`. A prefix may name a PostgreSQL schema first
/// (`app.raftq`): the tables are then created there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    schema: Option<String>,
    prefix: String,
}

impl Default for Schema {
    fn default() -> Self {
        Schema {
            schema: None,
            prefix: "raftq".to_string(),
        }
    }
}

/// Whether `name` is a plain SQL identifier: a letter or `_`, then letters, digits and
/// `_`, at most 40 in all (the longest table name adds 18 to it, within PostgreSQL's 63).
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 40
}

impl Schema {
    /// Names from `prefix` (`raftq`, or `schema.raftq`): lower-case letters, digits and `_`.
    pub fn new(prefix: &str) -> Result<Schema, Error> {
        let (schema, prefix) = match prefix.split_once('.') {
            Some((schema, prefix)) => (Some(schema), prefix),
            None => (None, prefix),
        };
        if !plain_identifier(prefix) || !schema.is_none_or(plain_identifier) {
            return Err(Error::InvalidName(format!(
                "{prefix:?} is not a table prefix: use lower-case letters, digits and _ \
                 (starting with a letter or _), at most 40, optionally after a schema \
                 name and a dot"
            )));
        }
        Ok(Schema {
            schema: schema.map(str::to_string),
            prefix: prefix.to_string(),
        })
    }

    fn table(&self, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}_{suffix}", self.prefix),
            None => format!("{}_{suffix}", self.prefix),
        }
    }

    pub fn outbox(&self) -> String {
        self.table("outbox")
    }

    pub fn relay(&self) -> String {
        self.table("relay")
    }

    pub fn sequences(&self) -> String {
        self.table("relay_sequences")
    }

    pub fn inbox(&self) -> String {
        self.table("inbox")
    }

    fn versions(&self) -> String {
        self.table("schema_versions")
    }

    /// The channel the outbox's trigger notifies and the relay listens on.
    pub fn channel(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}_{}_outbox", self.prefix),
            None => format!("{}_outbox", self.prefix),
        }
    }

    /// The key of the relay's advisory lock (the second of the two-key form): one active
    /// relay per outbox table.
    pub(crate) fn relay_lock_key(&self) -> String {
        format!("relay:{}", self.outbox())
    }

    /// Every migration's SQL with the names filled in, in order.
    pub fn migration_sql(&self) -> Vec<String> {
        MIGRATIONS
            .iter()
            .map(|sql| {
                sql.replace("{outbox}", &self.outbox())
                    .replace("{relay}", &self.relay())
                    .replace("{sequences}", &self.sequences())
                    .replace("{inbox}", &self.inbox())
                    .replace("{versions}", &self.versions())
                    .replace("{channel}", &self.channel())
            })
            .collect()
    }

    /// Creates or updates the tables: applies, each in its own transaction, the migrations
    /// not yet recorded, and returns the schema's version. Safe to run from several
    /// processes at once (they wait on one another).
    pub async fn migrate(&self, client: &mut tokio_postgres::Client) -> Result<u32, Error> {
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        let versions = self.versions();
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {versions} (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )"
            ))
            .await?;
        let mut version = 0;
        for (index, sql) in self.migration_sql().iter().enumerate() {
            let number = index as i32 + 1;
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&LOCK_CLASS, &format!("migrate:{versions}")],
                )
                .await?;
            let applied = transaction
                .query_opt(
                    &format!("SELECT 1 FROM {versions} WHERE version = $1"),
                    &[&number],
                )
                .await?
                .is_some();
            if !applied {
                transaction.batch_execute(sql).await?;
                transaction
                    .execute(
                        &format!("INSERT INTO {versions} (version) VALUES ($1)"),
                        &[&number],
                    )
                    .await?;
                tracing::info!(version = number, "raftq-pg: schema migrated");
            }
            transaction.commit().await?;
            version = number as u32;
        }
        Ok(version)
    }

    /// The schema's version as recorded (0: not created).
    pub async fn version(&self, client: &impl GenericClient) -> Result<u32, Error> {
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.versions()])
            .await?
            .get::<_, bool>(0);
        if !exists {
            return Ok(0);
        }
        let row = client
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {}", self.versions()),
                &[],
            )
            .await?;
        Ok(row.get::<_, i32>(0) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_give_the_names_and_bad_ones_are_refused() {
        let schema = Schema::default();
        assert_eq!(schema.outbox(), "raftq_outbox");
        assert_eq!(schema.channel(), "raftq_outbox");
        let schema = Schema::new("app.orders_mq").expect("valid");
        assert_eq!(schema.inbox(), "app.orders_mq_inbox");
        assert_eq!(schema.sequences(), "app.orders_mq_relay_sequences");
        assert_eq!(schema.channel(), "app_orders_mq_outbox");
        for bad in [
            "",
            "Raftq",
            "1q",
            "q;drop table x",
            "a.b.c",
            ".q",
            "q-1",
            &"x".repeat(41),
        ] {
            assert!(Schema::new(bad).is_err(), "{bad:?} was taken");
        }
        let sql = Schema::new("app.mq")
            .expect("valid")
            .migration_sql()
            .join("\n");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS app.mq_outbox ("));
        assert!(sql.contains("pg_notify('app_mq_outbox'"));
        assert!(!sql.contains('{'), "a name was left unfilled");
    }
}
