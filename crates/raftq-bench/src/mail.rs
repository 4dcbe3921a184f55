//! `raftq-bench mail`: how fast the mail bridge moves mail, through a real Postfix
//! (`scripts/peers/postfix`, relaying the bridge's domain to it and other mail to
//! `scripts/peers/mailsink`'s maildir), with a 3-node cluster and a `raftq bridge mail`
//! process it starts (plaintext, as the peers run):
//!
//! - inbound: `mails` mails submitted to Postfix over SMTP (`connections` at once);
//!   Postfix relays them to the bridge, which stores each in a queue; the rate from the
//!   first submission until the queue holds them all;
//! - outbound: `deliveries` messages sent to `mail.out`; the bridge hands them to Postfix,
//!   which delivers them into the maildir; the rate from the first send until `mail.out`
//!   is empty (every mail taken by Postfix and acknowledged), and until the maildir holds
//!   them all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use lettre::address::Envelope;
use raftq_client::{Client, Message, pb};
use raftq_mail::RelayTls;
use raftq_mail::outbound::Relay;
use serde::Serialize;

use crate::cluster::SpawnedCluster;

#[derive(Args, Debug)]
pub struct MailArgs {
    /// Postfix's SMTP address (`scripts/peers/postfix start` prints it).
    #[arg(long, default_value = "127.0.0.1:2526")]
    postfix: String,
    /// The maildir Postfix delivers other mail into (`scripts/peers/mailsink start`
    /// prints it).
    #[arg(long)]
    maildir: PathBuf,
    /// The bridge's domain, as Postfix routes it.
    #[arg(long, default_value = "queues.test")]
    domain: String,
    /// Where the bridge listens, as Postfix routes the domain to it.
    #[arg(long, default_value = "127.0.0.1:2525")]
    bridge_listen: String,
    /// Mails submitted to Postfix for the bridge.
    #[arg(long, default_value_t = 5_000)]
    mails: usize,
    /// Messages the bridge delivers as mail.
    #[arg(long, default_value_t = 5_000)]
    deliveries: usize,
    /// SMTP connections submitting to Postfix at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The bridge's outbound deliveries in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// The raftq binary (default: the one beside this benchmark).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7720)]
    base_port: u16,
    #[arg(long, default_value = "/tmp/raftq-bench-mail")]
    work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    mails: usize,
    connections: usize,
    inbound_mails_per_s: f64,
    deliveries: usize,
    concurrency: usize,
    /// Acknowledged by the bridge once Postfix took them.
    outbound_deliveries_per_s: f64,
    /// Until Postfix delivered them all into the maildir.
    outbound_end_to_end_per_s: f64,
    body: usize,
}

/// The queue inbound mail goes to.
const INBOX: &str = "bench.in";
const OUTBOX: &str = "mail.out";
const DEADLINE: Duration = Duration::from_secs(600);

