//! Every built-in policy asks the resolver to re-resolve when a connection is lost or
//! an attempt fails, so a backend that moved (a rolling restart behind DNS) is found
//! without waiting for the resolver's periodic refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use lb_core::BalancerBuilder;
use lb_core::ConnectivityState::*;
use lb_core::test_util::{Event, Harness};
use lb_policies::{
    PickFirst, RingHash, least_request, peak_ewma, round_robin, weighted_round_robin,
};

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";

/// Makes a fresh harness for one policy.
type NewHarness = Box<dyn Fn() -> Harness>;

fn policies() -> Vec<(&'static str, NewHarness)> {
    fn h(b: impl BalancerBuilder + Clone) -> NewHarness {
        Box::new(move || Harness::new(b.clone()))
    }
    vec![
        ("pick_first", h(PickFirst)),
        ("round_robin", h(round_robin::builder())),
        ("weighted_round_robin", h(weighted_round_robin::builder())),
        ("least_request", h(least_request::builder())),
        ("peak_ewma", h(peak_ewma::builder())),
        ("ring_hash", h(RingHash::new())),
    ]
}

fn resolve_nows(events: &[Event]) -> usize {
    events.iter().filter(|e| **e == Event::ResolveNow).count()
}

#[test]
fn a_lost_connection_asks_to_re_resolve_in_every_policy() {
    for (name, new) in policies() {
        let mut h = new();
        h.update_addresses(&[A, B]).unwrap();
        h.set_state(A, Connecting);
        h.set_state(A, Ready);
        let events = h.take_events();
        assert_eq!(resolve_nows(&events), 0, "{name}: nothing failed yet");

        h.set_state(A, Idle); // the connection closed
        let events = h.take_events();
        assert_eq!(resolve_nows(&events), 1, "{name}: {events:?}");
    }
}

#[test]
fn a_failed_attempt_asks_to_re_resolve_in_every_policy_also_while_failing() {
    for (name, new) in policies() {
        let mut h = new();
        h.update_addresses(&[A]).unwrap();
        for round in 0..3 {
            if round > 0 {
                h.set_state(A, Idle); // backoff over
            }
            h.set_state(A, Connecting);
            h.take_events();
            h.fail(A, "connection refused");
            assert_eq!(h.state(), TransientFailure, "{name}");
            let events = h.take_events();
            assert_eq!(
                resolve_nows(&events),
                1,
                "{name}, round {round}: {events:?}"
            );
        }
    }
}

#[test]
fn a_rejected_resolver_state_asks_to_re_resolve() {
    for (name, new) in policies() {
        let mut h = new();
        assert!(h.update_addresses(&[]).is_err(), "{name}");
        assert_eq!(resolve_nows(&h.take_events()), 1, "{name}");
    }
}
