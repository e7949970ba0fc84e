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
//! * `pick_and_done/<policy>/<n>`: a pick plus its completion callbacks run with an
//!   `OK` status, a latency and a load report, as at an RPC's end: the callback's
//!   cost is the difference with `pick/<policy>/<n>`.
//! * `rebuild/<policy>/10000`: building a picker for 10,000 ready subconns.
//!
//! `weighted_round_robin_orca` is the picker after load reports set the weights
//! (each pick carries the callback that reads the next report); `ring_hash` picks
//! by the hash of a request header on a 4,096-entry ring.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_core::base::{PickerBuilder, ReadySubConn};
use lb_core::test_util::Harness;
use lb_core::{
    Address, BalancerBuilder, Code, DoneInfo, LoadReport, Pick, PickInfo, PickResult, Picker,
    Status, SubConn, SubConnHandle, Weight,
};
use lb_policies::pick_first::PickFirstPicker;
use lb_policies::{LeastRequest, PeakEwma, RingHash, RoundRobin, WeightedRoundRobin};

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

/// Runs `rounds` picks on `picker`, ending each with `done`: what warms up
/// latency estimates and load-report weights.
fn feed(picker: &dyn Picker, rounds: usize, done: &DoneInfo<'_>) {
    let info = PickInfo::new("/bench.Service/Method");
    for _ in 0..rounds {
        if let PickResult::Pick(p) = picker.pick(&info) {
            p.on_done.done(done);
        }
    }
}

fn ok() -> Status {
    Status::new(Code::Ok, "")
}

fn load_report() -> LoadReport {
    LoadReport::new().with_rps(100.0).with_cpu_utilization(0.5)
}

/// `weighted_round_robin` after every backend reported its load.
fn orca_wrr(ready: &[ReadySubConn]) -> Arc<dyn Picker> {
    let mut builder = WeightedRoundRobin::default();
    let config = lb_policies::weighted_round_robin::builder()
        .parse_config(&serde_json::json!({"blackoutPeriod": "0s"}))
        .unwrap();
    let picker = builder.build(ready, Some(&config));
    let status = ok();
    let report = load_report();
    let done = DoneInfo::new(&status, None).with_load_report(Some(&report));
    feed(picker.as_ref(), ready.len() * 3, &done);
    builder.build(ready, Some(&config))
}

/// `ring_hash` over `n` ready backends on a 4,096-entry ring, keyed by `x-key`.
fn ring_hash(n: usize) -> Arc<dyn Picker> {
    let mut h = Harness::new(RingHash);
    let addrs = ready(n).into_iter().map(|r| r.address).collect();
    h.update_with_config(
        addrs,
        r#"{"minRingSize": 4096, "maxRingSize": 4096, "requestHashHeader": "x-key"}"#,
    )
    .unwrap();
    h.ready_all();
    h.picker()
}

fn pickers(n: usize) -> Vec<(&'static str, Arc<dyn Picker>)> {
    let ready = ready(n);
    let status = ok();
    let latency = DoneInfo::new(&status, None).with_elapsed(Duration::from_micros(300));
    let peak_ewma = PeakEwma::default().build(&ready, None);
    feed(peak_ewma.as_ref(), n * 3, &latency);
    let mut pickers = vec![
        (
            "pick_first",
            Arc::new(PickFirstPicker::new(ready[0].subconn.clone())) as Arc<dyn Picker>,
        ),
        ("round_robin", RoundRobin.build(&ready, None)),
        (
            "weighted_round_robin",
            WeightedRoundRobin::default().build(&ready, None),
        ),
        ("weighted_round_robin_orca", orca_wrr(&ready)),
        ("least_request", LeastRequest::default().build(&ready, None)),
        ("peak_ewma", peak_ewma),
        (
            "baseline_shared_atomic",
            Arc::new(SharedAtomicPicker {
                subconns: ready.iter().map(|r| r.subconn.clone()).collect(),
                next: AtomicUsize::new(0),
            }),
        ),
    ];
    // Harness-built: 10,000 subconns would republish 10,000 pickers of 10,000.
    if n <= 100 {
        pickers.push(("ring_hash", ring_hash(n)));
    }
    pickers
}

/// The request headers every pick sees (`ring_hash` hashes `x-key`).
fn bench_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-key", http::HeaderValue::from_static("user-1234567"));
    headers
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
    let headers = bench_headers();
    let info = PickInfo::new("/bench.Service/Method").with_headers(&headers);
    let mut one = c.benchmark_group("pick");
    for n in [3, 100, 10_000] {
        for (name, picker) in pickers(n) {
            one.bench_with_input(BenchmarkId::new(name, n), &picker, |b, picker| {
                b.iter(|| pick_once(picker.as_ref(), &info))
            });
        }
    }
    one.finish();

    let status = ok();
    let report = load_report();
    let done = DoneInfo::new(&status, None)
        .with_elapsed(Duration::from_micros(300))
        .with_load_report(Some(&report));
    let mut with_done = c.benchmark_group("pick_and_done");
    for n in [3, 100] {
        for (name, picker) in pickers(n) {
            if name == "baseline_shared_atomic" || name == "pick_first" {
                continue;
            }
            with_done.bench_with_input(BenchmarkId::new(name, n), &picker, |b, picker| {
                b.iter(|| match picker.pick(&info) {
                    PickResult::Pick(p) => p.on_done.done(&done),
                    other => panic!("benchmark picker did not pick: {other:?}"),
                })
            });
        }
    }
    with_done.finish();

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
                let headers = bench_headers();
                let info = PickInfo::new("/bench.Service/Method").with_headers(&headers);
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
