//! Who may do what: principals, their token hashes and their grants, replicated like every
//! other command so that every node decides alike.
//!
//! A grant is a queue pattern (an exact name, or a prefix ending in `*`) and a set of
//! actions. A queue's dead-letter (`.dlq`) and journal (`.journal`) queues follow the
//! queue's grants unless a grant names them itself.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::QueueError;

/// What a call does to a queue (or to the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Send (alone, in a batch or stream, or in a transaction).
    Send,
    /// Receive, ack, nack, extend a lease, consume; ack in a transaction.
    Receive,
    /// Peek and get a queue.
    Browse,
    /// Create, delete, purge, redrive, configure.
    Manage,
    /// Principals, grants and membership.
    Admin,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Send,
        Action::Receive,
        Action::Browse,
        Action::Manage,
        Action::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
            Action::Browse => "browse",
            Action::Manage => "manage",
            Action::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actions(u8);

impl Actions {
    pub fn of(actions: impl IntoIterator<Item = Action>) -> Actions {
        Actions(
            actions
                .into_iter()
                .fold(0, |bits, action| bits | action.bit()),
        )
    }

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL
            .into_iter()
            .filter(move |action| self.contains(*action))
    }

    /// Parses `send,receive,...`; refuses an unknown action by name.
    pub fn parse(list: &str) -> Result<Actions, QueueError> {
        let mut actions = Vec::new();
        for name in list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            actions.push(
                Action::parse(name).ok_or_else(|| QueueError::InvalidArgument {
                    field: "actions".into(),
                    reason: format!(
                        "{} is not an action (send, receive, browse, manage, admin)",
                        crate::quote(name)
                    ),
                })?,
            );
        }
        if actions.is_empty() {
            return Err(QueueError::InvalidArgument {
                field: "actions".into(),
                reason: "no action given".into(),
            });
        }
        Ok(Actions::of(actions))
    }
}

impl std::fmt::Display for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.iter().map(Action::name).collect();
        f.write_str(&names.join(","))
    }
}

/// The SHA-256 of a token: tokens themselves are never stored.
pub type TokenHash = [u8; 32];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The hash of its bearer token (none: it authenticates by client certificate only).
    pub token_hash: Option<TokenHash>,
    /// Queue pattern -> actions allowed on the queues it matches.
    pub grants: BTreeMap<String, Actions>,
}

/// Longest principal name.
pub const MAX_PRINCIPAL_NAME: usize = 128;
/// Most principals a cluster holds.
pub const MAX_PRINCIPALS: usize = 10_000;
/// Longest queue pattern (longer than any queue name may be).
pub const MAX_PATTERN: usize = 256;
/// Most grants one principal holds.
pub const MAX_GRANTS: usize = 1_000;

/// Every principal, by name, with an index from token hash to name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Access {
    principals: BTreeMap<String, Principal>,
    #[serde(skip)]
    by_token: HashMap<TokenHash, String>,
}

impl PartialEq for Access {
    fn eq(&self, other: &Access) -> bool {
        self.principals == other.principals
    }
}

impl Eq for Access {}

impl Access {
    /// Rebuilds the token index (after decoding).
    pub fn reindex(&mut self) {
        self.by_token = self
            .principals
            .iter()
            .filter_map(|(name, principal)| Some((principal.token_hash?, name.clone())))
            .collect();
    }

    pub fn principals(&self) -> &BTreeMap<String, Principal> {
        &self.principals
    }

    /// The principal whose token hashes to `hash`.
    pub fn authenticate(&self, hash: &TokenHash) -> Option<&str> {
        self.by_token.get(hash).map(String::as_str)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.principals.contains_key(name)
    }

    /// Whether `principal` may do `action` on `queue` (`None`: on the cluster, which only
    /// a grant on `*` covers).
    pub fn allows(&self, principal: &str, action: Action, queue: Option<&str>) -> bool {
        let Some(found) = self.principals.get(principal) else {
            return false;
        };
        let Some(queue) = queue else {
            return found
                .grants
                .get("*")
                .is_some_and(|actions| actions.contains(action));
        };
        if let Some(actions) = best_match(&found.grants, queue) {
            return actions.contains(action);
        }
        // A queue's own dead-letter and journal queues follow its grants.
        match derived_from(queue) {
            Some(base) => {
                best_match(&found.grants, base).is_some_and(|actions| actions.contains(action))
            }
            None => false,
        }
    }

    /// Whether `principal` may do `action` on some queue (any grant allows it).
    pub fn allows_somewhere(&self, principal: &str, action: Action) -> bool {
        self.principals.get(principal).is_some_and(|found| {
            found
                .grants
                .values()
                .any(|actions| actions.contains(action))
        })
    }

