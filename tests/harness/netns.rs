//! A private network for a test cluster: every node in its own network namespace with its
//! own address, joined by a bridge in the host namespace (where the test's clients run).
//! Network faults are packet filters and queueing disciplines inside the nodes'
//! namespaces, so they act on real packets between real processes:
//!
//! - partitions: the receiving side drops packets from the other side (`iptables DROP` in
//!   INPUT), so connections time out as they do when a switch fails, with no fast error;
//! - one-way loss: every other node drops a share of the packets *from* one node;
//! - a slow link: one node's egress is delayed (`netem` where the kernel has it, otherwise
//!   a token bucket whose queue adds the delay).
//!
//! Needs root (or CAP_NET_ADMIN) and iproute2 + iptables. Everything it creates is removed
//! when the [`Network`] is dropped, and [`cleanup_stale`] removes what a killed run left.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Namespace and interface names carry this prefix, so stale ones can be found.
const PREFIX: &str = "raftq";
/// Bridges are named `rqb<index>`; host-side veth ends `rq<index>h<node>` (15 chars max).
const BRIDGE_PREFIX: &str = "rqb";
/// Each network uses 10.213.<index>.0/24; the bridge (host side) is .254.
const SUBNET_BASE: [u8; 2] = [10, 213];

#[derive(Debug)]
pub struct Network {
    index: u8,
    nodes: Mutex<Vec<u64>>,
    /// Filters currently installed: (receiving node, sending node, drop probability).
    drops: Mutex<BTreeSet<(u64, u64, u32)>>,
    /// Nodes whose egress is currently slowed.
    slowed: Mutex<BTreeSet<u64>>,
}

/// How a slow link was realised, for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowLink {
    /// `tc netem`: a fixed delay plus jitter on every packet.
    Netem,
    /// The kernel has no netem: a token bucket filter with a low rate, whose queue delays
    /// packets (up to its latency bound) when the node sends more than the rate.
    TokenBucket,
}

fn run(
    program: &str,
    args: &[impl AsRef<std::ffi::OsStr> + std::fmt::Debug],
) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// True when this process may create network namespaces (root with iproute2).
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
        && Command::new("iptables")
            .arg("--version")
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false)
}

