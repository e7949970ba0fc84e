//! `xds:///` channels against the test ADS server (a real gRPC stream on 127.0.0.1)
//! and real tonic backends: routing over EDS endpoints, weighted clusters, priority
//! failover and back, NACKs that keep the last good config, a management server
//! that restarts or cannot be reached, resources that do not exist, the shared
//! cache, aggregate clusters and their loops, drops and circuit breaking.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::UInt32Value;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::xds::{
    AdsServer, CLUSTER, ENDPOINTS, LISTENER, ROUTE, TestLocality, aggregate_cluster, any,
    eds_cluster, endpoints, endpoints_message, listener_rds, route_config, route_to,
    route_weighted, simple,
};
use lb_tonic::LbChannel;
use lb_xds::{Bootstrap, XdsClientOptions, XdsEndpoint};
use tokio::time::Instant;

mod common;
use common::*;

fn options() -> XdsClientOptions {
    let mut o = XdsClientOptions::default();
    o.resource_timeout = Duration::from_millis(500);
    o.initial_backoff = Duration::from_millis(50);
    o.max_backoff = Duration::from_millis(200);
    o
}

/// A channel to `xds:///target` whose bootstrap names `server`.
fn channel(server: &AdsServer, node: &str, target: &str) -> LbChannel {
    let bootstrap = Bootstrap::parse(&server.bootstrap_json(node)).unwrap();
    channel_with(bootstrap, target)
}

