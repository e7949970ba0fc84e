//! The ZooKeeper resolver and registrar against a real ZooKeeper on 127.0.0.1.

#![cfg(feature = "zookeeper")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::{WAIT, Watching, build_error, watching};
use lb_resolvers::Metadata;
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar, ZkResolverBuilder};
use lb_testkit::{ZK_SUPER_USER, ZooKeeperServer};
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
async fn after_an_outage_the_unchanged_set_is_published_again_to_clear_the_error() {
    let mut server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    put_node(&client, "/services/echo/a", &instance(1, 7007)).await;
    drop(client);
    let mut w = resolve(&server, "echo");
    let before = w.expect_count(1).await;
    let errors = w.error_count();
    server.kill().await;
    w.expect_error_after(errors).await;
    let updates = w.update_count();
    server.restart().await.unwrap();
    // Nothing changed while ZooKeeper was down, yet the channel hears the set again:
    // without it, the outage's error would stay on the channel until the next change.
    assert_eq!(w.expect_update_after(updates).await, common::addrs(&before));
}

#[tokio::test]
async fn bad_targets_are_errors() {
    let err = build_error(&ZkResolverBuilder::default(), "zk:////");
    assert!(err.contains("empty service name"), "{err}");
}

/// A service node with `n` Curator instances `i0..i{n-1}` at 10.0.x.y:8080, created
/// with pipelined requests.
async fn fill(client: &zk::Client, service_path: &str, n: usize) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    match client.mkdir(service_path, &persistent).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => panic!("mkdir {service_path}: {e}"),
    }
    let nodes: Vec<(String, String)> = (0..n)
        .map(|i| (format!("{service_path}/i{i}"), instance(i, 8080)))
        .collect();
    for chunk in nodes.chunks(1000) {
        let creates: Vec<_> = chunk
            .iter()
            .map(|(path, data)| client.create(path, data.as_bytes(), &persistent))
            .collect();
        for c in creates {
            c.await.unwrap();
        }
    }
}

fn instance(i: usize, port: u16) -> String {
    format!(
        r#"{{"name":"svc","id":"i{i}","address":"10.0.{}.{}","port":{port},"payload":null,"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC"}}"#,
        i / 250,
        i % 250
    )
}

fn counted_options(server: &ZooKeeperServer, base: &str) -> ZkOptions {
    ZkOptions {
        cluster: server.connect_string(),
        base_path: base.to_owned(),
        session_timeout: Duration::from_secs(10),
        retry_interval: Duration::from_millis(100),
        ..ZkOptions::default()
    }
}

#[tokio::test]
async fn with_1000_instances_an_add_a_change_and_a_removal_each_cost_at_most_one_read() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    fill(&client, "/counted/svc", 1000).await;
    let reads = || server.reads_under("counted");

    let before = reads().await.unwrap();
    let mut w = watching(
        &ZkResolverBuilder::new(counted_options(&server, "/counted")),
        "zk:///svc",
    );
    w.expect_count(1000).await;
    let listed = reads().await.unwrap() - before;
    // The first list: the children, then each child's data.
    assert_eq!(listed, 1001, "one list and 1,000 reads");

    // A new registration: one read of that child.
    let before = reads().await.unwrap();
    put_node(&client, "/counted/svc/new", &instance(1000, 9000)).await;
    w.expect_count(1001).await;
    let add = reads().await.unwrap() - before;

    // Its data changes (a new port): one read.
    let before = reads().await.unwrap();
    client
        .set_data("/counted/svc/new", instance(1000, 9001).as_bytes(), None)
        .await
        .unwrap();
    tokio::time::timeout(
        WAIT,
        w.state.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.addresses.iter().any(|a| a.addr() == "10.0.4.0:9001"))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let change = reads().await.unwrap() - before;

    // It goes away: one read, which finds no node (ZooKeeper counts only reads that
    // found data in this statistic, so this one shows as 0).
    let before = reads().await.unwrap();
    client.delete("/counted/svc/new", None).await.unwrap();
    w.expect_count(1000).await;
    let remove = reads().await.unwrap() - before;

    eprintln!(
        "ZooKeeper reads per event with 1,000 instances: add {add}, change {change}, remove {remove}"
    );
    assert!(
        add <= 3 && change <= 3 && remove <= 3,
        "add {add}, change {change}, remove {remove}"
    );
    // Deeper nodes are not instances, and cost nothing.
    let before = reads().await.unwrap();
    put_node(&client, "/counted/svc/i0/deeper", "x").await;
    put_node(&client, "/counted/svc/marker", &instance(1001, 1)).await;
    w.expect_count(1001).await;
    assert_eq!(
        reads().await.unwrap() - before,
        1,
        "only the direct child is read"
    );
    assert_eq!(w.error_count(), 0);
}

