//! A member's addresses, as the Raft membership records them.

use serde::{Deserialize, Serialize};

/// Where a member is reached: its internal port (Raft, membership changes, calls forwarded
/// between nodes) and its public port (the client API, named in leader hints).
///
/// Stored in the shape of openraft's `BasicNode` (one string, `addr`), so logs and
/// snapshots written before nodes had two ports read unchanged: a single address there
/// is both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredNode", into = "StoredNode")]
pub struct Node {
    pub internal: String,
    pub public: String,
}

impl Node {
    pub fn new(internal: impl Into<String>, public: impl Into<String>) -> Node {
        Node {
            internal: internal.into(),
            public: public.into(),
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (internal {})", self.public, self.internal)
    }
}

/// The stored shape: `INTERNAL PUBLIC`, or one address when both are the same (no address
/// holds a space).
#[derive(Serialize, Deserialize)]
struct StoredNode {
    addr: String,
}

impl From<StoredNode> for Node {
    fn from(stored: StoredNode) -> Node {
        match stored.addr.split_once(' ') {
            Some((internal, public)) => Node::new(internal, public),
            None => Node::new(stored.addr.clone(), stored.addr),
        }
    }
}

impl From<Node> for StoredNode {
    fn from(node: Node) -> StoredNode {
        let addr = if node.internal == node.public {
            node.internal
        } else {
            format!("{} {}", node.internal, node.public)
        };
        StoredNode { addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_recorded_with_one_address_reads_as_both() {
        let old = bincode::serialize(&openraft::BasicNode {
            addr: "10.0.0.1:7401".to_string(),
        })
        .unwrap();
        let node: Node = bincode::deserialize(&old).unwrap();
        assert_eq!(node, Node::new("10.0.0.1:7401", "10.0.0.1:7401"));
        assert_eq!(bincode::serialize(&node).unwrap(), old);
    }

    #[test]
    fn both_addresses_survive_a_round_trip() {
        let node = Node::new("10.0.0.1:7501", "10.0.0.1:7401");
        let bytes = bincode::serialize(&node).unwrap();
        assert_eq!(bincode::deserialize::<Node>(&bytes).unwrap(), node);
        let json = serde_json::to_string(&node).unwrap();
        assert_eq!(json, r#"{"addr":"10.0.0.1:7501 10.0.0.1:7401"}"#);
        assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), node);
    }
}
