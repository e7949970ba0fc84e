//! Picks allocate nothing: measured with a counting global allocator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::alloc::System;

use lb_core::test_util::Harness;
use lb_core::{Address, BalancerBuilder, ClientConnState, ConnectivityState::*, PickInfo, Weight};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn ready(builder: impl BalancerBuilder, n: usize) -> Harness {
    let mut h = Harness::new(builder);
    let addrs: Vec<Address> = (0..n)
        .map(|i| {
            Address::new(format!("10.0.0.{}:1", i + 1))
                .with_attribute(Weight::new(i as u32 % 4 + 1).unwrap())
        })
        .collect();
    h.update(ClientConnState::new(addrs)).unwrap();
    // pick_first creates one subconn at a time; the others create them all.
    for sc in h.live_subconns() {
        h.set_state(sc.address().addr(), Connecting);
        h.set_state(sc.address().addr(), Ready);
    }
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
    ] {
        let picker = h.picker();
        let info = PickInfo::new("/test.Service/Method");
        // Warm up: the first pick on a thread initialises its thread-local stripe.
        std::hint::black_box(picker.pick(&info));
        let region = Region::new(GLOBAL);
        for _ in 0..10_000 {
            std::hint::black_box(picker.pick(&info));
        }
        let allocated = region.change().allocations;
        assert_eq!(
            allocated, 0,
            "{name}: {allocated} allocations in 10,000 picks"
        );
    }
}
