//! Picks allocate nothing: measured with a counting global allocator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::alloc::System;

use lb_core::test_util::Harness;
use std::time::Duration;

use lb_core::{
    Address, BalancerBuilder, ClientConnState, Code, DoneInfo, LoadReport, PickInfo, PickResult,
    Status, Weight,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn ready(builder: impl BalancerBuilder, n: usize) -> Harness {
    ready_with(builder, n, None)
}

/// A ready harness; with `config`, the policy's config as JSON (parents parse their
/// children from the full registry).
fn ready_with(builder: impl BalancerBuilder, n: usize, config: Option<&str>) -> Harness {
    let mut h = Harness::with_registry(builder, lb_policies::registry());
    let addrs: Vec<Address> = (0..n)
        .map(|i| {
            Address::new(format!("10.0.0.{}:1", i + 1))
                .with_attribute(Weight::new(i as u32 % 4 + 1).unwrap())
        })
        .collect();
    match config {
        Some(json) => h.update_with_config(addrs, json).unwrap(),
        None => h.update(ClientConnState::new(addrs)).unwrap(),
    }
    // pick_first creates one subconn at a time; the others create them all.
    h.ready_all();
    h
}

/// `priority_experimental` over `weighted_target_experimental` (two targets) over
/// `round_robin`, `n` backends, ready.
fn tree(n: usize) -> Harness {
    let mut h = Harness::with_registry(lb_policies::Priority, lb_policies::registry());
    let addrs: Vec<Address> = (0..n)
        .map(|i| {
            let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
            lb_core::hierarchy::with_path(Address::new(format!("10.0.0.{}:1", i + 1)), ["p0", zone])
        })
        .collect();
    let config = r#"{"children": {"p0": {"config": [{"weighted_target_experimental": {"targets": {
        "zone-a": {"weight": 2, "childPolicy": [{"round_robin": {}}]},
        "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]}},
        "priorities": ["p0"]}"#;
    h.update_with_config(addrs, config).unwrap();
    h.ready_all();
    assert_eq!(h.state(), lb_core::ConnectivityState::Ready);
    h
}

#[test]
fn picks_allocate_nothing() {
    for (name, h) in [
        ("pick_first", ready(lb_policies::PickFirst, 3)),
        ("round_robin", ready(lb_policies::round_robin::builder(), 3)),
        (
            "weighted_round_robin",
            ready(lb_policies::weighted_round_robin::builder(), 3),
        ),
        (
            "least_request",
            ready(lb_policies::least_request::builder(), 3),
        ),
        ("peak_ewma", ready(lb_policies::peak_ewma::builder(), 3)),
        (
            "ring_hash",
            ready_with(
                lb_policies::RingHash::new(),
                3,
                Some(r#"{"requestHashHeader": "x-key"}"#),
            ),
        ),
        // A tree: priority over weighted_target over round_robin.
        ("priority > weighted_target > round_robin", tree(3)),
        // A parent adding its completion callback to its child's pick.
        (
            "outlier_detection over round_robin",
            ready_with(
                lb_policies::OutlierDetection,
                3,
                Some(r#"{"failurePercentageEjection": {}, "childPolicy": [{"round_robin": {}}]}"#),
            ),
        ),
    ] {
        let picker = h.picker();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-key", http::HeaderValue::from_static("user-42"));
        let info = PickInfo::new("/test.Service/Method").with_headers(&headers);
        let ok = Status::new(Code::Ok, "");
        let report = LoadReport::new().with_rps(100.0).with_cpu_utilization(0.5);
        let done = DoneInfo::new(&ok, None)
            .with_elapsed(Duration::from_micros(300))
            .with_load_report(Some(&report));
        // Warm up: the first pick on a thread initialises its thread-local stripe.
        std::hint::black_box(picker.pick(&info));
        // The counter is the whole process's: the fewest of three rounds is the
        // picks' own (an allocating pick allocates in every round).
        let allocated = (0..3)
            .map(|_| {
                let region = Region::new(GLOBAL);
                for _ in 0..10_000 {
                    // The pick, its callbacks at the end of the RPC (reading a load
                    // report, a latency), and their drop.
                    if let PickResult::Pick(pick) = picker.pick(&info) {
                        pick.on_done.done(&done);
                    }
                }
                region.change().allocations
            })
            .min()
            .unwrap_or(0);
        assert_eq!(
            allocated, 0,
            "{name}: {allocated} allocations in 10,000 picks"
        );
    }
}