fn existing_links() -> String {
    Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes namespaces and bridges left by runs that were killed before they could clean
/// up. Only for when no other run is going on: it removes all of them.
pub fn cleanup_stale() -> usize {
    let mut removed = 0;
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    for line in namespaces.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&format!("{PREFIX}-")) && ip(&["netns", "del", name]).is_ok() {
            removed += 1;
        }
    }
    let rules = Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    for rule in rules.lines() {
        // "-A FORWARD -i rqb3 -o rqb3 -j ACCEPT"
        if rule.starts_with("-A FORWARD -i ") && rule.contains(&format!(" -o {BRIDGE_PREFIX}")) {
            let mut args: Vec<&str> = rule.split_whitespace().collect();
            args[0] = "-D";
            if args
                .get(3)
                .is_some_and(|name| name.starts_with(BRIDGE_PREFIX))
                && run("iptables", &args).is_ok()
            {
                removed += 1;
            }
        }
    }
    for line in existing_links().lines() {
        // "12: rqb3: <BROADCAST,...>"
        if let Some(name) = line.split(':').nth(1).map(str::trim)
            && name.starts_with(BRIDGE_PREFIX)
            && name[BRIDGE_PREFIX.len()..].parse::<u8>().is_ok()
            && ip(&["link", "del", name]).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

impl Network {
    /// Creates a bridge and one namespace per node id, each with its address and loopback.
    pub fn create(nodes: &[u64]) -> Result<Network, String> {
        assert!(
            nodes.iter().all(|id| (1..=250).contains(id)),
            "node ids 1..=250"
        );
        let links = existing_links();
        let index = (0..=250u8)
            .find(|index| !links.contains(&format!(" {BRIDGE_PREFIX}{index}:")))
            .ok_or("no free network index (run `raftq-chaos cleanup`)")?;
        let network = Network {
            index,
            nodes: Mutex::new(Vec::new()),
            drops: Mutex::new(BTreeSet::new()),
            slowed: Mutex::new(BTreeSet::new()),
        };
        let bridge = network.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.host_address()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        // Hosts that bridge through iptables (br_netfilter, as Docker sets up) and drop
        // forwarded packets by default would drop node-to-node traffic on the bridge.
        run("iptables", &network.forward_rule("-I"))?;
        for &id in nodes {
            network.add_node(id)?;
        }
        Ok(network)
    }

    /// Adds a namespace for node `id` (for a node that joins later).
    pub fn add_node(&self, id: u64) -> Result<(), String> {
        assert!((1..=250).contains(&id), "node ids 1..=250");
        self.nodes.lock().expect("nodes").push(id);
        let namespace = self.namespace(id);
        let host_end = format!("rq{}h{id}", self.index);
        ip(&["netns", "add", &namespace])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge(), "up"])?;
        let address = format!("{}/24", self.address(id));
        ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The host rule that lets traffic between the nodes cross the bridge.
    fn forward_rule(&self, action: &str) -> Vec<String> {
        let bridge = self.bridge();
        [
            action, "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]
        .iter()
        .map(|part| part.to_string())
        .collect()
    }

    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.index)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn namespace(&self, id: u64) -> String {
        format!("{PREFIX}-{}-n{id}", self.index)
    }

    /// The file to `setns` into, for starting a process inside the node's namespace.
    pub fn namespace_path(&self, id: u64) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.namespace(id))
    }

    pub fn address(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], self.index, id as u8)
    }

    /// The host side of the bridge, where clients run.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], self.index, 254)
    }

    fn in_namespace(&self, id: u64, program: &str, args: &[&str]) -> Result<(), String> {
        let namespace = self.namespace(id);
        let mut full = vec!["netns", "exec", namespace.as_str(), program];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Node `receiver` drops packets from node `sender` with `percent` probability (100 =
    /// all of them).
    fn drop_from(&self, receiver: u64, sender: u64, percent: u32) -> Result<(), String> {
        let source = self.address(sender).to_string();
        let mut args = vec!["-A", "INPUT", "-s", source.as_str()];
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        if percent < 100 {
            args.extend_from_slice(&[
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                probability.as_str(),
            ]);
        }
        args.extend_from_slice(&["-j", "DROP"]);
        self.in_namespace(receiver, "iptables", &args)?;
        self.drops
            .lock()
            .expect("drops")
            .insert((receiver, sender, percent));
        Ok(())
    }

    /// Cuts every link between the groups (both directions); links inside a group, and
    /// between nodes and the host (clients), stay up. Nodes in no group keep all links.
    pub fn partition(&self, groups: &[Vec<u64>]) -> Result<(), String> {
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a {
                    for &y in b {
                        self.drop_from(x, y, 100)?;
                        self.drop_from(y, x, 100)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every node drops the packets the host sends it: clients and agents in the host
    /// namespace are cut off from the cluster (their connections time out), while the
    /// nodes still reach each other. [`Network::heal`] ends it.
    pub fn cut_off_host(&self) -> Result<(), String> {
        let nodes = self.nodes.lock().expect("nodes").clone();
        let host = self.host_address().to_string();
        for id in nodes {
            self.in_namespace(id, "iptables", &["-A", "INPUT", "-s", &host, "-j", "DROP"])?;
            // Sender 0 stands for the host: heal flushes this node's filters.
            self.drops.lock().expect("drops").insert((id, 0, 100));
        }
        Ok(())
    }

    /// Every other node loses `percent`% of the packets `sender` sends it; the way back is
    /// clean (a one-way lossy link).
    pub fn lossy_from(&self, sender: u64, percent: u32) -> Result<(), String> {
        let nodes = self.nodes.lock().expect("nodes").clone();
        for &receiver in nodes.iter().filter(|&&id| id != sender) {
            self.drop_from(receiver, sender, percent)?;
        }
        Ok(())
    }

    /// Delays what node `id` sends (one way). Returns how it was done.
    pub fn slow_egress(&self, id: u64, delay_ms: u32) -> Result<SlowLink, String> {
        let delay = format!("{delay_ms}ms");
        let jitter = format!("{}ms", delay_ms / 4);
        let netem = self.in_namespace(
            id,
            "tc",
            &[
                "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay, &jitter,
            ],
        );
        let how = match netem {
            Ok(()) => SlowLink::Netem,
            Err(error) if error.contains("unknown") => {
                let latency = format!("{}ms", delay_ms.max(50));
                self.in_namespace(
                    id,
                    "tc",
                    &[
                        "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "512kbit", "burst",
                        "4kb", "latency", &latency,
                    ],
                )?;
                SlowLink::TokenBucket
            }
            Err(error) => return Err(error),
        };
        self.slowed.lock().expect("slowed").insert(id);
        Ok(how)
    }

    /// Removes every filter and queueing discipline the faults installed.
    pub fn heal(&self) -> Result<(), String> {
        let drops: Vec<(u64, u64, u32)> = std::mem::take(&mut *self.drops.lock().expect("drops"))
            .into_iter()
            .collect();
        let mut receivers: Vec<u64> = drops.iter().map(|(receiver, _, _)| *receiver).collect();
        receivers.dedup();
        for receiver in receivers {
            self.in_namespace(receiver, "iptables", &["-F", "INPUT"])?;
        }
        let slowed: Vec<u64> = std::mem::take(&mut *self.slowed.lock().expect("slowed"))
            .into_iter()
            .collect();
        for id in slowed {
            self.in_namespace(id, "tc", &["qdisc", "del", "dev", "eth0", "root"])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for &id in self.nodes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = ip(&["netns", "del", &self.namespace(id)]);
        }
        let _ = run("iptables", &self.forward_rule("-D"));
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
