//! `raftq dev`: a local cluster of real `raftq serve` processes on 127.0.0.1, data kept
//! under one directory across restarts, stopped together on Ctrl-C. TLS is on: a
//! throwaway CA and node certificate are made under `<data-dir>/tls` on first start, and
//! `<data-dir>/client.env` tells a shell how to reach the cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// The HTTP side port of node `i` is `base_port + HTTP_PORT_OFFSET + i`.
pub const HTTP_PORT_OFFSET: u16 = 100;
/// The internal gRPC port of node `i` is `base_port + INTERNAL_PORT_OFFSET + i`.
pub const INTERNAL_PORT_OFFSET: u16 = 200;
/// How long `dev` waits for the cluster to elect a leader before reporting failure.
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct DevOptions {
    pub nodes: u16,
    pub data_dir: PathBuf,
    pub base_port: u16,
}

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    if options.nodes == 0 || options.nodes > 9 {
        anyhow::bail!("--nodes must be in 1..=9");
    }
    if options.base_port == 0
        || u32::from(options.base_port) + u32::from(INTERNAL_PORT_OFFSET) + u32::from(options.nodes)
            - 1
            > u32::from(u16::MAX)
    {
        anyhow::bail!(
            "--base-port {} does not fit {} node(s): each needs a port from 1 up, and the ones {HTTP_PORT_OFFSET} and {INTERNAL_PORT_OFFSET} above it",
            options.base_port,
            options.nodes
        );
    }
    // A node that cannot bind its port exits, while whatever holds the port (often an
    // earlier `raftq dev`) may answer in its place: check before starting any node.
    let taken = ports_in_use(&options);
    if !taken.is_empty() {
        let taken: Vec<String> = taken.iter().map(u16::to_string).collect();
        anyhow::bail!(
            "port(s) {} on 127.0.0.1 already in use (another raftq dev?): stop what holds them, or choose other ports with --base-port",
            taken.join(", ")
        );
    }
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let data_dir = std::path::absolute(&options.data_dir)
        .with_context(|| format!("locating {}", options.data_dir.display()))?;
    let tls = dev_certificates(&data_dir)?;
    let peers: Vec<String> = (0..options.nodes)
        .map(|i| {
            format!(
                "{}=127.0.0.1:{}",
                i + 1,
                options.base_port + INTERNAL_PORT_OFFSET + i
            )
        })
        .collect();
    let peers = peers.join(",");
    let exe = std::env::current_exe().context("locating the raftq binary")?;
    let mut children = Vec::new();
    for i in 0..options.nodes {
        let child = spawn_node(&exe, &options, i, &peers, &tls)?;
        children.push(child);
    }
    let addresses: Vec<String> = (0..options.nodes)
        .map(|i| format!("127.0.0.1:{}", options.base_port + i))
        .collect();
    println!(
        "raftq dev: {} node(s), data in {}",
        options.nodes,
        options.data_dir.display()
    );
    for i in 0..options.nodes {
        println!(
            "  node {}: grpc 127.0.0.1:{}  internal 127.0.0.1:{}  http http://127.0.0.1:{}/metrics  log {}",
            i + 1,
            options.base_port + i,
            options.base_port + INTERNAL_PORT_OFFSET + i,
            options.base_port + HTTP_PORT_OFFSET + i,
            log_path(&options.data_dir, i + 1).display()
        );
    }
    let client_env = write_client_env(&data_dir, &addresses, &tls)?;
    println!("  client settings: source {}", client_env.display());
    let client = raftq_client::Client::new(
        &addresses,
        raftq_client::ClientConfig {
            retry_deadline: READY_DEADLINE,
            transport: raftq_client::Transport::Tls(
                raftq_client::ClientTls::from_files(&tls.ca, None)?.connector(),
            ),
            token: Some(
                std::fs::read_to_string(&tls.admin_token)?
                    .trim()
                    .to_string(),
            ),
            ..raftq_client::ClientConfig::default()
        },
    )?;
    tokio::select! {
        status = wait_for_leader(&client, options.nodes) => {
            match status.and_then(|leader| all_running(&mut children, &options.data_dir).map(|()| leader)) {
                Ok(leader) => println!("raftq dev: ready, leader is {leader}. Try:\n  source {}\n  raftq queue create orders\nCtrl-C stops the cluster.", client_env.display()),
                Err(error) => eprintln!("raftq dev: not ready: {error}; see the node logs"),
            }
        }
        _ = crate::serve::shutdown_signal() => {}
    }
    // A node that exits (or is stopped to try a failover) is reported; the others keep
    // running until Ctrl-C.
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let waits = running.iter_mut().enumerate().filter_map(|(index, child)| {
            child
                .as_mut()
                .map(|child| Box::pin(async move { (index, child.wait().await) }))
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            crate::serve::shutdown_signal().await;
            break;
        }
        let exited = tokio::select! {
            _ = crate::serve::shutdown_signal() => break,
            ((index, result), _, _) = futures::future::select_all(waits) => (index, result),
        };
        let (index, result) = exited;
        let how = match result {
            Ok(status) => status.to_string(),
            Err(error) => error.to_string(),
        };
        eprintln!(
            "raftq dev: node {} exited ({how}); the others keep running",
            index + 1
        );
        running[index] = None;
    }
    let mut children: Vec<Child> = running.into_iter().flatten().collect();
    stop_all(&mut children).await;
    println!("raftq dev: stopped");
    Ok(())
}

