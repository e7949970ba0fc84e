//! `pick_first` against the recording harness: gRFC A61/A62 behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{Address, ConnectivityState::*, Error};
use lb_policies::PickFirst;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";
const C: &str = "10.0.0.3:1";

fn harness(addrs: &[&str]) -> Harness {
    let mut h = Harness::new(PickFirst);
    h.update_addresses(addrs).unwrap();
    h
}

fn failed_message(h: &Harness) -> String {
    match h.pick() {
        Outcome::Failed(s) => s.message().to_owned(),
        other => panic!("expected a failing pick, got {other:?}"),
    }
}

#[test]
fn tries_addresses_in_order_and_uses_the_first_that_connects() {
    let mut h = harness(&[A, B, C]);
    assert_eq!(
        h.take_events(),
        [
            Event::UpdateState(Connecting),
            Event::NewSubConn(A.into()),
            Event::Connect(A.into())
        ],
        "one address at a time"
    );
    assert_eq!(h.pick(), Outcome::Queued);

    h.set_state(A, Connecting);
    h.fail(A, "refused");
    assert_eq!(
        h.take_events(),
        [
            Event::ResolveNow,
            Event::NewSubConn(B.into()),
            Event::Connect(B.into())
        ],
        "a failed attempt asks to re-resolve, then the next address is tried"
    );
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(5), [B; 5]);
    let events = h.take_events();
    assert!(events.contains(&Event::Shutdown(A.into())), "{events:?}");
    assert!(
        !events.contains(&Event::NewSubConn(C.into())),
        "C never tried"
    );
    assert_eq!(h.live_subconns().len(), 1);
}

#[test]
fn all_failing_is_sticky_transient_failure_and_keeps_retrying() {
    let mut h = harness(&[A, B]);
    h.set_state(A, Connecting);
    h.fail(A, "a refused");
    h.set_state(B, Connecting);
    h.fail(B, "b refused");
    assert_eq!(h.state(), TransientFailure);
    assert!(failed_message(&h).contains("b refused"));
    assert!(h.take_events().contains(&Event::ResolveNow));

    // Backoff over: each subconn that comes back Idle is reconnected, and the
    // channel stays in TransientFailure while they connect (sticky).
    h.set_state(A, Idle);
    assert!(h.take_events().contains(&Event::Connect(A.into())));
    h.set_state(A, Connecting);
    assert_eq!(h.state(), TransientFailure);
    h.fail(A, "a refused again");
    assert_eq!(h.state(), TransientFailure);
    assert!(
        failed_message(&h).contains("a refused again"),
        "the picker names the newest error"
    );
    assert!(
        h.take_events().contains(&Event::ResolveNow),
        "every failure while in TransientFailure asks to re-resolve again"
    );

    h.set_state(B, Idle);
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(h.pick_addrs(3), [B; 3]);
}

#[test]
fn a_dropped_connection_goes_idle_and_exit_idle_starts_over_from_the_first_address() {
    let mut h = harness(&[A, B]);
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    h.set_state(B, Connecting);
    h.set_state(B, Ready);
    h.take_events();

    h.set_state(B, Idle);
    assert_eq!(h.state(), Idle);
    assert_eq!(
        h.pick(),
        Outcome::Idle,
        "an idle pick_first queues the RPC and asks to exit idle, at any depth"
    );
    assert!(
        !h.take_events()
            .iter()
            .any(|e| matches!(e, Event::Connect(_))),
        "no reconnect until an RPC arrives"
    );

    h.exit_idle();
    assert_eq!(h.state(), Connecting);
    let events = h.take_events();
    assert!(events.contains(&Event::NewSubConn(A.into())), "{events:?}");
    assert!(events.contains(&Event::Connect(A.into())), "{events:?}");
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    assert_eq!(h.pick_addrs(2), [A, A]);
}

#[test]
fn a_new_list_that_keeps_the_connected_address_keeps_the_connection() {
    let mut h = harness(&[A, B]);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    h.take_events();

    h.update_addresses(&[C, A]).unwrap();
    assert_eq!(
        h.take_events(),
        [],
        "no new subconn, no reconnect, no state change"
    );
    assert_eq!(h.pick_addrs(2), [A, A]);

    // Once A leaves the list, pick_first moves on to the new first address.
    h.update_addresses(&[C, B]).unwrap();
    let events = h.take_events();
    assert!(events.contains(&Event::Shutdown(A.into())), "{events:?}");
    assert!(events.contains(&Event::Connect(C.into())), "{events:?}");
    assert_eq!(h.state(), Connecting);
}

