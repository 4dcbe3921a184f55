//! The tests' TLS: one throwaway CA per test process, a certificate per node (valid for
//! its addresses), and a client that trusts the CA and presents a certificate from it (so
//! it can also speak to a node's internal port, as a peer would).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use raftq_client::{ClientTls, Transport};
use raftq_tls::generate::{Authority, Validity, write_file};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub struct TestCa {
    authority: Authority,
    /// The bootstrap admin token of every test node.
    admin_token: String,
    /// Holds `ca.pem` and the client's certificate; kept for the whole process.
    dir: tempfile::TempDir,
    client: ClientTls,
}

impl TestCa {
    /// A new CA, with its certificate and a client certificate written to a directory of
    /// its own.
    pub fn new(name: &str) -> TestCa {
        let authority = Authority::new(name).expect("a test CA");
        let dir = tempfile::tempdir().expect("a directory for the test CA");
        write_file(&dir.path().join("ca.pem"), &authority.cert_pem(), 0o644).expect("write ca.pem");
        let (cert, key) = authority
            .issue("raftq test client", &[])
            .expect("a client certificate")
            .write(dir.path(), "client")
            .expect("write the client certificate");
        let client = ClientTls::from_files(&dir.path().join("ca.pem"), Some((&cert, &key)))
            .expect("the test client's TLS");
        let admin_token = format!("test-admin-{}", std::process::id()) + &"0".repeat(16);
        write_file(&dir.path().join("admin.token"), &admin_token, 0o600)
            .expect("write the admin token");
        TestCa {
            authority,
            admin_token,
            dir,
            client,
        }
    }

    /// The CA certificate's path (what `--ca-cert` and `--tls-ca` take).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The bootstrap admin token's file (`--admin-token-file`).
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// The bootstrap admin token: the tests' clients act as the admin unless a test
    /// gives them a principal's token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The client certificate and key (`--client-cert`, `--client-key`).
    pub fn client_identity(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("client.pem"),
            self.dir.path().join("client.key"),
        )
    }

    /// Writes `<dir>/<stem>.pem` and `.key`: a certificate valid for 127.0.0.1, localhost
    /// and `ip`.
    pub fn issue_node(&self, dir: &Path, stem: &str, ip: &str) -> (PathBuf, PathBuf) {
        self.issue_node_with(dir, stem, ip, Validity::Current)
    }

    pub fn issue_node_with(
        &self,
        dir: &Path,
        stem: &str,
        ip: &str,
        validity: Validity,
    ) -> (PathBuf, PathBuf) {
        self.authority
            .issue_with(stem, &node_names(ip), validity)
            .expect("a node certificate")
            .write(dir, stem)
            .expect("write the node certificate")
    }

    /// As [`TestCa::issue_node`], naming cluster `cluster` in the certificate.
    pub fn issue_node_in_cluster(
        &self,
        dir: &Path,
        stem: &str,
        ip: &str,
        cluster: &str,
    ) -> (PathBuf, PathBuf) {
        self.authority
            .issue_in_cluster(stem, &node_names(ip), cluster)
            .expect("a node certificate")
            .write(dir, stem)
            .expect("write the node certificate")
    }

    /// A client certificate whose subject's common name is `name` (the principal it
    /// names), written to `<dir>/<name>.pem` and `.key`.
    pub fn issue_client(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.authority
            .issue(name, &[])
            .expect("a client certificate")
            .write(dir, name)
            .expect("write the client certificate")
    }

    /// How a test client connects: TLS, trusting this CA, presenting its certificate.
    pub fn transport(&self) -> Transport {
        Transport::Tls(self.client.connector())
    }
}

/// The names a node certificate is valid for: loopback and `ip`.
fn node_names(ip: &str) -> Vec<String> {
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !names.iter().any(|name| name == ip) {
        names.push(ip.to_string());
    }
    names
}

/// The `raftq serve` flags of a node whose certificate (for 127.0.0.1) is written to
/// `<dir>/<stem>.pem`.
pub fn node_tls_args(dir: &Path, stem: &str) -> Vec<String> {
    let (cert, key) = test_ca().issue_node(dir, stem, "127.0.0.1");
    tls_args(&cert, &key)
}

/// The `raftq serve` flags of a node presenting `cert` and `key`, trusting the tests' CA,
/// with the tests' admin token.
pub fn tls_args(cert: &Path, key: &Path) -> Vec<String> {
    let ca = test_ca();
    vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
        "--tls-ca".to_string(),
        ca.ca_path().display().to_string(),
        "--admin-token-file".to_string(),
        ca.admin_token_path().display().to_string(),
    ]
}

/// The CA of every cluster this test process starts.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| TestCa::new("raftq test CA"))
}

/// A connection of the tests' generated stubs: the tests' TLS, the admin token on every
/// call.
pub type TestChannel = InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>;

/// Adds the bootstrap admin token to a call.
fn as_admin(mut request: Request<()>) -> Result<Request<()>, Status> {
    let value = format!("Bearer {}", test_ca().admin_token())
        .parse()
        .expect("a header value");
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// A channel to `address` (`HOST:PORT`, or with `http://`) over the tests' TLS, connected,
/// whose calls carry the admin token.
pub async fn connect(address: &str) -> TestChannel {
    let address = address.trim_start_matches("http://");
    let endpoint = Endpoint::from_shared(format!("http://{address}")).expect("an endpoint");
    let channel = test_ca()
        .transport()
        .connect(&endpoint)
        .await
        .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
    InterceptedService::new(channel, as_admin)
}
