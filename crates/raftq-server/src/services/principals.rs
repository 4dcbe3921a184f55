//! Principals and grants (AdminService): each change is one replicated command, made by a
//! caller with the `admin` action; every change is audited.

use raftq_core::access::{Action, Actions, Principal};
use raftq_core::{Command, Outcome, QueueError};
use raftq_proto::pb;
use tonic::Status;

use crate::auth::{Caller, audit, new_token, token_hash};
use crate::context::{Context, unexpected};
use crate::error::status;

/// Creates a principal with a new token; the answer holds the token, never stored.
pub async fn create(
    context: &Context,
    caller: &Caller,
    request: pb::CreatePrincipalRequest,
) -> Result<pb::CreatePrincipalResponse, Status> {
    raftq_core::access::check_principal_name(&request.name).map_err(status)?;
    let token = new_token();
    let written = context
        .write(Command::CreatePrincipal {
            name: request.name.clone(),
            token_hash: token_hash(&token),
        })
        .await;
    audit(
        caller,
        Action::Admin,
        &format!("create principal {}", request.name),
        written.is_ok(),
    );
    expect_changed(written?)?;
    Ok(pb::CreatePrincipalResponse {
        name: request.name,
        token,
    })
}

pub async fn delete(
    context: &Context,
    caller: &Caller,
    request: pb::DeletePrincipalRequest,
) -> Result<pb::DeletePrincipalResponse, Status> {
    let written = context
        .write(Command::DeletePrincipal {
            name: request.name.clone(),
        })
        .await;
    audit(
        caller,
        Action::Admin,
        &format!("delete principal {}", request.name),
        written.is_ok(),
    );
    expect_changed(written?)?;
    Ok(pb::DeletePrincipalResponse {})
}

pub async fn grant(
    context: &Context,
    caller: &Caller,
    request: pb::GrantRequest,
) -> Result<pb::GrantResponse, Status> {
    let grant = request.grant.ok_or_else(|| {
        status(QueueError::invalid(
            "grant",
            "a grant needs a queue pattern and actions",
        ))
    })?;
    let actions = Actions::parse(&grant.actions.join(",")).map_err(status)?;
    let written = context
        .write(Command::Grant {
            principal: request.name.clone(),
            pattern: grant.queue.clone(),
            actions,
        })
        .await;
    audit(
        caller,
        Action::Admin,
        &format!("grant {} {actions} on {}", request.name, grant.queue),
        written.is_ok(),
    );
    expect_changed(written?)?;
    let state = context.meta.state();
    let state = state.read();
    let principal = state.access().principals().get(&request.name);
    Ok(pb::GrantResponse {
        principal: principal.map(|principal| info(&request.name, principal)),
    })
}

pub async fn revoke(
    context: &Context,
    caller: &Caller,
    request: pb::RevokeRequest,
) -> Result<pb::RevokeResponse, Status> {
    let written = context
        .write(Command::Revoke {
            principal: request.name.clone(),
            pattern: request.queue.clone(),
        })
        .await;
    audit(
        caller,
        Action::Admin,
        &format!("revoke {} on {}", request.name, request.queue),
        written.is_ok(),
    );
    let revoked = expect_changed(written?)?;
    Ok(pb::RevokeResponse { revoked })
}

/// Every principal and its grants (never a token or its hash).
pub async fn list(context: &Context) -> Result<pb::ListPrincipalsResponse, Status> {
    context.read_barrier().await?;
    let state = context.meta.state();
    let state = state.read();
    Ok(pb::ListPrincipalsResponse {
        principals: state
            .access()
            .principals()
            .iter()
            .map(|(name, principal)| info(name, principal))
            .collect(),
    })
}

fn info(name: &str, principal: &Principal) -> pb::PrincipalInfo {
    pb::PrincipalInfo {
        name: name.to_string(),
        grants: principal
            .grants
            .iter()
            .map(|(pattern, actions)| pb::QueueGrant {
                queue: pattern.clone(),
                actions: actions
                    .iter()
                    .map(|action| action.name().to_string())
                    .collect(),
            })
            .collect(),
    }
}

fn expect_changed(outcome: Outcome) -> Result<bool, Status> {
    match outcome {
        Outcome::AccessChanged { changed } => Ok(changed),
        other => Err(unexpected(other)),
    }
}
