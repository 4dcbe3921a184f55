//! Real TLS handshakes over loopback sockets: the acceptors of both ports, the connector,
//! and a rotation taken into use without a restart.

use std::path::Path;

use raftq_tls::generate::{Authority, write_file};
use raftq_tls::{ClientTls, NodeTls, TlsFiles, incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tower::Service;

/// A node's files under `dir`, issued by `ca`, with `ca` as the cluster CA.
fn node_files(dir: &Path, ca: &Authority) -> TlsFiles {
    let ca_path = dir.join("ca.pem");
    write_file(&ca_path, &ca.cert_pem(), 0o644).unwrap();
    let (cert, key) = ca
        .issue("node", &["127.0.0.1".into()])
        .unwrap()
        .write(dir, "node")
        .unwrap();
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
    let uri: http::Uri = format!("http://{address}").parse().unwrap();
    let Ok(io) = tls.connector().call(uri).await else {
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
