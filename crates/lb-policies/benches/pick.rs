//! Pick cost and picker rebuild cost of the built-in policies.
//!
//! Run with `cargo bench -p lb-policies --bench pick` (or `cargo xtask bench`).
//!
//! * `pick/<policy>/<n>`: one pick from a picker over `n` ready subconns, one thread
//!   (what happens when an RPC starts; releasing its callbacks is the RPC's end).
//! * `pick_2threads/<policy>/<n>`: two threads picking from the same picker at once,
//!   each pick followed by its completion callbacks; the time is wall time per pick
//!   *per thread*, so 2-thread throughput relative to one thread is
//!   `2 * pick_and_done / pick_2threads`.
//! * `baseline_shared_atomic`: round robin over one shared `AtomicUsize` (what a naive
//!   picker does), measured in the same run, to compare against.
//! * `pick_and_done/<policy>/<n>`: a pick plus its completion callbacks run with an
//!   `OK` status, a latency and a load report, as at an RPC's end: the callback's
//!   cost is the difference with `pick/<policy>/<n>`.
//! * `rebuild/<policy>/10000`: a channel's picker builder rebuilding for 10,000
//!   ready subconns, one of which leaves and comes back between builds.
//!
//! `weighted_round_robin_orca` is the picker after load reports set the weights
//! (reports reach the policy through its subconns' watch, not through picks);
//! `ring_hash` picks by the hash of a request header on a 4,096-entry ring;
//! `priority_weighted_target_round_robin` is the tree xDS builds: `priority` over
//! `weighted_target` (two targets) over `round_robin`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_core::base::{PickerBuilder, ReadySubConn};
use lb_core::test_util::Harness;
use lb_core::{
    Address, BalancerBuilder, Code, DoneInfo, LoadReport, LoadReportWatch, Pick, PickInfo,
    PickResult, Picker, Status, SubConn, SubConnHandle, Weight,
};
use lb_policies::pick_first::PickFirstPicker;
use lb_policies::{LeastRequest, PeakEwma, RingHash, RoundRobin, WeightedRoundRobin};

/// A transport that does nothing but keep the policy's load-report watch.
#[derive(Default)]
struct Noop(Mutex<Option<LoadReportWatch>>);

impl SubConnHandle for Noop {
    fn connect(&self) {}
    fn shutdown(&self) {}
    fn watch_load_reports(&self, watch: Option<LoadReportWatch>) -> bool {
        *self.0.lock().unwrap() = watch;
        true
    }
}

fn ready(n: usize) -> Vec<ReadySubConn> {
    (0..n)
        .map(|i| {
            let address =
                Address::new(format!("10.{}.{}.{}:443", i >> 16, (i >> 8) & 255, i & 255))
                    .with_attribute(Weight::new((i % 10) as u32 + 1).unwrap_or_default());
            ReadySubConn {
                subconn: SubConn::new(address.clone(), Arc::new(Noop::default())),
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
    orca_wrr_with(&mut builder, ready, &config)
}

/// Builds `builder`'s picker after every backend reported its load.
fn orca_wrr_with(
    builder: &mut WeightedRoundRobin,
    ready: &[ReadySubConn],
    config: &lb_core::LbConfig,
) -> Arc<dyn Picker> {
    builder.build(ready, Some(config));
    // Each backend reports a different utilization, as the transport would hand
    // the reports to the policy's listener.
    for (i, r) in ready.iter().enumerate() {
        let handle = r.subconn.handle::<Noop>().unwrap();
        let watch = handle.0.lock().unwrap().clone().unwrap();
        let utilization = 0.1 + (i % 9) as f64 / 10.0;
        let report = LoadReport::new()
            .with_rps(100.0)
            .with_cpu_utilization(utilization);
        watch.listener.on_load_report(&report);
    }
    builder.build(ready, Some(config))
}

/// `ring_hash` over `n` ready backends on a 4,096-entry ring, keyed by `x-key`.
fn ring_hash(n: usize) -> Arc<dyn Picker> {
    let mut h = Harness::new(RingHash::new());
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
        pickers.push(("priority_weighted_target_round_robin", tree(n)));
    }
    pickers
}

/// `xds_cluster_manager_experimental` with two clusters ("orders", "users"), each
/// `round_robin` over `n` ready backends.
fn cluster_manager(n: usize) -> Arc<dyn Picker> {
    let mut h = Harness::with_registry(lb_policies::ClusterManager, lb_policies::registry());
    let addrs = ready(2 * n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let cluster = if i < n { "orders" } else { "users" };
            lb_core::hierarchy::with_path(r.address, [cluster])
        })
        .collect();
    let config = r#"{"children": {
        "orders": {"childPolicy": [{"round_robin": {}}]},
        "users": {"childPolicy": [{"round_robin": {}}]}}}"#;
    h.update_with_config(addrs, config).unwrap();
    h.ready_all();
    h.picker()
}

