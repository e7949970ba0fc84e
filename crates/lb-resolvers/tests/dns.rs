//! The DNS resolver against a DNS server on 127.0.0.1 that the test controls.

#![cfg(feature = "dns")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use lb_core::resolver::ClientConn;
use lb_core::{ResolverBuilder, ResolverState, SharedError, Target};
use lb_resolvers::dns::{DnsOptions, DnsResolverBuilder};
use lb_testkit::DnsServer;
use tokio::sync::mpsc;

enum Event {
    State(ResolverState),
    Error(SharedError),
}

struct Channel(mpsc::UnboundedSender<Event>);

impl ClientConn for Channel {
    fn update_state(&self, state: ResolverState) {
        let _ = self.0.send(Event::State(state));
    }
    fn report_error(&self, error: SharedError) {
        let _ = self.0.send(Event::Error(error));
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn options() -> DnsOptions {
    DnsOptions {
        min_resolve_interval: Duration::ZERO,
        refresh_interval: Duration::from_secs(3600),
        error_retry_interval: Duration::from_secs(3600),
        ..DnsOptions::default()
    }
}

fn start(
    server: &DnsServer,
    endpoint: &str,
    options: DnsOptions,
) -> (Box<dyn lb_core::Resolver>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let target = Target::parse(&format!("dns://{}/{endpoint}", server.addr())).unwrap();
    let resolver = DnsResolverBuilder::new(options)
        .build(&target, Arc::new(Channel(tx)))
        .unwrap();
    (resolver, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the resolver said nothing for 10 s")
        .expect("the resolver stopped")
}

async fn next_addrs(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<String> {
    match next(rx).await {
        Event::State(s) => {
            let mut a: Vec<_> = s.addresses.iter().map(|a| a.addr().to_owned()).collect();
            a.sort();
            a
        }
        Event::Error(e) => panic!("expected addresses, got error {e}"),
    }
}

#[tokio::test]
async fn resolves_a_and_aaaa_records_with_the_port() {
    let server = DnsServer::start().await.unwrap();
    server.set("svc.test", &[ip("10.0.0.1"), ip("10.0.0.2"), ip("::1")]);
    let (_resolver, mut rx) = start(&server, "svc.test:50051", options());
    assert_eq!(
        next_addrs(&mut rx).await,
        ["10.0.0.1:50051", "10.0.0.2:50051", "[::1]:50051"]
    );
}

#[tokio::test]
async fn a_changed_record_set_is_picked_up_on_resolve_now() {
    let server = DnsServer::start().await.unwrap();
    server.set("svc.test", &[ip("10.0.0.1")]);
    let (resolver, mut rx) = start(&server, "svc.test:80", options());
    assert_eq!(next_addrs(&mut rx).await, ["10.0.0.1:80"]);
    server.set("svc.test", &[ip("10.0.0.2"), ip("10.0.0.3")]);
    resolver.resolve_now();
    assert_eq!(next_addrs(&mut rx).await, ["10.0.0.2:80", "10.0.0.3:80"]);
}

#[tokio::test]
async fn the_refresh_period_picks_up_changes_by_itself() {
    let server = DnsServer::start().await.unwrap();
    server.set("svc.test", &[ip("10.0.0.1")]);
    let opts = DnsOptions {
        refresh_interval: Duration::from_millis(50),
        ..options()
    };
    let (_resolver, mut rx) = start(&server, "svc.test:80", opts);
    assert_eq!(next_addrs(&mut rx).await, ["10.0.0.1:80"]);
    server.set("svc.test", &[ip("10.0.0.9")]);
    loop {
        if next_addrs(&mut rx).await == ["10.0.0.9:80"] {
            break;
        }
    }
}

#[tokio::test]
async fn an_unknown_name_is_reported_and_recovers_by_itself() {
    let server = DnsServer::start().await.unwrap();
    let opts = DnsOptions {
        error_retry_interval: Duration::from_millis(50),
        ..options()
    };
    let (_resolver, mut rx) = start(&server, "missing.test:80", opts);
    match next(&mut rx).await {
        Event::Error(e) => assert!(e.to_string().contains("`missing.test`"), "{e}"),
        Event::State(s) => panic!("expected an error, got {s:?}"),
    }
    server.set("missing.test", &[ip("10.0.0.5")]);
    loop {
        if let Event::State(s) = next(&mut rx).await {
            assert_eq!(s.addresses[0].addr(), "10.0.0.5:80");
            break;
        }
    }
}

#[tokio::test]
async fn resolve_now_is_rate_limited() {
    let server = DnsServer::start().await.unwrap();
    server.set("svc.test", &[ip("10.0.0.1")]);
    let opts = DnsOptions {
        min_resolve_interval: Duration::from_secs(3600),
        ..options()
    };
    let (resolver, mut rx) = start(&server, "svc.test:80", opts);
    next_addrs(&mut rx).await;
    let after_first = server.queries();
    for _ in 0..5 {
        resolver.resolve_now();
    }
    // Nothing more may arrive while the interval lasts.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a resolve_now inside the interval resolved"
    );
    assert_eq!(server.queries(), after_first, "no extra lookups");
}

#[tokio::test]
async fn dropping_the_resolver_stops_it() {
    let server = DnsServer::start().await.unwrap();
    server.set("svc.test", &[ip("10.0.0.1")]);
    let opts = DnsOptions {
        refresh_interval: Duration::from_millis(10),
        ..options()
    };
    let (resolver, mut rx) = start(&server, "svc.test:80", opts);
    next_addrs(&mut rx).await;
    drop(resolver);
    // The task ends, so its sender is dropped and the stream ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the resolver kept running after it was dropped"
    );
}

#[tokio::test]
async fn ip_literals_and_bad_targets() {
    let server = DnsServer::start().await.unwrap();
    let (_r, mut rx) = start(&server, "127.0.0.1:9", options());
    assert_eq!(next_addrs(&mut rx).await, ["127.0.0.1:9"]);
    assert_eq!(server.queries(), 0, "an IP literal is not looked up");

    let (tx, _rx) = mpsc::unbounded_channel();
    for (target, why) in [
        ("dns:///svc.test:0", "1 to 65535"),
        ("dns://ns.example/svc.test:80", "must be an IP"),
        ("dns:///::1:80", "brackets"),
    ] {
        let err = DnsResolverBuilder::default()
            .build(
                &Target::parse(target).unwrap(),
                Arc::new(Channel(tx.clone())),
            )
            .err()
            .unwrap();
        assert!(err.to_string().contains(why), "{target}: {err}");
    }
}

/// A resolv.conf with this search list (its name server is not used: the targets
/// here name the test's DNS server as their authority).
fn resolv_conf(dir: &tempfile::TempDir, search: &str) -> std::path::PathBuf {
    let path = dir.path().join("resolv.conf");
    std::fs::write(
        &path,
        format!("nameserver 127.0.0.1\nsearch {search}\noptions ndots:5\n"),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_short_name_resolves_through_the_search_list() {
    // A Kubernetes headless service: `greeter` is `greeter.<ns>.svc.cluster.local`.
    let server = DnsServer::start().await.unwrap();
    server.set("greeter.prod.svc.cluster.local", &[ip("10.1.0.7")]);
    let dir = tempfile::tempdir().unwrap();
    let opts = DnsOptions {
        resolv_conf: resolv_conf(&dir, "prod.svc.cluster.local svc.cluster.local"),
        ..options()
    };
    let (_resolver, mut rx) = start(&server, "greeter:50051", opts.clone());
    assert_eq!(next_addrs(&mut rx).await, ["10.1.0.7:50051"]);

    // The second domain of the list is tried too.
    server.set("billing.svc.cluster.local", &[ip("10.1.0.8")]);
    let (_resolver, mut rx) = start(&server, "billing:80", opts.clone());
    assert_eq!(next_addrs(&mut rx).await, ["10.1.0.8:80"]);

    // An absolute name (trailing dot) skips the search list.
    let (_resolver, mut rx) = start(&server, "greeter.:50051", opts);
    match next(&mut rx).await {
        Event::Error(e) => assert!(e.to_string().contains("`greeter.`"), "{e}"),
        Event::State(s) => panic!("an absolute name went through the search list: {s:?}"),
    }
}

#[tokio::test]
async fn a_missing_resolv_conf_is_a_build_error_naming_it_without_an_authority() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let builder = DnsResolverBuilder::new(DnsOptions {
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..options()
    });
    let err = builder
        .build(
            &Target::parse("dns:///svc.test:80").unwrap(),
            Arc::new(Channel(tx)),
        )
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("/nonexistent/resolv.conf"),
        "{err}"
    );
}

#[tokio::test]
async fn after_a_failed_lookup_resolve_now_storms_do_not_push_the_retry_past_the_error_interval() {
    // The channel asks to re-resolve on every failed connection; with a 30 s floor
    // for those requests, a client that started before its record existed must
    // still retry on the error interval.
    let server = DnsServer::start().await.unwrap();
    let opts = DnsOptions {
        min_resolve_interval: Duration::from_secs(30),
        error_retry_interval: Duration::from_millis(200),
        ..options()
    };
    let (resolver, mut rx) = start(&server, "late.test:80", opts);
    assert!(matches!(next(&mut rx).await, Event::Error(_)));
    server.set("late.test", &[ip("10.0.0.4")]);
    let asked = async {
        loop {
            resolver.resolve_now();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let found = async {
        loop {
            if let Event::State(s) = next(&mut rx).await {
                return s;
            }
        }
    };
    // Bounded by 5 s here; a retry pushed to the 30 s floor would miss it.
    let state = tokio::select! {
        s = found => s,
        () = asked => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("no retry within 5 s"),
    };
    assert_eq!(state.addresses[0].addr(), "10.0.0.4:80");
}

async fn next_state(rx: &mut mpsc::UnboundedReceiver<Event>) -> ResolverState {
    match next(rx).await {
        Event::State(s) => s,
        Event::Error(e) => panic!("expected a state, got error {e}"),
    }
}

const RR: &str = r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#;

#[tokio::test]
async fn a_grpc_config_txt_record_gives_the_service_config_of_the_first_matching_choice() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("svc.test", &[ip("10.0.0.1")]);
    // Split over several strings, beside another TXT record, as DNS may serve it.
    let record = format!(
        r#"grpc_config=[{{"clientLanguage":["go"],"serviceConfig":{{}}}},{{"clientHostname":["client-7"],"serviceConfig":{RR}}}]"#
    );
    let (first, rest) = record.split_at(40);
    dns.set_txt("_grpc_config.svc.test", &[&["v=spf1 -all"], &[first, rest]]);
    let options = DnsOptions {
        client_hostname: Some("client-7".into()),
        ..options()
    };
    let (resolver, mut rx) = start(&dns, "svc.test:50051", options.clone());
    let state = next_state(&mut rx).await;
    assert_eq!(state.service_config.as_deref(), Some(RR));
    assert!(state.service_config_error.is_none());

    // Another host gets no choice, so no config.
    drop(resolver);
    let other = DnsOptions {
        client_hostname: Some("client-8".into()),
        ..options.clone()
    };
    let (_resolver, mut rx) = start(&dns, "svc.test:50051", other);
    assert_eq!(next_state(&mut rx).await.service_config, None);

    // Service configs off: not even looked up.
    let off = DnsOptions {
        service_config: false,
        ..options
    };
    let (_resolver, mut rx) = start(&dns, "svc.test:50051", off);
    assert_eq!(next_state(&mut rx).await.service_config, None);
}

#[tokio::test]
async fn a_malformed_grpc_config_record_is_an_invalid_config_naming_the_field() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("svc.test", &[ip("10.0.0.1")]);
    dns.set_txt(
        "_grpc_config.svc.test",
        &[&[r#"grpc_config=[{"percentage": 150, "serviceConfig": {}}]"#]],
    );
    let (resolver, mut rx) = start(&dns, "svc.test:50051", options());
    let state = next_state(&mut rx).await;
    assert_eq!(state.addresses.len(), 1, "the addresses still go out");
    let error = state
        .service_config_error
        .expect("an invalid config")
        .to_string();
    assert!(error.contains("[0].percentage"), "{error}");

    // Fixed in DNS: the next lookup carries the config.
    dns.set_txt(
        "_grpc_config.svc.test",
        &[&[&format!(r#"grpc_config=[{{"serviceConfig": {RR}}}]"#)]],
    );
    resolver.resolve_now();
    let state = next_state(&mut rx).await;
    assert_eq!(state.service_config.as_deref(), Some(RR));
    assert!(state.service_config_error.is_none());

    // The TXT lookup fails (SERVFAIL): that says nothing about the config, which
    // stays.
    dns.fail_txt("_grpc_config.svc.test", true);
    resolver.resolve_now();
    let state = next_state(&mut rx).await;
    assert_eq!(
        state.service_config.as_deref(),
        Some(RR),
        "kept through a failed lookup"
    );
    dns.fail_txt("_grpc_config.svc.test", false);

    // The record removed: no config (the channel falls back to its default).
    dns.set_txt("_grpc_config.svc.test", &[]);
    resolver.resolve_now();
    assert_eq!(next_state(&mut rx).await.service_config, None);
}

#[tokio::test]
async fn an_unanswered_txt_query_does_not_hold_the_addresses_back() {
    // A server (or a firewall) that drops TXT queries: the resolver's own timeout is
    // 5 s, but the addresses go out a second after they are found, with the last
    // config (none here).
    let dns = DnsServer::start().await.unwrap();
    dns.set("svc.test", &[ip("10.0.0.1")]);
    dns.drop_txt("_grpc_config.svc.test", true);
    let (_resolver, mut rx) = start(&dns, "svc.test:50051", options());
    let state = tokio::time::timeout(Duration::from_secs(3), next_state(&mut rx))
        .await
        .expect("the addresses waited for the TXT lookup's own timeout");
    assert_eq!(state.addresses.len(), 1);
    assert_eq!(state.service_config, None);
    assert!(dns.txt_queries() > 0, "it asked");
}

#[tokio::test]
async fn no_txt_query_goes_out_when_service_configs_are_off() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("svc.test", &[ip("10.0.0.1")]);
    let off = DnsOptions {
        service_config: false,
        ..options()
    };
    let (_resolver, mut rx) = start(&dns, "svc.test:50051", off);
    next_state(&mut rx).await;
    assert_eq!(dns.txt_queries(), 0);
}