pub async fn run(args: MailArgs) -> anyhow::Result<()> {
    let exe = match &args.raftq_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("raftq"),
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let cluster = SpawnedCluster::start(&exe, &args.work_dir, 3, args.base_port, false).await?;
    let client = cluster.client()?;
    client
        .create_queue(
            INBOX,
            pb::QueueOptions {
                max_depth: 10_000_000,
                ..Default::default()
            },
        )
        .await?;
    let mut bridge = start_bridge(&exe, &args, &cluster.addresses())?;
    wait_for_bridge(&client, &args.bridge_listen).await?;

    let started = inbound(&args).await?;
    wait_for(&format!("{} mails in {INBOX}", args.mails), || async {
        let stats = client.get_queue(INBOX).await.ok()?.stats?;
        (stats.depth >= args.mails as u64).then_some(())
    })
    .await?;
    let inbound_mails_per_s = args.mails as f64 / started.elapsed().as_secs_f64();

    let before = count_mails(&args.maildir);
    let started = Instant::now();
    let body = vec![b'x'; args.body];
    for chunk in 0..args.deliveries.div_ceil(500) {
        let batch: Vec<Message> = (chunk * 500..((chunk + 1) * 500).min(args.deliveries))
            .map(|n| {
                Message::new(body.clone())
                    .with_header("mail-to", format!("user{n}@example.org"))
                    .with_properties(pb::MessageProperties {
                        label: format!("delivery {n}"),
                        ..Default::default()
                    })
            })
            .collect();
        client.send_batch(OUTBOX, batch).await?;
    }
    // Handed to the relay: every message acknowledged (mail.out empty).
    wait_for(&format!("{OUTBOX} to empty"), || async {
        let stats = client.get_queue(OUTBOX).await.ok()?.stats?;
        (stats.depth == 0).then_some(())
    })
    .await?;
    let outbound_deliveries_per_s = args.deliveries as f64 / started.elapsed().as_secs_f64();
    // And through Postfix into the maildir.
    wait_for(
        &format!("{} mails in the maildir", args.deliveries),
        || async { (count_mails(&args.maildir) >= before + args.deliveries).then_some(()) },
    )
    .await?;
    let outbound_end_to_end_per_s = args.deliveries as f64 / started.elapsed().as_secs_f64();
    let _ = bridge.start_kill();
    cluster.stop().await;

    let report = Report {
        mails: args.mails,
        connections: args.connections,
        inbound_mails_per_s,
        deliveries: args.deliveries,
        concurrency: args.concurrency,
        outbound_deliveries_per_s,
        outbound_end_to_end_per_s,
        body: args.body,
    };
    println!(
        "inbound: {} mails through Postfix ({} connections) at {:.0} mails/s\n\
         outbound: {} deliveries to Postfix ({} in flight) at {:.0} mails/s; \
         in the maildir at {:.0} mails/s",
        report.mails,
        report.connections,
        report.inbound_mails_per_s,
        report.deliveries,
        report.concurrency,
        report.outbound_deliveries_per_s,
        report.outbound_end_to_end_per_s
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn start_bridge(
    exe: &Path,
    args: &MailArgs,
    nodes: &[String],
) -> anyhow::Result<tokio::process::Child> {
    let config = args.work_dir.join("mail.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"{domain}\"\n\n[inbound]\nlisten = \"{listen}\"\nmax_message_bytes = 1048576\n\n\
             [outbound]\nqueue = \"{OUTBOX}\"\nrelay = \"{relay}\"\nfrom = \"bench@{domain}\"\n\
             concurrency = {concurrency}\n",
            domain = args.domain,
            listen = args.bridge_listen,
            relay = args.postfix,
            concurrency = args.concurrency,
        ),
    )?;
    let log = std::fs::File::create(args.work_dir.join("bridge.log"))?;
    Ok(tokio::process::Command::new(exe)
        .args(["bridge", "mail", "--insecure", "--config"])
        .arg(&config)
        .arg("--cluster")
        .arg(nodes.join(","))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

async fn wait_for_bridge(client: &Client, listen: &str) -> anyhow::Result<()> {
    wait_for("the bridge to listen and make its queue", || async {
        tokio::net::TcpStream::connect(listen).await.ok()?;
        client.get_queue(OUTBOX).await.ok().map(|_| ())
    })
    .await
}

/// Submits the mails to Postfix; returns when the first one went.
async fn inbound(args: &MailArgs) -> anyhow::Result<Instant> {
    // The bridge's own SMTP client (TCP_NODELAY, connections kept open).
    let postfix = std::sync::Arc::new(Relay::new(
        &args.postfix,
        RelayTls::None,
        &raftq_tls::ClientTls::public_roots()?,
        "bench.example.org",
        Duration::from_secs(60),
        args.connections,
    )?);
    let envelope = Envelope::new(
        Some("bench@example.org".parse()?),
        vec![format!("{INBOX}@{}", args.domain).parse()?],
    )?;
    let body = "x".repeat(args.body);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let (postfix, envelope, body) = (postfix.clone(), envelope.clone(), body.clone());
        let (domain, count) = (args.domain.clone(), args.mails);
        let connections = args.connections;
        tasks.spawn(async move {
            for n in (connection..count).step_by(connections) {
                let mail = format!(
                    "From: bench@example.org\r\nTo: {INBOX}@{domain}\r\nSubject: mail {n}\r\n\
                     Message-ID: <bench-{n}@example.org>\r\n\r\n{body}\r\n"
                );
                postfix
                    .send(&envelope, mail.as_bytes())
                    .await
                    .map_err(|error| anyhow::anyhow!("submitting to Postfix: {error:?}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started)
}

/// Mails in the maildir (new and cur).
fn count_mails(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
        .map(Iterator::count)
        .sum()
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if check().await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("waited {DEADLINE:?} for {what}")
}
