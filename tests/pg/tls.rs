//! TLS to PostgreSQL: against a server that takes TCP connections only over TLS, the relay
//! and `raftq pg-relay` connect with the server's CA and forward; plaintext, and TLS with
//! a CA the server's certificate does not chain to, are refused.

use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_pg::{DatabaseTls, RelayConfig, Schema, enqueue};
use raftq_tests::postgres::Postgres;
use raftq_tests::{Cluster, cli, create_queue, drain_bodies, wait_until};
use raftq_tls::generate::Authority;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_a_database_over_tls_only_with_a_ca_it_verifies() {
    let authority = Authority::new("database CA").expect("CA");
    let certificate = authority
        .issue(
            "postgres",
            &["localhost".to_string(), "127.0.0.1".to_string()],
        )
        .expect("server certificate");
    let (cluster, pg) = tokio::join!(Cluster::start(3), Postgres::start_with_tls(&certificate));
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("database-ca.pem");
    std::fs::write(&ca_file, authority.cert_pem()).expect("CA file");
    let tls = DatabaseTls::from_ca_file(&ca_file).expect("CA");
    let url = format!("{} sslmode=require", pg.url());

    // Plaintext is refused by the server; a CA the certificate does not chain to, by us.
    let plaintext = raftq_pg::connect(&pg.url(), &DatabaseTls::Plaintext).await;
    assert!(plaintext.is_err(), "a plaintext connection was taken");
    let other = Authority::new("another CA").expect("CA");
    std::fs::write(dir.path().join("other.pem"), other.cert_pem()).expect("CA file");
    let untrusted = DatabaseTls::from_ca_file(&dir.path().join("other.pem")).expect("CA");
    let refused = raftq_pg::connect(&url, &untrusted).await;
    let error = refused
        .expect_err("an unverified server was taken")
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    let (mut db, _) = raftq_pg::connect(&url, &tls).await.expect("TLS connection");
    Schema::default().migrate(&mut db).await.expect("migrate");
    enqueue(&db, &Schema::default(), "orders", Message::new("over TLS"))
        .await
        .expect("enqueue");
    let relay = raftq_pg::Relay::new(
        &url,
        client.clone(),
        RelayConfig {
            tls,
            ..RelayConfig::default()
        },
    )
    .expect("relay");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { relay.run(stopped).await });
    wait_until("the row is forwarded", Duration::from_secs(60), || async {
        let status = raftq_pg::outbox_status(&db, &Schema::default())
            .await
            .ok()?;
        (status.waiting == 0).then_some(())
    })
    .await;
    assert_eq!(drain_bodies(&client, "orders").await, ["over TLS"]);
    stop.send(true).expect("stop");
    running.await.expect("joined").expect("relay ran");

    // The command line takes the CA too.
    let status = cli()
        .args([
            "pg-relay",
            "status",
            "--database-url",
            &url,
            "--output",
            "json",
        ])
        .arg("--database-ca-cert")
        .arg(&ca_file)
        .output()
        .expect("raftq pg-relay status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["waiting"], 0, "{status}");
}
