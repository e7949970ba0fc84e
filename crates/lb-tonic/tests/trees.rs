//! Trees of policies through a real channel, against real backends: outlier
//! detection under weighted_target under priority under the channel's switch,
//! weighted_round_robin's ORCA weights refreshed in the same tree, failover between
//! priorities, routing by a resolver's config selector to the cluster manager's
//! children, and a child that panics deep in a tree.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lb_core::hierarchy::with_path;
use lb_core::routing::{ConfigSelector, RpcConfig, RpcInfo};
use lb_core::{Address, Attributes, ResolverState, Status};
use lb_policies::cluster_manager::PickedCluster;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, ManualResolver, Orca};
use lb_tonic::LbChannel;
use tokio::time::Instant;

mod common;
use common::*;

/// A channel over `resolver` with `config` as its service config.
fn channel(resolver: &ManualResolver, config: &str) -> LbChannel {
    LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .default_service_config(config)
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

fn pathed(backend: &Backend, path: &[&str]) -> Address {
    with_path(Address::from(backend.addr()), path.iter().copied())
}

/// Sends RPCs for `length`, ignoring failures; what each backend served.
async fn served(client: &mut EchoClient<LbChannel>, length: Duration) -> HashMap<String, usize> {
    let until = Instant::now() + length;
    let mut counts: HashMap<String, usize> = HashMap::new();
    while Instant::now() < until {
        if let Ok(name) = echo(client, echo_req("x")).await {
            *counts.entry(name).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_under_weighted_target_under_priority_ejects_a_failing_backend() {
    let backends = start(&["a", "b", "c"]).await;
    let resolver = ManualResolver::new();
    resolver.update(ResolverState::new(vec![
        pathed(&backends[0], &["p0", "zone-1"]),
        pathed(&backends[1], &["p0", "zone-1"]),
        pathed(&backends[2], &["p0", "zone-2"]),
    ]));
    let od = r#"{"outlier_detection": {"interval": "0.3s", "baseEjectionTime": "30s",
        "maxEjectionPercent": 50,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 2, "requestVolume": 10},
        "childPolicy": [{"round_robin": {}}]}}"#;
    let config = format!(
        r#"{{"loadBalancingConfig": [{{"priority_experimental": {{
            "children": {{"p0": {{"config": [{{"weighted_target_experimental": {{"targets": {{
                "zone-1": {{"weight": 1, "childPolicy": [{od}]}},
                "zone-2": {{"weight": 1, "childPolicy": [{od}]}}}}}}}}]}}}},
            "priorities": ["p0"]}}}}]}}"#
    );
    let mut client = EchoClient::new(channel(&resolver, &config));
    warm_up(&mut client, &["a", "b", "c"]).await;

    // b fails every RPC: its sweep timer, five parents deep, must still run.
    backends[1]
        .service()
        .set_failure(100, tonic::Code::Unavailable);
    within("b to be ejected", async {
        loop {
            let hits = backends[1].hits();
            served(&mut client, Duration::from_millis(400)).await;
            if backends[1].hits() == hits {
                return;
            }
        }
    })
    .await;
    let hits = backends[1].hits();
    let counts = served(&mut client, Duration::from_millis(300)).await;
    assert_eq!(backends[1].hits(), hits, "an ejected backend got RPCs");
    assert!(
        counts.contains_key("a") && counts.contains_key("c"),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_weights_refresh_deep_in_a_tree() {
    // weighted_round_robin's weights come from per-call load reports and are
    // recomputed on its own timer, which must come back down through priority and
    // weighted_target.
    let mut backends = Vec::new();
    let mut recorders = Vec::new();
    for (name, utilization) in [("light", 0.2), ("medium", 0.4), ("heavy", 0.8)] {
        let orca = Orca::fixed(100.0, utilization);
        backends.push(Backend::start_with_orca(name, &orca).await.unwrap());
        recorders.push(orca.recorder);
    }
    let resolver = ManualResolver::new();
    resolver.update(ResolverState::new(
        backends
            .iter()
            .map(|b| pathed(b, &["p0", "zone"]))
            .collect(),
    ));
    let config = r#"{"loadBalancingConfig": [{"priority_experimental": {
        "children": {"p0": {"config": [{"weighted_target_experimental": {"targets": {
            "zone": {"weight": 1, "childPolicy": [{"weighted_round_robin":
                {"blackoutPeriod": "0.2s", "weightUpdatePeriod": "0.1s"}}]}}}}]}},
        "priorities": ["p0"]}}]}"#;
    let mut client = EchoClient::new(channel(&resolver, config));
    warm_up(&mut client, &["light", "medium", "heavy"]).await;
    // Utilizations 0.2, 0.4, 0.8 at the same QPS: shares 4/7, 2/7, 1/7.
    within("shares to follow the reported weights", async {
        loop {
            let counts = served(&mut client, Duration::from_millis(300)).await;
            let all: usize = counts.values().sum();
            let share = |n: &str| counts.get(n).copied().unwrap_or(0) as f64 / all as f64;
            if (share("light") - 4.0 / 7.0).abs() < 0.06
                && (share("heavy") - 1.0 / 7.0).abs() < 0.04
            {
                return;
            }
        }
    })
    .await;
    drop(recorders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_fail_over_and_back_with_real_backends() {
    let mut backends = Vec::new();
    for name in ["primary", "secondary"] {
        backends.push(Backend::start_restartable(name).await.unwrap());
    }
    let resolver = ManualResolver::new();
    resolver.update(ResolverState::new(vec![
        pathed(&backends[0], &["p0"]),
        pathed(&backends[1], &["p1"]),
    ]));
    let config = r#"{"loadBalancingConfig": [{"priority_experimental": {
        "children": {"p0": {"config": [{"round_robin": {}}]},
                     "p1": {"config": [{"round_robin": {}}]}},
        "priorities": ["p0", "p1"]}}]}"#;
    let mut client = EchoClient::new(channel(&resolver, config));
    warm_up(&mut client, &["primary"]).await;
    assert_eq!(
        backends[1].open_connections(),
        0,
        "p1 is not connected before it is needed"
    );

    backends[0].kill().await;
    within("the secondary to serve", async {
        while echo(&mut client, wfr(echo_req("x"))).await.ok().as_deref() != Some("secondary") {}
    })
    .await;
    backends[0].restart().await.unwrap();
    within("the primary to serve again", async {
        while echo(&mut client, wfr(echo_req("x"))).await.ok().as_deref() != Some("primary") {}
    })
    .await;
    // p1 is stopped, its connection kept for a quick return.
    assert_eq!(backends[1].open_connections(), 1);
}

