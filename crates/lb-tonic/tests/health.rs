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
    let status = within("the channel to fail", async {
        loop {
            match echo(&mut client, echo_req("x")).await {
                Err(s) => return s,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("NOT_SERVING"), "{status:?}");
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
