//! Test harness: starts real `raftq serve` processes on loopback ports (TLS and an admin
//! token, as in production: see `tls`) with data in a temporary directory, and offers the faults the cluster tests inject (kill -9, SIGTERM,
//! restart, adding a node). Tests wait for conditions with deadlines, never sleep-and-hope.

mod calls;
pub mod mail;
pub mod netns;
pub mod postgres;
pub mod powerloss;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use raftq_client::{Client, ClientConfig};

pub use calls::{
    create_queue, drain_bodies, http_get, member_ids, metric_value, node_metric, queue_stats,
    refused_start, wait_until, wait_until_or,
};
pub use raftq_client::pb;
pub use tls::{connect, node_tls_args, test_ca, tls_args};

/// Raft timing used by the tests: short, so elections after a kill finish quickly.
const TEST_RAFT_ENV: [(&str, &str); 3] = [
    ("RAFTQ_RAFT__HEARTBEAT_MS", "50"),
    ("RAFTQ_RAFT__ELECTION_TIMEOUT_MIN_MS", "300"),
    ("RAFTQ_RAFT__ELECTION_TIMEOUT_MAX_MS", "600"),
];

/// libfaketime from Debian's `faketime` package, for clock-skew faults.
/// How long a node may take to exit after SIGTERM (a leader first hands over, which is
/// bounded by seconds) before a test fails.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);
pub const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The `raftq` binary under test: `$RAFTQ_BIN`, or the one built next to this test binary.
pub fn raftq_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RAFTQ_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/cluster-<hash> -> target/<profile>/raftq
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let binary = profile_dir.join("raftq");
    assert!(
        binary.exists(),
        "{} not found: build it first (cargo build -p raftq-server) or set RAFTQ_BIN",
        binary.display()
    );
    binary
}

/// The `raftq` command line as a user runs it against the test clusters: TLS, trusting
/// the tests' CA (`RAFTQ_CA_CERT`).
pub fn cli() -> Command {
    let mut command = Command::new(raftq_binary());
    command
        .env("RAFTQ_CA_CERT", test_ca().ca_path())
        .env("RAFTQ_TOKEN", test_ca().admin_token())
        .env_remove("RAFTQ_ADDR");
    command
}

/// A port for a test node. Not one the kernel picks for port 0: those come from the
/// ephemeral range, from which every outgoing connection (the tests make many) also takes
/// its local port, so one could take it between this check and the node's bind. Instead,
/// ports below that range, from a block of 1,000 per test process, handed out in turn
/// and each checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const BLOCKS: u32 = 20;
    const BLOCK: u32 = 1_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = FIRST + (std::process::id() % BLOCKS) * BLOCK;
    for _ in 0..BLOCK {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        let port = u16::try_from(port).expect("ports below 30,000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {block}..{}", block + BLOCK);
}

pub struct NodeProcess {
    pub id: u64,
    /// The public gRPC address (what clients use).
    pub grpc: String,
    /// The internal gRPC address (Raft, membership, forwarded calls).
    pub internal: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Wall-clock offset (faketime syntax such as `+1h`) the process runs with, if any.
    clock_offset: Option<String>,
    args: Vec<String>,
    extra_env: Vec<(String, String)>,
    /// The network namespace the node runs in (`None`: the host's, on loopback).
    namespace: Option<PathBuf>,
    /// The power-loss file system mounted at `data_dir`, when the cluster has them.
    disk: Option<powerloss::PowerLossFs>,
}

