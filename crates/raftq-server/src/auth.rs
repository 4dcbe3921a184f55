//! Who is calling, and may they: authentication on each port, authorization against the
//! replicated grants.
//!
//! - **Public port:** a client presents `authorization: Bearer <token>`. The bootstrap
//!   admin token (configuration) may do everything; any other token must hash to a
//!   principal of the replicated state. Anything else is UNAUTHENTICATED. A principal
//!   claimed in request metadata is removed: the public port never trusts one.
//! - **Internal port** (mutual TLS, peers only): a forwarded call names the principal it
//!   was authenticated as (`raftq-principal`); a node's own call (joining, status) names
//!   none and acts as the node.
//!
//! The node that serves a call (the leader, for writes) decides, from its replicated
//! grants, before anything is written.

use raftq_cluster::RaftNode;
use raftq_core::access::{Action, TokenHash};
use raftq_proto::wire::{CLUSTER_ID_KEY, FORWARDED_KEY, GROUP_KEY, PRINCIPAL_KEY};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::error::{ServiceError, status};

/// Who a call comes from, as the port it arrived on established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`--insecure`).
    Anyone,
    /// The bootstrap admin token: every action.
    Admin,
    /// Another node, for itself: every action.
    Node,
    Principal(String),
}

impl Caller {
    /// How a forwarding node names the caller to the leader (`raftq-principal`).
    fn header(&self) -> Option<String> {
        match self {
            Caller::Anyone | Caller::Node => None,
            Caller::Admin => Some("admin:".to_string()),
            Caller::Principal(name) => Some(format!("principal:{name}")),
        }
    }

    fn from_header(value: &str) -> Option<Caller> {
        match value.split_once(':')? {
            ("admin", "") => Some(Caller::Admin),
            ("principal", name) if !name.is_empty() => Some(Caller::Principal(name.to_string())),
            _ => None,
        }
    }

    /// The name audit lines and refusals use.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anyone => "anyone",
            Caller::Admin => "admin",
            Caller::Node => "node",
            Caller::Principal(name) => name,
        }
    }
}

/// The SHA-256 of a token.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: 32 bytes from the operating system, as hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Longest `authorization` value looked at.
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Clone)]
pub struct Auth {
    node: RaftNode,
    /// The bootstrap admin token's hash; `None` when authentication is off.
    admin: Option<TokenHash>,
}

