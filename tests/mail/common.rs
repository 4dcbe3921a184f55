//! What the mail tests share: the cluster, the mail peers and the bridge, wired together.

use std::time::Duration;

use raftq_client::Client;
use raftq_tests::mail::{BridgeProcess, MailSink, Postfix};
use raftq_tests::{Cluster, free_port, pb, wait_until, wait_until_or};

/// The bridge's mail domain.
pub const DOMAIN: &str = "q.test";
/// The outbound queue.
pub const OUT: &str = "mail.out";

pub struct Setup {
    pub bridge: BridgeProcess,
    pub postfix: Postfix,
    pub sink: MailSink,
    pub client: Client,
    /// The bridge's SMTP port and its metrics port.
    pub smtp_port: u16,
    pub http: String,
    pub cluster: Cluster,
    /// The certificate the bridge and Postfix present, when TLS is on.
    _certificates: tempfile::TempDir,
}

impl Setup {
    /// The cluster, the peers and the bridge, with the queues `orders`, `replies` and
    /// `acks`; SMTP in plaintext.
    pub async fn start() -> Setup {
        Setup::start_with(false).await
    }

    /// As [`Setup::start`], the bridge authenticating as a principal of its own allowed
    /// only what operations.md asks for: `send,browse` on `orders`, `receive,browse` on
    /// the outbound queue (made here, so no `manage`).
    pub async fn start_as_principal() -> Setup {
        Setup::start_full(false, true).await
    }

    /// As [`Setup::start`]; with `tls`, the bridge requires STARTTLS of its clients,
    /// Postfix requires it towards the bridge, and the bridge delivers to Postfix with
    /// STARTTLS, checking its certificate against the test CA.
    pub async fn start_with(tls: bool) -> Setup {
        Setup::start_full(tls, false).await
    }

    async fn start_full(tls: bool, principal: bool) -> Setup {
        let cluster = Cluster::start(3).await;
        let client = cluster.client();
        for queue in ["orders", "replies", "acks"] {
            raftq_tests::create_queue(&client, queue, pb::QueueOptions::default()).await;
        }
        let token = if principal {
            let dead_letters = pb::QueueOptions {
                dead_letter_queue: format!("{OUT}.dlq"),
                ..pb::QueueOptions::default()
            };
            raftq_tests::create_queue(&client, OUT, dead_letters).await;
            let created = client
                .create_principal("mail-bridge")
                .await
                .expect("principal");
            client
                .grant("mail-bridge", "orders", &["send", "browse"])
                .await
                .expect("grant");
            client
                .grant("mail-bridge", OUT, &["receive", "browse"])
                .await
                .expect("grant");
            Some(created.token)
        } else {
            None
        };
        let sink = MailSink::start();
        let smtp_port = free_port();
        let certificates = tempfile::tempdir().expect("temp dir");
        let (cert, key) =
            raftq_tests::test_ca().issue_node(certificates.path(), "mail", "127.0.0.1");
        let ca = raftq_tests::test_ca().ca_path();
        let postfix = Postfix::start(
            DOMAIN,
            smtp_port,
            sink.port,
            tls.then_some([cert.as_path(), key.as_path(), ca.as_path()]),
        );
        let http = format!("127.0.0.1:{}", free_port());
        let (inbound_tls, outbound_tls) = if tls {
            (
                format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls = true\n",
                    cert.display(),
                    key.display()
                ),
                format!(
                    "relay_tls = \"starttls\"\nrelay_ca_cert = \"{}\"\n",
                    ca.display()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let config = format!(
            r#"
domain = "{DOMAIN}"
http_listen = "{http}"

[inbound]
listen = "127.0.0.1:{smtp_port}"
max_message_bytes = 262144
store_timeout_ms = 3000
{inbound_tls}

[outbound]
queue = "{OUT}"
relay = "127.0.0.1:{relay}"
from = "raftq@{DOMAIN}"
concurrency = 16
lease_ms = 3000
retry_min_ms = 200
retry_max_ms = 1000
{outbound_tls}
"#,
            relay = postfix.port
        );
        let nodes: Vec<String> = cluster.nodes.iter().map(|node| node.grpc.clone()).collect();
        let bridge = BridgeProcess::start(&config, &nodes, token.as_deref());
        let setup = Setup {
            bridge,
            postfix,
            sink,
            client,
            smtp_port,
            http,
            cluster,
            _certificates: certificates,
        };
        setup.wait_ready().await;
        setup
    }

    /// Until the bridge takes SMTP connections, has made its outbound queue, and the
    /// capturing server listens.
    pub async fn wait_ready(&self) {
        wait_until_or(
            "the bridge and the mail peers are ready",
            Duration::from_secs(30),
            || async {
                let listening = tokio::net::TcpStream::connect(("127.0.0.1", self.smtp_port))
                    .await
                    .is_ok();
                let prepared = self.client.get_queue(OUT).await.is_ok();
                (listening && prepared && self.sink.is_listening()).then_some(())
            },
            || self.bridge.log(),
        )
        .await;
    }

    /// Waits until `queue` holds `count` messages, and returns them (peeked, in order).
    pub async fn messages(&self, queue: &str, count: usize) -> Vec<pb::PeekedMessage> {
        wait_until_or(
            &format!("{count} messages in {queue}"),
            Duration::from_secs(60),
            || async {
                let peeked = self.peek(queue).await;
                (peeked.len() >= count).then_some(peeked)
            },
            || {
                format!(
                    "{}\n--- postfix ---\n{}",
                    self.bridge.log(),
                    self.postfix.log()
                )
            },
        )
        .await
    }

    /// What `queue` holds (nothing when it does not exist: a dead-letter queue is made on
    /// first use).
    pub async fn peek(&self, queue: &str) -> Vec<pb::PeekedMessage> {
        match self.client.peek(queue, 0, 1_000).await {
            Ok(peeked) => peeked,
            Err(error) if error.code() == Some(tonic::Code::NotFound) => Vec::new(),
            Err(error) => panic!("peek {queue}: {error}"),
        }
    }

    /// Waits until Postfix holds no mail.
    pub async fn postfix_emptied(&self) {
        wait_until_or(
            "Postfix's queue is empty",
            Duration::from_secs(60),
            || async { self.postfix.queued().is_empty().then_some(()) },
            || format!("{:?}\n{}", self.postfix.queued(), self.postfix.log()),
        )
        .await;
    }

    /// Waits until the maildir holds `count` mails, and returns them.
    pub async fn delivered(&self, count: usize) -> Vec<String> {
        wait_until_or(
            &format!("{count} mails in the maildir"),
            Duration::from_secs(60),
            || async {
                let mails = self.sink.mails();
                (mails.len() >= count).then(|| {
                    mails
                        .into_iter()
                        .map(|mail| String::from_utf8_lossy(&mail).into_owned())
                        .collect()
                })
            },
            || {
                format!(
                    "{}\n--- postfix ---\n{}",
                    self.bridge.log(),
                    self.postfix.log()
                )
            },
        )
        .await
    }

    /// The bridge's counter `name` (0 before it first counts).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = raftq_tests::http_get(&self.http, "/metrics").await;
        raftq_tests::metric_value(&text, name)
    }
}

/// The value of header `name` in a raw mail (first occurrence, unfolded).
pub fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    let head = mail.split("\r\n\r\n").next().unwrap_or(mail);
    let head = head.split("\n\n").next().unwrap_or(head);
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Waits until `check` holds, for up to a minute.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut check = check;
    wait_until(what, Duration::from_secs(60), || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await;
}