fn channel_with(bootstrap: Bootstrap, target: &str) -> LbChannel {
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(
        lb_tonic::xds::resolver()
            .with_bootstrap(bootstrap)
            .with_options(options()),
    );
    LbChannel::builder(format!("xds:///{target}"))
        .resolvers(resolvers)
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

/// RPCs for `count` rounds; what each backend served (failures under "error").
async fn spread(client: &mut EchoClient<LbChannel>, count: usize) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..count {
        let name = echo(client, wfr(echo_req("x")))
            .await
            .unwrap_or_else(|_| "error".to_owned());
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// Sends RPCs until one is served by `name`.
async fn until_served_by(client: &mut EchoClient<LbChannel>, name: &str) {
    within(&format!("an RPC served by {name}"), async {
        loop {
            if echo(client, wfr(echo_req("x"))).await.ok().as_deref() == Some(name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_rpcs_to_eds_endpoints_and_acks_every_response() {
    let backends = start(&["a", "b"]).await;
    let server = AdsServer::start().await.unwrap();
    let addrs = [backends[0].addr(), backends[1].addr()];
    server.set_all(simple(
        "echo",
        &[("c1", vec![TestLocality::new("z1", 0, &addrs)])],
    ));
    let channel = channel(&server, "routes", "echo");
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    let counts = spread(&mut client, 40).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");

    // Each subconn's address says where it sits in the tree.
    let snapshot = channel.snapshot();
    let info: Vec<&XdsEndpoint> = snapshot
        .subconns
        .iter()
        .filter_map(|s| s.address.attributes().get::<XdsEndpoint>())
        .collect();
    assert_eq!(info.len(), 2, "{snapshot:?}");
    assert!(
        info.iter()
            .all(|i| &*i.cluster == "c1" && &*i.priority == "c1/p0" && i.locality.zone == "z1")
    );

    // One stream; the first request carries the node; every type was ACKed.
    assert_eq!(server.streams(), 1);
    let requests = server.requests();
    assert_eq!(requests[0].node.as_ref().unwrap().id, "routes");
    assert!(requests[1..].iter().all(|r| r.node.is_none()));
    for type_url in [LISTENER, ROUTE, CLUSTER, ENDPOINTS] {
        assert!(
            requests.iter().any(|r| r.type_url == type_url
                && !r.version_info.is_empty()
                && !r.response_nonce.is_empty()
                && r.error_detail.is_none()),
            "no ACK for {type_url}"
        );
    }
    assert!(server.nacks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_split_rpcs_by_weight() {
    let backends = start(&["a", "b"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut all = simple(
        "echo",
        &[
            ("ca", vec![TestLocality::new("z", 0, &[backends[0].addr()])]),
            ("cb", vec![TestLocality::new("z", 0, &[backends[1].addr()])]),
        ],
    );
    all[1].2 = route_config(
        "echo-route",
        vec![route_weighted(&[("ca", 80), ("cb", 20)])],
    );
    server.set_all(all);
    let mut client = EchoClient::new(channel(&server, "weighted", "echo"));
    warm_up(&mut client, &["a", "b"]).await;
    let counts = spread(&mut client, 2_000).await;
    let a = counts.get("a").copied().unwrap_or(0) as f64 / 2_000.0;
    // 80% ± 4 points: about five standard deviations of 2,000 draws.
    assert!((0.76..=0.84).contains(&a), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_one_serves_while_priority_zero_is_down_and_traffic_returns() {
    let mut backends = start(&["p0", "p1"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[(
            "c",
            vec![
                TestLocality::new("z0", 0, &[backends[0].addr()]),
                TestLocality::new("z1", 1, &[backends[1].addr()]),
            ],
        )],
    ));
    let mut client = EchoClient::new(channel(&server, "priority", "echo"));
    until_served_by(&mut client, "p0").await;
    let counts = spread(&mut client, 20).await;
    assert_eq!(counts.get("p0"), Some(&20), "{counts:?}");
    backends[0].kill().await;
    until_served_by(&mut client, "p1").await;
    backends[0].restart().await.unwrap();
    until_served_by(&mut client, "p0").await;
    let counts = spread(&mut client, 20).await;
    assert_eq!(counts.get("p0"), Some(&20), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_update_is_nacked_naming_the_field_and_the_last_good_one_serves() {
    let backends = start(&["a", "b"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    ));
    let mut client = EchoClient::new(channel(&server, "nack", "echo"));
    until_served_by(&mut client, "a").await;

    // MAGLEV is not a gRPC policy: the cluster is NACKed, and the channel keeps the
    // cluster it had.
    let mut bad = eds_cluster("c");
    bad.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    server.set(CLUSTER, "c", any(&bad));
    let nack = server
        .wait_for_request(Duration::from_secs(5), |r| r.error_detail.is_some())
        .await
        .expect("a NACK");
    let detail = nack.error_detail.unwrap().message;
    assert_eq!(nack.type_url, CLUSTER);
    assert!(
        detail.contains("\"c\"") && detail.contains("lb_policy"),
        "{detail}"
    );
    // The NACK carries the last accepted version, not the rejected one.
    let acked = server
        .requests()
        .into_iter()
        .filter(|r| r.type_url == CLUSTER && r.error_detail.is_none() && !r.version_info.is_empty())
        .next_back()
        .unwrap();
    assert_eq!(nack.version_info, acked.version_info);
    let counts = spread(&mut client, 10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");

    // Endpoints of the same response type still apply after a NACK of another.
    server.set(
        ENDPOINTS,
        "c",
        endpoints("c", &[TestLocality::new("z", 0, &[backends[1].addr()])]),
    );
    until_served_by(&mut client, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_serves_through_a_management_server_restart_and_follows_it_after() {
    let backends = start(&["a", "b"]).await;
    let mut server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    ));
    let mut client = EchoClient::new(channel(&server, "restart", "echo"));
    until_served_by(&mut client, "a").await;
    server.stop().await;
    // The cache keeps serving while the server is away.
    let counts = spread(&mut client, 10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    server.restart().await.unwrap();
    server.set(
        ENDPOINTS,
        "c",
        endpoints("c", &[TestLocality::new("z", 0, &[backends[1].addr()])]),
    );
    until_served_by(&mut client, "b").await;
    assert!(server.streams() >= 2, "the client reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_does_not_exist_fails_rpcs_saying_so() {
    let server = AdsServer::start().await.unwrap();
    let mut client = EchoClient::new(channel(&server, "missing", "nowhere"));
    let status = first_failure(&mut client, "UNAVAILABLE", |s| {
        s.code() == tonic::Code::Unavailable && s.message().contains("does not exist")
    })
    .await;
    assert!(
        status.message().contains("listener \"nowhere\""),
        "{status:?}"
    );
    // Wait-for-ready RPCs fail too: the channel has a config, and it says no.
    let status = echo(&mut client, wfr(echo_req("x"))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_management_server_fails_rpcs_naming_it_and_the_channel_recovers() {
    let backends = start(&["a"]).await;
    let mut server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    ));
    server.stop().await;
    let mut client = EchoClient::new(channel(&server, "unreachable", "echo"));
    let status = first_failure(&mut client, "UNAVAILABLE", |s| {
        s.code() == tonic::Code::Unavailable
    })
    .await;
    assert!(status.message().contains(&server.uri()), "{status:?}");
    server.restart().await.unwrap();
    until_served_by(&mut client, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_channel_shares_the_stream_and_starts_from_the_cache() {
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    ));
    let mut first = EchoClient::new(channel(&server, "shared", "echo"));
    until_served_by(&mut first, "a").await;
    let requests = server.requests().len();
    let mut second = EchoClient::new(channel(&server, "shared", "echo"));
    until_served_by(&mut second, "a").await;
    assert_eq!(server.streams(), 1);
    // Same names, so the second channel subscribed to nothing new.
    assert_eq!(server.requests().len(), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_clusters_fail_over_in_order_and_a_loop_fails_its_rpcs() {
    let mut backends = start(&["primary", "secondary"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(vec![
        (LISTENER, "echo".into(), listener_rds("echo", "r")),
        (ROUTE, "r".into(), route_config("r", vec![route_to("agg")])),
        (
            CLUSTER,
            "agg".into(),
            any(&aggregate_cluster("agg", &["c1", "c2"])),
        ),
        (CLUSTER, "c1".into(), any(&eds_cluster("c1"))),
        (CLUSTER, "c2".into(), any(&eds_cluster("c2"))),
        (
            ENDPOINTS,
            "c1".into(),
            endpoints("c1", &[TestLocality::new("z", 0, &[backends[0].addr()])]),
        ),
        (
            ENDPOINTS,
            "c2".into(),
            endpoints("c2", &[TestLocality::new("z", 0, &[backends[1].addr()])]),
        ),
    ]);
    let mut client = EchoClient::new(channel(&server, "aggregate", "echo"));
    until_served_by(&mut client, "primary").await;
    backends[0].kill().await;
    until_served_by(&mut client, "secondary").await;

    // c2 now names agg: a loop. RPCs fail and say so.
    server.set(CLUSTER, "c2", any(&aggregate_cluster("c2", &["agg"])));
    let status = first_failure(&mut client, "the loop", |s| s.message().contains("loop")).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_overloads_and_max_requests_fail_rpcs_at_once() {
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut all = simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    );
    let mut eds = endpoints_message("c", &[TestLocality::new("z", 0, &[backends[0].addr()])]);
    eds.policy = Some(endpoint::cluster_load_assignment::Policy {
        drop_overloads: vec![endpoint::cluster_load_assignment::policy::DropOverload {
            category: "throttle".into(),
            drop_percentage: Some(FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
        }],
        ..Default::default()
    });
    all[3].2 = any(&eds);
    server.set_all(all);
    let mut client = EchoClient::new(channel(&server, "drops", "echo"));
    until_served_by(&mut client, "a").await;
    let counts = spread(&mut client, 400).await;
    let dropped = counts.get("error").copied().unwrap_or(0);
    assert!((120..=280).contains(&dropped), "{counts:?}");
    let status = first_failure(&mut client, "a drop", |s| s.message().contains("throttle")).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // max_requests 1: a second RPC while one is in flight fails at once.
    let mut limited = eds_cluster("c");
    limited.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_requests: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    server.set_all(vec![
        (CLUSTER, "c".into(), any(&limited)),
        (
            ENDPOINTS,
            "c".into(),
            endpoints("c", &[TestLocality::new("z", 0, &[backends[0].addr()])]),
        ),
    ]);
    backends[0].service().set_delay(Duration::from_millis(300));
    let status = within("a circuit-broken RPC", async {
        loop {
            let mut slow = client.clone();
            let first = tokio::spawn(async move { echo(&mut slow, echo_req("slow")).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = echo(&mut client, echo_req("x")).await;
            let _ = first.await;
            if let Err(s) = second {
                if s.message().contains("max_requests") {
                    return s;
                }
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let started = Instant::now();
    backends[0].service().set_delay(Duration::ZERO);
    // With the slot free again, RPCs succeed.
    until_served_by(&mut client, "a").await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unrequested_resources_are_nacked_or_ignored_as_grpc_go_does() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backends[0].addr()])])],
    ));
    let mut client = EchoClient::new(channel(&server, "garbage", "echo"));
    until_served_by(&mut client, "a").await;

    // Garbage bytes, and an invalid cluster nobody subscribed to: NACKed.
    let mut bad = eds_cluster("unsubscribed");
    bad.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    server.send_raw(DiscoveryResponse {
        version_info: "raw-1".into(),
        type_url: CLUSTER.into(),
        nonce: "raw-nonce".into(),
        resources: vec![
            any(&eds_cluster("c")),
            any(&bad),
            Any {
                type_url: CLUSTER.into(),
                value: vec![0xff, 0xff, 0x01],
            },
        ],
        ..Default::default()
    });
    let nack = server
        .wait_for_request(Duration::from_secs(5), |r| r.response_nonce == "raw-nonce")
        .await
        .expect("a reply to the raw response");
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("\"unsubscribed\"") && detail.contains("lb_policy"),
        "{detail}"
    );
    assert!(detail.contains("resource [2]"), "{detail}");
    assert_ne!(nack.version_info, "raw-1");

    // A type never requested: neither ACKed nor NACKed.
    server.send_raw(DiscoveryResponse {
        version_info: "raw-2".into(),
        type_url: "type.googleapis.com/some.Other".into(),
        nonce: "other-nonce".into(),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.response_nonce != "other-nonce")
    );
    // And the channel kept serving throughout.
    let counts = spread(&mut client, 10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
}