#[tokio::test]
async fn a_child_deleted_between_the_list_and_its_read_is_skipped() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    fill(&client, "/racy/svc", 20).await;
    // The resolver talks through a slow link: every reply takes 1 s to arrive, so
    // the list's reply is on its way while the test deletes a child.
    let proxy = lb_testkit::TcpProxy::start(server.addr()).await.unwrap();
    proxy.set_response_delay(Duration::from_millis(1000));
    let before = server.reads_under("racy").await.unwrap();
    let mut w = watching(
        &ZkResolverBuilder::new(ZkOptions {
            cluster: proxy.addr().to_string(),
            ..counted_options(&server, "/racy")
        }),
        "zk:///svc",
    );
    // The server has answered the list (the first read under /racy)...
    tokio::time::timeout(WAIT, async {
        while server.reads_under("racy").await.unwrap() == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the resolver never listed");
    // ...and the reply has not reached the resolver yet: delete a listed child.
    client.delete("/racy/svc/i7", None).await.unwrap();
    proxy.set_response_delay(Duration::ZERO);
    w.expect_count(19).await;
    assert!(!w.current().contains(&"10.0.0.7:8080".to_owned()));
    assert_eq!(w.error_count(), 0, "a vanished child is not an error");
}

#[tokio::test]
async fn a_child_the_resolver_may_not_read_is_skipped_and_hides_nothing() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    put_node(&client, "/services/acl/open", &instance(1, 80)).await;
    // A node only its creator may read.
    let owner = zk::Client::connector()
        .with_auth("digest", b"owner:secret")
        .connect(&server.connect_string())
        .await
        .unwrap();
    owner
        .create(
            "/services/acl/private",
            instance(2, 80).as_bytes(),
            &zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all()),
        )
        .await
        .unwrap();
    assert_eq!(
        client.get_data("/services/acl/private").await.unwrap_err(),
        zk::Error::NoAuth
    );
    let mut w = resolve(&server, "acl");
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    // Events read single children the same way.
    put_node(&client, "/services/acl/open2", &instance(3, 80)).await;
    owner
        .set_data("/services/acl/private", instance(4, 80).as_bytes(), None)
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:80", "10.0.0.3:80"], WAIT).await;
    assert_eq!(w.error_count(), 0);
}

