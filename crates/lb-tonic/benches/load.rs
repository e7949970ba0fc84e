//! Load-aware balancing end to end: a heterogeneous run and a stall run.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p lb-tonic --bench load`). With
//! `GRPC_LB_BENCH_DOC=<path>` the results replace the section between
//! `<!-- load:start -->` and `<!-- load:end -->` in that file.
//!
//! * **Heterogeneous**: three loopback echo backends, one of them 5 ms slower per
//!   RPC, concurrency 32, for `round_robin`, `least_request`, `peak_ewma` (default
//!   and with a 1 s decay time),
//!   `weighted_round_robin` over ORCA reports (the slow backend reports three times
//!   the utilization: weights 3:3:1) and tonic's `balance_list`; and, in the same
//!   run, `round_robin` over the two fast backends alone. The backends report their
//!   load (per call) in every run, so every client pays the same server cost.
//! * **Stall**: three backends, one in a child process that is stopped (`SIGSTOP`)
//!   for 3 s with its connections open, then resumed; concurrency 32, no deadlines.
//!   RPC/s before, during and after the stall, per client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a panic is a failure report

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_testkit::child::ChildBackend;
use lb_testkit::{Backend, Orca};

mod common;
use common::*;

const RUN: Duration = Duration::from_secs(3);
const ROUNDS: u32 = 3;
const WARM_UP: Duration = Duration::from_millis(500);
const CONCURRENCY: usize = 32;