/// The gRPC and HTTP ports of the nodes that something already listens on.
fn ports_in_use(options: &DevOptions) -> Vec<u16> {
    (0..options.nodes)
        .flat_map(|i| {
            [
                options.base_port + i,
                options.base_port + INTERNAL_PORT_OFFSET + i,
                options.base_port + HTTP_PORT_OFFSET + i,
            ]
        })
        .filter(|port| {
            matches!(
                std::net::TcpListener::bind(("127.0.0.1", *port)),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse
            )
        })
        .collect()
}

/// Fails if a node has exited already, naming it and its log.
fn all_running(children: &mut [Child], data_dir: &Path) -> anyhow::Result<()> {
    for (index, child) in children.iter_mut().enumerate() {
        if let Some(status) = child.try_wait()? {
            let node_id = index as u16 + 1;
            anyhow::bail!(
                "node {node_id} exited ({status}); its log is {}",
                log_path(data_dir, node_id).display()
            );
        }
    }
    Ok(())
}

fn log_path(data_dir: &Path, node_id: u16) -> PathBuf {
    data_dir.join(format!("node-{node_id}.log"))
}

/// The dev cluster's TLS files and admin token.
struct DevTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    admin_token: PathBuf,
}

/// Makes a throwaway CA, one certificate for every node (valid for 127.0.0.1 and
/// localhost, naming a cluster of its own: `dev-` and random hex) and an admin token under
/// `<data_dir>/tls`, unless they are there from an earlier start.
fn dev_certificates(data_dir: &Path) -> anyhow::Result<DevTls> {
    let dir = data_dir.join("tls");
    let tls = DevTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        admin_token: dir.join("admin.token"),
    };
    if tls.ca.exists() && tls.cert.exists() && tls.key.exists() && tls.admin_token.exists() {
        return Ok(tls);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    raftq_tls::generate::write_file(&tls.admin_token, &crate::auth::new_token(), 0o600)?;
    let ca = raftq_tls::generate::Authority::new("raftq dev CA")?;
    let cluster = format!("dev-{}", &crate::auth::new_token()[..12]);
    ca.issue_in_cluster(
        "raftq dev node",
        &["127.0.0.1".into(), "localhost".into()],
        &cluster,
    )?
    .write(&dir, "node")?;
    // The CA last: its presence says the set is whole.
    raftq_tls::generate::write_file(&tls.ca, &ca.cert_pem(), 0o644)?;
    Ok(tls)
}

/// Writes `<data_dir>/client.env`: the `export` lines that point the CLI (and any client
/// reading the same variables) at this cluster.
fn write_client_env(
    data_dir: &Path,
    addresses: &[String],
    tls: &DevTls,
) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("client.env");
    let text = format!(
        "# raftq dev: source this file to reach the local cluster.\n\
         export RAFTQ_ADDR={}\n\
         export RAFTQ_CA_CERT={}\n\
         export RAFTQ_TOKEN=$(cat {})\n",
        addresses.join(","),
        tls.ca.display(),
        tls.admin_token.display()
    );
    raftq_tls::generate::write_file(&path, &text, 0o600)?;
    Ok(path)
}

fn spawn_node(
    exe: &Path,
    options: &DevOptions,
    i: u16,
    peers: &str,
    tls: &DevTls,
) -> anyhow::Result<Child> {
    let node_id = i + 1;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&options.data_dir, node_id))
        .context("opening node log")?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--node-id")
        .arg(node_id.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", options.base_port + i))
        .arg("--internal-listen")
        .arg(format!(
            "127.0.0.1:{}",
            options.base_port + INTERNAL_PORT_OFFSET + i
        ))
        .arg("--http-listen")
        .arg(format!(
            "127.0.0.1:{}",
            options.base_port + HTTP_PORT_OFFSET + i
        ))
        .arg("--data-dir")
        .arg(options.data_dir.join(format!("node-{node_id}")))
        .arg("--peers")
        .arg(peers)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--tls-ca")
        .arg(&tls.ca)
        .arg("--admin-token-file")
        .arg(&tls.admin_token)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting node {node_id}"))?;
    Ok(child)
}

/// Waits until the cluster has a leader and all `nodes` are voters (one node forms the
/// cluster, the others join it); names the leader.
async fn wait_for_leader(client: &raftq_client::Client, nodes: u16) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(status) = client.cluster_status().await
            && status.leader_id != 0
            && status
                .nodes
                .iter()
                .filter(|node| node.voter && !node.rebuilding)
                .count()
                == usize::from(nodes)
        {
            return Ok(format!(
                "node {} at {}",
                status.leader_id, status.leader_address
            ));
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no leader within {READY_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every node, give them a few seconds to stop cleanly, then kill what is left.
async fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}
