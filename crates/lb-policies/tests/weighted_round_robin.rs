//! `weighted_round_robin` with static weights: distribution and smoothness.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;

use lb_core::test_util::{Event, Harness};
use lb_core::{Address, ClientConnState, ConnectivityState::*, Weight};
use lb_policies::weighted_round_robin;
use proptest::prelude::*;

fn addr(i: usize) -> String {
    format!("10.0.{}.{}:1", i / 250, i % 250 + 1)
}

/// A ready harness over addresses with these weights (`0` = no weight attribute).
fn ready(weights: &[u32]) -> Harness {
    let mut h = Harness::new(weighted_round_robin::builder());
    let addresses = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| match Weight::new(w) {
            Some(w) => Address::new(addr(i)).with_attribute(w),
            None => Address::new(addr(i)),
        })
        .collect();
    h.update(ClientConnState::new(addresses)).unwrap();
    for i in 0..weights.len() {
        h.set_state(&addr(i), Connecting);
        h.set_state(&addr(i), Ready);
    }
    h
}

fn index_of(picks: &[String], n: usize) -> Vec<usize> {
    let names: HashMap<String, usize> = (0..n).map(|i| (addr(i), i)).collect();
    picks.iter().map(|p| names[p]).collect()
}

fn longest_run(seq: &[usize], of: usize) -> usize {
    let (mut best, mut run) = (0, 0);
    for &x in seq {
        run = if x == of { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[test]
fn five_one_one_is_smooth_and_exact_in_every_window_of_seven() {
    let h = ready(&[5, 1, 1]);
    let seq = index_of(&h.pick_addrs(7 * 100), 3);
    assert!(longest_run(&seq, 0) <= 5, "{seq:?}");
    for (start, window) in seq.windows(7).enumerate() {
        let mut c = [0; 3];
        window.iter().for_each(|&i| c[i] += 1);
        assert_eq!(c, [5, 1, 1], "window at {start}: {window:?}");
    }
}

#[test]
fn a_million_picks_match_the_weights_within_half_a_percent() {
    let weights = [7, 3, 1, 13, 2];
    let h = ready(&weights);
    let seq = index_of(&h.pick_addrs(1_000_000), weights.len());
    let total: u32 = weights.iter().sum();
    let mut c = vec![0usize; weights.len()];
    seq.iter().for_each(|&i| c[i] += 1);
    for (i, &w) in weights.iter().enumerate() {
        let expected = 1_000_000.0 * f64::from(w) / f64::from(total);
        let error = (c[i] as f64 - expected).abs() / expected;
        assert!(
            error < 0.005,
            "backend {i} (weight {w}): {} picks, expected {expected}",
            c[i]
        );
    }
}

#[test]
fn a_missing_weight_counts_as_one() {
    let h = ready(&[3, 0]); // second address has no weight attribute
    let seq = index_of(&h.pick_addrs(400), 2);
    assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 100);
}

#[test]
fn a_weight_change_updates_the_picker_without_reconnecting() {
    let mut h = ready(&[1, 1]);
    h.take_events();
    let addresses = vec![
        Address::new(addr(0)).with_attribute(Weight::new(3).unwrap()),
        Address::new(addr(1)),
    ];
    h.update(ClientConnState::new(addresses)).unwrap();
    let events = h.take_events();
    assert_eq!(
        events,
        [Event::UpdateState(Ready)],
        "no subconn churn: {events:?}"
    );
    let seq = index_of(&h.pick_addrs(400), 2);
    assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 300);
}

#[test]
fn only_ready_backends_are_picked() {
    let mut h = ready(&[5, 1, 1]);
    h.set_state(&addr(0), Idle);
    let seq = index_of(&h.pick_addrs(100), 3);
    assert!(!seq.contains(&0));
    assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 50);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over any window of one period, each backend gets exactly its share; over any
    /// window at all, within 2 of its share.
    #[test]
    fn any_period_long_window_holds_exact_shares(weights in prop::collection::vec(1u32..12, 1..8)) {
        let h = ready(&weights);
        let g = weights.iter().copied().fold(0, |a, b| { let (mut a, mut b) = (a, b); while b != 0 { (a, b) = (b, a % b); } a });
        let reduced: Vec<usize> = weights.iter().map(|w| (w / g) as usize).collect();
        let period: usize = reduced.iter().sum();
        let seq = index_of(&h.pick_addrs(period * 4), weights.len());
        for window in seq.windows(period) {
            let mut c = vec![0usize; weights.len()];
            window.iter().for_each(|&i| c[i] += 1);
            prop_assert_eq!(&c, &reduced);
        }
        // Smoothness: in every window of every length, each backend's count stays
        // within 2 of its exact share (no bursts, no droughts).
        let period_f = period as f64;
        for (i, &share) in reduced.iter().enumerate() {
            for len in 1..=period {
                for start in 0..period {
                    let got = seq[start..start + len].iter().filter(|&&x| x == i).count() as f64;
                    let want = len as f64 * share as f64 / period_f;
                    prop_assert!(
                        (got - want).abs() < 2.0,
                        "backend {} (share {}/{}): {} picks in a window of {} at {}, expected {:.2}",
                        i, share, period, got, len, start, want
                    );
                }
            }
        }
    }
}
