//! Real TLS handshakes over loopback sockets: the acceptors of both ports, the connector,
//! and a rotation taken into use without a restart.

use std::path::Path;

use raftq_tls::generate::{Authority, write_file};
use raftq_tls::{ClientTls, Connector, NodeTls, TlsFiles, incoming};
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tower::Service;

/// A node's files under `dir`, issued by `ca`, with `ca` as the cluster CA.
fn node_files(dir: &Path, ca: &Authority) -> TlsFiles {
    files_of(dir, ca, None)
}

/// A node's files under `dir`, issued by `ca` for cluster `cluster`.
fn named_node_files(dir: &Path, ca: &Authority, cluster: &str) -> TlsFiles {
    files_of(dir, ca, Some(cluster))
}

fn files_of(dir: &Path, ca: &Authority, cluster: Option<&str>) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let ca_path = dir.join("ca.pem");
    write_file(&ca_path, &ca.cert_pem(), 0o644).unwrap();
    let names = ["127.0.0.1".to_string()];
    let issued = match cluster {
        Some(cluster) => ca.issue_in_cluster("node", &names, cluster),
        None => ca.issue("node", &names),
    };
    let (cert, key) = issued.unwrap().write(dir, "node").unwrap();
    TlsFiles {
        cert,
        key,
        ca: ca_path,
        client_ca: None,
    }
}

