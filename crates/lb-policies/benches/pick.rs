//! Pick cost and picker rebuild cost of the built-in policies.
//!
//! Run with `cargo bench -p lb-policies --bench pick` (or `cargo xtask bench`).
//!
//! * `pick/<policy>/<n>`: one pick from a picker over `n` ready subconns, one thread.
//! * `pick_2threads/<policy>/<n>`: two threads picking from the same picker at once;
//!   the time is wall time per pick *per thread*, so 2-thread throughput relative to
//!   one thread is `2 * pick / pick_2threads`.
//! * `baseline_shared_atomic`: round robin over one shared `AtomicUsize` (what a naive
//!   picker does), measured in the same run, to compare against.
//! * `rebuild/<policy>/10000`: building a picker for 10,000 ready subconns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_core::base::{PickerBuilder, ReadySubConn};
use lb_core::{Address, Pick, PickInfo, PickResult, Picker, SubConn, SubConnHandle, Weight};
use lb_policies::pick_first::PickFirstPicker;
use lb_policies::{RoundRobin, WeightedRoundRobin};

struct Noop;

impl SubConnHandle for Noop {
    fn connect(&self) {}
    fn shutdown(&self) {}
}

fn ready(n: usize) -> Vec<ReadySubConn> {
    (0..n)
        .map(|i| {
            let address =
                Address::new(format!("10.{}.{}.{}:443", i >> 16, (i >> 8) & 255, i & 255))
                    .with_attribute(Weight::new((i % 10) as u32 + 1).unwrap_or_default());
            ReadySubConn {
                subconn: SubConn::new(address.clone(), Arc::new(Noop)),
                address,
            }
        })
        .collect()
}

/// Round robin over one shared counter: the baseline the striped cursor improves on.
struct SharedAtomicPicker {
    subconns: Vec<SubConn>,
    next: AtomicUsize,
}

impl Picker for SharedAtomicPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.subconns.len();
        PickResult::Pick(Pick::new(&self.subconns[i]))
    }
}

fn pickers(n: usize) -> Vec<(&'static str, Arc<dyn Picker>)> {
    let ready = ready(n);
    vec![
        (
            "pick_first",
            Arc::new(PickFirstPicker::new(ready[0].subconn.clone())) as Arc<dyn Picker>,
        ),
        ("round_robin", RoundRobin.build(&ready, None)),
        (
            "weighted_round_robin",
            WeightedRoundRobin::default().build(&ready, None),
        ),
        (
            "baseline_shared_atomic",
            Arc::new(SharedAtomicPicker {
                subconns: ready.iter().map(|r| r.subconn.clone()).collect(),
                next: AtomicUsize::new(0),
            }),
        ),
    ]
}

#[inline]
fn pick_once(picker: &dyn Picker, info: &PickInfo<'_>) {
    match picker.pick(info) {
        PickResult::Pick(p) => {
            black_box(p.subconn);
        }
        other => panic!("benchmark picker did not pick: {other:?}"),
    }
}

fn bench_pick(c: &mut Criterion) {
    let info = PickInfo::new("/bench.Service/Method");
    let mut one = c.benchmark_group("pick");
    for n in [3, 100, 10_000] {
        for (name, picker) in pickers(n) {
            one.bench_with_input(BenchmarkId::new(name, n), &picker, |b, picker| {
                b.iter(|| pick_once(picker.as_ref(), &info))
            });
        }
    }
    one.finish();

    let mut two = c.benchmark_group("pick_2threads");
    for n in [3, 100, 10_000] {
        for (name, picker) in pickers(n) {
            two.bench_with_input(BenchmarkId::new(name, n), &picker, |b, picker| {
                b.iter_custom(|iters| two_threads(picker, iters))
            });
        }
    }
    two.finish();
}

/// Two threads each do `iters` picks at the same time; returns the wall time.
fn two_threads(picker: &Arc<dyn Picker>, iters: u64) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let info = PickInfo::new("/bench.Service/Method");
                pick_once(picker.as_ref(), &info); // initialise the thread's stripe
                barrier.wait();
                for _ in 0..iters {
                    pick_once(picker.as_ref(), &info);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn bench_rebuild(c: &mut Criterion) {
    let ready = ready(10_000);
    let mut group = c.benchmark_group("rebuild");
    group.bench_function(BenchmarkId::new("round_robin", 10_000), |b| {
        b.iter(|| black_box(RoundRobin.build(black_box(&ready), None)))
    });
    group.bench_function(BenchmarkId::new("weighted_round_robin", 10_000), |b| {
        b.iter(|| black_box(WeightedRoundRobin::default().build(black_box(&ready), None)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_pick, bench_rebuild
}
criterion_main!(benches);
