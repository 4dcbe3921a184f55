//! A `raftq agent` process for the agent producers ("a*"): they send with plain gRPC calls
//! to the agent on a loopback port, the agent keeps each send on its disk before it answers
//! and forwards it to the cluster under the faults. The nemesis kills it with -9 and starts
//! it again on the same data directory (`kill-agent`), and cuts every client of the host off
//! from the cluster (`cut-off-clients`), which the agent must ride out.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use raftq_client::pb::agent_service_client::AgentServiceClient;
use raftq_client::{Client, ClientConfig, Transport, pb};

/// The agent of a run: its process, the address it serves and the data directory it keeps.
pub struct AgentProcess {
    child: Option<Child>,
    address: String,
    cluster: Vec<String>,
    /// Holds the data directory (and the agent's log) until the run ends.
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts an agent forwarding to the nodes at `cluster` (with the tests' CA and admin
    /// token, as any client of the run) and waits until it answers.
    pub async fn start(cluster: Vec<String>) -> anyhow::Result<AgentProcess> {
        let port = raftq_tests::free_port();
        let mut agent = AgentProcess {
            child: None,
            address: format!("127.0.0.1:{port}"),
            cluster,
            dir: tempfile::tempdir()?,
        };
        agent.spawn()?;
        agent.wait_until_answering().await?;
        Ok(agent)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let child = raftq_tests::cli()
            .args(["agent", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen", &self.address])
            .args(["--cluster", &self.cluster.join(",")])
            .args(["--name", "chaos-agent"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_until_answering(&self) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < end {
            if self.status().await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the agent at {} did not answer within 20 s", self.address)
    }

    /// What the agent holds, or `None` when it does not answer.
    pub async fn status(&self) -> Option<pb::AgentStatusResponse> {
        let mut agent = AgentServiceClient::connect(format!("http://{}", self.address))
            .await
            .ok()?;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            agent.agent_status(pb::AgentStatusRequest {}),
        )
        .await
        .ok()?
        .ok()?;
        Some(answer.into_inner())
    }

    /// A client that sends through the agent: plaintext on loopback, as an application
    /// beside it would; retries reuse the send's idempotency key.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(
            std::slice::from_ref(&self.address),
            ClientConfig {
                transport: Transport::Plaintext,
                token: None,
                retry_deadline: Duration::from_secs(5),
                attempt_timeout: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        )?)
    }

    /// Kills the agent with -9 (what it had synced stays on its disk).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same data directory and address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_until_answering().await
    }

    /// Waits until the agent holds nothing (at most `limit`); whether it emptied.
    pub async fn flush(&self, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        let mut last = None;
        while tokio::time::Instant::now() < end {
            last = self.status().await;
            if last
                .as_ref()
                .is_some_and(|status| status.pending == 0 && status.in_flight == 0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("raftq-chaos: the agent did not forward everything: {last:?}");
        false
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