/// Routes `/echo.Echo/UnaryEcho` by the `x-cluster` header (default "a"), refuses
/// every other method, and gives cluster "slow" a 100 ms timeout.
struct Routes;

impl ConfigSelector for Routes {
    fn select(&self, rpc: &RpcInfo<'_>) -> Result<RpcConfig, Status> {
        if rpc.method != "/echo.Echo/UnaryEcho" {
            return Err(Status::unavailable(format!(
                "no route matched {}",
                rpc.method
            )));
        }
        let cluster = rpc
            .headers
            .get("x-cluster")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("a");
        let mut config = RpcConfig::default()
            .with_attributes(Attributes::new().with(PickedCluster(Arc::from(cluster))));
        if cluster == "slow" {
            let method = lb_core::ServiceConfig::parse(
                r#"{"methodConfig": [{"name": [{}], "timeout": "0.1s"}]}"#,
                &lb_core::BalancerRegistry::new(),
            )
            .unwrap()
            .method_config("/echo.Echo/UnaryEcho")
            .cloned()
            .unwrap();
            config = config.with_method_config(Arc::new(method));
        }
        Ok(config)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_selector_routes_each_rpc_to_its_cluster_and_refuses_unrouted_ones() {
    let backends = start(&["a", "b", "slow"]).await;
    backends[2].service().set_delay(Duration::from_millis(500));
    let resolver = ManualResolver::new();
    let config = r#"{"loadBalancingConfig": [{"xds_cluster_manager_experimental": {"children": {
        "a": {"childPolicy": [{"round_robin": {}}]},
        "b": {"childPolicy": [{"round_robin": {}}]},
        "slow": {"childPolicy": [{"round_robin": {}}]}}}}]}"#;
    resolver.update(
        ResolverState::new(vec![
            pathed(&backends[0], &["a"]),
            pathed(&backends[1], &["b"]),
            pathed(&backends[2], &["slow"]),
        ])
        .with_service_config(config)
        .with_config_selector(Arc::new(Routes)),
    );
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .backoff(fast_backoff())
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let to = |cluster: &str| {
        let mut req = echo_req("x");
        req.metadata_mut()
            .insert("x-cluster", cluster.parse().unwrap());
        req
    };
    for _ in 0..5 {
        assert_eq!(echo(&mut client, echo_req("x")).await.unwrap(), "a");
        assert_eq!(echo(&mut client, to("b")).await.unwrap(), "b");
    }
    // A cluster the manager does not have: UNAVAILABLE, though wait-for-ready.
    let status = echo(&mut client, to("nowhere")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unknown cluster"), "{status:?}");
    // A method no route matches.
    let status = client
        .server_stream(lb_testkit::pb::EchoRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no route matched"), "{status:?}");
    // The route's own method config: a 100 ms timeout on a 500 ms backend.
    let status = echo(&mut client, to("slow")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

/// `panicky`: a policy that panics whenever its address list holds 10.255.255.255.
struct Panicky;

impl lb_core::BalancerBuilder for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }

    fn build(&self, options: &lb_core::BuildOptions) -> Box<dyn lb_core::Balancer> {
        struct Balancer(Box<dyn lb_core::Balancer>);
        impl lb_core::Balancer for Balancer {
            fn update_client_conn_state(
                &mut self,
                state: lb_core::ClientConnState,
                cc: &mut dyn lb_core::ClientConn,
            ) -> Result<(), lb_core::Error> {
                assert!(
                    !state
                        .addresses
                        .iter()
                        .any(|a| a.addr().starts_with("10.255.255.255")),
                    "a poisoned address"
                );
                self.0.update_client_conn_state(state, cc)
            }
            fn resolver_error(
                &mut self,
                e: lb_core::SharedError,
                cc: &mut dyn lb_core::ClientConn,
            ) {
                self.0.resolver_error(e, cc);
            }
            fn update_subconn_state(
                &mut self,
                sc: &lb_core::SubConn,
                s: &lb_core::SubConnState,
                cc: &mut dyn lb_core::ClientConn,
            ) {
                self.0.update_subconn_state(sc, s, cc);
            }
            fn exit_idle(&mut self, cc: &mut dyn lb_core::ClientConn) {
                self.0.exit_idle(cc);
            }
            fn timer(&mut self, t: lb_core::TimerId, cc: &mut dyn lb_core::ClientConn) {
                self.0.timer(t, cc);
            }
            fn close(&mut self, cc: &mut dyn lb_core::ClientConn) {
                self.0.close(cc);
            }
        }
        Box::new(Balancer(lb_policies::round_robin::builder().build(options)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_panics_deep_in_a_tree_fails_rpcs_naming_the_tree_and_recovers() {
    let backend = Backend::start("a").await.unwrap();
    let resolver = ManualResolver::new();
    let good = vec![pathed(&backend, &["p0", "zone"])];
    resolver.update(ResolverState::new(good.clone()));
    let mut registry = lb_policies::registry();
    registry.register(Panicky);
    let config = r#"{"loadBalancingConfig": [{"priority_experimental": {
        "children": {"p0": {"config": [{"weighted_target_experimental": {"targets": {
            "zone": {"weight": 1, "childPolicy": [{"panicky": {}}]}}}}]}},
        "priorities": ["p0"]}}]}"#;
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .balancers(registry)
        .default_service_config(config)
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a"]).await;

    let mut poisoned = good.clone();
    poisoned.push(with_path(Address::new("10.255.255.255:1"), ["p0", "zone"]));
    resolver.update(ResolverState::new(poisoned));
    let status = first_failure(&mut client, "the panic to surface", |_| true).await;
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status.message().contains("priority_experimental")
            && status.message().contains("a poisoned address"),
        "{status:?}"
    );
    // A good state: the tree is built again and serves.
    resolver.update(ResolverState::new(good));
    warm_up(&mut client, &["a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_leaves_and_comes_back_makes_no_new_connection() {
    let backends = start(&["a", "b"]).await;
    // Connections to b go through a proxy that counts them.
    let proxy = lb_testkit::TcpProxy::start(backends[1].addr())
        .await
        .unwrap();
    let a = pathed(&backends[0], &["zone-a"]);
    let b = with_path(Address::from(proxy.addr()), ["zone-b"]);
    let both = r#"{"loadBalancingConfig": [{"weighted_target_experimental": {"targets": {
        "zone-a": {"weight": 1, "childPolicy": [{"round_robin": {}}]},
        "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]}"#;
    let only_a = r#"{"loadBalancingConfig": [{"weighted_target_experimental": {"targets": {
        "zone-a": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]}"#;
    let resolver = ManualResolver::new();
    let state =
        |config: &str| ResolverState::new(vec![a.clone(), b.clone()]).with_service_config(config);
    resolver.update(state(both));
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;
    assert_eq!(proxy.accepted(), 1);

    // zone-b leaves: no more RPCs for it, but its connection stays...
    resolver.update(state(only_a));
    within("zone-b to leave", async {
        while served(&mut client, Duration::from_millis(100))
            .await
            .contains_key("b")
        {}
    })
    .await;
    assert_eq!(proxy.open(), 1, "kept for its return");
    // ...and serves again at once when zone-b is back, on the same connection.
    resolver.update(state(both));
    warm_up(&mut client, &["b"]).await;
    assert_eq!(proxy.accepted(), 1, "no new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_connects_for_the_rpc_routed_to_it_while_the_others_are_ready() {
    let backends = start(&["a", "b"]).await;
    // b behind a proxy that can cut its connection.
    let proxy = lb_testkit::TcpProxy::start(backends[1].addr())
        .await
        .unwrap();
    let resolver = ManualResolver::new();
    let config = r#"{"loadBalancingConfig": [{"xds_cluster_manager_experimental": {"children": {
        "a": {"childPolicy": [{"pick_first": {}}]},
        "b": {"childPolicy": [{"pick_first": {}}]}}}}]}"#;
    resolver.update(
        ResolverState::new(vec![
            pathed(&backends[0], &["a"]),
            with_path(Address::from(proxy.addr()), ["b"]),
        ])
        .with_service_config(config)
        .with_config_selector(Arc::new(Routes)),
    );
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    let to_b = || {
        let mut req = echo_req("x");
        req.metadata_mut().insert("x-cluster", "b".parse().unwrap());
        req.set_timeout(Duration::from_secs(5));
        req
    };
    let mut ready = false;
    for _ in 0..100 {
        if echo(&mut client, echo_req("x")).await.is_ok() && echo(&mut client, to_b()).await.is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "both clusters serve");

    // b's connection drops: its pick_first goes IDLE; a keeps the channel READY.
    proxy.sever();
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.open() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(channel.state(), lb_core::ConnectivityState::Ready);
    let accepted = proxy.accepted();

    // The next RPC for b wakes its child (not only the channel's root), reconnects
    // and is served.
    let served = within("an RPC to the idle cluster", echo(&mut client, to_b()))
        .await
        .unwrap();
    assert_eq!(served, "b");
    assert_eq!(proxy.accepted(), accepted + 1, "one new connection");
}
