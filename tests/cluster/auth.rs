//! Authentication and replicated grants: who may call, what each principal may do, and
//! that a refused call writes nothing.

use std::time::Duration;

use raftq_client::{Client, ClientConfig, Code, Message, pb};
use raftq_tests::{Cluster, create_queue, test_client_config, wait_until};

/// A client of `addresses` authenticating with `token` (none: no credentials).
fn client_as(addresses: &[String], token: Option<&str>) -> Client {
    Client::new(
        addresses,
        ClientConfig {
            retry_deadline: Duration::from_secs(5),
            token: token.map(str::to_string),
            ..test_client_config()
        },
    )
    .expect("client")
}

fn addresses(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|node| node.grpc.clone()).collect()
}

fn code<T: std::fmt::Debug>(result: Result<T, raftq_client::ClientError>) -> Option<Code> {
    result.expect_err("refused").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_and_unknown_credentials_are_unauthenticated() {
    let cluster = Cluster::start(1).await;
    let all = addresses(&cluster);
    let before = cluster.last_log_index().await;
    for token in [None, Some("not-a-token-of-this-cluster"), Some("")] {
        let client = client_as(&all, token);
        let refused = client
            .create_queue("sneaky", pb::QueueOptions::default())
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            Some(Code::Unauthenticated),
            "{token:?}: {refused}"
        );
        assert_eq!(
            code(client.cluster_status().await),
            Some(Code::Unauthenticated)
        );
    }
    assert_eq!(cluster.last_log_index().await, before, "nothing written");
    assert!(
        cluster
            .client()
            .list_queues()
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_only_principal_may_send_to_its_queues_and_nothing_else() {
    let cluster = Cluster::start(3).await;
    let admin = cluster.client();
    for queue in ["orders", "payments"] {
        create_queue(&admin, queue, pb::QueueOptions::default()).await;
    }
    let created = admin.create_principal("orders-app").await.expect("create");
    admin
        .grant("orders-app", "orders*", &["send"])
        .await
        .expect("grant");
    let app = client_as(&addresses(&cluster), Some(&created.token));
    app.send("orders", Message::new("one"))
        .await
        .expect("send to orders");

    let before = cluster.last_log_index().await;
    let refusals = [
        (
            "receive",
            code(app.receive("orders", 10, Duration::ZERO, None).await),
        ),
        ("peek", code(app.peek("orders", 0, 10).await)),
        ("purge", code(app.purge_queue("orders").await)),
        ("delete", code(app.delete_queue("orders").await)),
        (
            "send to payments",
            code(app.send("payments", Message::new("x")).await),
        ),
        ("remove node", code(app.remove_node(3).await)),
        ("create principal", code(app.create_principal("mine").await)),
        (
            "grant",
            code(app.grant("orders-app", "*", &["admin"]).await),
        ),
    ];
    for (what, code) in refusals {
        assert_eq!(code, Some(Code::PermissionDenied), "{what}");
    }
    let denied = app
        .purge_queue("orders")
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        denied.contains("orders-app") && denied.contains("manage") && denied.contains("orders"),
        "{denied}"
    );
    assert_eq!(
        cluster.last_log_index().await,
        before,
        "no refused call was written"
    );
    let stats = admin
        .get_queue("orders")
        .await
        .expect("get")
        .stats
        .expect("stats");
    assert_eq!(stats.depth, 1);
    // It sees only the queues it may use.
    let listed: Vec<String> = app
        .list_queues()
        .await
        .expect("list")
        .into_iter()
        .map(|queue| queue.name)
        .collect();
    assert_eq!(listed, ["orders"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_a_follower_keeps_its_principal() {
    let cluster = Cluster::start(3).await;
    let admin = cluster.client();
    create_queue(&admin, "orders", pb::QueueOptions::default()).await;
    let created = admin.create_principal("relay").await.expect("create");
    admin
        .grant("relay", "orders", &["send"])
        .await
        .expect("grant");
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let through = cluster
        .nodes
        .iter()
        .find(|node| node.id == follower)
        .expect("follower")
        .grpc
        .clone();
    // Pinned to the follower: every call is forwarded to the leader.
    let pinned = Client::new(
        &[through],
        ClientConfig {
            token: Some(created.token.clone()),
            retry_deadline: Duration::from_secs(5),
            ..test_client_config()
        },
    )
    .expect("client");
    pinned
        .send("orders", Message::new("forwarded"))
        .await
        .expect("a send through the follower is allowed");
    let denied = pinned
        .purge_queue("orders")
        .await
        .expect_err("the leader decides as the principal, not as the follower");
    assert_eq!(denied.code(), Some(Code::PermissionDenied), "{denied}");
    assert!(denied.to_string().contains("relay"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_and_a_deleted_principal_stop_working_on_every_node() {
    let cluster = Cluster::start(3).await;
    let admin = cluster.client();
    create_queue(&admin, "orders", pb::QueueOptions::default()).await;
    let created = admin.create_principal("temp").await.expect("create");
    admin
        .grant("temp", "orders", &["send", "browse"])
        .await
        .expect("grant");
    let per_node: Vec<Client> = cluster
        .nodes
        .iter()
        .map(|node| client_as(std::slice::from_ref(&node.grpc), Some(&created.token)))
        .collect();
    for client in &per_node {
        client
            .send("orders", Message::new("x"))
            .await
            .expect("allowed");
    }
    assert!(admin.revoke("temp", "orders").await.expect("revoke"));
    assert!(!admin.revoke("temp", "orders").await.expect("revoke again"));
    for client in &per_node {
        assert_eq!(
            code(client.send("orders", Message::new("y")).await),
            Some(Code::PermissionDenied)
        );
    }
    admin.delete_principal("temp").await.expect("delete");
    // Every node authenticates from its own copy of the grants: once the deletion is
    // applied there, the token is refused there.
    for client in &per_node {
        wait_until("the token is refused", Duration::from_secs(10), || async {
            (client.cluster_status().await.err()?.code() == Some(Code::Unauthenticated))
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        admin
            .delete_principal("temp")
            .await
            .expect_err("gone")
            .code(),
        Some(Code::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_principal_input_is_refused_precisely_and_changes_nothing() {
    let cluster = Cluster::start(1).await;
    let admin = cluster.client();
    admin.create_principal("app").await.expect("create");
    let before = admin.list_principals().await.expect("list");
    let long = "x".repeat(200);
    for (what, refused) in [
        ("empty name", code(admin.create_principal("").await)),
        ("long name", code(admin.create_principal(&long).await)),
        ("bad character", code(admin.create_principal("a b").await)),
        (
            "unknown action",
            code(admin.grant("app", "q", &["fly"]).await),
        ),
        ("no action", code(admin.grant("app", "q", &[]).await)),
        (
            "bad pattern",
            code(admin.grant("app", "q*x*", &["send"]).await),
        ),
    ] {
        assert_eq!(refused, Some(Code::InvalidArgument), "{what}");
    }
    assert_eq!(
        code(admin.create_principal("app").await),
        Some(Code::AlreadyExists)
    );
    assert_eq!(
        code(admin.grant("nobody", "q", &["send"]).await),
        Some(Code::NotFound)
    );
    assert_eq!(admin.list_principals().await.expect("list"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_9_when_unauthenticated_and_10_when_denied() {
    let cluster = Cluster::start(1).await;
    let admin = cluster.client();
    create_queue(&admin, "orders", pb::QueueOptions::default()).await;
    let created = admin.create_principal("reader").await.expect("create");
    let run = |token: &str, args: &[&str]| {
        raftq_tests::cli()
            .env("RAFTQ_TOKEN", token)
            .args(["--addr", &cluster.nodes[0].grpc])
            .args(args)
            .output()
            .expect("run raftq")
    };
    let output = run("wrong-token-wrong-token", &["queue", "list"]);
    assert_eq!(output.status.code(), Some(9), "{output:?}");
    let output = run(&created.token, &["queue", "purge", "orders"]);
    assert_eq!(output.status.code(), Some(10), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may not manage"), "{stderr}");
    // The admin grants, as the CLI would; then the principal reads.
    let output = run(
        raftq_tests::test_ca().admin_token(),
        &["grant", "reader", "--queue", "orders", "--allow", "browse"],
    );
    assert!(output.status.success(), "{output:?}");
    let output = run(&created.token, &["queue", "get", "orders"]);
    assert!(output.status.success(), "{output:?}");
    // The same token from a file, as a mounted Secret gives it.
    let file = cluster.dir.path().join("reader.token");
    std::fs::write(&file, format!("{}\n", created.token)).expect("write the token file");
    let output = raftq_tests::cli()
        .env_remove("RAFTQ_TOKEN")
        .arg("--token-file")
        .arg(&file)
        .args(["--addr", &cluster.nodes[0].grpc, "queue", "get", "orders"])
        .output()
        .expect("run raftq");
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_principal_when_the_nodes_take_client_certificates() {
    let options = raftq_tests::ClusterOptions {
        env: vec![(
            "RAFTQ_TLS__CLIENT_CA".to_string(),
            raftq_tests::test_ca().ca_path().display().to_string(),
        )],
        ..raftq_tests::ClusterOptions::default()
    };
    let cluster = Cluster::start_with(1, options).await;
    let admin = cluster.client();
    create_queue(&admin, "orders", pb::QueueOptions::default()).await;
    admin.create_principal("billing").await.expect("create");
    admin
        .grant("billing", "orders", &["send"])
        .await
        .expect("grant");
    let with_certificate = |name: &str| {
        let (cert, key) = raftq_tests::test_ca().issue_client(cluster.dir.path(), name);
        let tls = raftq_client::ClientTls::from_files(
            &raftq_tests::test_ca().ca_path(),
            Some((&cert, &key)),
        )
        .expect("TLS");
        Client::new(
            &addresses(&cluster),
            ClientConfig {
                transport: raftq_client::Transport::Tls(tls.connector()),
                token: None,
                retry_deadline: Duration::from_secs(5),
                ..test_client_config()
            },
        )
        .expect("client")
    };
    let billing = with_certificate("billing");
    billing
        .send("orders", Message::new("by certificate"))
        .await
        .expect("the certificate's principal may send");
    let denied = billing.purge_queue("orders").await.expect_err("refused");
    assert_eq!(denied.code(), Some(Code::PermissionDenied), "{denied}");
    assert!(denied.to_string().contains("billing"), "{denied}");
    // A certificate from the right CA whose name is no principal authenticates nobody.
    let stranger = with_certificate("stranger");
    assert_eq!(
        code(stranger.send("orders", Message::new("x")).await),
        Some(Code::Unauthenticated)
    );
}
