//! `raftq tls generate`: a throwaway CA and certificates, to try a cluster with TLS on
//! (production certificates come from the operator's CA or cert-manager).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use raftq_tls::generate::{Authority, write_file};

#[derive(Subcommand, Debug)]
pub(super) enum TlsCommand {
    /// Write a new CA (`ca.pem`), one certificate for the nodes (`node.pem`, `node.key`)
    /// valid for every --name, and one for a client (`client.pem`, `client.key`) into
    /// --out. The CA's key is not kept: nothing more can be issued from it.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// A DNS name or IP address the nodes are reached at (repeat, or comma-separate).
        #[arg(long = "name", value_delimiter = ',', required = true)]
        names: Vec<String>,
        /// The cluster the node certificate names (`urn:raftq:cluster:NAME`): its nodes
        /// then speak only to peers naming the same cluster, and the cluster they form
        /// takes this name as its id.
        #[arg(long)]
        cluster: Option<String>,
    },
}

pub(super) fn run(command: TlsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TlsCommand::Generate {
            out,
            names,
            cluster,
        } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let ca = Authority::new("raftq throwaway CA")?;
            write_file(&out.join("ca.pem"), &ca.cert_pem(), 0o644)?;
            match &cluster {
                Some(cluster) => ca.issue_in_cluster("raftq node", &names, cluster)?,
                None => ca.issue("raftq node", &names)?,
            }
            .write(&out, "node")?;
            ca.issue("raftq client", &[])?.write(&out, "client")?;
            println!(
                "wrote ca.pem, node.pem, node.key, client.pem and client.key to {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