fn config(policy: &str) -> String {
    format!(r#"{{"loadBalancingConfig": [{{{policy}}}]}}"#)
}

fn clients(addrs: &[String]) -> Vec<(&'static str, Client)> {
    vec![
        ("tonic balance_list", balance_list_to(addrs)),
        (
            "LbChannel round_robin",
            lb_channel_with(addrs, &config(r#""round_robin": {}"#)),
        ),
        (
            "LbChannel least_request",
            lb_channel_with(addrs, &config(r#""least_request": {}"#)),
        ),
        (
            "LbChannel peak_ewma",
            lb_channel_with(addrs, &config(r#""peak_ewma": {}"#)),
        ),
        (
            "LbChannel peak_ewma (decayTime 1s)",
            lb_channel_with(addrs, &config(r#""peak_ewma": {"decayTime": "1s"}"#)),
        ),
        (
            "LbChannel weighted_round_robin (ORCA)",
            lb_channel_with(
                addrs,
                &config(r#""weighted_round_robin": {"blackoutPeriod": "1s"}"#),
            ),
        ),
    ]
}

/// The heterogeneous run's table.
async fn heterogeneous() -> String {
    let fast = Orca::fixed(100.0, 0.3);
    let slow_orca = Orca::fixed(100.0, 0.9);
    let b1 = Backend::start_with_orca("fast1", &fast).await.unwrap();
    let b2 = Backend::start_with_orca("fast2", &fast).await.unwrap();
    let slow = Backend::start_with_orca("slow", &slow_orca).await.unwrap();
    slow.service().set_delay(Duration::from_millis(5));
    let addrs: Vec<String> = [&b1, &b2, &slow]
        .iter()
        .map(|b| b.addr().to_string())
        .collect();
    let mut all = clients(&addrs);
    all.push((
        "LbChannel round_robin, the two fast backends alone",
        lb_channel_with(&addrs[..2], &config(r#""round_robin": {}"#)),
    ));
    // Warm up long enough for the ORCA weights' 1 s blackout.
    for (_, client) in &all {
        load(client, CONCURRENCY, WARM_UP).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (_, client) in &all {
        load(client, CONCURRENCY, Duration::from_millis(300)).await;
    }
    let mut rounds: Vec<Vec<(Stats, f64)>> = all.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, client)) in all.iter().enumerate() {
            let before = slow.hits();
            let s = load(client, CONCURRENCY, RUN / ROUNDS).await;
            let to_slow = (slow.hits() - before) as f64;
            let share = to_slow / (s.rps * (RUN / ROUNDS).as_secs_f64()).max(1.0);
            rounds[i].push((s, share));
        }
    }
    let medians: Vec<(Stats, f64)> = rounds
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.0.rps.total_cmp(&b.0.rps));
            runs.swap_remove(runs.len() / 2)
        })
        .collect();
    let rr = medians[1].0.rps;
    let rr_p99 = medians[1].0.p99;
    let two_fast = medians[medians.len() - 1].0.rps;
    let mut table = String::from(
        "| client | RPC/s | vs round_robin | vs two fast alone | p50 ms | p99 ms | p99 vs round_robin | to the slow backend |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((name, _), (s, share)) in all.iter().zip(&medians) {
        let row = format!(
            "| {name} | {:.0} | {:.2}× | {:.2}× | {} | {} | {:.2}× | {:.1}% |\n",
            s.rps,
            s.rps / rr,
            s.rps / two_fast,
            ms(s.p50),
            ms(s.p99),
            s.p99.as_secs_f64() / rr_p99.as_secs_f64(),
            share * 100.0,
        );
        print!("{row}");
        table.push_str(&row);
    }
    table
}

/// RPC/s of one client before, during and after a 3 s stall, and its timeline.
struct StallRun {
    before: f64,
    during: f64,
    after: f64,
    timeline: charts::Timeline,
}

/// The stall run's chart, in `docs/charts/`.
const STALL_CHART: &str = "load-stall-timeline.svg";

async fn stall_run(client: &Client, stalled: &ChildBackend) -> StallRun {
    load(client, CONCURRENCY, WARM_UP).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(client, CONCURRENCY, &stop);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t1 = Instant::now();
    stalled.stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stalled.resume().await.unwrap();
    let t2 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t3 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    // RPCs that succeeded: when, and where.
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .unwrap()
                .into_iter()
                .filter_map(|(at, ok)| Some((at, ok?.1))),
        );
    }
    let mut timeline = charts::Timeline::new(t0, t3);
    for (at, server) in &all {
        timeline.served(server, *at);
    }
    timeline.mark(t1, "stopped");
    timeline.mark(t2, "resumed");
    let rate = |from: Instant, to: Instant| {
        all.iter().filter(|(t, _)| *t >= from && *t < to).count() as f64
            / to.duration_since(from).as_secs_f64()
    };
    StallRun {
        before: rate(t0, t1),
        during: rate(t1, t2),
        after: rate(t2, t3),
        timeline,
    }
}

async fn stall() -> String {
    let fast = Orca::fixed(100.0, 0.3);
    let b1 = Backend::start_with_orca("fast1", &fast).await.unwrap();
    let b2 = Backend::start_with_orca("fast2", &fast).await.unwrap();
    let stalled = ChildBackend::spawn(&[], "stalled", Some((100.0, 0.3)))
        .await
        .unwrap();
    let addrs = vec![
        b1.addr().to_string(),
        b2.addr().to_string(),
        stalled.addr().to_string(),
    ];
    let mut table = String::from(
        "| client | RPC/s before | RPC/s during the stall | during / before | RPC/s after |\n|---|---:|---:|---:|---:|\n",
    );
    let mut runs = Vec::new();
    for (name, client) in clients(&addrs) {
        let run = stall_run(&client, &stalled).await;
        let row = format!(
            "| {name} | {:.0} | {:.0} | {:.1}% | {:.0} |\n",
            run.before,
            run.during,
            run.during / run.before * 100.0,
            run.after
        );
        print!("{row}");
        table.push_str(&row);
        runs.push((name, run));
        drop(client);
        // Let the stalled backend work off what piled up before the next client.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let timelines: Vec<(&str, &charts::Timeline)> = runs
        .iter()
        .map(|(name, run)| (*name, &run.timeline))
        .collect();
    charts::timeline_chart(
        STALL_CHART,
        "Stall run: `stalled` stopped (SIGSTOP) at 2 s, resumed at 5 s (concurrency 32)",
        &timelines,
    );
    table
}

fn main() {
    // The backends' child processes serve from here too.
    common::bench_main(run);
}

async fn run() {
    let heterogeneous = heterogeneous().await;
    let stall = stall().await;
    let mut section = String::new();
    let _ = writeln!(
        section,
        "Heterogeneous run: three loopback echo backends in this process, one 5 ms slower per RPC; concurrency {CONCURRENCY}; per client, after warm-up, {ROUNDS} rounds of {} ms taken in turns, the median round shown. Every backend reports a fixed load per call (100 QPS; utilization 0.3 for the fast ones, 0.9 for the slow one).\n",
        (RUN / ROUNDS).as_millis()
    );
    section.push_str(&heterogeneous);
    section.push_str("\nStall run: two backends in this process and one in a child process, stopped with SIGSTOP for 3 s (its connections stay open, nothing answers), then resumed; concurrency 32, no deadlines; RPC/s over the 2 s before, the 3 s stall and the 2 s after.\n\n");
    section.push_str(&stall);
    let _ = writeln!(
        section,
        "\nPer 100 ms of the stall runs, the RPCs each backend answered (none fails: there are no deadlines).\n\n![Stall-run timeline: RPCs answered per backend, per 100 ms, per client](charts/{STALL_CHART})"
    );
    write_doc_section("load", &section);
}
