//! Client-side health checking (gRFC A17) against real tonic servers running
//! tonic-health, whose status the tests flip at run time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::time::Duration;

use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;

mod common;
use common::*;

/// round_robin (or `policy`) with health checks of the service `echo`.
fn config(policy: &str) -> String {
    format!(
        r#"{{"loadBalancingConfig": [{{"{policy}": {{}}}}],
            "healthCheckConfig": {{"serviceName": "echo"}}}}"#
    )
}

fn channel(backends: &[&Backend], policy: &str) -> LbChannel {
    LbChannel::builder(static_target(backends))
        .default_service_config(config(policy))
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

async fn healthy(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        let b = Backend::start_with_health(n).await.unwrap();
        b.set_health("echo", true).await;
        out.push(b);
    }
    out
}

/// The backends that served `n` RPCs (failures ignored).
async fn served(client: &mut EchoClient<LbChannel>, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for i in 0..n {
        if let Ok(s) = echo(client, echo_req(&format!("{i}"))).await {
            seen.insert(s);
        }
    }
    seen
}

#[tokio::test]
async fn a_backend_that_turns_not_serving_gets_no_new_rpc_and_comes_back_when_serving() {
    not_serving_is_avoided("round_robin").await;
}

#[tokio::test]
async fn the_load_aware_policies_check_health_too() {
    for policy in [
        "least_request",
        "peak_ewma",
        "weighted_round_robin",
        "ring_hash",
    ] {
        not_serving_is_avoided(policy).await;
    }
}

