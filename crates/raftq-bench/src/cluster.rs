//! A raftq cluster the benchmark starts itself: real `raftq serve` processes on
//! 127.0.0.1 with fresh data directories, so each scenario starts from empty disks and
//! the benchmark can read each node's memory and restart a node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use raftq_client::{Client, ClientConfig, ClientTls, Transport};
use tokio::process::{Child, Command};

const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Node `i`'s ports: public `base_port + i`, HTTP `base_port + 100 + i`, internal
/// `base_port + INTERNAL_PORT_OFFSET + i`.
const INTERNAL_PORT_OFFSET: u16 = 200;

pub struct SpawnedCluster {
    exe: PathBuf,
    dir: tempfile::TempDir,
    base_port: u16,
    peers: String,
    nodes: Vec<Option<Child>>,
    /// The TLS flags every node starts with (`--insecure` without TLS).
    tls_args: Vec<String>,
    transport: Transport,
    /// The admin token clients authenticate with (with TLS).
    token: Option<String>,
    /// Extra `RAFTQ_*` settings of every node.
    env: Vec<(String, String)>,
}

impl SpawnedCluster {
    pub async fn start(
        exe: &Path,
        parent: &Path,
        nodes: u16,
        base_port: u16,
        tls: bool,
    ) -> anyhow::Result<SpawnedCluster> {
        SpawnedCluster::start_with(exe, parent, nodes, base_port, tls, Vec::new()).await
    }

    /// As [`SpawnedCluster::start`], every node with the settings `env` (`RAFTQ_*`).
    pub async fn start_with(
        exe: &Path,
        parent: &Path,
        nodes: u16,
        base_port: u16,
        tls: bool,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<SpawnedCluster> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("raftq-")
            .tempdir_in(parent)?;
        let peers = (0..nodes)
            .map(|i| {
                format!(
                    "{}=127.0.0.1:{}",
                    i + 1,
                    base_port + INTERNAL_PORT_OFFSET + i
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let (tls_args, transport, token) = if tls {
            throwaway_tls(dir.path())?
        } else {
            (vec!["--insecure".to_string()], Transport::Plaintext, None)
        };
        let mut cluster = SpawnedCluster {
            exe: exe.to_path_buf(),
            dir,
            base_port,
            peers,
            nodes: (0..nodes).map(|_| None).collect(),
            tls_args,
            transport,
            token,
            env,
        };
        for index in 0..nodes as usize {
            cluster.spawn(index)?;
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// A client of every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(
            &self.addresses(),
            ClientConfig {
                transport: self.transport.clone(),
                token: self.token.clone(),
                ..ClientConfig::default()
            },
        )?)
    }

    /// How a client reaches the nodes, and the token it authenticates with.
    pub fn access(&self) -> (Transport, Option<String>) {
        (self.transport.clone(), self.token.clone())
    }

    pub fn addresses(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.address(i)).collect()
    }

    fn address(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.base_port as usize + index)
    }

    /// `(node-N, pid)` of every running node.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, child)| Some((format!("raftq-node-{}", i + 1), child.as_ref()?.id()?)))
            .collect()
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let node_id = index + 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{node_id}.log")))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--node-id")
            .arg(node_id.to_string())
            .arg("--listen")
            .arg(self.address(index))
            .arg("--internal-listen")
            .arg(format!(
                "127.0.0.1:{}",
                self.base_port as usize + INTERNAL_PORT_OFFSET as usize + index
            ))
            .arg("--http-listen")
            .arg(format!(
                "127.0.0.1:{}",
                self.base_port as usize + 100 + index
            ))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{node_id}")))
            .arg("--peers")
            .arg(&self.peers)
            .args(&self.tls_args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", self.exe.display()))?;
        self.nodes[index] = Some(child);
        Ok(())
    }

    async fn wait_for_leader(&self) -> anyhow::Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            // One node forms the cluster and the others join it: ready once every node
            // is a voter.
            if let Ok(status) = client.cluster_status().await
                && status.leader_id != 0
                && status
                    .nodes
                    .iter()
                    .filter(|node| node.voter && !node.rebuilding)
                    .count()
                    == self.nodes.len()
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no leader with every node a voter within {READY_DEADLINE:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of a node that is not the leader.
    pub async fn follower(&self) -> anyhow::Result<usize> {
        let client = self.client()?;
        let leader = client.cluster_status().await?.leader_id as usize;
        Ok((0..self.nodes.len()).find(|i| i + 1 != leader).unwrap_or(0))
    }

    /// Kills node `index` with SIGKILL, starts it again on the same data and returns how
    /// long it took until it answered and had applied everything the leader had committed
    /// when it was killed.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<Duration> {
        let leader = self.client()?;
        let status = leader.cluster_status().await?;
        let target = status
            .nodes
            .iter()
            .map(|node| node.committed_index)
            .max()
            .unwrap_or(0);
        if let Some(mut child) = self.nodes[index].take() {
            child.kill().await?;
        }
        let started = Instant::now();
        self.spawn(index)?;
        let node = Client::new(
            &[self.address(index)],
            ClientConfig {
                retry_deadline: Duration::from_millis(500),
                max_backoff: Duration::from_millis(50),
                transport: self.transport.clone(),
                token: self.token.clone(),
                ..ClientConfig::default()
            },
        )?;
        let deadline = started + READY_DEADLINE * 5;
        loop {
            if let Ok(info) = node.node_info().await
                && info.applied_index >= target
            {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} not caught up within {:?}",
                index + 1,
                deadline - started
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills every node (an outage); [`SpawnedCluster::start_nodes`] brings them back.
    pub async fn stop_nodes(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.take() {
                let _ = child.kill().await;
            }
        }
    }

    /// Starts every node again on its data; returns once there is a leader.
    pub async fn start_nodes(&mut self) -> anyhow::Result<()> {
        for index in 0..self.nodes.len() {
            self.spawn(index)?;
        }
        self.wait_for_leader().await
    }

    pub async fn stop(mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill().await;
        }
    }
}

/// A throwaway CA, node certificate and admin token under `dir`: the nodes' flags, how a
/// client trusting the CA connects, and the token it authenticates with.
fn throwaway_tls(dir: &Path) -> anyhow::Result<(Vec<String>, Transport, Option<String>)> {
    let ca = raftq_tls::generate::Authority::new("raftq bench CA")?;
    let ca_path = dir.join("ca.pem");
    raftq_tls::generate::write_file(&ca_path, &ca.cert_pem(), 0o644)?;
    let (cert, key) = ca
        .issue(
            "raftq bench node",
            &["127.0.0.1".into(), "localhost".into()],
        )?
        .write(dir, "node")?;
    let token: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let token_path = dir.join("admin.token");
    raftq_tls::generate::write_file(&token_path, &token, 0o600)?;
    let args = [
        ("--tls-cert", &cert),
        ("--tls-key", &key),
        ("--tls-ca", &ca_path),
        ("--admin-token-file", &token_path),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect();
    let transport = Transport::Tls(ClientTls::from_files(&ca_path, None)?.connector());
    Ok((args, transport, Some(token)))
}