#[test]
fn an_empty_list_is_transient_failure_that_says_so() {
    let mut h = harness(&[A]);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    assert_eq!(
        h.update_addresses(&[]),
        Err(Error::NoAddresses { note: None })
    );
    assert_eq!(h.state(), TransientFailure);
    assert!(
        failed_message(&h).contains("no addresses"),
        "{}",
        failed_message(&h)
    );
    assert!(h.live_subconns().is_empty());
}

#[test]
fn addresses_after_an_empty_list_connect_without_the_failing_picker() {
    let mut h = harness(&[A]);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    assert_eq!(
        h.update_addresses(&[]),
        Err(Error::NoAddresses { note: None })
    );
    assert_eq!(h.state(), TransientFailure);
    h.take_events();
    // Sticky TRANSIENT_FAILURE (A62) is for failed connections only: the new list
    // queues RPCs while its first address connects, instead of failing them with
    // "no addresses" for a whole connection attempt.
    h.update_addresses(&[B]).unwrap();
    assert_eq!(h.state(), Connecting);
    assert_eq!(h.pick(), Outcome::Queued);
    assert!(h.take_events().contains(&Event::Connect(B.into())));

    // The same after a resolver error with no addresses at all.
    let mut h = Harness::new(PickFirst);
    h.resolver_error("dns timeout");
    assert_eq!(h.state(), TransientFailure);
    h.update_addresses(&[A]).unwrap();
    assert_eq!(h.state(), Connecting);

    // Failed connections stay sticky through a new list.
    let mut h = harness(&[A]);
    h.set_state(A, Connecting);
    h.fail(A, "refused");
    assert_eq!(h.state(), TransientFailure);
    h.update_addresses(&[A, B]).unwrap();
    assert_eq!(h.state(), TransientFailure);
}

#[test]
fn resolver_errors_fail_rpcs_only_when_nothing_works() {
    let mut h = Harness::new(PickFirst);
    h.resolver_error("dns timeout");
    assert_eq!(h.state(), TransientFailure);
    assert!(failed_message(&h).contains("dns timeout"));

    let mut h = harness(&[A]);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    h.resolver_error("dns timeout");
    assert_eq!(h.state(), Ready, "the last good state stands");
    assert_eq!(h.pick_addrs(1), [A]);
}

#[test]
fn duplicate_addresses_are_tried_once() {
    let mut h = harness(&[A, A, B]);
    h.set_state(A, Connecting);
    h.fail(A, "x");
    h.set_state(B, Connecting);
    h.fail(B, "y");
    assert_eq!(h.state(), TransientFailure);
    let created = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::NewSubConn(_)))
        .count();
    assert_eq!(created, 2);
}

#[test]
fn shuffle_address_list_config() {
    let addrs: Vec<Address> = (1..=20)
        .map(|i| Address::new(format!("10.0.0.{i}:1")))
        .collect();
    let first_tried = |json: &str| {
        let mut h = Harness::new(PickFirst);
        h.update_with_config(addrs.clone(), json).unwrap();
        h.take_events()
            .into_iter()
            .find_map(|e| match e {
                Event::Connect(a) => Some(a),
                _ => None,
            })
            .unwrap()
    };
    assert!((0..10).all(|_| first_tried(r#"{"shuffleAddressList": false}"#) == "10.0.0.1:1"));
    // 20 addresses: 10 unshuffled-looking runs in a row would be a 1 in 20^10 event.
    assert!((0..10).any(|_| first_tried(r#"{"shuffleAddressList": true}"#) != "10.0.0.1:1"));
}

#[test]
fn bad_config_is_a_typed_error_naming_the_field() {
    let mut h = Harness::new(PickFirst);
    let err = h
        .update_with_config(vec![Address::new(A)], r#"{"shuffleAddressList": "yes"}"#)
        .unwrap_err();
    assert_eq!(
        err,
        Error::lb_config("pick_first", "shuffleAddressList", "expected a boolean")
    );
    let err = h
        .update_with_config(vec![Address::new(A)], "[]")
        .unwrap_err();
    assert!(err.to_string().contains("expected a JSON object"));
}

#[test]
fn close_shuts_every_subconn_down() {
    let mut h = harness(&[A, B]);
    h.close();
    assert!(h.live_subconns().is_empty());
}