/// `priority_experimental` over `weighted_target_experimental` (two targets,
/// weights 2 and 1) over `round_robin`, `n` ready backends: the tree xDS builds.
fn tree(n: usize) -> Arc<dyn Picker> {
    let mut h = Harness::with_registry(lb_policies::Priority, lb_policies::registry());
    let addrs = ready(n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
            lb_core::hierarchy::with_path(r.address, ["p0", zone])
        })
        .collect();
    let config = r#"{"children": {"p0": {"config": [{"weighted_target_experimental": {"targets": {
        "zone-a": {"weight": 2, "childPolicy": [{"round_robin": {}}]},
        "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]}},
        "priorities": ["p0"]}"#;
    h.update_with_config(addrs, config).unwrap();
    h.ready_all();
    h.picker()
}

/// The request headers every pick sees (`ring_hash` hashes `x-key`).
fn bench_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-key", http::HeaderValue::from_static("user-1234567"));
    headers
}

/// One pick, as at an RPC's start. Its completion callbacks are released at the
/// RPC's end, so that belongs to `pick_and_done`: here they are forgotten (their
/// reference counts only grow).
#[inline]
fn pick_once(picker: &dyn Picker, info: &PickInfo<'_>) {
    match picker.pick(info) {
        PickResult::Pick(p) => {
            black_box(p.subconn);
            std::mem::forget(p.on_done);
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
    // The cluster manager reads the RPC's cluster from its pick attributes.
    let attributes = lb_core::Attributes::new().with(lb_policies::cluster_manager::PickedCluster(
        std::sync::Arc::from("orders"),
    ));
    let routed = PickInfo::new("/bench.Service/Method")
        .with_headers(&headers)
        .with_attributes(&attributes);
    let manager = cluster_manager(3);
    one.bench_with_input(
        BenchmarkId::new("cluster_manager_round_robin", 3),
        &manager,
        |b, picker| b.iter(|| pick_once(picker.as_ref(), &routed)),
    );
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
                b.iter(|| pick_and_done(picker.as_ref(), &info, &done))
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

/// A pick and its completion, as one RPC's whole cycle.
#[inline]
fn pick_and_done(picker: &dyn Picker, info: &PickInfo<'_>, done: &DoneInfo<'_>) {
    match picker.pick(info) {
        PickResult::Pick(p) => p.on_done.done(done),
        other => panic!("benchmark picker did not pick: {other:?}"),
    }
}

/// Two threads each do `iters` picks with their completions at the same time;
/// returns the wall time.
fn two_threads(picker: &Arc<dyn Picker>, iters: u64) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let headers = bench_headers();
                let info = PickInfo::new("/bench.Service/Method").with_headers(&headers);
                let status = ok();
                let done = DoneInfo::new(&status, None).with_elapsed(Duration::from_micros(300));
                pick_and_done(picker.as_ref(), &info, &done); // initialise the thread's stripe
                barrier.wait();
                for _ in 0..iters {
                    pick_and_done(picker.as_ref(), &info, &done);
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

/// A channel's picker builder rebuilding for 10,000 ready subconns as one of them
/// leaves and comes back (so every build is a real one, not a cached picker).
fn bench_rebuild(c: &mut Criterion) {
    let ready = ready(10_000);
    let sets = [&ready[..], &ready[1..]];
    let mut group = c.benchmark_group("rebuild");
    let mut rr = RoundRobin;
    let mut i = 0;
    group.bench_function(BenchmarkId::new("round_robin", 10_000), |b| {
        b.iter(|| {
            i += 1;
            black_box(rr.build(black_box(sets[i % 2]), None))
        })
    });
    let mut wrr = WeightedRoundRobin::default();
    group.bench_function(BenchmarkId::new("weighted_round_robin", 10_000), |b| {
        b.iter(|| {
            i += 1;
            black_box(wrr.build(black_box(sets[i % 2]), None))
        })
    });
    let mut orca = WeightedRoundRobin::default();
    let config = lb_policies::weighted_round_robin::builder()
        .parse_config(&serde_json::json!({"blackoutPeriod": "0s"}))
        .unwrap();
    orca_wrr_with(&mut orca, &ready, &config);
    group.bench_function(BenchmarkId::new("weighted_round_robin_orca", 10_000), |b| {
        b.iter(|| {
            i += 1;
            black_box(orca.build(black_box(sets[i % 2]), Some(&config)))
        })
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
