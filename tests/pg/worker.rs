//! raftq-pg-worker: the processes of the PostgreSQL crash tests, killed with -9 at chosen
//! points.
//!
//! ```text
//! raftq-pg-worker relay    DATABASE_URL NODES [CRASH_AFTER]
//! raftq-pg-worker payments DATABASE_URL NODES [CRASH_AFTER]
//! ```
//!
//! `relay` runs the outbox relay; with CRASH_AFTER it kills itself (SIGKILL) when raftq
//! has stored its CRASH_AFTER-th batch and before the batch's rows are deleted.
//! `payments` consumes `orders` through the inbox: for each order it inserts a payment row
//! and enqueues `paid:<token>` to `payments` (same group) in the same transaction; with
//! CRASH_AFTER it kills itself right after its CRASH_AFTER-th commit, before the
//! acknowledgements are sent. NODES is comma-separated; RAFTQ_CA_CERT and RAFTQ_TOKEN say
//! how to reach the cluster, as for any client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftq_client::{Client, ClientConfig, ClientTls, Message, Transport, pb};
use raftq_pg::tokio_postgres::Transaction;
use raftq_pg::{
    Handler, HandlerError, Inbox, InboxConfig, InboxEvent, Relay, RelayConfig, RelayEvent, Schema,
};

fn kill_self() -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    unreachable!("killed")
}

/// Calls `crash` when the `after`-th event counted by it comes (never with `None`).
fn crash_counter(after: Option<u64>) -> impl Fn() + Send + Sync + 'static {
    let seen = Arc::new(AtomicU64::new(0));
    move || {
        if after.is_some_and(|after| seen.fetch_add(1, Ordering::SeqCst) + 1 == after) {
            kill_self();
        }
    }
}

struct Payments {
    schema: Schema,
}

impl Handler for Payments {
    async fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> Result<(), HandlerError> {
        let token = String::from_utf8(message.body.clone())?;
        transaction
            .execute(
                "INSERT INTO payments (token, customer) VALUES ($1, $2)",
                &[&token, &message.group],
            )
            .await?;
        raftq_pg::enqueue(
            transaction,
            &self.schema,
            "payments",
            Message::new(format!("paid:{token}")).with_group(message.group.clone()),
        )
        .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, url, nodes, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: raftq-pg-worker relay|payments DATABASE_URL NODES [CRASH_AFTER]".into(),
        );
    };
    let crash_after = rest.first().map(|n| n.parse::<u64>()).transpose()?;
    let ca = std::env::var("RAFTQ_CA_CERT")?;
    let nodes: Vec<String> = nodes.split(',').map(str::to_string).collect();
    let raftq = Client::new(
        &nodes,
        ClientConfig {
            retry_deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            transport: Transport::Tls(ClientTls::from_files(ca.as_ref(), None)?.connector()),
            token: std::env::var("RAFTQ_TOKEN").ok(),
            ..ClientConfig::default()
        },
    )?;
    let (_stopping, stopped) = tokio::sync::watch::channel(false);
    let crash = crash_counter(crash_after);
    match role.as_str() {
        "relay" => {
            let mut relay = Relay::new(
                url,
                raftq,
                RelayConfig {
                    batch_messages: 50,
                    poll_interval: Duration::from_millis(200),
                    ..RelayConfig::default()
                },
            )?;
            relay.observe(move |event| {
                if let RelayEvent::Stored { .. } = event {
                    crash();
                }
            });
            println!("relay running");
            relay.run(stopped).await?;
        }
        "payments" => {
            let mut inbox = Inbox::connect(
                url,
                raftq,
                InboxConfig {
                    batch_messages: 20,
                    wait: Duration::from_millis(500),
                    lease: Some(Duration::from_secs(2)),
                    ..InboxConfig::new("orders")
                },
            )
            .await?;
            inbox.observe(move |event| {
                if let InboxEvent::Committed { .. } = event {
                    crash();
                }
            });
            println!("payments running");
            let mut handler = Payments {
                schema: Schema::default(),
            };
            inbox.run(&mut handler, stopped).await?;
        }
        other => return Err(format!("unknown role {other:?}").into()),
    }
    Ok(())
}
