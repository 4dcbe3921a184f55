//! Principals and grants: `principal create|list|delete`, `grant`, `revoke`. Each needs
//! the `admin` action (the bootstrap admin token has it).

use clap::Subcommand;
use raftq_client::{Client, ClientError, pb};
use serde_json::json;

use super::output::{Output, print};

#[derive(Subcommand, Debug)]
pub(super) enum PrincipalCommand {
    /// Create a principal and print its token, once: the cluster keeps only its hash.
    Create { name: String },
    /// Every principal with its grants.
    List,
    /// Delete a principal: its token stops working on every node.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub(super) enum AccessCommand {
    /// Let a principal do ACTIONS on the queues PATTERN matches (an exact name, or a
    /// prefix ending in `*`; `*` alone also covers the cluster). Replaces what it could
    /// do on that pattern before.
    Grant {
        name: String,
        #[arg(long = "queue")]
        pattern: String,
        /// Comma-separated: send, receive, browse, manage, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
    },
    /// Remove a principal's grant on PATTERN.
    Revoke {
        name: String,
        #[arg(long = "queue")]
        pattern: String,
    },
}

pub(super) async fn run_principal(
    client: &Client,
    command: PrincipalCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        PrincipalCommand::Create { name } => {
            let created = client.create_principal(&name).await?;
            print(
                output,
                json!({"name": created.name, "token": created.token}),
                format!(
                    "principal {} created; its token (shown once):\n{}",
                    created.name, created.token
                ),
            );
        }
        PrincipalCommand::List => {
            for principal in client.list_principals().await? {
                let text = format!("{}  {}", principal.name, grants_text(&principal));
                print(output, principal_json(&principal), text);
            }
        }
        PrincipalCommand::Delete { name } => {
            client.delete_principal(&name).await?;
            print(
                output,
                json!({"deleted": name}),
                format!("principal {name} deleted"),
            );
        }
    }
    Ok(())
}

pub(super) async fn run_access(
    client: &Client,
    command: AccessCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        AccessCommand::Grant {
            name,
            pattern,
            allow,
        } => {
            let actions: Vec<&str> = allow.iter().map(String::as_str).collect();
            let principal = client.grant(&name, &pattern, &actions).await?;
            let text = format!("{}  {}", principal.name, grants_text(&principal));
            print(output, principal_json(&principal), text);
        }
        AccessCommand::Revoke { name, pattern } => {
            let revoked = client.revoke(&name, &pattern).await?;
            let text = if revoked {
                format!("revoked {name}'s grant on {pattern}")
            } else {
                format!("{name} had no grant on {pattern}")
            };
            print(output, json!({"revoked": revoked}), text);
        }
    }
    Ok(())
}

fn grants_text(principal: &pb::PrincipalInfo) -> String {
    if principal.grants.is_empty() {
        return "(no grants)".to_string();
    }
    principal
        .grants
        .iter()
        .map(|grant| format!("{}={}", grant.queue, grant.actions.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn principal_json(principal: &pb::PrincipalInfo) -> serde_json::Value {
    json!({
        "name": principal.name,
        "grants": principal.grants.iter().map(|grant| json!({
            "queue": grant.queue,
            "actions": grant.actions,
        })).collect::<Vec<_>>(),
    })
}
