//! `weighted_round_robin` with static weights: round robin in proportion to each
//! address's [`lb_core::Weight`].
//!
//! The weight is the address attribute [`lb_core::Weight`] that resolvers set from
//! registry metadata; an address without one weighs 1. A weight is never 0: a
//! resolver that reads 0 or garbage from a registry leaves the weight off (and warns),
//! so the address weighs 1. Connection handling is `round_robin`'s ([`lb_core::base`]).
//!
//! # The schedule
//!
//! On every change of the ready set the picker lays out one *period*: a sequence in
//! which each ready subconn appears exactly `weight / g` times, where `g` is the
//! weights' greatest common divisor. Picks walk the period cyclically, so any run of
//! one period's length holds every backend exactly its share, and the long-run share
//! is exact. Within the period, backend `i`'s `k`-th slot sits at virtual time
//! `(k + phase_i) / weight_i` (phases staggered between backends), so each backend's
//! picks are evenly spaced: with weights 5:1:1 the period is `a a a b a c a`, never
//! more than four `a` in a row even across periods. Layout is a counting sort over
//! the period, O(period + backends).
//!
//! Periods are capped at [`MAX_PERIOD`] slots: larger weight sums are scaled down
//! (each weight stays at least 1), which keeps the memory per picker bounded at the
//! price of approximate shares for extreme weight ratios.
//!
//! Config: an object. gRFC A58's fields for load-report-driven weights are accepted
//! and not used yet: weights here come only from the resolver.

use std::sync::Arc;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{LbConfig, Pick, PickInfo, PickResult, Picker, SubConn};

use crate::cursor::Cursor;

/// The policy's name in service configs.
pub const NAME: &str = "weighted_round_robin";

/// The largest period a picker lays out (4 MiB of schedule).
pub const MAX_PERIOD: usize = 1 << 20;

/// The `weighted_round_robin` balancer builder, ready to register.
pub fn builder() -> BaseBuilder<WeightedRoundRobin> {
    BaseBuilder::new(NAME, WeightedRoundRobin)
}

/// The picker builder of `weighted_round_robin`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

impl PickerBuilder for WeightedRoundRobin {
    fn build(&self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        Arc::new(WeightedRoundRobinPicker::new(
            ready
                .iter()
                .map(|r| (r.subconn.clone(), r.address.weight().get()))
                .collect(),
        ))
    }
}

/// Walks a precomputed smooth weighted schedule.
pub struct WeightedRoundRobinPicker {
    subconns: Box<[SubConn]>,
    /// Indices into `subconns`: one period of the schedule.
    schedule: Box<[u32]>,
    cursor: Cursor,
}

impl WeightedRoundRobinPicker {
    /// A picker over `(subconn, weight)` pairs, which must not be empty. Weights of 0
    /// count as 1.
    pub fn new(weighted: Vec<(SubConn, u32)>) -> Self {
        let weights: Vec<u32> = weighted.iter().map(|(_, w)| *w).collect();
        let schedule = schedule(&weights);
        Self {
            cursor: Cursor::new(schedule.len()),
            subconns: weighted.into_iter().map(|(sc, _)| sc).collect(),
            schedule,
        }
    }

    /// One period of the schedule, as indices into the subconn list.
    pub fn period(&self) -> &[u32] {
        &self.schedule
    }
}

impl Picker for WeightedRoundRobinPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let slot = self.schedule.get(self.cursor.next()).copied().unwrap_or(0);
        match self.subconns.get(slot as usize) {
            Some(subconn) => PickResult::Pick(Pick::new(subconn)),
            None => PickResult::Queue,
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Lays out one period of the smooth schedule for `weights` (see the module docs).
pub(crate) fn schedule(weights: &[u32]) -> Box<[u32]> {
    let n = weights.len();
    if n == 0 {
        return Box::new([]);
    }
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let mut total: u64 = w.iter().sum();
    if total > MAX_PERIOD as u64 {
        let scale = MAX_PERIOD as f64 / total as f64;
        w.iter_mut()
            .for_each(|x| *x = ((*x as f64 * scale).floor() as u64).max(1));
        total = w.iter().sum();
    }
    let period = total as usize;

    // Slot k of backend i sits at virtual time t = (k + phase_i) / w_i in (0, 1);
    // bucket = floor(t * period). Counting sort by bucket, then order each (small)
    // bucket by exact time.
    let phase = |i: usize| (i as f64 + 1.0) / (n as f64 + 1.0);
    let bucket = |i: usize, k: u64| {
        let t = (k as f64 + phase(i)) / w[i] as f64;
        ((t * period as f64) as usize).min(period - 1)
    };
    let mut starts = vec![0usize; period + 1];
    for (i, &wi) in w.iter().enumerate() {
        for k in 0..wi {
            starts[bucket(i, k) + 1] += 1;
        }
    }
    for b in 0..period {
        starts[b + 1] += starts[b];
    }
    let mut slots: Vec<(f64, u32)> = vec![(0.0, 0); period];
    let mut fill = starts.clone();
    for (i, &wi) in w.iter().enumerate() {
        for k in 0..wi {
            let b = bucket(i, k);
            slots[fill[b]] = ((k as f64 + phase(i)) / wi as f64, i as u32);
            fill[b] += 1;
        }
    }
    for b in 0..period {
        let range = starts[b]..starts[b + 1];
        if range.len() > 1 {
            slots[range].sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        }
    }
    slots.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &[u32]) -> String {
        s.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn five_one_one_interleaves() {
        assert_eq!(names(&schedule(&[5, 1, 1])), "aaabaca");
    }

    #[test]
    fn equal_weights_reduce_to_round_robin() {
        assert_eq!(names(&schedule(&[3, 3, 3])), "abc");
        assert_eq!(names(&schedule(&[1, 1])), "ab");
    }

    #[test]
    fn weights_share_their_gcd() {
        assert_eq!(schedule(&[10, 20, 30]).len(), 6);
    }

    #[test]
    fn zero_counts_as_one_and_empty_is_empty() {
        assert_eq!(names(&schedule(&[0, 1])), "ab");
        assert!(schedule(&[]).is_empty());
    }

    #[test]
    fn huge_weight_sums_are_capped_and_every_backend_stays() {
        let s = schedule(&[u32::MAX, u32::MAX - 1, 1]);
        assert!(s.len() <= MAX_PERIOD + 3);
        for i in 0..3 {
            assert!(s.contains(&i), "backend {i} lost");
        }
    }
}
