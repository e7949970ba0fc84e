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
use lb_testkit::Backend;
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

/// Listener `echo` → cluster `c` → one locality with `backend`.
fn one_cluster(server: &AdsServer, backend: &Backend) {
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backend.addr()])])],
    ));
}

/// Sets cluster `c` to MAGLEV, which gRPC does not run, and waits for the NACK.
async fn nack_maglev(
    server: &AdsServer,
) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    let mut bad = eds_cluster("c");
    bad.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    server.set(CLUSTER, "c", any(&bad));
    server
        .wait_for_request(Duration::from_secs(5), |r| r.error_detail.is_some())
        .await
        .expect("a NACK")
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
    one_cluster(&server, &backends[0]);
    let mut client = EchoClient::new(channel(&server, "nack", "echo"));
    until_served_by(&mut client, "a").await;

    // MAGLEV is not a gRPC policy: the cluster is NACKed, and the channel keeps the
    // cluster it had.
    let nack = nack_maglev(&server).await;
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
        .rfind(|r| r.type_url == CLUSTER && r.error_detail.is_none() && !r.version_info.is_empty())
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
    one_cluster(&server, &backends[0]);
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
    one_cluster(&server, &backends[0]);
    server.stop().await;
    let mut client = EchoClient::new(channel(&server, "unreachable", "echo"));
    let status = first_failure(&mut client, "UNAVAILABLE", |s| {
        s.code() == tonic::Code::Unavailable
    })
    .await;
    assert!(status.message().contains(&server.uri()), "{status:?}");
    // A wait-for-ready RPC waits for the server instead (a transient error, as
    // gRPC reports it), and is served once it is back.
    let mut waiting = client.clone();
    let rpc = tokio::spawn(async move { echo(&mut waiting, wfr(echo_req("x"))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rpc.is_finished(),
        "the wait-for-ready RPC failed: {:?}",
        rpc.await
    );
    server.restart().await.unwrap();
    assert_eq!(within("the waiting RPC", rpc).await.unwrap().unwrap(), "a");
    until_served_by(&mut client, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_channel_shares_the_stream_and_starts_from_the_cache() {
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    one_cluster(&server, &backends[0]);
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
            if let Err(s) = second
                && s.message().contains("max_requests")
            {
                return s;
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
    one_cluster(&server, &backends[0]);
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

/// The config of `simple` with the route (and virtual host) replaced.
fn with_routes(
    clusters: &[(&str, Vec<TestLocality>)],
    routes: Vec<envoy_types::pb::envoy::config::route::v3::Route>,
) -> Vec<(&'static str, String, envoy_types::pb::google::protobuf::Any)> {
    let mut all = simple("echo", clusters);
    all[1].2 = route_config("echo-route", routes);
    all
}

fn route_action(
    route: &mut envoy_types::pb::envoy::config::route::v3::Route,
) -> &mut envoy_types::pb::envoy::config::route::v3::RouteAction {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    match route.action.as_mut() {
        Some(Action::Route(a)) => a,
        _ => unreachable!(),
    }
}

fn header_req(name: &'static str, value: &str) -> tonic::Request<lb_testkit::pb::EchoRequest> {
    let mut req = wfr(echo_req("x"));
    req.metadata_mut().insert(name, value.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_with_a_header_hash_policy_keeps_each_user_on_one_backend() {
    use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
    let backends = start(&["a", "b", "c"]).await;
    let server = AdsServer::start().await.unwrap();
    let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
    let mut route = route_to("c1");
    route_action(&mut route).hash_policy.push(HashPolicy {
        policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: "x-user".into(),
            regex_rewrite: None,
        })),
        terminal: false,
    });
    let mut all = with_routes(
        &[("c1", vec![TestLocality::new("z", 0, &addrs)])],
        vec![route],
    );
    let mut ring = eds_cluster("c1");
    ring.lb_policy = cluster::cluster::LbPolicy::RingHash as i32;
    all[2].2 = any(&ring);
    server.set_all(all);
    let mut client = EchoClient::new(channel(&server, "ring", "echo"));
    let mut homes = std::collections::HashSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let first = within("a hashed RPC", async {
            loop {
                if let Ok(name) = echo(&mut client, header_req("x-user", &user)).await {
                    return name;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        for _ in 0..5 {
            let name = echo(&mut client, header_req("x-user", &user))
                .await
                .unwrap();
            assert_eq!(name, first, "{user} moved");
        }
        homes.insert(first);
    }
    assert!(homes.len() >= 2, "12 users all on {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_headers_and_a_route_to_a_missing_cluster_fails_alone() {
    use envoy_types::pb::envoy::config::route::v3 as route;
    let backends = start(&["stable", "canary"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut canary = route_to("canary");
    canary.r#match.as_mut().unwrap().headers.push(route::HeaderMatcher {
        name: "x-canary".into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                ignore_case: true,
                match_pattern: Some(
                    envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact("yes".into()),
                ),
            },
        )),
        ..Default::default()
    });
    let mut streams = route_to("missing");
    streams.r#match.as_mut().unwrap().path_specifier = Some(
        route::route_match::PathSpecifier::Path("/echo.Echo/ServerStream".into()),
    );
    server.set_all(with_routes(
        &[
            (
                "stable",
                vec![TestLocality::new("z", 0, &[backends[0].addr()])],
            ),
            (
                "canary",
                vec![TestLocality::new("z", 0, &[backends[1].addr()])],
            ),
        ],
        vec![canary, streams, route_to("stable")],
    ));
    let mut client = EchoClient::new(channel(&server, "headers", "echo"));
    until_served_by(&mut client, "stable").await;
    for _ in 0..5 {
        assert_eq!(
            echo(&mut client, header_req("x-canary", "YES"))
                .await
                .unwrap(),
            "canary"
        );
        assert_eq!(
            echo(&mut client, header_req("x-canary", "no"))
                .await
                .unwrap(),
            "stable"
        );
    }
    // The cluster of the streaming route does not exist: those RPCs fail saying
    // so, once its does-not-exist timer has run out, and the others go on.
    let status = within("the missing cluster's RPCs to fail", async {
        loop {
            let request = lb_testkit::pb::EchoRequest {
                message: "x".into(),
                count: 1,
                ..Default::default()
            };
            match client.server_stream(request).await {
                Err(s) if s.message().contains("does not exist") => return s,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("\"missing\""), "{status:?}");
    assert_eq!(echo(&mut client, echo_req("x")).await.unwrap(), "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_timeout_and_retry_policy_apply_to_its_rpcs() {
    use envoy_types::pb::envoy::config::route::v3 as route;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    let backends = start(&["a", "b"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut r = route_to("c");
    let action = route_action(&mut r);
    action.max_stream_duration = Some(route::route_action::MaxStreamDuration {
        max_stream_duration: Some(PbDuration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..Default::default()
    });
    action.retry_policy = Some(route::RetryPolicy {
        retry_on: "unavailable".into(),
        num_retries: Some(UInt32Value { value: 3 }),
        ..Default::default()
    });
    let addrs = [backends[0].addr(), backends[1].addr()];
    server.set_all(with_routes(
        &[("c", vec![TestLocality::new("z", 0, &addrs)])],
        vec![r],
    ));
    let mut client = EchoClient::new(channel(&server, "timeout", "echo"));
    warm_up(&mut client, &["a", "b"]).await;

    // One backend answers UNAVAILABLE: the route's retries take every RPC to the
    // other.
    backends[0]
        .service()
        .set_failure(100, tonic::Code::Unavailable);
    for _ in 0..20 {
        assert_eq!(echo(&mut client, echo_req("x")).await.unwrap(), "b");
    }
    backends[0].service().set_failure(0, tonic::Code::Ok);

    // Slow backends: the route's 200 ms ends the RPC.
    for b in &backends {
        b.service().set_delay(Duration::from_secs(2));
    }
    let started = Instant::now();
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_rpcs_two_to_one() {
    let backends = start(&["heavy", "light"]).await;
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[(
            "c",
            vec![
                TestLocality::new("z1", 0, &[backends[0].addr()]).weight(2),
                TestLocality::new("z2", 0, &[backends[1].addr()]),
            ],
        )],
    ));
    let mut client = EchoClient::new(channel(&server, "localities", "echo"));
    warm_up(&mut client, &["heavy", "light"]).await;
    let counts = spread(&mut client, 1_500).await;
    let heavy = counts.get("heavy").copied().unwrap_or(0) as f64 / 1_500.0;
    // Two thirds, ± 5 points (weighted_target's picker is random).
    assert!((0.617..=0.717).contains(&heavy), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_dns_cluster_resolves_its_name() {
    use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
    let backends = start(&["dns"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut all = simple("echo", &[("c", vec![])]);
    let mut dns = eds_cluster("c");
    dns.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
        cluster::cluster::DiscoveryType::LogicalDns as i32,
    ));
    dns.eds_cluster_config = None;
    let mut assignment =
        endpoints_message("c", &[TestLocality::new("z", 0, &[backends[0].addr()])]);
    if let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(e)) =
        &mut assignment.endpoints[0].lb_endpoints[0].host_identifier
    {
        e.address = Some(lb_testkit::xds::socket_address(backends[0].addr()));
        if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
        {
            s.address = "localhost".into();
        }
    }
    dns.load_assignment = Some(assignment);
    all[2].2 = any(&dns);
    all.truncate(3);
    server.set_all(all);
    let mut client = EchoClient::new(channel(&server, "dns", "echo"));
    until_served_by(&mut client, "dns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_listener_fails_rpcs_unless_the_server_ignores_deletions() {
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    one_cluster(&server, &backends[0]);
    let mut client = EchoClient::new(channel(&server, "deleted", "echo"));
    let json = server
        .bootstrap_json("kept")
        .replace("\"xds_v3\"", "\"xds_v3\", \"ignore_resource_deletion\"");
    let mut kept = EchoClient::new(channel_with(Bootstrap::parse(&json).unwrap(), "echo"));
    until_served_by(&mut client, "a").await;
    until_served_by(&mut kept, "a").await;
    server.remove(LISTENER, "echo");
    let status = first_failure(&mut client, "the deletion", |s| {
        s.message().contains("does not exist")
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    // gRFC A53: the other client keeps the listener it had.
    let counts = spread(&mut kept, 10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    // Put back, it serves again.
    server.set(LISTENER, "echo", listener_rds("echo", "echo-route"));
    until_served_by(&mut client, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_outlier_detection_ejects_a_failing_backend() {
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    let backends = start(&["good", "bad"]).await;
    let server = AdsServer::start().await.unwrap();
    let addrs = [backends[0].addr(), backends[1].addr()];
    let mut all = simple("echo", &[("c", vec![TestLocality::new("z", 0, &addrs)])]);
    let mut c = eds_cluster("c");
    c.outlier_detection = Some(cluster::OutlierDetection {
        interval: Some(PbDuration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        base_ejection_time: Some(PbDuration {
            seconds: 30,
            nanos: 0,
        }),
        max_ejection_percent: Some(UInt32Value { value: 50 }),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        enforcing_failure_percentage: Some(UInt32Value { value: 100 }),
        failure_percentage_minimum_hosts: Some(UInt32Value { value: 2 }),
        failure_percentage_request_volume: Some(UInt32Value { value: 5 }),
        failure_percentage_threshold: Some(UInt32Value { value: 50 }),
        ..Default::default()
    });
    all[2].2 = any(&c);
    server.set_all(all);
    let mut client = EchoClient::new(channel(&server, "outliers", "echo"));
    warm_up(&mut client, &["good", "bad"]).await;
    backends[1]
        .service()
        .set_failure(100, tonic::Code::Internal);
    within("the failing backend to be ejected", async {
        loop {
            let counts = spread(&mut client, 20).await;
            if counts.get("good") == Some(&20) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ads_stream_runs_over_tls_with_a_client_certificate() {
    let backends = start(&["a"]).await;
    let pki = lb_testkit::TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_files(dir.path()).unwrap();
    let server = AdsServer::start_tls(&pki).await.unwrap();
    one_cluster(&server, &backends[0]);
    let bootstrap = |creds: serde_json::Value| {
        Bootstrap::parse(
            &serde_json::json!({
                "xds_servers": [{"server_uri": server.uri(), "channel_creds": [creds]}],
                "node": {"id": format!("tls-{}", fastrand::u64(..))},
            })
            .to_string(),
        )
        .unwrap()
    };
    let tls = bootstrap(serde_json::json!({"type": "tls", "config": {
        "ca_certificate_file": files.ca, "certificate_file": files.client_cert,
        "private_key_file": files.client_key}}));
    let mut client = EchoClient::new(channel_with(tls, "echo"));
    until_served_by(&mut client, "a").await;

    // Plaintext to a TLS server never gets an answer; RPCs fail naming the server.
    let mut plain = EchoClient::new(channel_with(
        bootstrap(serde_json::json!({"type": "insecure"})),
        "echo",
    ));
    let status = first_failure(&mut plain, "UNAVAILABLE", |s| {
        s.code() == tonic::Code::Unavailable
    })
    .await;
    assert!(status.message().contains(&server.uri()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(non_snake_case)] // the gRFC's name
async fn the_client_reports_gRFC_A78_metrics() {
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    // The ADS task records on the global recorder (this test's process alone).
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let backends = start(&["a"]).await;
    let server = AdsServer::start().await.unwrap();
    one_cluster(&server, &backends[0]);
    let mut client = EchoClient::new(channel(&server, "metrics", "echo"));
    until_served_by(&mut client, "a").await;
    nack_maglev(&server).await;
    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, kind: MetricKind, ty: Option<&str>| -> f64 {
        snapshot
            .iter()
            .filter(|(k, _, _, _)| k.kind() == kind && k.key().name() == name)
            .filter(|(k, _, _, _)| {
                ty.is_none_or(|ty| {
                    k.key()
                        .labels()
                        .any(|l| l.key() == "grpc.xds.resource_type" && l.value() == ty)
                })
            })
            .filter(|(k, _, _, _)| {
                k.key()
                    .labels()
                    .any(|l| l.key() == "grpc.xds.server" && l.value() == server.uri())
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => 0.0,
            })
            .sum()
    };
    let cluster_type = Some("envoy.config.cluster.v3.Cluster");
    // The test server sends every subscribed type on every change: each valid copy
    // counts.
    assert!(
        value(
            "grpc.xds_client.resource_updates_valid",
            MetricKind::Counter,
            Some("envoy.config.listener.v3.Listener")
        ) >= 1.0
    );
    assert!(
        value(
            "grpc.xds_client.resource_updates_valid",
            MetricKind::Counter,
            cluster_type
        ) >= 1.0
    );
    assert_eq!(
        value(
            "grpc.xds_client.resource_updates_invalid",
            MetricKind::Counter,
            cluster_type
        ),
        1.0
    );
    assert_eq!(
        value("grpc.xds_client.connected", MetricKind::Gauge, None),
        1.0
    );
    assert_eq!(
        value("grpc.xds_client.server_failure", MetricKind::Counter, None),
        0.0
    );
}
