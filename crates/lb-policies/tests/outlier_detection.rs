//! `outlier_detection` (gRFC A50) against the recording harness, its child a real
//! `round_robin` (or `weighted_round_robin`) from the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::time::Duration;

use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{Address, Code, ConnectivityState::*, DoneInfo, Error, PickInfo, PickResult, Status};
use lb_policies::OutlierDetection;

fn addrs(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.0.{i}:1")).collect()
}

/// A ready outlier_detection over `n` addresses with this config.
fn ready(n: usize, config: &str) -> Harness {
    let mut h = Harness::with_registry(OutlierDetection, lb_policies::registry());
    let addresses: Vec<Address> = addrs(n).iter().map(|a| Address::new(a.as_str())).collect();
    h.update_with_config(addresses, config).unwrap();
    for a in addrs(n) {
        h.set_state(&a, Connecting);
        h.set_state(&a, Ready);
    }
    assert_eq!(h.state(), Ready);
    h
}

/// Sends `rpcs` picks; the RPCs to `failing` addresses end in UNAVAILABLE.
fn traffic(h: &Harness, rpcs: usize, failing: &[&str]) -> HashMap<String, usize> {
    let picker = h.picker();
    let ok = Status::new(Code::Ok, "");
    let bad = Status::unavailable("down");
    let mut counts = HashMap::new();
    for _ in 0..rpcs {
        let PickResult::Pick(pick) = picker.pick(&PickInfo::new("/a.B/C")) else {
            panic!("expected a pick");
        };
        let addr = pick.subconn.address().addr().to_owned();
        let status = if failing.contains(&addr.as_str()) {
            &bad
        } else {
            &ok
        };
        pick.on_done.done(&DoneInfo::new(status, None));
        *counts.entry(addr).or_default() += 1;
    }
    counts
}

fn failure_percentage(interval: &str, base: &str, max_percent: u32) -> String {
    format!(
        r#"{{"interval": "{interval}", "baseEjectionTime": "{base}", "maxEjectionTime": "10s",
            "maxEjectionPercent": {max_percent},
            "failurePercentageEjection": {{"threshold": 40, "minimumHosts": 1, "requestVolume": 10}},
            "childPolicy": [{{"round_robin": {{}}}}]}}"#
    )
}

#[test]
fn a_failing_address_is_ejected_after_one_interval_and_returns_after_the_ejection_time() {
    let mut h = ready(3, &failure_percentage("10s", "0.05s", 50));
    assert_eq!(h.timers().len(), 1, "the sweep timer is set");
    let bad = addrs(3)[0].clone();
    traffic(&h, 300, &[&bad]);
    h.take_events();
    h.fire_timers(); // one interval
    let counts = traffic(&h, 300, &[]);
    assert_eq!(counts.get(&bad), None, "ejected: {counts:?}");
    assert_eq!(counts.len(), 2);
    assert!(h.timers().len() == 1, "the next sweep is set");

    // After the base ejection time, the next sweep returns it.
    std::thread::sleep(Duration::from_millis(60));
    h.fire_timers();
    let counts = traffic(&h, 300, &[]);
    assert_eq!(counts.len(), 3, "returned: {counts:?}");
}

#[test]
fn an_address_that_keeps_failing_is_ejected_for_longer_each_time() {
    let mut h = ready(3, &failure_percentage("10s", "0.1s", 50));
    let bad = addrs(3)[0].clone();
    let ejected = |h: &Harness| !traffic(h, 60, &[]).contains_key(&bad);

    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(ejected(&h), "first ejection");
    std::thread::sleep(Duration::from_millis(120));
    h.fire_timers();
    assert!(!ejected(&h), "back after 100 ms (1 × base)");

    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(ejected(&h), "second ejection");
    std::thread::sleep(Duration::from_millis(120));
    h.fire_timers();
    assert!(
        ejected(&h),
        "still out after 120 ms: the second ejection lasts 2 × base"
    );
    std::thread::sleep(Duration::from_millis(100));
    h.fire_timers();
    assert!(!ejected(&h), "back after 200 ms");
}

