//! `priority_experimental` (gRFC A56) through the harness, its children real
//! `round_robin`s: only the highest priority starts, failover on failure and on the
//! timeout, fail-back, and stopped priorities kept without reconnecting.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use lb_core::hierarchy::with_path;
use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{Address, ConnectivityState::*, Error};
use lb_policies::Priority;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.1.1:1";
const C: &str = "10.0.2.1:1";

const CONFIG: &str = r#"{"children": {
    "p0": {"config": [{"round_robin": {}}]},
    "p1": {"config": [{"round_robin": {}}]},
    "p2": {"config": [{"round_robin": {}}]}},
  "priorities": ["p0", "p1", "p2"]}"#;

fn addresses() -> Vec<Address> {
    vec![
        with_path(Address::new(A), ["p0"]),
        with_path(Address::new(B), ["p1"]),
        with_path(Address::new(C), ["p2"]),
    ]
}

fn harness() -> Harness {
    let mut h = Harness::with_registry(Priority, lb_policies::registry());
    h.update_with_config(addresses(), CONFIG).unwrap();
    h
}

fn new_subconns(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NewSubConn(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn only_the_highest_priority_starts_and_a_failure_starts_the_next() {
    let mut h = harness();
    assert_eq!(new_subconns(&h.take_events()), [A], "p1 and p2 wait");
    assert_eq!(h.state(), Connecting);
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    // p0 failed: p1 starts, and the channel waits on it.
    assert_eq!(new_subconns(&h.take_events()), [B]);
    assert_eq!(h.state(), Connecting);
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(3), [B, B, B]);
    assert!(
        h.take_events()
            .iter()
            .all(|e| !matches!(e, Event::NewSubConn(_))),
        "p2 stays unstarted"
    );
}

#[test]
fn a_priority_that_does_not_connect_within_the_timeout_fails_over() {
    let mut h = harness();
    h.set_state(A, Connecting);
    h.take_events();
    let timers = h.timers();
    assert_eq!(timers.len(), 1, "p0's failover timer: {timers:?}");
    h.fire_timers();
    assert_eq!(new_subconns(&h.take_events()), [B], "p1 starts after 10 s");
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    assert_eq!(h.pick_addrs(2), [B, B]);
    // p0 is still given its chance: READY late, it takes over.
    h.set_state(A, Ready);
    assert_eq!(h.pick_addrs(2), [A, A]);
}

#[test]
fn a_higher_priority_that_comes_back_takes_over_and_the_lower_one_is_kept() {
    let mut h = harness();
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    assert_eq!(h.pick_addrs(1), [B]);
    h.take_events();

    // p0 recovers: it is used again, and p1 stops but keeps its connection.
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    assert_eq!(h.pick_addrs(2), [A, A]);
    let events = h.take_events();
    assert!(!events.contains(&Event::Shutdown(B.into())), "{events:?}");

    // p0 fails again: p1 comes back at once, READY, without a new connection.
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    h.fail(A, "refused again");
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(2), [B, B]);
    assert!(new_subconns(&h.take_events()).is_empty());
}

#[test]
fn when_every_priority_fails_the_lowest_ones_state_is_the_channels() {
    let mut h = harness();
    for addr in [A, B, C] {
        h.set_state(addr, Connecting);
        h.fail(addr, &format!("{addr} refused"));
    }
    assert_eq!(h.state(), TransientFailure);
    match h.pick() {
        Outcome::Failed(status) => assert!(status.message().contains(C), "{status:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_priority_retrying_after_a_failure_gets_no_new_timeout() {
    let mut h = harness();
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    h.set_state(B, Connecting);
    h.take_events();
    // p0 retries (CONNECTING after its failure): p1, connecting, stays in use.
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    let timers = h.timers();
    assert_eq!(timers.len(), 1, "only p1's timer: {timers:?}");
}

#[test]
fn configs_that_do_not_match_their_children_are_errors_naming_the_path() {
    use lb_core::BalancerBuilder;
    let registry = lb_policies::registry();
    let parse =
        |json: &str| Priority.parse_config_in(&serde_json::from_str(json).unwrap(), &registry);
    for (bad, path) in [
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}]}}, "priorities": ["p0", "p1"]}"#,
            "priorities[1]",
        ),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}]}, "p1": {"config": [{"round_robin": {}}]}}, "priorities": ["p0"]}"#,
            "children.p1",
        ),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}]}}, "priorities": ["p0", "p0"]}"#,
            "priorities[1]",
        ),
        (
            r#"{"children": {"p0": {}}, "priorities": ["p0"]}"#,
            "children.p0.config",
        ),
        (
            r#"{"children": {"p0": {"config": [{"nope": {}}]}}, "priorities": ["p0"]}"#,
            "children.p0.config",
        ),
        (
            r#"{"children": {"p0": {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": 1}}, "priorities": ["p0"]}"#,
            "children.p0.ignoreReresolutionRequests",
        ),
    ] {
        match parse(bad) {
            Err(Error::LbConfig {
                policy, path: got, ..
            }) => {
                assert_eq!(policy, "priority_experimental");
                assert_eq!(got, path, "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn no_priorities_fail_rpcs_saying_so() {
    let mut h = Harness::with_registry(Priority, lb_policies::registry());
    h.update_with_config(Vec::new(), r#"{"children": {}, "priorities": []}"#)
        .unwrap();
    assert_eq!(h.state(), TransientFailure);
    match h.pick() {
        Outcome::Failed(status) => assert!(status.message().contains("no priority"), "{status:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ignored_reresolution_requests_do_not_reach_the_resolver() {
    let config = r#"{"children": {"p0": {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": true}},
                     "priorities": ["p0"]}"#;
    let mut h = Harness::with_registry(Priority, lb_policies::registry());
    h.update_with_config(vec![with_path(Address::new(A), ["p0"])], config)
        .unwrap();
    h.take_events();
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    assert!(!h.take_events().contains(&Event::ResolveNow));
}