/// Serves `port` of `tls` on a loopback listener: each accepted connection gets one byte
/// back for each byte it sends. Returns the address.
async fn serve(tls: NodeTls, internal: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut connections = incoming(listener, "test", move || {
        if internal {
            tls.internal_acceptor()
        } else {
            tls.public_acceptor()
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(mut connection)) = connections.next().await {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while connection.read_exact(&mut byte).await.is_ok() {
                    if connection.write_all(&byte).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Whether a client with `tls` gets a byte echoed by the server at `address`.
async fn echoes(address: &str, tls: &ClientTls) -> bool {
    echoes_through(address, tls.connector()).await
}

/// Whether a connection `connector` opens gets a byte echoed by the server at `address`.
async fn echoes_through(address: &str, mut connector: Connector) -> bool {
    let uri: http::Uri = format!("http://{address}").parse().unwrap();
    let Ok(io) = connector.call(uri).await else {
        return false;
    };
    let mut stream = io.into_inner();
    let mut byte = [0u8; 1];
    stream.write_all(b"x").await.is_ok() && stream.read_exact(&mut byte).await.is_ok()
}

#[tokio::test]
async fn the_public_port_serves_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("cluster CA").unwrap();
    let tls = NodeTls::load(node_files(dir.path(), &ca)).unwrap();
    let address = serve(tls, false).await;
    assert!(
        echoes(
            &address,
            &ClientTls::from_pem(&ca.cert_pem(), None).unwrap()
        )
        .await
    );
    let other = Authority::new("another CA").unwrap();
    assert!(
        !echoes(
            &address,
            &ClientTls::from_pem(&other.cert_pem(), None).unwrap()
        )
        .await
    );
}

#[tokio::test]
async fn the_internal_port_needs_a_client_certificate_from_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("cluster CA").unwrap();
    let tls = NodeTls::load(node_files(dir.path(), &ca)).unwrap();
    let address = serve(tls, true).await;
    let peer = ca.issue("peer", &[]).unwrap();
    let with_peer_certificate =
        ClientTls::from_pem(&ca.cert_pem(), Some((&peer.cert_pem, &peer.key_pem))).unwrap();
    assert!(echoes(&address, &with_peer_certificate).await);
    let anonymous = ClientTls::from_pem(&ca.cert_pem(), None).unwrap();
    assert!(!echoes(&address, &anonymous).await, "no client certificate");
    let other = Authority::new("another CA").unwrap();
    let stranger = other.issue("stranger", &[]).unwrap();
    let with_foreign_certificate = ClientTls::from_pem(
        &ca.cert_pem(),
        Some((&stranger.cert_pem, &stranger.key_pem)),
    )
    .unwrap();
    assert!(
        !echoes(&address, &with_foreign_certificate).await,
        "another CA"
    );
}

#[tokio::test]
async fn rotated_files_are_taken_into_use_and_a_half_written_rotation_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new("first CA").unwrap();
    let files = node_files(dir.path(), &first);
    let tls = NodeTls::load(files.clone()).unwrap();
    let address = serve(tls.clone(), false).await;
    let next = Authority::new("next CA").unwrap();
    let trusting_next = ClientTls::from_pem(&next.cert_pem(), None).unwrap();
    assert!(!echoes(&address, &trusting_next).await);

    // Half written: the new key, still the old certificate. Refused; the old set serves.
    let issued = next.issue("node", &["127.0.0.1".into()]).unwrap();
    write_file(&files.key, &issued.key_pem, 0o600).unwrap();
    assert!(
        tls.reload_if_changed().is_err(),
        "a key that does not match is refused"
    );
    assert!(
        echoes(
            &address,
            &ClientTls::from_pem(&first.cert_pem(), None).unwrap()
        )
        .await
    );

    write_file(&files.cert, &issued.cert_pem, 0o644).unwrap();
    assert!(
        tls.reload_if_changed().unwrap(),
        "the whole new set is taken into use"
    );
    assert!(echoes(&address, &trusting_next).await);
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed since");
}

/// Whether a node with `tls` gets a byte echoed by the peer at `address`.
async fn node_echoes(address: &str, tls: &NodeTls) -> bool {
    echoes_through(address, tls.connector()).await
}

#[tokio::test]
async fn a_node_of_a_named_cluster_speaks_only_to_peers_naming_the_same_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("one CA for two clusters").unwrap();
    let alpha = NodeTls::load(named_node_files(&dir.path().join("a1"), &ca, "alpha")).unwrap();
    assert_eq!(alpha.cluster().as_deref(), Some("alpha"));
    let alpha_peer = NodeTls::load(named_node_files(&dir.path().join("a2"), &ca, "alpha")).unwrap();
    let beta = NodeTls::load(named_node_files(&dir.path().join("b1"), &ca, "beta")).unwrap();
    let unnamed = NodeTls::load(node_files(&dir.path().join("u"), &ca)).unwrap();
    assert_eq!(unnamed.cluster(), None);

    let internal = serve(alpha.clone(), true).await;
    assert!(node_echoes(&internal, &alpha_peer).await, "same cluster");
    assert!(!node_echoes(&internal, &beta).await, "another cluster");
    assert!(
        !node_echoes(&internal, &unnamed).await,
        "a certificate naming no cluster"
    );

    // The check on the connecting side: beta's public port asks for no client certificate,
    // so only alpha's own check of the server it reached can refuse.
    let beta_public = serve(beta.clone(), false).await;
    assert!(!node_echoes(&beta_public, &alpha).await);
    let alpha_public = serve(alpha_peer.clone(), false).await;
    assert!(node_echoes(&alpha_public, &alpha).await);
}

#[test]
fn a_certificate_names_its_cluster_and_bad_names_are_refused() {
    let ca = Authority::new("CA").unwrap();
    let issued = ca.issue_in_cluster("n", &[], "prod-eu.1").unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        raftq_tls::cluster_name(&der).unwrap().as_deref(),
        Some("prod-eu.1")
    );
    let plain = ca.issue("n", &[]).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(plain.cert_pem.as_bytes()).unwrap();
    assert_eq!(raftq_tls::cluster_name(&der).unwrap(), None);
    for bad in ["", "has space", "slash/name", &"x".repeat(129)] {
        let error = ca
            .issue_in_cluster("n", &[], bad)
            .map(|_| ())
            .expect_err("a bad cluster name is refused")
            .to_string();
        assert!(error.contains("is not a cluster name"), "{error}");
    }
}

#[test]
fn a_rotation_to_a_certificate_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("CA").unwrap();
    let files = named_node_files(dir.path(), &ca, "alpha");
    let tls = NodeTls::load(files.clone()).unwrap();
    let issued = ca
        .issue_in_cluster("node", &["127.0.0.1".into()], "beta")
        .unwrap();
    write_file(&files.key, &issued.key_pem, 0o600).unwrap();
    write_file(&files.cert, &issued.cert_pem, 0o644).unwrap();
    let error = tls.reload_if_changed().unwrap_err().to_string();
    assert!(
        error.contains("names cluster beta") && error.contains("alpha"),
        "{error}"
    );
    assert_eq!(tls.cluster().as_deref(), Some("alpha"));
}