impl NodeProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log file");
        let mut command = Command::new(raftq_binary());
        if let Some(offset) = &self.clock_offset {
            // A real per-process clock skew: libfaketime, preloaded into the node itself
            // (the `faketime` wrapper would fork, and signals would miss the node), shifts
            // the wall clock only.
            command
                .env("LD_PRELOAD", FAKETIME_LIBRARY)
                .env("FAKETIME", offset)
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        command
            .arg("serve")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .env_remove("RAFTQ_ADDR");
        for (key, value) in TEST_RAFT_ENV {
            command.env(key, value);
        }
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        if let Some(path) = &self.namespace {
            // Enter the node's namespace between fork and exec, so the node itself (not a
            // wrapper) is the child whose pid the faults signal.
            let namespace = std::fs::File::open(path).expect("open the node's namespace");
            use std::os::unix::process::CommandExt as _;
            // SAFETY: the closure only calls setns(2), which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        self.child = Some(command.spawn().expect("spawn raftq serve"));
    }

    /// Whether the node's process has exited on its own (it refused to start, say); the
    /// node then counts as stopped.
    pub fn has_exited(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_some());
        if exited {
            self.child = None;
        }
        exited
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, signal).expect("signal node");
        }
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        // A node stopped in the middle of a held write dies only once the write is answered.
        if let Some(disk) = &self.disk {
            disk.release_held();
        }
        if let Some(mut child) = self.child.take() {
            child.wait().expect("reap killed node");
        }
    }

    /// SIGSTOP: the process freezes, like a stalled VM; sockets stay open.
    pub fn pause(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Stops the node with SIGTERM and waits for it to exit. A node that has not exited
    /// within [`STOP_DEADLINE`] fails the test (after being killed), rather than hanging it.
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_DEADLINE;
        while child.try_wait().expect("wait for stopped node").is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not exit within {STOP_DEADLINE:?} of SIGTERM\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes the (stopped) node's data: the disk of a pod whose volume was lost.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        match &mut self.disk {
            Some(disk) => disk.wipe().expect("replace the node's disk"),
            None => {
                std::fs::remove_dir_all(&self.data_dir).expect("remove the node's data directory")
            }
        }
    }

    /// Power loss: kill -9, then every write the node had not made durable is gone (its
    /// data directory is on a power-loss file system: see [`ClusterOptions::power_loss_disks`]).
    /// The node stays down until [`NodeProcess::restart`].
    pub fn lose_power(&mut self) {
        self.kill();
        self.disk
            .as_mut()
            .expect("the cluster was started with power-loss disks")
            .lose_power()
            .expect("drop the node's unsynced writes");
    }

    /// Holds the node's first write at or past `offset` into a file whose path in the data
    /// directory contains `name_part`: the node stops in the middle of writing that file
    /// (a snapshot being built or received, say) until it loses power or is killed. The
    /// receiver gets the path once the write is held.
    pub fn hold_write(&self, name_part: &str, offset: u64) -> std::sync::mpsc::Receiver<PathBuf> {
        self.disk
            .as_ref()
            .expect("the cluster was started with power-loss disks")
            .hold_write(name_part, offset)
    }

    /// Bytes the node has written and not yet synced (0 without a power-loss disk).
    pub fn unsynced_bytes(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, powerloss::PowerLossFs::unsynced_bytes)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        self.spawn();
    }

    /// Restarts the (stopped) node with its wall clock shifted by `offset` (e.g. `+1h`,
    /// `-30m`; faketime syntax), or with the true clock for `None`.
    pub fn restart_with_clock(&mut self, offset: Option<&str>) {
        self.clock_offset = offset.map(str::to_string);
        self.restart();
    }

    pub fn client(&self) -> Client {
        Client::new(std::slice::from_ref(&self.grpc), test_client_config()).expect("client")
    }

    /// The node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

pub fn test_client_config() -> ClientConfig {
    ClientConfig {
        retry_deadline: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(10),
        transport: test_ca().transport(),
        token: Some(test_ca().admin_token().to_string()),
        ..ClientConfig::default()
    }
}

/// Fields drop in order: the processes first, then their network and data.
pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    /// The private network, when the nodes run in their own namespaces.
    pub network: Option<Arc<netns::Network>>,
    /// The cluster the nodes' certificates name, if any (nodes added later get the same).
    cluster_name: Option<String>,
    /// The extra environment every node gets, nodes added later too.
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `RAFTQ_*` environment for every node (e.g. snapshot frequency).
    pub env: Vec<(String, String)>,
    /// Run every node in its own network namespace with its own address (needs root; see
    /// [`netns`]), instead of on loopback ports.
    pub network_namespaces: bool,
    /// Put every node's data directory on a power-loss file system (needs root and
    /// `/dev/fuse`; see [`powerloss`]), so that [`NodeProcess::lose_power`] can drop what
    /// was not synced.
    pub power_loss_disks: bool,
    /// The cluster the nodes' certificates name (they then speak only to peers naming the
    /// same one, and the cluster takes the name as its id); none by default.
    pub cluster_name: Option<String>,
}

/// The gRPC (public and internal) and HTTP ports of nodes that have an address of their
/// own.
const NAMESPACED_GRPC_PORT: u16 = 7000;
const NAMESPACED_INTERNAL_PORT: u16 = 7100;
const NAMESPACED_HTTP_PORT: u16 = 8000;

/// Where one node listens.
#[derive(Debug, Clone)]
struct Endpoints {
    grpc: String,
    internal: String,
    http: String,
}

impl Cluster {
    /// Starts `size` nodes that form one cluster; waits until it has a leader.
    pub async fn start(size: u64) -> Cluster {
        Cluster::start_with(size, ClusterOptions::default()).await
    }