async fn not_serving_is_avoided(policy: &str) {
    let backends = healthy(&["a", "b", "c"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = channel(&all, policy);
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b", "c"]).await;

    backends[1].set_health("echo", false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = backends[1].hits();
    for i in 0..90 {
        let server = echo(&mut client, echo_req(&format!("{i}"))).await.unwrap();
        assert_ne!(
            server, "b",
            "{policy}: RPC {i} went to a NOT_SERVING backend"
        );
    }
    assert_eq!(backends[1].hits(), hits);
    // It stays connected: only its health changed.
    assert_eq!(backends[1].open_connections(), 1);

    backends[1].set_health("echo", true).await;
    warm_up(&mut client, &["b"]).await;
}

#[tokio::test]
async fn when_every_backend_is_not_serving_rpcs_fail_with_what_the_health_check_said() {
    let backends = healthy(&["a"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = channel(&all, "round_robin");
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a"]).await;
    backends[0].set_health("echo", false).await;
    let status = first_failure(&mut client, "the channel to fail", |_| true).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("NOT_SERVING"), "{status:?}");
    assert!(
        status.message().contains("last health check failure"),
        "a health failure is not a connection error: {status:?}"
    );
}

#[tokio::test]
async fn a_health_check_of_an_unregistered_service_fails_saying_so_in_plain_words() {
    // tonic-health answers a Watch of a service it does not know with NOT_FOUND
    // "service not registered" (percent-encoded on the wire).
    let backend = Backend::start_with_health("a").await.unwrap();
    let channel = LbChannel::builder(static_target(&[&backend]))
        .default_service_config(
            r#"{"loadBalancingConfig": [{"round_robin": {}}],
                "healthCheckConfig": {"serviceName": "greeter"}}"#,
        )
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let status = first_failure(&mut client, "the RPC to fail", |s| {
        s.message().contains("health")
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let message = status.message();
    assert!(message.contains("last health check failure"), "{message}");
    assert!(message.contains(r#"service "greeter""#), "{message}");
    assert!(
        message.contains("NOT_FOUND: service not registered"),
        "{message}"
    );
    assert!(!message.contains("%20"), "{message}");
    assert!(!message.contains("connection error"), "{message}");
}

#[tokio::test]
async fn a_server_without_the_health_service_still_gets_traffic() {
    let plain = Backend::start("plain").await.unwrap();
    let checked = healthy(&["checked"]).await;
    let channel = channel(&[&plain, &checked[0]], "round_robin");
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["plain", "checked"]).await;
}

#[tokio::test]
async fn the_health_watch_starts_again_after_a_server_restart() {
    let mut backends = healthy(&["a", "b"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = channel(&all, "round_robin");
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;

    backends[0].kill().await;
    backends[0].restart().await.unwrap();
    warm_up(&mut client, &["a"]).await;
    // The watch on the new connection follows the health service.
    backends[0].set_health("echo", false).await;
    within("a to leave", async {
        while served(&mut client, 20).await.contains("a") {}
    })
    .await;
    backends[0].set_health("echo", true).await;
    warm_up(&mut client, &["a"]).await;
}

#[tokio::test]
async fn pick_first_and_a_channel_with_health_checks_off_do_not_check() {
    let backends = healthy(&["a"]).await;
    backends[0].set_health("echo", false).await;
    let all: Vec<&Backend> = backends.iter().collect();
    // pick_first never asks for health checks, as in grpc-go.
    let mut client = EchoClient::new(channel(&all, "pick_first"));
    assert_eq!(
        served(&mut client, 5).await,
        HashSet::from(["a".to_owned()])
    );

    let channel = LbChannel::builder(static_target(&all))
        .default_service_config(config("round_robin"))
        .disable_health_check()
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    assert_eq!(
        served(&mut client, 5).await,
        HashSet::from(["a".to_owned()])
    );
}

#[tokio::test]
async fn weighted_round_robin_follows_health_too() {
    let backends = healthy(&["a", "b"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = channel(&all, "weighted_round_robin");
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;
    backends[0].set_health("echo", false).await;
    within("a to leave", async {
        while served(&mut client, 20).await.contains("a") {}
    })
    .await;
    assert_eq!(
        served(&mut client, 30).await,
        HashSet::from(["b".to_owned()])
    );
}

#[tokio::test]
async fn an_idle_health_checked_channel_closes_its_connections() {
    // tonic's health service sends only on change: a Watch left open would keep its
    // connection (and two tasks) alive for ever after the channel went idle.
    let backends = healthy(&["a", "b"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = LbChannel::builder(static_target(&all))
        .default_service_config(config("round_robin"))
        .backoff(fast_backoff())
        .idle_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    assert!(
        channel
            .wait_for_state(lb_core::ConnectivityState::Idle, Duration::from_secs(5))
            .await
    );
    every_connection_closed(&backends).await;
    // And back, health-checked again.
    warm_up(&mut client, &["a", "b"]).await;
    backends[0].set_health("echo", false).await;
    within("a to leave", async {
        while served(&mut client, 20).await.contains("a") {}
    })
    .await;
}

#[tokio::test]
async fn closing_a_health_checked_channel_closes_its_connections() {
    let backends = healthy(&["a", "b"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = channel(&all, "round_robin");
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    channel.close();
    every_connection_closed(&backends).await;
}

#[tokio::test]
async fn a_policy_that_drops_a_health_checked_subconn_closes_its_connection() {
    let resolver = lb_testkit::ManualResolver::new();
    let backends = healthy(&["a", "b"]).await;
    resolver.update_addrs(&[backends[0].addr(), backends[1].addr()]);
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .default_service_config(config("round_robin"))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;
    // b leaves the address list: its subconn is shut down.
    resolver.update_addrs(&[backends[0].addr()]);
    within("b's connection to close", async {
        while backends[1].open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(backends[0].open_connections(), 1);
}

#[tokio::test]
async fn a_health_stream_that_ends_after_an_answer_is_reopened_at_once() {
    // A proxy's stream idle timeout ends the Watch every 200 ms. After an answer the
    // next Watch opens at once (gRFC A17), not after the 1 s base backoff: a
    // wait-for-ready RPC with a 500 ms deadline never meets a backend that is out.
    let backend = Backend::start_with_expiring_health("a", Duration::from_millis(200))
        .await
        .unwrap();
    backend.set_health("echo", true).await;
    let channel = LbChannel::builder(static_target(&[&backend]))
        .default_service_config(config("round_robin"))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a"]).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut rpcs = 0;
    while tokio::time::Instant::now() < until {
        let mut req = wfr(echo_req("x"));
        req.set_timeout(Duration::from_millis(500));
        if let Err(status) = echo(&mut client, req).await {
            panic!("RPC {rpcs} failed while the health stream reopened: {status:?}");
        }
        rpcs += 1;
    }
    let watches = backend.health_watches();
    assert!(
        watches >= 5,
        "the Watch was reopened {watches} times in 1.5 s"
    );
}

#[tokio::test]
async fn a_not_serving_answer_resets_the_health_backoff_too() {
    // Every Watch answers NOT_SERVING and ends after 150 ms: each answer resets the
    // backoff, so the next Watch opens at once. Were the 1 s backoff to grow
    // instead, 1.5 s would hold two or three of them.
    let backend = Backend::start_with_expiring_health("a", Duration::from_millis(150))
        .await
        .unwrap();
    backend.set_health("echo", false).await;
    let channel = LbChannel::builder(static_target(&[&backend]))
        .default_service_config(config("round_robin"))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert!(status.message().contains("NOT_SERVING"), "{status:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let watches = backend.health_watches();
    assert!(
        watches >= 6,
        "the Watch was reopened {watches} times in 1.5 s"
    );
    // Still out of the rotation all along.
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn keepalive_without_while_idle_counts_the_health_stream_as_open() {
    // No RPC is in flight, but the health Watch is open: as in grpc-go, keepalive
    // pings (its `while_idle` off only skips connections without any stream). A
    // link that stops answering is then found by the ping.
    let backends = healthy(&["a"]).await;
    let proxy = lb_testkit::TcpProxy::start(backends[0].addr())
        .await
        .unwrap();
    let channel = LbChannel::builder(format!("static:///{}", proxy.addr()))
        .default_service_config(config("round_robin"))
        .backoff(fast_backoff())
        .keepalive(lb_tonic::Keepalive {
            interval: lb_tonic::Keepalive::MIN_INTERVAL,
            timeout: Duration::from_millis(300),
            while_idle: false,
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a"]).await;
    assert_eq!(proxy.accepted(), 1);
    // The server's bytes now take 5 s through the proxy: the ping after 10 quiet
    // seconds goes unanswered, the connection is closed and a new one is made.
    proxy.set_response_delay(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(20), async {
        while proxy.accepted() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no keepalive ping found the stalled link while only the health stream was open");
}