    /// Why principal `name` cannot be created now, if it cannot.
    pub(crate) fn check_create(&self, name: &str) -> Result<(), QueueError> {
        check_principal_name(name)?;
        if self.principals.contains_key(name) {
            return Err(QueueError::PrincipalAlreadyExists { name: name.into() });
        }
        if self.principals.len() >= MAX_PRINCIPALS {
            return Err(QueueError::InvalidArgument {
                field: "name".into(),
                reason: format!("the cluster holds {MAX_PRINCIPALS} principals, the most it may"),
            });
        }
        Ok(())
    }

    /// Principal `name`, or PrincipalNotFound.
    pub(crate) fn check_exists(&self, name: &str) -> Result<(), QueueError> {
        if self.principals.contains_key(name) {
            Ok(())
        } else {
            Err(QueueError::PrincipalNotFound { name: name.into() })
        }
    }

    pub(crate) fn create(&mut self, name: &str, token_hash: TokenHash) -> Result<(), QueueError> {
        self.check_create(name)?;
        self.principals.insert(
            name.to_string(),
            Principal {
                token_hash: Some(token_hash),
                grants: BTreeMap::new(),
            },
        );
        self.by_token.insert(token_hash, name.to_string());
        Ok(())
    }

    pub(crate) fn delete(&mut self, name: &str) -> Result<(), QueueError> {
        let principal = self
            .principals
            .remove(name)
            .ok_or_else(|| QueueError::PrincipalNotFound { name: name.into() })?;
        if let Some(hash) = principal.token_hash {
            self.by_token.remove(&hash);
        }
        Ok(())
    }

    /// Sets what `name` may do on `pattern` (replacing what it could before there).
    pub(crate) fn grant(
        &mut self,
        name: &str,
        pattern: &str,
        actions: Actions,
    ) -> Result<(), QueueError> {
        self.check_grant(name, pattern, actions)?;
        if let Some(principal) = self.principals.get_mut(name) {
            principal.grants.insert(pattern.to_string(), actions);
        }
        Ok(())
    }

    /// Why `name` cannot be granted `actions` on `pattern` now, if it cannot.
    pub(crate) fn check_grant(
        &self,
        name: &str,
        pattern: &str,
        actions: Actions,
    ) -> Result<(), QueueError> {
        check_pattern(pattern)?;
        if actions.is_empty() {
            return Err(QueueError::InvalidArgument {
                field: "actions".into(),
                reason: "no action given".into(),
            });
        }
        let principal = self
            .principals
            .get(name)
            .ok_or_else(|| QueueError::PrincipalNotFound { name: name.into() })?;
        if principal.grants.len() >= MAX_GRANTS && !principal.grants.contains_key(pattern) {
            return Err(QueueError::InvalidArgument {
                field: "queue".into(),
                reason: format!(
                    "{} holds {MAX_GRANTS} grants, the most it may",
                    crate::quote(name)
                ),
            });
        }
        Ok(())
    }

    /// Removes what `name` may do on `pattern`; reports whether there was a grant.
    pub(crate) fn revoke(&mut self, name: &str, pattern: &str) -> Result<bool, QueueError> {
        let principal = self
            .principals
            .get_mut(name)
            .ok_or_else(|| QueueError::PrincipalNotFound { name: name.into() })?;
        Ok(principal.grants.remove(pattern).is_some())
    }
}

/// The grant of the most specific pattern that matches `queue`: the exact name, else the
/// longest prefix.
fn best_match(grants: &BTreeMap<String, Actions>, queue: &str) -> Option<Actions> {
    if let Some(actions) = grants.get(queue) {
        return Some(*actions);
    }
    grants
        .iter()
        .filter_map(|(pattern, actions)| {
            let prefix = pattern.strip_suffix('*')?;
            queue
                .starts_with(prefix)
                .then_some((prefix.len(), *actions))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, actions)| actions)
}

/// The queue a dead-letter or journal queue belongs to.
fn derived_from(queue: &str) -> Option<&str> {
    queue
        .strip_suffix(".dlq")
        .or_else(|| queue.strip_suffix(".journal"))
        .filter(|base| !base.is_empty())
}

