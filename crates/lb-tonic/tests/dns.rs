//! The channel following DNS: backends found through a DNS server on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_core::ResolverRegistry;
use lb_resolvers::dns::{DnsOptions, DnsResolverBuilder};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, DnsServer};
use lb_tonic::{BackoffConfig, LbChannel, WaitForReady};

async fn served_by(client: &mut EchoClient<LbChannel>, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let mut req = tonic::Request::new(EchoRequest::default());
        req.extensions_mut().insert(WaitForReady(true));
        req.set_timeout(Duration::from_secs(10));
        seen.insert(client.unary_echo(req).await.unwrap().into_inner().server);
    }
    seen
}

#[tokio::test]
async fn the_channel_follows_the_dns_record_set() {
    // Two backends on one port, on two loopback addresses, as DNS would list them.
    let first = Backend::start_at("two", "127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let port = first.addr().port();
    let second = Backend::start_at("three", SocketAddr::new("127.0.0.3".parse().unwrap(), port))
        .await
        .unwrap();
    let dns = DnsServer::start().await.unwrap();
    let ips: [IpAddr; 2] = [first.addr().ip(), second.addr().ip()];
    dns.set("greeter.test", &ips);

    let mut resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(DnsOptions {
        min_resolve_interval: Duration::ZERO,
        refresh_interval: Duration::from_millis(100),
        ..DnsOptions::default()
    }));
    let channel = LbChannel::builder(format!("dns://{}/greeter.test:{port}", dns.addr()))
        .resolvers(resolvers)
        .policy("round_robin")
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(20),
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        seen.extend(served_by(&mut client, 10).await);
    }

    // "two" leaves DNS: within a refresh or two the channel stops using it.
    dns.set("greeter.test", &[second.addr().ip()]);
    tokio::time::timeout(Duration::from_secs(10), async {
        while served_by(&mut client, 20).await.contains("two") {}
    })
    .await
    .expect("the channel kept using an address DNS no longer lists");
    assert_eq!(
        served_by(&mut client, 20).await,
        HashSet::from(["three".to_owned()])
    );
}
