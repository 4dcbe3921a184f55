//! `raftq bridge mail`: the mail bridge, a client of the cluster like any other.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use raftq_client::{Client, ClientConfig, Transport};
use raftq_mail::{Bridge, MailConfig};

/// Bridges between queues and other messaging systems.
#[derive(Subcommand, Debug)]
pub(super) enum BridgeCommand {
    /// Mail for QUEUE@DOMAIN into queues over SMTP, and a queue's messages out as mail
    /// through a relay (the global --ca-cert and --token are how it reaches the cluster).
    Mail(MailArgs),
}

#[derive(Args, Debug)]
pub(super) struct MailArgs {
    /// The bridge's configuration (TOML: domain, [inbound], [outbound]; see
    /// docs/operations.md).
    #[arg(long, env = "RAFTQ_MAIL_CONFIG")]
    config: std::path::PathBuf,
    #[command(flatten)]
    reach: super::ClusterArgs,
}

pub(super) async fn run(
    command: BridgeCommand,
    (transport, token): (Transport, Option<String>),
) -> anyhow::Result<ExitCode> {
    let BridgeCommand::Mail(args) = command;
    super::server::init_logging("text", true);
    args.reach.check("the bridge", &transport)?;
    let config = MailConfig::load(&args.config)?;
    let client = Client::new(
        &args.reach.cluster,
        ClientConfig {
            // An SMTP client waits for its answer: 451 after this long.
            retry_deadline: Duration::from_millis(
                config
                    .inbound
                    .as_ref()
                    .map_or(30_000, |inbound| inbound.store_timeout_ms),
            ),
            transport,
            token,
            ..ClientConfig::default()
        },
    )?;
    let bridge = Bridge::new(&config, client)?;
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    if let Some(address) = config.http_listen {
        crate::metrics_port::serve(address, stopped.clone(), || async {}).await?;
    }
    println!("raftq bridge mail: domain {}", config.domain);
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        tracing::info!("mail bridge stopping");
        let _ = stopping.send(true);
    });
    bridge.run(stopped).await?;
    Ok(ExitCode::SUCCESS)
}