pub fn check_principal_name(name: &str) -> Result<(), QueueError> {
    let bad = |reason: &str| {
        Err(QueueError::InvalidArgument {
            field: "name".into(),
            reason: format!("principal name {} {reason}", crate::quote(name)),
        })
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_PRINCIPAL_NAME {
        return bad(&format!("is longer than {MAX_PRINCIPAL_NAME} bytes"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return bad("may hold only letters, digits, '-', '_', '.' and '@'");
    }
    Ok(())
}

fn check_pattern(pattern: &str) -> Result<(), QueueError> {
    let bad = |reason: String| {
        Err(QueueError::InvalidArgument {
            field: "queue".into(),
            reason,
        })
    };
    if pattern == "*" {
        return Ok(());
    }
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.contains('*') {
        return bad(format!(
            "pattern {} may hold `*` only at its end",
            crate::quote(pattern)
        ));
    }
    if name.is_empty() || name.len() > MAX_PATTERN {
        return bad(format!(
            "pattern {} is empty or longer than a queue name may be",
            crate::quote(pattern)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_grants(grants: &[(&str, &str)]) -> Access {
        let mut access = Access::default();
        access.create("app", [1; 32]).unwrap();
        for (pattern, actions) in grants {
            access
                .grant("app", pattern, Actions::parse(actions).unwrap())
                .unwrap();
        }
        access
    }

    #[test]
    fn an_exact_grant_wins_over_a_prefix_and_the_longest_prefix_wins() {
        let access = with_grants(&[
            ("orders*", "send,receive"),
            ("orders.audit", "browse"),
            ("orders.eu*", "send"),
        ]);
        assert!(access.allows("app", Action::Receive, Some("orders")));
        assert!(access.allows("app", Action::Send, Some("orders-2")));
        assert!(access.allows("app", Action::Browse, Some("orders.audit")));
        assert!(!access.allows("app", Action::Send, Some("orders.audit")));
        assert!(access.allows("app", Action::Send, Some("orders.eu.1")));
        assert!(!access.allows("app", Action::Receive, Some("orders.eu.1")));
        assert!(!access.allows("app", Action::Send, Some("payments")));
        assert!(!access.allows("nobody", Action::Send, Some("orders")));
    }

    #[test]
    fn dead_letter_and_journal_queues_follow_their_queue_unless_granted_themselves() {
        let access = with_grants(&[("orders", "receive"), ("payments.dlq", "browse")]);
        assert!(access.allows("app", Action::Receive, Some("orders.dlq")));
        assert!(access.allows("app", Action::Receive, Some("orders.journal")));
        assert!(!access.allows("app", Action::Receive, Some("payments.dlq")));
        assert!(access.allows("app", Action::Browse, Some("payments.dlq")));
        assert!(!access.allows("app", Action::Receive, Some(".dlq")));
    }

    #[test]
    fn cluster_actions_need_a_grant_on_everything() {
        let access = with_grants(&[("orders*", "admin")]);
        assert!(!access.allows("app", Action::Admin, None));
        let access = with_grants(&[("*", "admin")]);
        assert!(access.allows("app", Action::Admin, None));
        assert!(access.allows("app", Action::Admin, Some("anything")));
    }

    #[test]
    fn tokens_authenticate_until_their_principal_is_deleted() {
        let mut access = with_grants(&[]);
        assert_eq!(access.authenticate(&[1; 32]), Some("app"));
        assert_eq!(access.authenticate(&[2; 32]), None);
        access.delete("app").unwrap();
        assert_eq!(access.authenticate(&[1; 32]), None);
        assert_eq!(
            access.delete("app"),
            Err(QueueError::PrincipalNotFound { name: "app".into() })
        );
    }

    #[test]
    fn bad_names_patterns_and_actions_are_refused_and_change_nothing() {
        let mut access = with_grants(&[]);
        let before = access.clone();
        for name in ["", &"x".repeat(MAX_PRINCIPAL_NAME + 1), "a b", "ü"] {
            assert!(
                matches!(
                    access.create(name, [3; 32]),
                    Err(QueueError::InvalidArgument { .. })
                ),
                "{name:?}"
            );
        }
        assert_eq!(
            access.create("app", [4; 32]),
            Err(QueueError::PrincipalAlreadyExists { name: "app".into() })
        );
        for pattern in ["", "or*ders", "**", &"q".repeat(MAX_PATTERN + 1)] {
            assert!(
                access
                    .grant("app", pattern, Actions::of([Action::Send]))
                    .is_err(),
                "{pattern:?}"
            );
        }
        assert!(Actions::parse("send,fly").is_err());
        assert!(Actions::parse("").is_err());
        assert!(
            access
                .grant("nobody", "q", Actions::of([Action::Send]))
                .is_err()
        );
        assert_eq!(access, before);
        assert_eq!(access.authenticate(&[4; 32]), None);
    }

    #[test]
    fn a_revoked_grant_allows_nothing_more() {
        let mut access = with_grants(&[("orders", "send")]);
        assert_eq!(access.revoke("app", "orders"), Ok(true));
        assert!(!access.allows("app", Action::Send, Some("orders")));
        assert_eq!(access.revoke("app", "orders"), Ok(false));
    }
}
