//! `weighted_target_experimental` through the harness, its children real
//! `round_robin`s: weights honoured, only ready targets picked, grpc-go's
//! aggregation, removed targets kept.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;

use lb_core::hierarchy::with_path;
use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{Address, ConnectivityState::*};
use lb_policies::WeightedTarget;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.1.1:1";
const B2: &str = "10.0.1.2:1";

fn config(a: u32, b: u32) -> String {
    format!(
        r#"{{"targets": {{
            "zone-a": {{"weight": {a}, "childPolicy": [{{"round_robin": {{}}}}]}},
            "zone-b": {{"weight": {b}, "childPolicy": [{{"round_robin": {{}}}}]}}}}}}"#
    )
}

fn addresses() -> Vec<Address> {
    vec![
        with_path(Address::new(A), ["zone-a"]),
        with_path(Address::new(B), ["zone-b"]),
        with_path(Address::new(B2), ["zone-b"]),
    ]
}

fn ready(a: u32, b: u32) -> Harness {
    let mut h = Harness::with_registry(WeightedTarget, lb_policies::registry());
    h.update_with_config(addresses(), &config(a, b)).unwrap();
    h.ready_all();
    h
}

fn shares(h: &Harness, n: usize) -> HashMap<String, f64> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for addr in h.pick_addrs(n) {
        *counts.entry(addr).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| (k, 100.0 * v as f64 / n as f64))
        .collect()
}

#[test]
fn picks_follow_the_weights_within_two_points_over_10_000_picks() {
    let h = ready(1, 3);
    let s = shares(&h, 10_000);
    let a = s.get(A).copied().unwrap_or(0.0);
    let b = s.get(B).copied().unwrap_or(0.0) + s.get(B2).copied().unwrap_or(0.0);
    assert!((a - 25.0).abs() <= 2.0, "{s:?}");
    assert!((b - 75.0).abs() <= 2.0, "{s:?}");
    // Inside zone-b, its round_robin splits evenly.
    let b1 = s.get(B).copied().unwrap_or(0.0);
    assert!((b1 - 37.5).abs() <= 2.0, "{s:?}");
}

#[test]
fn each_target_gets_only_its_own_addresses() {
    let mut h = Harness::with_registry(WeightedTarget, lb_policies::registry());
    let mut addrs = addresses();
    addrs.push(Address::new("10.9.9.9:1")); // no path: nobody's
    h.update_with_config(addrs, &config(1, 1)).unwrap();
    let created: Vec<String> = h
        .take_events()
        .iter()
        .filter_map(|e| match e {
            Event::NewSubConn(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 3, "{created:?}");
    assert!(!created.contains(&"10.9.9.9:1".to_owned()));
}

#[test]
fn a_target_that_is_not_ready_gets_no_picks_and_states_aggregate_as_grpc_go() {
    let mut h = Harness::with_registry(WeightedTarget, lb_policies::registry());
    h.update_with_config(addresses(), &config(1, 1)).unwrap();
    assert_eq!(h.state(), Connecting);
    assert_eq!(h.pick(), Outcome::Queued);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(20), vec![A; 20], "zone-b is not ready");

    // Both failing: TRANSIENT_FAILURE; zone-a retrying still counts as failing.
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    h.fail(A, "a refused");
    for b in [B, B2] {
        h.set_state(b, Connecting);
        h.fail(b, "b refused");
    }
    assert_eq!(h.state(), TransientFailure);
    assert!(matches!(h.pick(), Outcome::Failed(_)));
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    assert_eq!(
        h.state(),
        TransientFailure,
        "a retry does not make the group CONNECTING"
    );
}

#[test]
fn a_removed_target_is_kept_and_comes_back_without_reconnecting() {
    let mut h = ready(1, 1);
    h.take_events();
    let one = r#"{"targets": {"zone-a": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}"#;
    h.update_with_config(addresses(), one).unwrap();
    assert_eq!(h.pick_addrs(10), vec![A; 10]);
    h.update_with_config(addresses(), &config(1, 1)).unwrap();
    let events = h.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::NewSubConn(_) | Event::Shutdown(_))),
        "{events:?}"
    );
    let s = shares(&h, 1000);
    assert!(s.contains_key(B), "zone-b is back, READY: {s:?}");
}

#[test]
fn no_targets_fail_rpcs_saying_so() {
    let mut h = Harness::with_registry(WeightedTarget, lb_policies::registry());
    h.update_with_config(Vec::new(), r#"{"targets": {}}"#)
        .unwrap();
    assert_eq!(h.state(), TransientFailure);
    match h.pick() {
        Outcome::Failed(status) => assert!(status.message().contains("no targets"), "{status:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_errors_name_the_target() {
    use lb_core::{BalancerBuilder, Error};
    let registry = lb_policies::registry();
    for (bad, path) in [
        (
            r#"{"targets": {"a": {"weight": 1}}}"#,
            "targets.a.childPolicy",
        ),
        (
            r#"{"targets": {"a": {"weight": -1, "childPolicy": [{"round_robin": {}}]}}}"#,
            "targets.a.weight",
        ),
        (r#"{"targets": {"a": 7}}"#, "targets.a"),
        (r#"{"targets": []}"#, "targets"),
    ] {
        match WeightedTarget.parse_config_in(&serde_json::from_str(bad).unwrap(), &registry) {
            Err(Error::LbConfig { path: got, .. }) => assert_eq!(got, path, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn new_weights_alone_take_effect_at_once() {
    // pick_first children keep their connections without publishing again: only
    // the weights change.
    let config = |a: u32, b: u32| {
        format!(
            r#"{{"targets": {{
                "zone-a": {{"weight": {a}, "childPolicy": [{{"pick_first": {{}}}}]}},
                "zone-b": {{"weight": {b}, "childPolicy": [{{"pick_first": {{}}}}]}}}}}}"#
        )
    };
    let addrs = || {
        vec![
            with_path(Address::new(A), ["zone-a"]),
            with_path(Address::new(B), ["zone-b"]),
        ]
    };
    let mut h = Harness::with_registry(WeightedTarget, lb_policies::registry());
    h.update_with_config(addrs(), &config(1, 3)).unwrap();
    h.ready_all();
    let a = shares(&h, 10_000).get(A).copied().unwrap_or(0.0);
    assert!((a - 25.0).abs() <= 2.0, "{a}");
    h.update_with_config(addrs(), &config(3, 1)).unwrap();
    let a = shares(&h, 10_000).get(A).copied().unwrap_or(0.0);
    assert!((a - 75.0).abs() <= 2.0, "{a}");
}
