//! `round_robin` (and with it `lb_core::base`) against the recording harness.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;

use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{ConnectivityState::*, Error};
use lb_policies::round_robin;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";
const C: &str = "10.0.0.3:1";

fn ready(addrs: &[&str]) -> Harness {
    let mut h = Harness::new(round_robin::builder());
    h.update_addresses(addrs).unwrap();
    for a in addrs {
        h.set_state(a, Connecting);
        h.set_state(a, Ready);
    }
    h.take_events();
    h
}

fn counts(picks: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p.as_str()).or_default() += 1;
    }
    m
}

#[test]
fn connects_every_address_at_once() {
    let mut h = Harness::new(round_robin::builder());
    h.update_addresses(&[A, B, C]).unwrap();
    let events = h.take_events();
    for a in [A, B, C] {
        assert!(events.contains(&Event::NewSubConn(a.into())));
        assert!(events.contains(&Event::Connect(a.into())));
    }
    assert_eq!(h.state(), Connecting);
    assert_eq!(h.pick(), Outcome::Queued);
}

#[test]
fn cycles_over_ready_subconns() {
    let h = ready(&[A, B, C]);
    let picks = h.pick_addrs(300);
    assert_eq!(
        counts(&picks),
        HashMap::from([(A, 100), (B, 100), (C, 100)])
    );
    for w in picks.windows(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(
            w,
            [A, B, C],
            "every three consecutive picks cover all three"
        );
    }
}

#[test]
fn starts_at_a_random_index() {
    let firsts: std::collections::HashSet<_> = (0..40)
        .map(|_| ready(&[A, B, C]).pick_addrs(1).remove(0))
        .collect();
    assert!(firsts.len() > 1, "40 pickers all started on {firsts:?}");
}

#[test]
fn aggregation_ready_wins_then_connecting_then_failure() {
    let mut h = Harness::new(round_robin::builder());
    h.update_addresses(&[A, B]).unwrap();
    assert_eq!(h.state(), Connecting, "all idle");
    h.set_state(A, Connecting);
    assert_eq!(h.state(), Connecting, "connecting + idle");
    h.fail(A, "a down");
    assert_eq!(h.state(), Connecting, "failure + idle");
    h.set_state(B, Connecting);
    assert_eq!(h.state(), Connecting, "failure + connecting");
    h.set_state(B, Ready);
    assert_eq!(h.state(), Ready, "failure + ready");
    assert_eq!(h.pick_addrs(4), [B; 4], "only ready subconns are picked");
    h.set_state(B, Idle);
    assert_eq!(h.state(), Connecting, "failure + idle again");
    assert!(
        h.take_events().contains(&Event::Connect(B.into())),
        "an idle subconn reconnects at once"
    );
    h.set_state(B, Connecting);
    h.fail(B, "b down");
    assert_eq!(h.state(), TransientFailure, "all failing");
    match h.pick() {
        Outcome::Failed(s) => assert!(s.message().contains("b down"), "{s}"),
        other => panic!("{other:?}"),
    }
    assert!(h.take_events().contains(&Event::ResolveNow));
}

#[test]
fn failed_subconns_stay_failing_through_backoff_and_reconnect() {
    let mut h = Harness::new(round_robin::builder());
    h.update_addresses(&[A, B]).unwrap();
    for a in [A, B] {
        h.set_state(a, Connecting);
        h.fail(a, "down");
    }
    assert_eq!(h.state(), TransientFailure);
    h.take_events();
    // Backoff ends: both go Idle and are asked to reconnect, but the channel does not
    // flap to Connecting while they retry.
    for a in [A, B] {
        h.set_state(a, Idle);
        assert!(h.take_events().contains(&Event::Connect(a.into())));
        h.set_state(a, Connecting);
        assert_eq!(h.state(), TransientFailure);
    }
    h.set_state(A, Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(2), [A, A]);
}

#[test]
fn address_updates_keep_unchanged_subconns() {
    let mut h = ready(&[A, B]);
    let a_before = h.subconn(A);
    h.update_addresses(&[B, C]).unwrap();
    let events = h.take_events();
    assert!(events.contains(&Event::Shutdown(A.into())), "{events:?}");
    assert!(events.contains(&Event::NewSubConn(C.into())), "{events:?}");
    assert!(
        !events.contains(&Event::NewSubConn(B.into())),
        "B kept: {events:?}"
    );
    assert!(
        !events.contains(&Event::Connect(B.into())),
        "B not reconnected: {events:?}"
    );
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(3), [B; 3], "C is not ready yet");

    h.set_state(C, Connecting);
    h.set_state(C, Ready);
    assert_eq!(
        counts(&h.pick_addrs(100)),
        HashMap::from([(B, 50), (C, 50)])
    );

    // The removed subconn's final Shutdown update is ignored.
    h.set_subconn_state(&a_before, lb_core::SubConnState::new(Shutdown));
    assert_eq!(h.state(), Ready);
}

#[test]
fn an_empty_address_list_is_transient_failure_that_says_so() {
    let mut h = ready(&[A, B]);
    assert_eq!(
        h.update_addresses(&[]),
        Err(Error::NoAddresses { note: None })
    );
    assert_eq!(h.state(), TransientFailure);
    match h.pick() {
        Outcome::Failed(s) => assert!(s.message().contains("no addresses"), "{s}"),
        other => panic!("{other:?}"),
    }
    assert!(h.live_subconns().is_empty());
    assert!(h.take_events().contains(&Event::ResolveNow));
}

#[test]
fn resolver_errors_keep_the_last_good_state() {
    let mut h = ready(&[A]);
    h.resolver_error("registry down");
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(1), [A]);

    let mut h = Harness::new(round_robin::builder());
    h.resolver_error("registry down");
    assert_eq!(h.state(), TransientFailure);
    match h.pick() {
        Outcome::Failed(s) => assert!(s.message().contains("registry down"), "{s}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn close_shuts_every_subconn_down() {
    let mut h = ready(&[A, B, C]);
    h.close();
    assert!(h.live_subconns().is_empty());
}
