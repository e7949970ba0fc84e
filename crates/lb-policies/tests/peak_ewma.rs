//! `peak_ewma` through the harness: latency samples from the completion callback
//! steer picks away from slow backends, and estimates fade while a backend gets no
//! answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::time::Duration;

use lb_core::ConnectivityState::*;
use lb_core::test_util::{Event, Harness};
use lb_core::{Address, BalancerBuilder, Code, Error, Status};
use lb_policies::peak_ewma;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";
const C: &str = "10.0.0.3:1";

fn ready(addrs: &[&str], config: &str) -> Harness {
    let mut h = Harness::new(peak_ewma::builder());
    h.update_with_config(addrs.iter().map(|a| Address::new(*a)).collect(), config)
        .unwrap();
    h.ready_all();
    h
}

/// `n` RPCs in batches of three in flight at once (three callers), each taking
/// `latency(addr)`; how many went where.
fn rpcs(h: &Harness, n: usize, latency: impl Fn(&str) -> Duration) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for batch in 0..n.div_ceil(3) {
        let in_flight: Vec<_> = (0..3.min(n - batch * 3)).map(|_| h.start_rpc()).collect();
        for rpc in in_flight {
            *counts.entry(rpc.addr.clone()).or_default() += 1;
            let took = latency(&rpc.addr);
            rpc.ok(took);
        }
    }
    counts
}

fn slow_a(addr: &str) -> Duration {
    if addr == A {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(1)
    }
}

#[test]
fn a_slow_backend_is_avoided_once_measured() {
    let h = ready(&[A, B, C], "{}");
    let counts = rpcs(&h, 3000, slow_a);
    let a = counts.get(A).copied().unwrap_or(0);
    assert!(a < 30, "{counts:?}");
}

#[test]
fn load_in_flight_multiplies_the_cost() {
    // Equal latencies: RPCs held on one backend make it the costlier choice.
    let h = ready(&[A, B], "{}");
    rpcs(&h, 100, |_| Duration::from_millis(1));
    let held = h.start_rpc();
    let other = h.start_rpc();
    assert_ne!(
        held.addr, other.addr,
        "the one in flight costs twice as much"
    );
}

#[test]
fn a_new_backend_is_assumed_as_fast_as_the_others() {
    let mut h = ready(&[A, B], "{}");
    rpcs(&h, 500, |_| Duration::from_micros(200));
    h.update_with_config(
        vec![Address::new(A), Address::new(B), Address::new(C)],
        "{}",
    )
    .unwrap();
    h.set_state(C, Connecting);
    h.set_state(C, Ready);
    // Not starved by the 30 ms default while the others answer in 0.2 ms.
    let counts = rpcs(&h, 3000, |_| Duration::from_micros(200));
    assert!(counts.get(C).copied().unwrap_or(0) > 500, "{counts:?}");
}

#[test]
fn failures_do_not_make_a_backend_attractive() {
    let h = ready(&[A, B, C], "{}");
    rpcs(&h, 300, |_| Duration::from_millis(1));
    // A fails fast; the others answer in 1 ms. A's estimate must not drop below theirs.
    let mut to_a = 0;
    for _ in 0..3000 {
        let rpc = h.start_rpc();
        if rpc.addr == A {
            to_a += 1;
            rpc.finish(
                &Status::new(Code::Unavailable, "down"),
                Duration::from_micros(10),
                None,
            );
        } else {
            rpc.ok(Duration::from_millis(1));
        }
    }
    // Its fair third, not more: had the 10 µs failures counted, it would look 100
    // times faster than the others and take nearly everything.
    assert!(to_a < 1300, "{to_a} of 3000 went to the failing backend");
}

#[test]
fn estimates_fade_so_an_avoided_backend_is_tried_again() {
    let mut h = ready(&[A, B, C], r#"{"decayTime": "0.02s"}"#);
    // The picker refreshes every tenth of the decay time, at least 10 ms.
    assert!(
        h.take_events().contains(&Event::Schedule(
            Duration::from_millis(10),
            lb_core::TimerId::new(1)
        )),
        "a refresh timer"
    );
    let slow_a_1s = |a: &str| {
        if a == A {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(1)
        }
    };
    rpcs(&h, 30, slow_a_1s);
    assert_eq!(rpcs(&h, 300, slow_a_1s).get(A), None, "A is avoided");
    // B and C keep answering in 1 ms; A gets nothing, and its 1 s estimate fades
    // (300 ms is 15 decay times) below theirs: A is tried again.
    let mut tried = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(10));
        h.fire_timers();
        tried += rpcs(&h, 6, slow_a_1s).get(A).copied().unwrap_or(0);
    }
    assert!(tried > 0, "A was never tried again");
}

#[test]
fn config_errors_name_the_field() {
    let b = peak_ewma::builder();
    let parse = |json: &str| b.parse_config(&serde_json::from_str(json).unwrap());
    for (bad, field) in [
        (r#"{"decayTime": "0s"}"#, "decayTime"),
        (r#"{"decayTime": 10}"#, "decayTime"),
        (r#"{"defaultRtt": "-1s"}"#, "defaultRtt"),
        (r#"{"defaultRtt": "0s"}"#, "defaultRtt"),
    ] {
        match parse(bad) {
            Err(Error::LbConfig { path, .. }) => assert_eq!(path, field, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let config = parse(r#"{"decayTime": "2s", "defaultRtt": "0.005s"}"#).unwrap();
    let c = config.get::<peak_ewma::PeakEwmaConfig>().unwrap();
    assert_eq!(
        (c.decay_time, c.default_rtt),
        (Duration::from_secs(2), Duration::from_millis(5))
    );
}

#[test]
fn ties_between_two_equal_backends_break_at_random() {
    // One RPC at a time, equal latencies: the two costs tie on every pick, and the
    // second backend must still be tried.
    let h = ready(&[A, B], "{}");
    let mut counts = HashMap::new();
    for _ in 0..1000 {
        let rpc = h.start_rpc();
        *counts.entry(rpc.addr.clone()).or_insert(0usize) += 1;
        rpc.ok(Duration::from_millis(1));
    }
    for a in [A, B] {
        let n = counts.get(a).copied().unwrap_or(0);
        assert!(n > 300, "{counts:?}");
    }
}
