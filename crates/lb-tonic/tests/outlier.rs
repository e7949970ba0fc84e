//! Outlier detection (gRFC A50) through the channel, against real servers that fail
//! part of their RPCs on demand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;

mod common;
use common::*;

/// The `"outlier_detection": {config}` entry over `child`: a policy name, or a whole
/// `"name": {config}` entry.
fn od_entry(child: &str) -> String {
    let child = if child.contains(':') {
        child.to_owned()
    } else {
        format!(r#""{child}": {{}}"#)
    };
    format!(
        r#""outlier_detection": {{
              "interval": "0.3s", "baseEjectionTime": "1.5s", "maxEjectionPercent": 34,
              "failurePercentageEjection": {{"threshold": 30, "minimumHosts": 3, "requestVolume": 20}},
              "childPolicy": [{{{child}}}]}}"#
    )
}

/// A service config with outlier detection over `child`.
fn config(child: &str) -> String {
    format!(r#"{{"loadBalancingConfig": [{{{}}}]}}"#, od_entry(child))
}

/// Sends RPCs for `length`, ignoring failures.
async fn traffic(client: &mut EchoClient<LbChannel>, length: Duration) {
    let until = tokio::time::Instant::now() + length;
    while tokio::time::Instant::now() < until {
        let _ = echo(client, echo_req("x")).await;
    }
}

async fn ejected_then_returned(child: &str) {
    ejected_then_returned_with(config(child)).await;
}

async fn ejected_then_returned_with(service_config: String) {
    let backends = start(&["a", "b", "c"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = LbChannel::builder(static_target(&all))
        .default_service_config(service_config)
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b", "c"]).await;

    backends[1]
        .service()
        .set_failure(50, tonic::Code::Unavailable);
    // One interval of traffic shows b failing half its RPCs; the sweep ejects it.
    within("b to be ejected", async {
        loop {
            traffic(&mut client, Duration::from_millis(100)).await;
            let hits = backends[1].hits();
            traffic(&mut client, Duration::from_millis(100)).await;
            if backends[1].hits() == hits {
                return;
            }
        }
    })
    .await;
    // Ejected: a while of traffic, none of it to b. The ejection began at most
    // about 300 ms before it was seen; the 1.5 s ejection time leaves the check
    // ample room on a loaded machine (with 0.6 s, a slow run saw b return inside it).
    let hits = backends[1].hits();
    traffic(&mut client, Duration::from_millis(200)).await;
    assert_eq!(backends[1].hits(), hits, "an ejected backend got RPCs");

    // Healthy again: after the ejection time it gets traffic again.
    backends[1].service().set_failure(0, tonic::Code::Ok);
    within("b to return", async {
        loop {
            let hits = backends[1].hits();
            traffic(&mut client, Duration::from_millis(100)).await;
            if backends[1].hits() > hits {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_half_its_rpcs_is_ejected_and_returns_under_round_robin() {
    ejected_then_returned("round_robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_works_under_weighted_round_robin_too() {
    ejected_then_returned("weighted_round_robin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_works_under_least_request() {
    ejected_then_returned("least_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_works_under_peak_ewma() {
    // A backend failing fast must not win peak_ewma's latency contest meanwhile.
    // A short decay time: with the default 10 s, one latency spike on the failing
    // backend can keep peak_ewma away from it (and so its failures from the sweep)
    // for longer than the test runs.
    ejected_then_returned(r#""peak_ewma": {"decayTime": "0.1s"}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_works_under_ring_hash() {
    ejected_then_returned("ring_hash").await;
}

#[tokio::test]
async fn a_bad_outlier_detection_config_keeps_the_previous_one() {
    let backends = start(&["a", "b"]).await;
    let resolver = lb_testkit::ManualResolver::new();
    let addrs: Vec<lb_core::Address> = backends
        .iter()
        .map(|b| lb_core::Address::from(b.addr()))
        .collect();
    resolver.update(
        lb_core::ResolverState::new(addrs.clone()).with_service_config(config("round_robin")),
    );
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    assert_eq!(channel.policy(), "outlier_detection");
    // maxEjectionPercent over 100: invalid; the channel keeps what it had.
    resolver.update(lb_core::ResolverState::new(addrs).with_service_config(
        r#"{"loadBalancingConfig": [{"outlier_detection": {"maxEjectionPercent": 200,
            "childPolicy": [{"pick_first": {}}]}}]}"#,
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(channel.policy(), "outlier_detection");
    warm_up(&mut client, &["a", "b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_deep_in_a_tree_of_policies_still_sweeps() {
    // Its sweep timer passes three parents on its way up (two forwarding
    // outlier_detection parents and the channel's graceful switch) and must come
    // back down to it: with timer ids packed into 64 bits it arrived as another
    // timer, so nothing was ever ejected.
    let inner = od_entry("round_robin");
    let config = format!(
        r#"{{"loadBalancingConfig": [{{"outlier_detection": {{"childPolicy": [
              {{"outlier_detection": {{"childPolicy": [{{{inner}}}]}}}}]}}}}]}}"#
    );
    ejected_then_returned_with(config).await;
}
