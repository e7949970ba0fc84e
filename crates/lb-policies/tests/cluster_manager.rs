//! `xds_cluster_manager_experimental` through the harness: each RPC goes to the
//! cluster its route chose; an unknown cluster fails it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;

use lb_core::hierarchy::with_path;
use lb_core::test_util::{Harness, Outcome};
use lb_core::{Address, Attributes, Code, ConnectivityState::*, PickInfo};
use lb_policies::ClusterManager;
use lb_policies::cluster_manager::PickedCluster;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.1.1:1";

const CONFIG: &str = r#"{"children": {
    "cluster_a": {"childPolicy": [{"round_robin": {}}]},
    "cluster_b": {"childPolicy": [{"pick_first": {}}]}}}"#;

fn harness() -> Harness {
    let mut h = Harness::with_registry(ClusterManager, lb_policies::registry());
    let addresses = vec![
        with_path(Address::new(A), ["cluster_a"]),
        with_path(Address::new(B), ["cluster_b"]),
    ];
    h.update_with_config(addresses, CONFIG).unwrap();
    h
}

fn to(h: &Harness, cluster: &str) -> Outcome {
    let attrs = Attributes::new().with(PickedCluster(Arc::from(cluster)));
    h.pick_with(&PickInfo::new("/a.B/C").with_attributes(&attrs))
}

#[test]
fn each_rpc_goes_to_the_cluster_its_route_chose() {
    let mut h = harness();
    h.ready_all();
    assert_eq!(h.state(), Ready);
    for _ in 0..5 {
        assert_eq!(to(&h, "cluster_a"), Outcome::Picked(A.into()));
        assert_eq!(to(&h, "cluster_b"), Outcome::Picked(B.into()));
    }
}

#[test]
fn an_unknown_cluster_or_none_fails_the_rpc_even_wait_for_ready() {
    let mut h = harness();
    h.ready_all();
    for outcome in [to(&h, "cluster_c"), h.pick()] {
        match outcome {
            Outcome::Dropped(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert!(status.message().contains("unknown cluster"), "{status:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_failing_cluster_fails_its_rpcs_while_the_others_succeed() {
    let mut h = harness();
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    h.set_state(B, Connecting);
    h.fail(B, "b refused");
    assert_eq!(h.state(), Ready);
    assert_eq!(to(&h, "cluster_a"), Outcome::Picked(A.into()));
    assert!(matches!(to(&h, "cluster_b"), Outcome::Failed(_)));
}

#[test]
fn no_clusters_fail_every_rpc() {
    let mut h = Harness::with_registry(ClusterManager, lb_policies::registry());
    h.update_with_config(Vec::new(), r#"{"children": {}}"#)
        .unwrap();
    assert_eq!(h.state(), TransientFailure);
    assert!(matches!(to(&h, "cluster_a"), Outcome::Dropped(_)));
}

#[test]
fn many_clusters_are_found_by_name_too() {
    let mut h = Harness::with_registry(ClusterManager, lb_policies::registry());
    let children: Vec<String> = (0..20)
        .map(|i| format!(r#""c{i}": {{"childPolicy": [{{"round_robin": {{}}}}]}}"#))
        .collect();
    let config = format!(r#"{{"children": {{{}}}}}"#, children.join(","));
    let addresses = (0..20)
        .map(|i| with_path(Address::new(format!("10.0.{i}.1:1")), [format!("c{i}")]))
        .collect();
    h.update_with_config(addresses, &config).unwrap();
    h.ready_all();
    for i in [0, 7, 19] {
        assert_eq!(
            to(&h, &format!("c{i}")),
            Outcome::Picked(format!("10.0.{i}.1:1"))
        );
    }
    assert!(matches!(to(&h, "c20"), Outcome::Dropped(_)));
}