impl Auth {
    /// Authentication with the bootstrap admin token `admin_token`, or off (`None`).
    pub fn new(node: RaftNode, admin_token: Option<&str>) -> Auth {
        Auth {
            node,
            admin: admin_token.map(token_hash),
        }
    }

    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// The public port's interceptor: the caller from its bearer token, or from the client
    /// certificate it presented (checked against `[tls] client_ca` in the handshake).
    /// A call on a connection over the node's limit is refused first.
    pub fn public(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(refused) = crate::admission::refusal(request.extensions()) {
            return Err(refused);
        }
        // What only nodes say to each other: a client cannot name a caller, claim a
        // forward, or pick the group that serves its call.
        for internal in [PRINCIPAL_KEY, FORWARDED_KEY, GROUP_KEY, CLUSTER_ID_KEY] {
            request.metadata_mut().remove(internal);
        }
        let certificate = crate::admission::peer_certificates(request.extensions())
            .and_then(|chain| chain.first().map(|leaf| leaf.to_vec()));
        let caller = self.authenticate(request.metadata(), certificate.as_deref())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// The internal port's interceptor: the caller a forwarding peer names, or the peer.
    pub fn internal(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = if !self.enabled() {
            Caller::Anyone
        } else {
            match request.metadata().get(PRINCIPAL_KEY) {
                None => Caller::Node,
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(Caller::from_header)
                    .ok_or_else(|| {
                        refused(
                            "malformed_principal",
                            "the forwarded principal is malformed",
                        )
                    })?,
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    fn authenticate(
        &self,
        metadata: &MetadataMap,
        certificate: Option<&[u8]>,
    ) -> Result<Caller, Status> {
        let Some(admin) = &self.admin else {
            return Ok(Caller::Anyone);
        };
        let Some(value) = metadata.get("authorization") else {
            return match certificate {
                Some(certificate) => self.by_certificate(certificate),
                None => Err(refused(
                    "missing",
                    "no credentials: send `authorization: Bearer <token>`",
                )),
            };
        };
        let token = value
            .to_str()
            .ok()
            .filter(|value| value.len() <= MAX_TOKEN_BYTES)
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                refused(
                    "malformed",
                    "malformed credentials: expected `authorization: Bearer <token>`",
                )
            })?;
        let hash = token_hash(token);
        if same(&hash, admin) {
            return Ok(Caller::Admin);
        }
        let state = self.node.state();
        let state = state.read();
        match state.access().authenticate(&hash) {
            Some(name) => Ok(Caller::Principal(name.to_string())),
            None => Err(refused("unknown", "the token is not valid")),
        }
    }
}

impl Auth {
    /// The principal a client certificate names: its subject's common name, which must be
    /// a principal of the replicated state. (The certificate itself was checked against
    /// the client CA in the handshake.)
    fn by_certificate(&self, certificate: &[u8]) -> Result<Caller, Status> {
        let Some(name) = raftq_tls::common_name(certificate) else {
            return Err(refused(
                "certificate",
                "the client certificate's subject has no common name to name a principal",
            ));
        };
        if self.node.state().read().access().exists(&name) {
            return Ok(Caller::Principal(name));
        }
        Err(refused(
            "certificate",
            "the client certificate names no principal of this cluster",
        ))
    }
}

/// Compares two hashes in time that does not depend on where they differ.
fn same(a: &TokenHash, b: &TokenHash) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An UNAUTHENTICATED answer, counted and logged.
fn refused(reason: &'static str, message: &str) -> Status {
    metrics::counter!("raftq_auth_failures_total", "reason" => reason).increment(1);
    tracing::info!(target: "raftq::audit", outcome = "unauthenticated", reason, "credentials refused");
    status(ServiceError::Unauthenticated {
        reason: message.to_string(),
    })
}

/// The caller of a request, as its port's interceptor established.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            status(ServiceError::internal(
                "a call reached a service without its caller",
            ))
        })
}

/// Names the caller on a call forwarded to the leader's internal port.
pub fn name_caller<T>(request: &mut Request<T>) {
    let header = request
        .extensions()
        .get::<Caller>()
        .and_then(Caller::header);
    if let Some(value) = header.and_then(|header| header.parse().ok()) {
        request.metadata_mut().insert(PRINCIPAL_KEY, value);
    }
}

/// Refuses `caller` unless its grants allow `action` on `queue` (`None`: on the
/// cluster). Decided from this node's replicated state.
pub fn authorize(
    node: &RaftNode,
    caller: &Caller,
    action: Action,
    queue: Option<&str>,
) -> Result<(), Status> {
    let Caller::Principal(name) = caller else {
        return Ok(());
    };
    if node.state().read().access().allows(name, action, queue) {
        return Ok(());
    }
    metrics::counter!("raftq_auth_failures_total", "reason" => "permission_denied").increment(1);
    tracing::info!(
        target: "raftq::audit",
        principal = %name,
        action = action.name(),
        queue = queue.unwrap_or("*"),
        outcome = "permission_denied",
        "call refused"
    );
    Err(status(ServiceError::PermissionDenied {
        principal: name.clone(),
        action: action.name(),
        queue: queue.map(str::to_string),
    }))
}

/// One audit line for a manage or admin action that was carried out or refused.
pub fn audit(caller: &Caller, action: Action, target: &str, done: bool) {
    let outcome = if done { "ok" } else { "failed" };
    tracing::info!(
        target: "raftq::audit",
        principal = caller.name(),
        action = action.name(),
        target,
        outcome,
        "audit"
    );
}