#[test]
fn max_ejection_percent_is_honoured_when_every_address_fails() {
    let mut h = ready(3, &failure_percentage("10s", "30s", 34));
    let all = addrs(3);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    traffic(&h, 300, &all);
    h.fire_timers();
    let counts = traffic(&h, 300, &[]);
    assert_eq!(
        counts.len(),
        2,
        "only one of three (33% < 34%) is ejected: {counts:?}"
    );

    // One may always go, whatever the percentage.
    let mut h = ready(3, &failure_percentage("10s", "30s", 0));
    traffic(&h, 300, &all);
    h.fire_timers();
    assert_eq!(traffic(&h, 300, &[]).len(), 2);
}

#[test]
fn the_success_rate_algorithm_ejects_a_statistical_outlier() {
    let config = r#"{"interval": "10s",
        "successRateEjection": {"stdevFactor": 1000, "minimumHosts": 5, "requestVolume": 20},
        "maxEjectionPercent": 50, "childPolicy": [{"round_robin": {}}]}"#;
    let mut h = ready(5, config);
    let all = addrs(5);
    // Address 1 fails half its RPCs, the others none.
    let picker = h.picker();
    let ok = Status::new(Code::Ok, "");
    let bad = Status::unavailable("flaky");
    for i in 0..500 {
        let PickResult::Pick(pick) = picker.pick(&PickInfo::new("/a.B/C")) else {
            panic!()
        };
        let fail = pick.subconn.address().addr() == all[0] && i % 2 == 0;
        pick.on_done
            .done(&DoneInfo::new(if fail { &bad } else { &ok }, None));
    }
    h.fire_timers();
    let counts = traffic(&h, 400, &[]);
    assert_eq!(counts.get(&all[0]), None, "{counts:?}");
    assert_eq!(counts.len(), 4);
}

#[test]
fn an_ejected_subconn_looks_failing_to_the_child_and_the_channel_stays_ready() {
    let mut h = ready(2, &failure_percentage("10s", "30s", 50));
    let bad = addrs(2)[0].clone();
    traffic(&h, 100, &[&bad]);
    h.fire_timers();
    assert_eq!(h.state(), Ready, "the other address still serves");
    assert_eq!(h.pick(), Outcome::Picked(addrs(2)[1].clone()));
    // The real subconn is untouched: still connected, never shut down.
    let events = h.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Shutdown(_))),
        "{events:?}"
    );
}