#[tokio::test]
async fn resolvers_of_a_process_share_one_session_and_a_restart_creates_no_new_ones() {
    let mut server = ZooKeeperServer::start().await.unwrap();
    let options = ZkOptions {
        cluster: server.connect_string(),
        session_timeout: Duration::from_secs(20),
        retry_interval: Duration::from_millis(100),
        ..ZkOptions::default()
    };
    let builder = ZkResolverBuilder::new(options.clone());
    let mut a = watching(&builder, "zk:///a");
    let mut b = watching(&builder, "zk:///b");
    let mut a2 = watching(&builder, "zk:///a");
    let _ra = ZkRegistrar::register(options.clone(), "a", "1", "127.0.0.1", 7001, None)
        .await
        .unwrap();
    for w in [&mut a, &mut a2] {
        w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    }
    b.expect_addrs(&[], WAIT).await;
    // Three resolvers, one session; the registrar has its own.
    let sessions = server.connected_sessions().await.unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");

    // A restart (data kept): clients reconnect within the session timeout and keep
    // their sessions; the resolvers report the outage, keep their sets and list
    // again.
    let errors = a.error_count();
    server.kill().await;
    a.expect_error_after(errors).await;
    assert_eq!(a.current(), ["127.0.0.1:7001"]);
    server.restart().await.unwrap();
    let _rb = ZkRegistrar::register(options.clone(), "b", "1", "127.0.0.1", 7002, None)
        .await
        .unwrap();
    b.expect_addrs(&["127.0.0.1:7002"], WAIT).await;
    let _ra2 = ZkRegistrar::register(options, "a", "2", "127.0.0.1", 7003, None)
        .await
        .unwrap();
    for w in [&mut a, &mut a2] {
        w.expect_addrs(&["127.0.0.1:7001", "127.0.0.1:7003"], WAIT)
            .await;
    }
    // The same sessions as before, plus the two new registrars'.
    let after = tokio::time::timeout(WAIT, async {
        loop {
            let now = server.connected_sessions().await.unwrap();
            if now.len() >= 4 {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the old sessions never came back");
    for s in &sessions {
        assert!(
            after.contains(s),
            "session {s} was replaced: {sessions:?} → {after:?}"
        );
    }
    assert_eq!(after.len(), 4, "{after:?}");
    // The shared session goes with the last resolver; the registrars' stay.
    drop((a, b, a2));
    tokio::time::timeout(WAIT, async {
        while server.connected_sessions().await.unwrap().len() > 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the resolvers' session outlived them");
}

#[tokio::test]
async fn an_old_process_leaving_does_not_remove_a_new_one_with_the_same_id() {
    let server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "echo");
    let old = ZkRegistrar::register(options(&server), "echo", "x", "127.0.0.1", 7001, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    // The new process starts while the old one still lives: the node stays the old
    // one's until it leaves...
    let new = ZkRegistrar::register(options(&server), "echo", "x", "127.0.0.1", 7002, None)
        .await
        .unwrap();
    old.deregister().await;
    // ...and then the new one's node takes its place.
    w.expect_addrs(&["127.0.0.1:7002"], WAIT).await;
    new.deregister().await;
    w.expect_addrs(&[], WAIT).await;
}

#[tokio::test]
async fn deregistering_leaves_a_node_another_session_owns_and_a_deleted_node_comes_back() {
    let server = ZooKeeperServer::start().await.unwrap();
    let mut w = resolve(&server, "echo");
    let r = ZkRegistrar::register(options(&server), "echo", "x", "127.0.0.1", 7001, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;

    // Someone deletes our node while our session lives: it comes back.
    let other = raw(&server).await;
    other.delete("/services/echo/x", None).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while other
            .check_stat("/services/echo/x")
            .await
            .unwrap()
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node never came back");
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;

    // Another session replaces it with its own, in one transaction: deregistering
    // leaves that one alone.
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let data = instance(9, 7009);
    let mut swap = other.new_multi_writer();
    swap.add_delete("/services/echo/x", None).unwrap();
    swap.add_create("/services/echo/x", data.as_bytes(), &ephemeral)
        .unwrap();
    swap.commit().await.unwrap();
    w.expect_addrs(&["10.0.0.9:7009"], WAIT).await;
    r.deregister().await;
    let stat = other.check_stat("/services/echo/x").await.unwrap().unwrap();
    assert_eq!(stat.ephemeral_owner, other.session_id().0);
    w.expect_addrs(&["10.0.0.9:7009"], WAIT).await;
}

#[tokio::test]
async fn a_service_whose_child_list_exceeds_jute_maxbuffer_is_listed() {
    // 30,000 instances with Curator's UUID ids: the list of children is about 1.2 MB,
    // above ZooKeeper's default `jute.maxbuffer` (1 MB), which Java clients enforce on
    // replies (they drop the connection); this client does not.
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.mkdir("/services/big", &persistent).await.unwrap();
    let n = 30_000;
    let nodes: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("/services/big/{i:08x}-0000-4000-8000-{i:012x}"),
                instance(i, 80),
            )
        })
        .collect();
    let names: usize = nodes
        .iter()
        .map(|(p, _)| p.len() - "/services/big/".len() + 4)
        .sum();
    assert!(names > 1 << 20, "the list reply is {names} bytes");
    for chunk in nodes.chunks(2000) {
        let creates: Vec<_> = chunk
            .iter()
            .map(|(path, data)| client.create(path, data.as_bytes(), &persistent))
            .collect();
        for c in creates {
            c.await.unwrap();
        }
    }
    // The tests' 2 s session is too short for 30,000 reads on a loaded machine (the
    // client gives up on a reply after two thirds of it): this test is about size.
    let patient = ZkOptions {
        session_timeout: Duration::from_secs(30),
        ..options(&server)
    };
    let mut w = watching(&ZkResolverBuilder::new(patient), "zk:///big");
    w.expect_count(n).await;
    assert_eq!(w.error_count(), 0);
}

#[tokio::test]
async fn reads_tls_only_instances_and_skips_disabled_ones() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    put_node(
        &client,
        "/services/tls/a",
        r#"{"name":"tls","id":"a","address":"10.0.0.1","port":null,"sslPort":8443,"payload":{"weight":"2"},"serviceType":"DYNAMIC","enabled":true}"#,
    )
    .await;
    put_node(
        &client,
        "/services/tls/b",
        r#"{"name":"tls","id":"b","address":"10.0.0.2","port":8080,"enabled":false}"#,
    )
    .await;
    let mut w = resolve(&server, "tls");
    let state = w.expect_addrs(&["10.0.0.1:8443"], WAIT).await;
    assert_eq!(state.addresses[0].weight().get(), 2);
    // Enabled again: a target.
    client
        .set_data(
            "/services/tls/b",
            br#"{"name":"tls","id":"b","address":"10.0.0.2","port":8080,"enabled":true}"#,
            None,
        )
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:8443", "10.0.0.2:8080"], WAIT)
        .await;
}

#[tokio::test]
async fn a_resolver_started_while_zookeeper_is_down_lists_once_it_is_up() {
    let mut server = ZooKeeperServer::start().await.unwrap();
    server.kill().await;
    let mut w = resolve(&server, "echo");
    w.expect_error_after(0).await;
    assert!(
        w.state.borrow().is_none(),
        "nothing published without a list"
    );
    server.restart().await.unwrap();
    let _r = ZkRegistrar::register(options(&server), "echo", "a", "127.0.0.1", 7001, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
}

#[tokio::test]
async fn registering_where_the_registrar_may_not_write_is_an_error_naming_the_node() {
    let server = ZooKeeperServer::start().await.unwrap();
    let client = raw(&server).await;
    client
        .create(
            "/locked",
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_read()),
        )
        .await
        .unwrap();
    let err = ZkRegistrar::register(
        ZkOptions {
            base_path: "/locked".to_owned(),
            ..options(&server)
        },
        "echo",
        "a",
        "127.0.0.1",
        7001,
        None,
    )
    .await
    .err()
    .expect("registered under a read-only node");
    let err = err.to_string();
    assert!(
        err.contains("/locked/echo") && err.contains("not authorized"),
        "{err}"
    );
}

// Secured ZooKeeper: digest authentication and ACLs on what a registrar creates.

mod secured {
    use super::*;
    use lb_resolvers::zookeeper::{ZkAcl, ZkError};

    /// Every secured test is bounded by this.
    const LIMIT: Duration = Duration::from_secs(60);

    async fn register(options: ZkOptions, id: &str, port: u16) -> Result<ZkRegistrar, ZkError> {
        ZkRegistrar::register(options, "vault", id, "127.0.0.1", port, None).await
    }

    fn resolve_with(options: ZkOptions) -> Watching {
        watching(&ZkResolverBuilder::new(options), "zk:///vault")
    }

    #[tokio::test]
    async fn digest_with_a_creator_acl_only_the_same_digest_reads_or_registers() {
        tokio::time::timeout(LIMIT, async {
            let server = ZooKeeperServer::start_with_super_digest("super-pw")
                .await
                .unwrap();
            let app = options(&server)
                .with_digest("app", "app-secret")
                .with_acl(ZkAcl::CreatorAll { world_read: false });
            let r = register(app.clone(), "one", 7201).await.unwrap();
            // The same digest reads it.
            let mut w = resolve_with(options(&server).with_digest("app", "app-secret"));
            w.expect_addrs(&["127.0.0.1:7201"], WAIT).await;

            // The nodes carry the creator's digest identity and nothing for anyone.
            let anonymous = raw(&server).await;
            // (Reading an ACL takes READ or ADMIN on the node.)
            assert_eq!(
                anonymous.get_acl("/services/vault/one").await.unwrap_err(),
                zk::Error::NoAuth
            );
            // The server's super user sees past ACLs.
            let admin = zk::Client::connector()
                .with_auth("digest", format!("{ZK_SUPER_USER}:super-pw").as_bytes())
                .connect(&server.connect_string())
                .await
                .unwrap();
            let (data, _) = admin.get_data("/services/vault/one").await.unwrap();
            assert!(String::from_utf8_lossy(&data).contains("7201"));
            let (acl, _) = admin.get_acl("/services/vault/one").await.unwrap();
            assert_eq!(acl.len(), 1, "{acl:?}");
            assert_eq!(acl[0].scheme(), "digest");
            assert!(acl[0].id().starts_with("app:"), "{acl:?}");
            for path in ["/services/vault", "/services/vault/one"] {
                assert_eq!(
                    anonymous.get_data(path).await.unwrap_err(),
                    zk::Error::NoAuth,
                    "{path}"
                );
            }
            // Parents stay open to other services' registrars, not to deletion.
            assert!(anonymous.list_children("/services").await.is_ok());
            assert_eq!(
                anonymous
                    .delete("/services/vault/one", None)
                    .await
                    .unwrap_err(),
                zk::Error::NoAuth
            );

            // No digest, or a wrong password: an error naming the ensemble and user.
            for (who, options) in [
                ("an unauthenticated session", options(&server)),
                (
                    "digest user `app`",
                    options(&server).with_digest("app", "bad-pw-123"),
                ),
            ] {
                let mut denied = resolve_with(options);
                denied.expect_error_after(0).await;
                let reported = denied.last_error();
                assert!(reported.contains(&server.connect_string()), "{reported}");
                assert!(reported.contains(who), "{reported}");
                assert!(reported.contains("/services/vault"), "{reported}");
                assert!(denied.current().is_empty());
                // It keeps trying.
                denied.expect_error_after(1).await;
            }
            let err = register(
                options(&server)
                    .with_digest("app", "bad-pw-123")
                    .with_acl(ZkAcl::CreatorAll { world_read: false }),
                "two",
                7202,
            )
            .await
            .err()
            .expect("registered with a wrong password");
            assert!(matches!(err, ZkError::NotAuthorized { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&server.connect_string()), "{text}");
            assert!(text.contains("/services/vault/two"), "{text}");
            assert!(!text.contains("bad-pw-123"), "{text}");

            r.deregister().await;
            w.expect_addrs(&[], WAIT).await;
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn digest_with_world_read_anyone_resolves_and_only_the_creator_writes() {
        tokio::time::timeout(LIMIT, async {
            let server = ZooKeeperServer::start().await.unwrap();
            let app = options(&server)
                .with_digest("app", "app-secret")
                .with_acl(ZkAcl::CreatorAll { world_read: true });
            let _r = register(app, "one", 7203).await.unwrap();
            let mut w = resolve_with(options(&server));
            w.expect_addrs(&["127.0.0.1:7203"], WAIT).await;
            let anonymous = raw(&server).await;
            assert_eq!(
                anonymous
                    .set_data("/services/vault/one", b"{}", None)
                    .await
                    .unwrap_err(),
                zk::Error::NoAuth
            );
            assert_eq!(
                anonymous
                    .delete("/services/vault/one", None)
                    .await
                    .unwrap_err(),
                zk::Error::NoAuth
            );
            assert_eq!(w.error_count(), 0);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn digest_a_resolver_keeps_its_set_when_an_acl_starts_refusing_it() {
        tokio::time::timeout(LIMIT, async {
            let mut server = ZooKeeperServer::start().await.unwrap();
            let app = options(&server)
                .with_digest("app", "app-secret")
                .with_acl(ZkAcl::CreatorAll { world_read: true });
            let _r = register(app, "one", 7204).await.unwrap();
            let mut w = resolve_with(options(&server).with_digest("reader", "r"));
            w.expect_addrs(&["127.0.0.1:7204"], WAIT).await;
            // The owner withdraws world read from the service node, then a restart
            // makes the resolver list again: refused.
            let owner = zk::Client::connector()
                .with_auth("digest", b"app:app-secret")
                .connect(&server.connect_string())
                .await
                .unwrap();
            owner
                .set_acl(
                    "/services/vault",
                    &[zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed())],
                    None,
                )
                .await
                .unwrap();
            drop(owner);
            let errors = w.error_count();
            server.restart().await.unwrap();
            tokio::time::timeout(WAIT, async {
                loop {
                    w.expect_error_after(w.error_count()).await;
                    if w.last_error().contains("refused") {
                        break;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never refused; last: {}", w.last_error()));
            assert!(w.error_count() > errors);
            let reported = w.last_error();
            assert!(reported.contains("digest user `reader`"), "{reported}");
            assert!(reported.contains(&server.connect_string()), "{reported}");
            // The last good set stays.
            assert_eq!(w.current(), ["127.0.0.1:7204"]);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn digest_and_acl_settings_that_cannot_work_are_rejected_naming_them() {
        let creator_without_digest =
            ZkOptions::default().with_acl(ZkAcl::CreatorAll { world_read: true });
        let err = creator_without_digest.validate().unwrap_err();
        assert!(
            matches!(err, ZkError::InvalidSetting { setting: "acl", .. }),
            "{err:?}"
        );
        let build = build_error(
            &ZkResolverBuilder::new(creator_without_digest.clone()),
            "zk:///vault",
        );
        assert!(build.contains("`acl`"), "{build}");
        let err = ZkRegistrar::register(creator_without_digest, "vault", "x", "127.0.0.1", 1, None)
            .await
            .err()
            .expect("registered with an ACL it cannot set");
        assert!(err.to_string().contains("`acl`"), "{err}");
        for user in ["", "a:b"] {
            let err = ZkOptions::default()
                .with_digest(user, "pw")
                .validate()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ZkError::InvalidSetting {
                        setting: "digest",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        // The password never shows.
        let debug = format!("{:?}", ZkOptions::default().with_digest("app", "s3cret"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