    pub async fn start_with(size: u64, options: ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids: Vec<u64> = (1..=size).collect();
        let network = options.network_namespaces.then(|| {
            Arc::new(netns::Network::create(&ids).expect("create the nodes' network namespaces"))
        });
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            network,
            cluster_name: options.cluster_name.clone(),
            env: options.env.clone(),
        };
        let endpoints: Vec<Endpoints> = ids.iter().map(|&id| cluster.endpoints(id)).collect();
        let peers = endpoints
            .iter()
            .zip(&ids)
            .map(|(endpoints, id)| format!("{id}={}", endpoints.internal))
            .collect::<Vec<_>>()
            .join(",");
        for (id, endpoints) in ids.into_iter().zip(endpoints) {
            let node = cluster.new_node(
                id,
                endpoints,
                vec!["--peers".into(), peers.clone()],
                &options,
            );
            cluster.nodes.push(node);
        }
        cluster.wait_for_leader().await;
        cluster.wait_for_voters(size).await;
        cluster
    }

    /// Waits until the cluster counts nodes 1 to `size` as voters that may vote (none is
    /// still catching up): one node forms the cluster, the others join it.
    pub async fn wait_for_voters(&self, size: u64) {
        let client = self.client();
        wait_until_or(
            "every node is a voter that votes",
            Duration::from_secs(60),
            || async {
                let status = client.cluster_status().await.ok()?;
                let voting = status
                    .nodes
                    .iter()
                    .filter(|node| node.voter && !node.rebuilding && node.role != "unknown")
                    .count();
                (voting as u64 == size).then_some(())
            },
            || self.logs(),
        )
        .await;
    }

    /// The addresses node `id` listens on: its own address in its namespace, or free
    /// loopback ports.
    fn endpoints(&self, id: u64) -> Endpoints {
        match &self.network {
            Some(network) => {
                let address = network.address(id);
                Endpoints {
                    grpc: format!("{address}:{NAMESPACED_GRPC_PORT}"),
                    internal: format!("{address}:{NAMESPACED_INTERNAL_PORT}"),
                    http: format!("{address}:{NAMESPACED_HTTP_PORT}"),
                }
            }
            None => Endpoints {
                grpc: format!("127.0.0.1:{}", free_port()),
                internal: format!("127.0.0.1:{}", free_port()),
                http: format!("127.0.0.1:{}", free_port()),
            },
        }
    }

    fn new_node(
        &self,
        id: u64,
        endpoints: Endpoints,
        mut extra: Vec<String>,
        options: &ClusterOptions,
    ) -> NodeProcess {
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let ip = endpoints
            .grpc
            .rsplit_once(':')
            .map_or("127.0.0.1", |(ip, _)| ip);
        let stem = format!("node-{id}");
        let (cert, key) = match &options.cluster_name {
            Some(cluster) => test_ca().issue_node_in_cluster(self.dir.path(), &stem, ip, cluster),
            None => test_ca().issue_node(self.dir.path(), &stem, ip),
        };
        let mut args = tls_args(&cert, &key);
        args.extend([
            "--node-id".to_string(),
            id.to_string(),
            "--listen".to_string(),
            endpoints.grpc.clone(),
            "--internal-listen".to_string(),
            endpoints.internal.clone(),
            "--http-listen".to_string(),
            endpoints.http.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ]);
        args.append(&mut extra);
        let disk = options.power_loss_disks.then(|| {
            powerloss::PowerLossFs::mount(
                &self.dir.path().join(format!("node-{id}.disk")),
                &data_dir,
            )
            .expect("mount the node's power-loss file system")
        });
        let mut node = NodeProcess {
            id,
            grpc: endpoints.grpc,
            internal: endpoints.internal,
            http: endpoints.http,
            log: self.dir.path().join(format!("node-{id}.log")),
            data_dir,
            child: None,
            clock_offset: None,
            args,
            extra_env: options.env.clone(),
            namespace: self
                .network
                .as_ref()
                .map(|network| network.namespace_path(id)),
            disk,
        };
        node.spawn();
        node
    }

    /// Starts a new node that joins through node 1's internal address (learner, then
    /// voter).
    pub fn spawn_joining_node(&mut self, id: u64) -> &NodeProcess {
        let join = self.nodes[0].internal.clone();
        if let Some(network) = &self.network {
            network
                .add_node(id)
                .expect("a network namespace for the new node");
        }
        let endpoints = self.endpoints(id);
        let node = self.new_node(
            id,
            endpoints,
            vec!["--join".into(), join],
            &ClusterOptions {
                cluster_name: self.cluster_name.clone(),
                env: self.env.clone(),
                ..ClusterOptions::default()
            },
        );
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// Stops every node (SIGTERM, each waited for).
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Starts every node again on its data; waits until there is a leader.
    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_for_leader().await;
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|node| node.id == id)
            .expect("node id")
    }

    /// A client that knows every running node.
    pub fn client(&self) -> Client {
        let addresses: Vec<String> = self.nodes.iter().map(|node| node.grpc.clone()).collect();
        Client::new(&addresses, test_client_config()).expect("client")
    }

    /// Waits until some running node reports a leader that is itself running; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        let running: Vec<&NodeProcess> =
            self.nodes.iter().filter(|node| node.is_running()).collect();
        wait_until_or(
            "a leader is elected",
            Duration::from_secs(30),
            || async {
                for node in &running {
                    if let Ok(info) = node.client().node_info().await
                        && info.role == "leader"
                    {
                        return Some(info.node_id);
                    }
                }
                None
            },
            || self.logs(),
        )
        .await
    }

    /// The id of some running node other than `leader`.
    /// The leader's last log index, as it reports it.
    pub async fn last_log_index(&self) -> u64 {
        let status = self.client().cluster_status().await.expect("status");
        status
            .nodes
            .iter()
            .find(|node| node.node_id == status.leader_id)
            .expect("the leader reports")
            .last_log_index
    }

    pub fn follower_of(&self, leader: u64) -> u64 {
        self.nodes
            .iter()
            .find(|node| node.id != leader && node.is_running())
            .expect("a running follower")
            .id
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- node {} ---\n{}", node.id, node.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
