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
//! is exact.
//!
//! The period is nginx's smooth weighted round robin (every step each backend gains
//! its weight, the richest is picked and pays the total): with weights 5:1:1 it is
//! `a a b a c a a`, never more than four `a` in a row even across periods, and
//! backends of equal weight are kept apart. That costs O(period × backends); when the
//! product exceeds 2,000,000 (thousands of weighted backends) the layout switches to
//! placing backend `i`'s `k`-th slot at virtual time `(k + phase_i) / weight_i` with
//! a counting sort, O(period + backends): shares stay exact and each backend's own
//! picks evenly spaced, but backends of equal weight may bunch together.
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
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
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

/// Above this many steps (period × backends) the layout falls back from nginx's
/// smooth weighted round robin to the O(period + backends) virtual-time layout.
const NGINX_BUDGET: u128 = 2_000_000;

/// nginx's smooth weighted round robin, run for one period: every step each backend
/// gains its weight and the richest pays the total. Exactly periodic, and it keeps
/// equal-weight backends apart, which the virtual-time layout does not.
fn nginx_smooth(w: &[u64], total: u64) -> Box<[u32]> {
    let total = total as i64;
    let mut current = vec![0i64; w.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, c) in current.iter_mut().enumerate() {
                *c += w[i] as i64;
            }
            for i in 1..current.len() {
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
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
    if (total as u128) * (n as u128) <= NGINX_BUDGET {
        return nginx_smooth(&w, total);
    }
    let n1 = n as u64 + 1;

    // Slot k of backend i sits at virtual time t = (k + (i+1)/(n+1)) / w_i, the fraction
    // (k*(n+1) + i + 1) / (w_i*(n+1)); its bucket is floor(t * period). The buckets of
    // consecutive k are walked as quotient and remainder, with no division per slot,
    // then a counting sort places the slots and the few shared buckets are ordered by
    // exact time.
    let mut buckets: Vec<u32> = Vec::with_capacity(period);
    let mut starts = vec![0u32; period + 1];
    for (i, &wi) in w.iter().enumerate() {
        let den = wi * n1;
        let first = (i as u64 + 1) * total;
        let step = n1 * total;
        let (mut q, mut r) = (first / den, first % den);
        let (step_q, step_r) = (step / den, step % den);
        for _ in 0..wi {
            let b = (q as usize).min(period - 1);
            buckets.push(b as u32);
            starts[b + 1] += 1;
            q += step_q;
            r += step_r;
            if r >= den {
                q += 1;
                r -= den;
            }
        }
    }
    for b in 0..period {
        starts[b + 1] += starts[b];
    }
    let mut fill = starts.clone();
    // (backend, k) per slot.
    let mut slots: Vec<(u32, u32)> = vec![(0, 0); period];
    let mut next = buckets.iter();
    for (i, &wi) in w.iter().enumerate() {
        for k in 0..wi {
            let b = next.next().map_or(0, |&b| b as usize);
            slots[fill[b] as usize] = (i as u32, k as u32);
            fill[b] += 1;
        }
    }
    let time = |&(i, k): &(u32, u32)| {
        (u64::from(k) * n1 + u64::from(i) + 1) as f64 / (w[i as usize] * n1) as f64
    };
    for b in 0..period {
        let range = starts[b] as usize..starts[b + 1] as usize;
        if range.len() > 1 {
            slots[range].sort_unstable_by(|x, y| time(x).total_cmp(&time(y)).then(x.0.cmp(&y.0)));
        }
    }
    slots.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &[u32]) -> String {
        s.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn five_one_one_interleaves() {
        assert_eq!(names(&schedule(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn equal_light_weights_are_kept_apart() {
        // b and c split the period (the virtual-time layout put them side by side and
        // left 7 a in a row); across periods a runs at most 6.
        let s = names(&schedule(&[9, 1, 1]));
        assert_eq!(s, "aaabaaacaaa");
        assert!(!format!("{s}{s}").contains("aaaaaaa"), "{s}");
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
