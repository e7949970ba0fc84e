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

fn dns_registry(min_resolve_interval: Duration, refresh_interval: Duration) -> ResolverRegistry {
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(DnsResolverBuilder::new(DnsOptions {
        min_resolve_interval,
        refresh_interval,
        ..DnsOptions::default()
    }));
    resolvers
}

#[tokio::test]
async fn the_authority_is_the_targets_host_for_dns_and_each_address_for_lists() {
    let port = lb_testkit::free_port().unwrap();
    let backend = Backend::start_at("a", SocketAddr::new("127.0.0.2".parse().unwrap(), port))
        .await
        .unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set("greeter.test", &[backend.addr().ip()]);
    let resolvers = dns_registry(Duration::ZERO, Duration::from_secs(300));
    let rpc = |target: String, authority: Option<&str>| {
        let mut builder = LbChannel::builder(target).resolvers(resolvers.clone());
        if let Some(a) = authority {
            builder = builder.authority(a);
        }
        let channel = builder.build().unwrap();
        async move {
            served_by(&mut EchoClient::new(channel), 1).await;
        }
    };

    // As grpc-go: the target's host, not the backend's IP.
    rpc(format!("dns://{}/greeter.test:{port}", dns.addr()), None).await;
    assert_eq!(
        backend.authorities().last().unwrap(),
        &format!("greeter.test:{port}")
    );
    // A static list has no single host: each address is its own authority.
    rpc(format!("static:///{}", backend.addr()), None).await;
    assert_eq!(
        backend.authorities().last().unwrap(),
        &backend.addr().to_string()
    );
    // An explicit authority wins over both.
    rpc(
        format!("dns://{}/greeter.test:{port}", dns.addr()),
        Some("override.test:1"),
    )
    .await;
    assert_eq!(backend.authorities().last().unwrap(), "override.test:1");

    // And an address's own authority wins over everything.
    let resolver = lb_testkit::ManualResolver::new();
    resolver.update(lb_core::ResolverState::new(vec![
        lb_core::Address::from(backend.addr())
            .with_attribute(lb_core::Authority::new("shard-7.greeter.test")),
    ]));
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .authority("override.test:1")
        .build()
        .unwrap();
    served_by(&mut EchoClient::new(channel), 1).await;
    assert_eq!(
        backend.authorities().last().unwrap(),
        "shard-7.greeter.test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_to_new_ips_is_followed_without_waiting_for_the_refresh() {
    // Old and new backends on one port, as a redeployed service behind DNS.
    let port = lb_testkit::free_port().unwrap();
    let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    let mut old = [
        Backend::start_at("old-2", at("127.0.0.2")).await.unwrap(),
        Backend::start_at("old-3", at("127.0.0.3")).await.unwrap(),
    ];
    let dns = DnsServer::start().await.unwrap();
    dns.set(
        "greeter.test",
        &[at("127.0.0.2").ip(), at("127.0.0.3").ip()],
    );
    // The periodic refresh is 5 minutes: only re-resolution on lost connections can
    // find the new backends within this test.
    let channel = LbChannel::builder(format!("dns://{}/greeter.test:{port}", dns.addr()))
        .resolvers(dns_registry(
            Duration::from_millis(50),
            Duration::from_secs(300),
        ))
        .policy("round_robin")
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        seen.extend(served_by(&mut client, 10).await);
    }

    // One instance at a time, as a rolling restart goes: old-2 is replaced by new-4
    // while old-3 keeps serving, so the channel is never without a backend.
    let _new4 = Backend::start_at("new-4", at("127.0.0.4")).await.unwrap();
    dns.set(
        "greeter.test",
        &[at("127.0.0.3").ip(), at("127.0.0.4").ip()],
    );
    old[0].kill().await;
    follows(&mut client, &["old-3", "new-4"]).await;

    let _new5 = Backend::start_at("new-5", at("127.0.0.5")).await.unwrap();
    dns.set(
        "greeter.test",
        &[at("127.0.0.4").ip(), at("127.0.0.5").ip()],
    );
    old[1].kill().await;
    follows(&mut client, &["new-4", "new-5"]).await;
}

/// Waits until RPCs are served by exactly these backends. An RPC may fail: the one
/// written to a killed backend's connection before the client read its close.
async fn follows(client: &mut EchoClient<LbChannel>, names: &[&str]) {
    let expected: HashSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut seen = HashSet::new();
            for _ in 0..20 {
                let mut req = tonic::Request::new(EchoRequest::default());
                req.extensions_mut().insert(WaitForReady(true));
                if let Ok(reply) = client.unary_echo(req).await {
                    seen.insert(reply.into_inner().server);
                }
            }
            if seen == expected {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the channel did not move to {names:?}"));
}

#[tokio::test]
async fn the_channel_takes_its_service_config_from_a_dns_txt_record_and_keeps_it_through_a_bad_one()
{
    let port = lb_testkit::free_port().unwrap();
    let a = Backend::start_at("a", SocketAddr::new("127.0.0.2".parse().unwrap(), port))
        .await
        .unwrap();
    let b = Backend::start_at("b", SocketAddr::new("127.0.0.3".parse().unwrap(), port))
        .await
        .unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set("greeter.test", &[a.addr().ip(), b.addr().ip()]);
    dns.set_txt(
        "_grpc_config.greeter.test",
        &[&[r#"grpc_config=[{"clientLanguage":["rust"],"serviceConfig":{"loadBalancingConfig":[{"round_robin":{}}]}}]"#]],
    );
    let resolvers = dns_registry(Duration::ZERO, Duration::from_millis(100));
    let channel = LbChannel::builder(format!("dns://{}/greeter.test:{port}", dns.addr()))
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    // pick_first by default; round_robin from DNS reaches both backends.
    let mut seen = HashSet::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < 2 {
            seen.extend(served_by(&mut client, 10).await);
        }
    })
    .await
    .expect("the TXT record's round_robin never spread the RPCs");
    assert_eq!(channel.policy(), "round_robin");

    // A malformed record (gRFC A2: a whole record is invalid when one choice is):
    // the channel keeps the config it has (A21), refresh after refresh.
    dns.set_txt(
        "_grpc_config.greeter.test",
        &[&[r#"grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"pick_first":{}}]},"canary":true}]"#]],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(channel.policy(), "round_robin");
    assert_eq!(served_by(&mut client, 20).await.len(), 2);
}

#[tokio::test]
async fn a_channel_that_ignores_resolver_configs_does_not_ask_dns_for_one() {
    let port = lb_testkit::free_port().unwrap();
    let a = Backend::start_at("a", SocketAddr::new("127.0.0.2".parse().unwrap(), port))
        .await
        .unwrap();
    let dns = DnsServer::start().await.unwrap();
    dns.set("greeter.test", &[a.addr().ip()]);
    let channel = LbChannel::builder(format!("dns://{}/greeter.test:{port}", dns.addr()))
        .resolvers(dns_registry(Duration::ZERO, Duration::from_secs(300)))
        .disable_resolver_service_config()
        .build()
        .unwrap();
    served_by(&mut EchoClient::new(channel), 1).await;
    assert_eq!(dns.txt_queries(), 0, "as grpc-go: no TXT lookup");
}
