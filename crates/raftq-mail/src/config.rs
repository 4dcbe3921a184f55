//! The bridge's configuration file (TOML): the mail domain, the SMTP listener, and the
//! outbound queue with its relay. How the bridge reaches the cluster (nodes, CA, token)
//! comes from the command line, as for every other client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// The mail domain whose addresses are queues: mail for `orders@DOMAIN` goes to the
    /// queue `orders`, and outbound mail's Message-IDs and Reply-To addresses use it.
    pub domain: String,
    /// Where to serve `/metrics` and `/healthz` (none when absent).
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
}

/// The SMTP server taking mail into queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// The name in the greeting and the EHLO answer (default: the domain).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The largest mail taken (SIZE, advertised in the EHLO answer); a queue's own
    /// `max_message_bytes` refuses a larger one at RCPT (declared SIZE) or after DATA.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// SMTP connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Certificate and key (PEM) for STARTTLS; without them it is not offered.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Refuse MAIL before STARTTLS (needs `tls_cert`).
    #[serde(default)]
    pub require_tls: bool,
    /// Only these queues take mail (empty: every queue that exists).
    #[serde(default)]
    pub queues: Vec<String>,
    /// Local parts that are not queue names: `help = "support"` sends mail for
    /// help@DOMAIN to the queue `support`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// How long a stored mail's idempotency key is remembered is the queue's dedup window;
    /// this is how long the bridge waits for the cluster before answering 451.
    #[serde(default = "default_store_timeout_ms")]
    pub store_timeout_ms: u64,
}

/// Delivery of a queue's messages by SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// The queue whose messages become mail (created with a dead-letter queue
    /// `QUEUE.dlq` when missing).
    #[serde(default = "default_outbound_queue")]
    pub queue: String,
    /// The mail server that takes the bridge's mail (host:port).
    pub relay: String,
    /// `none`, `starttls` (required) or `tls` (implicit TLS, port 465 style).
    #[serde(default)]
    pub relay_tls: RelayTls,
    /// The CA (PEM) the relay's certificate chains to (default: the web's public roots).
    #[serde(default)]
    pub relay_ca_cert: Option<PathBuf>,
    /// The envelope sender and the From of mail whose message names none.
    pub from: String,
    /// Deliveries in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The lease on a message while it is being delivered; an SMTP exchange that takes
    /// longer is abandoned.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The delay before the first retry after a 4xx answer; it doubles on each attempt up
    /// to `retry_max_ms`.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    #[default]
    None,
    Starttls,
    Tls,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_max_connections() -> usize {
    256
}
fn default_store_timeout_ms() -> u64 {
    30_000
}
fn default_outbound_queue() -> String {
    "mail.out".into()
}
fn default_concurrency() -> usize {
    8
}
fn default_lease_ms() -> u64 {
    120_000
}
fn default_retry_min_ms() -> u64 {
    5_000
}
fn default_retry_max_ms() -> u64 {
    3_600_000
}

/// Most deliveries in flight; the largest receive is 1,000 messages.
pub const MAX_CONCURRENCY: usize = 1_000;
/// Largest mail the bridge takes in: raftq's largest message.
pub const MAX_MAIL_BYTES: usize = 64 * 1024 * 1024;

impl MailConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<MailConfig, Error> {
        use figment::providers::{Format, Toml};
        let config: MailConfig = figment::Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|error| Error::Config(format!("{}: {error}", path.display())))?;
        config.check()?;
        Ok(config)
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<MailConfig, Error> {
        use figment::providers::{Format, Toml};
        let config: MailConfig = figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|error| Error::Config(error.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Config(what.to_string()));
        if self.domain.is_empty() || self.domain.contains(['@', ' ', '<', '>']) {
            return bad("domain: a mail domain such as queues.example.org");
        }
        if self.inbound.is_none() && self.outbound.is_none() {
            return bad("configure [inbound], [outbound] or both");
        }
        if let Some(inbound) = &self.inbound {
            if inbound.tls_cert.is_some() != inbound.tls_key.is_some() {
                return bad("inbound: tls_cert and tls_key go together");
            }
            if inbound.require_tls && inbound.tls_cert.is_none() {
                return bad("inbound: require_tls needs tls_cert and tls_key");
            }
            if inbound.max_message_bytes == 0 || inbound.max_message_bytes > MAX_MAIL_BYTES {
                return bad("inbound: max_message_bytes must be 1 to 64 MiB");
            }
            if inbound.max_connections == 0 {
                return bad("inbound: max_connections must be at least 1");
            }
        }
        if let Some(outbound) = &self.outbound {
            if outbound.concurrency == 0 || outbound.concurrency > MAX_CONCURRENCY {
                return bad("outbound: concurrency must be 1 to 1000");
            }
            if outbound.retry_min_ms == 0 || outbound.retry_min_ms > outbound.retry_max_ms {
                return bad("outbound: need 0 < retry_min_ms <= retry_max_ms");
            }
            if outbound.retry_max_ms > 12 * 3_600_000 {
                return bad("outbound: retry_max_ms must be at most 12 hours (a nack's delay)");
            }
            if !(1_000..=12 * 3_600_000).contains(&outbound.lease_ms) {
                return bad("outbound: lease_ms must be 1 s to 12 hours");
            }
            if crate::address::parse_address(&outbound.from).is_none() {
                return bad("outbound: from must be a mail address such as raftq@example.org");
            }
            if outbound.relay.rsplit_once(':').is_none() {
                return bad("outbound: relay must be HOST:PORT");
            }
        }
        Ok(())
    }
}

impl OutboundConfig {
    /// The delay before delivery attempt `attempt + 1` after a temporary failure.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let delay = self.retry_min_ms.saturating_mul(1 << doublings);
        Duration::from_millis(delay.min(self.retry_max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_reads_and_bad_values_are_named() {
        let config = MailConfig::from_toml(
            r#"
            domain = "queues.example.org"
            [inbound]
            listen = "127.0.0.1:2525"
            aliases = { help = "support" }
            [outbound]
            relay = "127.0.0.1:25"
            from = "raftq@queues.example.org"
            retry_min_ms = 1000
            retry_max_ms = 8000
            "#,
        )
        .unwrap();
        let outbound = config.outbound.unwrap();
        assert_eq!(outbound.queue, "mail.out");
        let delays: Vec<u64> = (1..=5)
            .map(|attempt| outbound.retry_delay(attempt).as_millis() as u64)
            .collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 8000]);
        assert_eq!(config.inbound.unwrap().aliases["help"], "support");

        for (text, needle) in [
            (
                "domain = \"a@b\"\n[inbound]\nlisten = \"127.0.0.1:1\"",
                "domain",
            ),
            ("domain = \"d\"", "[inbound]"),
            (
                "domain = \"d\"\n[inbound]\nlisten = \"127.0.0.1:1\"\nrequire_tls = true",
                "require_tls",
            ),
            (
                "domain = \"d\"\n[outbound]\nrelay = \"r:25\"\nfrom = \"nobody\"",
                "from",
            ),
            (
                "domain = \"d\"\nbogus = 1\n[inbound]\nlisten = \"127.0.0.1:1\"",
                "bogus",
            ),
        ] {
            let error = MailConfig::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
