//! The ZooKeeper resolver and registrar against a real ZooKeeper on 127.0.0.1.

#![cfg(feature = "zookeeper")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::{WAIT, Watching, build_error, watching};
use lb_resolvers::Metadata;
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar, ZkResolverBuilder};
use lb_testkit::ZooKeeperServer;
use zookeeper_client as zk;

fn options(zk: &ZooKeeperServer) -> ZkOptions {
    ZkOptions {
        cluster: zk.connect_string(),
        session_timeout: Duration::from_secs(2),
        retry_interval: Duration::from_millis(200),
        ..ZkOptions::default()
    }
}

fn resolve(server: &ZooKeeperServer, service: &str) -> Watching {
    watching(
        &ZkResolverBuilder::new(options(server)),
        &format!("zk:///{service}"),
    )
}

/// A raw client, as a Java service using Curator would write.
async fn raw(server: &ZooKeeperServer) -> zk::Client {
    zk::Client::connect(&server.connect_string()).await.unwrap()
}

async fn put_node(client: &zk::Client, path: &str, data: &str) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let parent = &path[..path.rfind('/').unwrap()];
    match client.mkdir(parent, &persistent).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => panic!("mkdir {parent}: {e}"),
    }
    client
        .create(path, data.as_bytes(), &persistent)
        .await
        .unwrap();
}

#[tokio::test]
async fn discovers_curator_instances_as_they_come_and_go() {
    let server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "greeter");
    w.expect_addrs(&[], WAIT).await; // nothing registered yet
    let client = raw(&server).await;
    // Exactly what Curator's JsonInstanceSerializer writes.
    put_node(
        &client,
        "/services/greeter/6a1b2c3d-0000-4000-8000-000000000001",
        r#"{"name":"greeter","id":"6a1b2c3d-0000-4000-8000-000000000001","address":"10.0.0.1","port":8080,"sslPort":null,"payload":{"weight":3,"zone":"a"},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true}]}}"#,
    )
    .await;
    let state = w.expect_addrs(&["10.0.0.1:8080"], WAIT).await;
    assert_eq!(state.addresses[0].weight().get(), 3);
    assert_eq!(
        state.addresses[0].attributes().get::<Metadata>().unwrap().0["zone"],
        "a"
    );
    put_node(
        &client,
        "/services/greeter/two",
        r#"{"name":"greeter","id":"two","address":"10.0.0.2","port":8080}"#,
    )
    .await;
    w.expect_addrs(&["10.0.0.1:8080", "10.0.0.2:8080"], WAIT)
        .await;
    client.delete("/services/greeter/two", None).await.unwrap();
    w.expect_addrs(&["10.0.0.1:8080"], WAIT).await;
}

#[tokio::test]
async fn malformed_nodes_are_skipped_and_never_hide_good_ones() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    put_node(
        &client,
        "/services/svc/good",
        r#"{"address":"10.0.0.1","port":1}"#,
    )
    .await;
    put_node(&client, "/services/svc/junk", "not json").await;
    put_node(&client, "/services/svc/noport", r#"{"address":"10.0.0.2"}"#).await;
    let mut w = resolve(&server, "svc");
    w.expect_addrs(&["10.0.0.1:1"], WAIT).await;
}

#[tokio::test]
async fn a_registrar_registers_deregisters_and_a_dead_one_vanishes_with_its_session() {
    let server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "echo");
    let a = ZkRegistrar::register(
        options(&server),
        "echo",
        "a",
        "127.0.0.1",
        7001,
        Some(serde_json::json!({"weight": 2})),
    )
    .await
    .unwrap();
    assert_eq!(a.path(), "/services/echo/a");
    let state = w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    assert_eq!(state.addresses[0].weight().get(), 2);
    let b = ZkRegistrar::register(options(&server), "echo", "b", "127.0.0.1", 7002, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7001", "127.0.0.1:7002"], WAIT)
        .await;
    a.deregister().await;
    w.expect_addrs(&["127.0.0.1:7002"], WAIT).await;
    // b dies without deregistering: its ephemeral node goes with its session.
    drop(b);
    w.expect_addrs(&[], WAIT).await;
}

#[tokio::test]
async fn after_session_expiry_the_registration_and_the_watch_come_back() {
    let mut server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "echo");
    let _r = ZkRegistrar::register(options(&server), "echo", "a", "127.0.0.1", 7003, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7003"], WAIT).await;

    // A ZooKeeper that forgot every session: both clients' sessions expire.
    let errors = w.error_count();
    server.restart_wiped().await.unwrap();
    // The registrar creates its node again (parents included) under a new session,
    // and the resolver, under its own new session, sees it.
    w.expect_error_after(errors).await;
    w.expect_addrs(&["127.0.0.1:7003"], WAIT).await;
    // The new watch works: a later change arrives.
    let _r2 = ZkRegistrar::register(options(&server), "echo", "b", "127.0.0.1", 7004, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7003", "127.0.0.1:7004"], WAIT)
        .await;
}

#[tokio::test]
async fn a_zookeeper_restart_keeps_the_set_and_changes_arrive_again() {
    let mut server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "echo");
    let _a = ZkRegistrar::register(options(&server), "echo", "a", "127.0.0.1", 7005, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7005"], WAIT).await;

    // Connection loss: reported, and the last set stands meanwhile.
    let errors = w.error_count();
    server.kill().await;
    w.expect_error_after(errors).await;
    assert_eq!(w.current(), ["127.0.0.1:7005"]);

    server.restart().await.unwrap();
    let _b = ZkRegistrar::register(options(&server), "echo", "b", "127.0.0.1", 7006, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7005", "127.0.0.1:7006"], WAIT)
        .await;
}

#[tokio::test]
async fn bad_targets_are_errors() {
    let err = build_error(&ZkResolverBuilder::default(), "zk:////");
    assert!(err.contains("empty service name"), "{err}");
}
