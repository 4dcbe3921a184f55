//! Message bodies and where they are kept.
//!
//! A stored message refers to its body by a [`BodyRef`]: a key and a length. The bytes are
//! kept either in the state itself (the default, which tests and models use) or outside it,
//! by the embedder: then applying a command reports each body to write or delete as a
//! [`BodyEffect`], and the embedder keeps the bytes wherever it likes (raftq-store keeps
//! them in RocksDB, so a backlog does not have to fit in memory). The state machine stays
//! pure either way: it never reads the bytes back, it only says which keys live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Where a stored message's body is: its key and its length in bytes.
///
/// The key is the id of the message that first brought the body; keys are never reused.
/// A journal copy shares its original's body (and key). Empty bodies are never stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BodyRef {
    pub key: u64,
    pub len: u64,
}

/// A change to the set of stored bodies, recorded by a queue while a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyChange {
    /// A new body arrived with a sent message.
    New(BodyRef, Vec<u8>),
    /// One more message refers to an existing body.
    Shared(BodyRef),
    /// One message that referred to the body is gone.
    Released(BodyRef),
}

/// What the embedder must do to the bodies it keeps, in order, when the state keeps them
/// outside (see [`crate::StateMachine::keep_bodies_outside`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEffect {
    Put { key: u64, bytes: Vec<u8> },
    Delete { key: u64 },
}

/// The bodies' bookkeeping inside the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Bodies {
    /// References beyond the first, for bodies that more than one message refers to.
    extra_refs: BTreeMap<u64, u64>,
    /// The bytes, when the state keeps them; `None` when the embedder does.
    inline: Option<BTreeMap<u64, ByteBuf>>,
    /// Effects for the embedder since it last took them. Always empty when inline.
    #[serde(skip)]
    effects: Vec<BodyEffect>,
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies {
            extra_refs: BTreeMap::new(),
            inline: Some(BTreeMap::new()),
            effects: Vec::new(),
        }
    }
}

impl Bodies {
    pub(crate) fn kept_outside(&self) -> bool {
        self.inline.is_none()
    }

    /// From now on the embedder keeps the bytes. Bodies already held inline are handed
    /// over as effects.
    pub(crate) fn keep_outside(&mut self) {
        if let Some(inline) = self.inline.take() {
            self.effects
                .extend(inline.into_iter().map(|(key, bytes)| BodyEffect::Put {
                    key,
                    bytes: bytes.into_vec(),
                }));
        }
    }

    /// Applies one command's changes. New bodies and new references count before any
    /// release, so a message consumed and copied to a journal in the same command keeps its
    /// body for the copy.
    pub(crate) fn apply(&mut self, changes: Vec<BodyChange>) {
        let mut released = Vec::new();
        for change in changes {
            match change {
                BodyChange::New(body, bytes) if body.len > 0 => match &mut self.inline {
                    Some(inline) => {
                        inline.insert(body.key, ByteBuf::from(bytes));
                    }
                    None => self.effects.push(BodyEffect::Put {
                        key: body.key,
                        bytes,
                    }),
                },
                BodyChange::Shared(body) if body.len > 0 => {
                    *self.extra_refs.entry(body.key).or_default() += 1;
                }
                BodyChange::Released(body) if body.len > 0 => released.push(body.key),
                BodyChange::New(..) | BodyChange::Shared(_) | BodyChange::Released(_) => {}
            }
        }
        for key in released {
            if let Some(extra) = self.extra_refs.get_mut(&key) {
                *extra -= 1;
                if *extra == 0 {
                    self.extra_refs.remove(&key);
                }
                continue;
            }
            match &mut self.inline {
                Some(inline) => {
                    inline.remove(&key);
                }
                None => self.effects.push(BodyEffect::Delete { key }),
            }
        }
    }

    /// The bytes of `body` when the state keeps them (empty for an empty body); `None` when
    /// the embedder keeps them.
    pub(crate) fn get(&self, body: BodyRef) -> Option<Vec<u8>> {
        if body.len == 0 {
            return Some(Vec::new());
        }
        let inline = self.inline.as_ref()?;
        Some(
            inline
                .get(&body.key)
                .map(|bytes| bytes.to_vec())
                .unwrap_or_default(),
        )
    }

    pub(crate) fn take_effects(&mut self) -> Vec<BodyEffect> {
        std::mem::take(&mut self.effects)
    }

    /// Compares the bookkeeping with `refs`, the number of stored messages referring to
    /// each non-empty body.
    pub(crate) fn check(&self, refs: &BTreeMap<u64, u64>) -> Result<(), String> {
        for (key, count) in refs {
            let extra = self.extra_refs.get(key).copied().unwrap_or(0);
            if extra + 1 != *count {
                return Err(format!(
                    "body {key}: {count} messages refer to it, {} counted",
                    extra + 1
                ));
            }
        }
        if let Some(key) = self.extra_refs.keys().find(|key| !refs.contains_key(key)) {
            return Err(format!("body {key}: counted, but no message refers to it"));
        }
        if let Some(inline) = &self.inline {
            if let Some(key) = refs.keys().find(|key| !inline.contains_key(key)) {
                return Err(format!("body {key}: referred to, but not held"));
            }
            if let Some(key) = inline.keys().find(|key| !refs.contains_key(key)) {
                return Err(format!("body {key}: held, but no message refers to it"));
            }
        }
        Ok(())
    }
}