#[test]
fn without_an_algorithm_it_only_forwards_to_its_child() {
    let mut h = ready(2, r#"{"childPolicy": [{"round_robin": {}}]}"#);
    assert!(h.timers().is_empty(), "no sweep without an algorithm");
    let bad = addrs(2)[0].clone();
    traffic(&h, 100, &[&bad]);
    assert_eq!(h.fire_timers(), 0);
    assert_eq!(traffic(&h, 100, &[]).len(), 2);
}

#[test]
fn subconn_state_changes_reach_the_child() {
    let mut h = ready(2, &failure_percentage("10s", "30s", 50));
    let a = addrs(2)[0].clone();
    h.set_state(&a, Idle); // its connection closed
    assert!(
        h.take_events().contains(&Event::Connect(a.clone())),
        "round_robin reconnects it at once"
    );
    assert_eq!(h.pick_addrs(4), [addrs(2)[1].as_str(); 4]);
    h.set_state(&a, Connecting);
    h.set_state(&a, Ready);
    assert_eq!(traffic(&h, 10, &[]).len(), 2);
}

#[test]
fn bad_configs_name_the_json_path() {
    let h = || Harness::with_registry(OutlierDetection, lb_policies::registry());
    let cases = [
        (
            r#"{"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": 101}"#,
            "maxEjectionPercent",
            "at most 100",
        ),
        (
            r#"{"childPolicy": [{"round_robin": {}}], "interval": "-1s"}"#,
            "interval",
            "negative",
        ),
        (
            r#"{"childPolicy": [{"round_robin": {}}], "interval": "0s"}"#,
            "interval",
            "greater than zero",
        ),
        (
            r#"{"childPolicy": [{"round_robin": {}}], "failurePercentageEjection": {"threshold": 150}}"#,
            "failurePercentageEjection.threshold",
            "at most 100",
        ),
        (
            r#"{"childPolicy": [{"round_robin": {}}], "successRateEjection": {"enforcementPercentage": 101}}"#,
            "successRateEjection.enforcementPercentage",
            "at most 100",
        ),
        (
            r#"{"childPolicy": [{"round_robin": {}}], "successRateEjection": 5}"#,
            "successRateEjection",
            "expected an object",
        ),
        (r#"{}"#, "childPolicy", "is required"),
        (r#"{"childPolicy": []}"#, "childPolicy", "at least one"),
        (
            r#"{"childPolicy": [{"no_such_policy": {}}]}"#,
            "childPolicy",
            "no registered",
        ),
    ];
    for (json, path, reason) in cases {
        let err = h()
            .update_with_config(vec![Address::new("10.0.0.1:1")], json)
            .unwrap_err();
        let Error::LbConfig {
            policy,
            path: got,
            reason: why,
        } = &err
        else {
            panic!("{json}: {err:?}");
        };
        assert_eq!(policy, "outlier_detection", "{json}");
        assert_eq!(got, path, "{json}: {err}");
        assert!(why.contains(reason), "{json}: {err}");
    }
}

#[test]
fn an_ejected_address_shows_failure_until_it_returns_whatever_its_subconn_does() {
    let mut h = ready(3, &failure_percentage("10s", "0.05s", 50));
    let bad = addrs(3)[0].clone();
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(!traffic(&h, 60, &[]).contains_key(&bad), "ejected");
    h.take_events();

    // Its connection drops. The child must not see IDLE (round_robin would
    // reconnect it, ring_hash would queue keyed picks on it): A50 holds its states
    // back while it is ejected.
    h.set_state(&bad, Idle);
    let events = h.take_events();
    assert!(
        !events.contains(&Event::Connect(bad.clone())),
        "the child saw an ejected subconn go idle: {events:?}"
    );
    h.set_state(&bad, Connecting);
    h.set_state(&bad, Ready);
    assert!(!traffic(&h, 60, &[]).contains_key(&bad), "still ejected");

    // When it returns, the child learns its real state.
    std::thread::sleep(Duration::from_millis(60));
    h.fire_timers();
    assert!(traffic(&h, 60, &[]).contains_key(&bad), "returned, READY");

    // Ejected while IDLE, and returned: the child then connects it.
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    h.set_state(&bad, Idle);
    h.take_events();
    std::thread::sleep(Duration::from_millis(120));
    h.fire_timers();
    let events = h.take_events();
    assert!(
        events.contains(&Event::Connect(bad.clone())),
        "back and idle: the child reconnects it: {events:?}"
    );
}

#[test]
fn with_no_base_ejection_time_an_address_is_out_until_the_next_sweep() {
    let mut h = ready(3, &failure_percentage("10s", "0s", 50));
    let bad = addrs(3)[0].clone();
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    let counts = traffic(&h, 300, &[]);
    assert!(
        !counts.contains_key(&bad),
        "ejected and returned in the same sweep: {counts:?}"
    );
    h.fire_timers();
    assert!(
        traffic(&h, 300, &[]).contains_key(&bad),
        "the next sweep returns it"
    );
}

#[test]
fn turning_both_algorithms_off_forgets_past_ejections() {
    let config = failure_percentage("10s", "0.1s", 50);
    let mut h = ready(3, &config);
    let bad = addrs(3)[0].clone();
    let ejected = |h: &Harness| !traffic(h, 60, &[]).contains_key(&bad);
    let addresses: Vec<Address> = addrs(3).iter().map(|a| Address::new(a.as_str())).collect();
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(ejected(&h));

    // Neither algorithm: every address returns and its ejection count is reset, as
    // grpc-go does; no sweep is pending.
    h.update_with_config(
        addresses.clone(),
        r#"{"interval": "10s", "childPolicy": [{"round_robin": {}}]}"#,
    )
    .unwrap();
    assert!(!ejected(&h));
    assert!(h.timers().is_empty(), "{:?}", h.timers());

    // Back on: the next ejection is a first one (1 × base), not a second.
    h.update_with_config(addresses, &config).unwrap();
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(ejected(&h));
    std::thread::sleep(Duration::from_millis(120));
    h.fire_timers();
    assert!(!ejected(&h), "back after 1 × base");
}

#[test]
fn a_new_interval_replaces_the_pending_sweep() {
    let mut h = ready(3, &failure_percentage("10s", "30s", 50));
    assert_eq!(h.timers().len(), 1);
    let addresses: Vec<Address> = addrs(3).iter().map(|a| Address::new(a.as_str())).collect();
    h.update_with_config(addresses, &failure_percentage("20s", "30s", 50))
        .unwrap();
    assert_eq!(
        h.timers().len(),
        1,
        "the old sweep is cancelled: {:?}",
        h.timers()
    );
    assert_eq!(h.fire_timers(), 1);
}

/// A child policy that creates a subconn per address and records the states it is
/// shown.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, lb_core::ConnectivityState)>>>);

struct RecorderBalancer(
    std::sync::Arc<std::sync::Mutex<Vec<(String, lb_core::ConnectivityState)>>>,
);

impl lb_core::BalancerBuilder for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn build(&self, _: &lb_core::BuildOptions) -> Box<dyn lb_core::Balancer> {
        Box::new(RecorderBalancer(self.0.clone()))
    }
}

impl lb_core::Balancer for RecorderBalancer {
    fn update_client_conn_state(
        &mut self,
        state: lb_core::ClientConnState,
        cc: &mut dyn lb_core::ClientConn,
    ) -> Result<(), Error> {
        for a in state.addresses {
            cc.new_subconn(a)?;
        }
        Ok(())
    }
    fn resolver_error(&mut self, _: lb_core::SharedError, _: &mut dyn lb_core::ClientConn) {}
    fn update_subconn_state(
        &mut self,
        sc: &lb_core::SubConn,
        state: &lb_core::SubConnState,
        _: &mut dyn lb_core::ClientConn,
    ) {
        self.0
            .lock()
            .unwrap()
            .push((sc.address().addr().to_owned(), state.state));
    }
    fn exit_idle(&mut self, _: &mut dyn lb_core::ClientConn) {}
}

#[test]
fn a_subconn_made_for_an_ejected_address_is_shown_failing_at_once() {
    let seen = std::sync::Arc::default();
    let mut registry = lb_policies::registry();
    registry.register(Recorder(std::sync::Arc::clone(&seen)));
    let mut h = Harness::with_registry(OutlierDetection, registry);
    let addresses: Vec<Address> = addrs(3).iter().map(|a| Address::new(a.as_str())).collect();
    h.update_with_config(addresses.clone(), &failure_percentage("10s", "30s", 50))
        .unwrap();
    h.ready_all();
    let bad = addrs(3)[0].clone();
    traffic(&h, 300, &[&bad]);
    h.fire_timers();
    assert!(!traffic(&h, 60, &[]).contains_key(&bad), "ejected");

    // A new child policy makes new subconns, one of them for the ejected address:
    // grpc-go ejects a subconn as it is made, so the child sees it failing, not IDLE
    // (where ring_hash would connect it and queue keyed picks on it).
    let config = failure_percentage("10s", "30s", 50).replace("round_robin", "recorder");
    h.update_with_config(addresses, &config).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(bad.clone(), TransientFailure)),
        "the new child never saw the ejected address fail: {seen:?}"
    );
    assert!(
        seen.iter().all(|(a, _)| *a == bad),
        "only the ejected address is shown a state: {seen:?}"
    );
}
