//! An `xds:///echo` channel driven by a management server: routes, clusters,
//! priorities and localities come over ADS, and the channel follows every change.
//!
//! Run: `cargo run -p examples --example xds_client`
//!
//! With `GRPC_XDS_BOOTSTRAP` (a bootstrap file) or `GRPC_XDS_BOOTSTRAP_CONFIG` set,
//! it calls `xds:///echo` (or the target given as the first argument) through your
//! control plane for 10 seconds and prints who answered. Without either, it runs a
//! scenario on its own: a management server (`lb_testkit::xds`, a real ADS server
//! on 127.0.0.1) and five echo backends, and shows
//!
//! 1. a 75/25 weighted-clusters route between `stable` and `canary`;
//! 2. a header route: RPCs with `x-canary: yes` all go to `canary`;
//! 3. priority failover: `stable`'s priority-0 backends die, its priority 1
//!    serves (the route's retry policy hides the failures), and traffic returns
//!    when they come back;
//! 4. a NACK: an invalid cluster update is rejected, naming the field, and the
//!    channel keeps the last good one.
//!
//! It stops by itself when the scenario is done.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::google::protobuf::UInt32Value;
use lb_testkit::Backend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::xds::{
    AdsServer, CLUSTER, ROUTE, TestLocality, any, eds_cluster, route_config, route_to,
    route_weighted, simple,
};
use lb_tonic::LbChannel;
use lb_xds::Bootstrap;

type Client = EchoClient<LbChannel>;

/// `n` RPCs (with `header`, if any); how many each backend answered.
async fn tally(
    client: &mut Client,
    n: usize,
    header: Option<(&'static str, &str)>,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        });
        if let Some((name, value)) = header
            && let Ok(value) = value.parse()
        {
            request.metadata_mut().insert(name, value);
        }
        let who = match client.unary_echo(request).await {
            Ok(reply) => reply.into_inner().server,
            Err(status) => format!("failed ({:?})", status.code()),
        };
        *counts.entry(who).or_default() += 1;
    }
    counts
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("GRPC_XDS_BOOTSTRAP").is_some()
        || std::env::var_os("GRPC_XDS_BOOTSTRAP_CONFIG").is_some()
    {
        return against_your_control_plane().await;
    }
    scenario().await
}

/// Your control plane: the `xds` scheme is in every channel's registry (lb-tonic's
/// `xds` feature), with the bootstrap from the environment.
async fn against_your_control_plane() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "xds:///echo".into());
    let channel = LbChannel::builder(&target).build()?;
    let mut client = EchoClient::new(channel.clone());
    for _ in 0..10 {
        println!("{target}: {:?}", tally(&mut client, 20, None).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for sc in channel.snapshot().subconns {
        println!(
            "  {} {:?} {:?}",
            sc.address.addr(),
            sc.state,
            sc.address.attributes().get::<lb_xds::XdsEndpoint>()
        );
    }
    Ok(())
}

async fn scenario() -> Result<(), Box<dyn std::error::Error>> {
    let mut stable_p0 = vec![
        Backend::start_restartable("stable-p0-a").await?,
        Backend::start_restartable("stable-p0-b").await?,
    ];
    let stable_p1 = Backend::start("stable-p1").await?;
    let canary = Backend::start("canary").await?;

    // The management server, and what it serves: listener `echo` → route
    // configuration `echo-route` → clusters `stable` (two priorities) and `canary`.
    let server = AdsServer::start().await?;
    let mut all = simple(
        "echo",
        &[
            (
                "stable",
                vec![
                    TestLocality::new("zone-a", 0, &[stable_p0[0].addr(), stable_p0[1].addr()]),
                    TestLocality::new("zone-b", 1, &[stable_p1.addr()]),
                ],
            ),
            (
                "canary",
                vec![TestLocality::new("zone-a", 0, &[canary.addr()])],
            ),
        ],
    );
    let mut weighted = route_weighted(&[("stable", 75), ("canary", 25)]);
    if let Some(route::route::Action::Route(action)) = weighted.action.as_mut() {
        action.retry_policy = Some(route::RetryPolicy {
            retry_on: "unavailable".into(),
            num_retries: Some(UInt32Value { value: 3 }),
            ..Default::default()
        });
    }
    let mut by_header = route_to("canary");
    if let Some(m) = by_header.r#match.as_mut() {
        m.headers.push(route::HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(
                route::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            ),
            ..Default::default()
        });
    }
    all[1].2 = route_config("echo-route", vec![by_header, weighted]);
    server.set_all(all);
    println!("management server on {}", server.addr());

    // The bootstrap a process would read from GRPC_XDS_BOOTSTRAP, given directly.
    let bootstrap = Bootstrap::parse(&server.bootstrap_json("xds-example"))?;
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(lb_tonic::xds::resolver().with_bootstrap(bootstrap));
    let channel = LbChannel::builder("xds:///echo")
        .resolvers(resolvers)
        .build()?;
    let mut client = EchoClient::new(channel.clone());

    tally(&mut client, 20, None).await; // connect
    println!(
        "1. weighted clusters 75/25:   {:?}",
        tally(&mut client, 400, None).await
    );
    println!(
        "2. with x-canary: yes:        {:?}",
        tally(&mut client, 40, Some(("x-canary", "yes"))).await
    );

    for b in &mut stable_p0 {
        b.kill().await;
    }
    println!(
        "3. priority 0 of stable down: {:?}",
        tally(&mut client, 400, None).await
    );
    for b in &mut stable_p0 {
        b.restart().await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "   and back:                  {:?}",
        tally(&mut client, 400, None).await
    );

    let mut bad = eds_cluster("canary");
    bad.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    server.set(CLUSTER, "canary", any(&bad));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(nack) = server.nacks().last() {
        println!(
            "4. NACK of {}: {}",
            nack.type_url.rsplit('.').next().unwrap_or_default(),
            nack.error_detail
                .as_ref()
                .map_or("", |e| e.message.as_str())
        );
    }
    println!(
        "   still served:              {:?}",
        tally(&mut client, 100, None).await
    );
    server.set(
        ROUTE,
        "echo-route",
        route_config("echo-route", vec![route_to("stable")]),
    );

    println!("\nsubconns, with where each sits in the tree:");
    for sc in channel.snapshot().subconns {
        if let Some(at) = sc.address.attributes().get::<lb_xds::XdsEndpoint>() {
            println!("  {:<18} {:?}  {at}", sc.address.addr(), sc.state);
        }
    }
    Ok(())
}
