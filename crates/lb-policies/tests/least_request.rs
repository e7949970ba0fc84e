//! `least_request` through the harness: picks avoid the backends with the most RPCs
//! in flight, counters follow completions and survive picker rebuilds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::time::Duration;

use lb_core::ConnectivityState::*;
use lb_core::test_util::{Harness, Started};
use lb_core::{Address, BalancerBuilder, Error};
use lb_policies::least_request;

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";
const C: &str = "10.0.0.3:1";

fn ready(addrs: &[&str], config: &str) -> Harness {
    let mut h = Harness::new(least_request::builder());
    h.update_with_config(addrs.iter().map(|a| Address::new(*a)).collect(), config)
        .unwrap();
    h.ready_all();
    h
}

/// `n` RPCs that end at once; how many went where.
fn quick_rpcs(h: &Harness, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let rpc = h.start_rpc();
        *counts.entry(rpc.addr.clone()).or_default() += 1;
        rpc.ok(Duration::from_millis(1));
    }
    counts
}

/// Starts RPCs until `n` of them landed on `addr` (keeping the others in flight
/// meanwhile, or the policy would never choose `addr` again), then ends the others.
fn hold_on(h: &Harness, addr: &str, n: usize) -> Vec<Started> {
    let mut held = Vec::new();
    let mut others = Vec::new();
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        let rpc = h.start_rpc();
        if rpc.addr == addr {
            held.push(rpc);
        } else {
            others.push(rpc);
        }
    }
    assert_eq!(held.len(), n, "could not load {addr}");
    for rpc in others {
        rpc.ok(Duration::ZERO);
    }
    held
}

#[test]
fn equal_loads_spread_evenly() {
    let h = ready(&[A, B, C], "{}");
    let counts = quick_rpcs(&h, 3000);
    for a in [A, B, C] {
        let n = counts.get(a).copied().unwrap_or(0);
        assert!((800..1200).contains(&n), "{counts:?}");
    }
}

#[test]
fn a_loaded_backend_gets_nothing_while_others_are_idle() {
    let h = ready(&[A, B, C], "{}");
    let held = hold_on(&h, A, 3);
    let counts = quick_rpcs(&h, 1000);
    assert_eq!(counts.get(A), None, "{counts:?}");
    // Its RPCs end: it is as good as the others again.
    drop(held);
    let counts = quick_rpcs(&h, 3000);
    assert!(counts.get(A).copied().unwrap_or(0) > 700, "{counts:?}");
}

#[test]
fn counters_survive_new_pickers() {
    let mut h = ready(&[A, B], "{}");
    let _held = hold_on(&h, A, 2);
    // A new address means a new picker; A's RPCs in flight still count.
    h.update_with_config(
        vec![Address::new(A), Address::new(B), Address::new(C)],
        "{}",
    )
    .unwrap();
    h.set_state(C, Connecting);
    h.set_state(C, Ready);
    let counts = quick_rpcs(&h, 1000);
    assert_eq!(counts.get(A), None, "{counts:?}");
    assert!(counts.get(C).copied().unwrap_or(0) > 300, "{counts:?}");
}

#[test]
fn with_every_backend_drawn_the_least_loaded_always_wins() {
    let h = ready(&[A, B, C], r#"{"choiceCount": 3}"#);
    let _a = hold_on(&h, A, 2);
    let _b = hold_on(&h, B, 1);
    // C has 0: every pick compares all three.
    let first = h.start_rpc();
    assert_eq!(first.addr, C);
    // Now B and C have one each, A two: B or C.
    let second = h.start_rpc();
    assert_ne!(second.addr, A);
}

#[test]
fn choice_count_follows_a48() {
    let b = least_request::builder();
    let parse = |json: &str| b.parse_config(&serde_json::from_str(json).unwrap());
    let config = parse(r#"{"choiceCount": 25}"#).unwrap();
    assert_eq!(
        config
            .get::<least_request::LeastRequestConfig>()
            .unwrap()
            .choice_count,
        10,
        "above 10 counts as 10"
    );
    for bad in [
        r#"{"choiceCount": 1}"#,
        r#"{"choiceCount": "two"}"#,
        r#"{"choiceCount": -3}"#,
    ] {
        match parse(bad) {
            Err(Error::LbConfig { policy, path, .. }) => {
                assert_eq!(policy, "least_request");
                assert_eq!(path, "choiceCount", "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(parse("[]").is_err());
}

#[test]
fn grpc_go_configs_find_it_under_its_experimental_name() {
    let registry = lb_policies::registry();
    let config = lb_core::ServiceConfig::parse(
        r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 3}}]}"#,
        &registry,
    )
    .unwrap();
    assert_eq!(
        config.lb_policy().unwrap().name,
        "least_request_experimental"
    );
}

#[test]
fn ties_between_two_backends_break_at_random() {
    // Two backends and two choices: every pick compares both, and one RPC at a time
    // leaves both at zero in flight. A48 draws at random, so neither may get all.
    let h = ready(&[A, B], "{}");
    let counts = quick_rpcs(&h, 1000);
    for a in [A, B] {
        let n = counts.get(a).copied().unwrap_or(0);
        assert!(n > 300, "{counts:?}");
    }
}
