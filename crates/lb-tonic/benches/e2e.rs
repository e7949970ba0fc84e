//! End-to-end throughput and latency on loopback, and a fault run.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p lb-tonic --bench e2e`). With
//! `GRPC_LB_BENCH_DOC=<path>` the results replace the section between
//! `<!-- e2e:start -->` and `<!-- e2e:end -->` in that file.
//!
//! In one process, on the same three loopback echo backends:
//! * `tonic Channel (1 backend)`: tonic's plain channel to one backend, the limit;
//! * `tonic balance_list (3)`: tonic's `Channel::balance_list` over the three;
//! * `LbChannel round_robin (3)`: ours.
//!
//! Unary echo at concurrency 1, 4, 16, 32 and 64, each for a fixed time (ours also with a
//! retry policy configured that never triggers, to price the retry machinery); then a
//! fault run per balancing channel: one of three backends is killed under load and
//! restarted 2 s later, and the failed RPCs, p99 and the time from the kill to the
//! last failure are counted (ours with and without a retry policy); then a
//! graceful-stop run: 20 rounds of one server draining with GOAWAY and starting
//! again under load; then a bad-peer run
//! per balancing channel: round robin over a good backend and a peer that misbehaves
//! (accepts and closes, or accepts and never speaks) for 3 s at concurrency 8,
//! counting RPCs served, RPCs failed and the peer's connection attempts. With
//! `GRPC_LB_BENCH_DOC` it also draws charts into `charts/` beside that file:
//! throughput and p99 against concurrency, and per-100-ms timelines of the fault and
//! gray-failure runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a panic is a failure report

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, BadPeer, GracefulServer, Misbehavior};
use lb_tonic::{BackoffConfig, LbChannel};
use tonic::transport::{Channel, Endpoint};

mod common;
use common::*;

const RUN: Duration = Duration::from_secs(3);
/// Rounds per cell of the throughput table (the median is reported).
const ROUNDS: u32 = 3;
const WARM_UP: Duration = Duration::from_millis(500);
/// The concurrencies of the throughput table and chart.
const CONCURRENCY: [usize; 5] = [1, 4, 16, 32, 64];
/// The charts, in `docs/charts/`.
const CONCURRENCY_CHART: &str = "e2e-concurrency.svg";
const FAULT_CHART: &str = "e2e-fault-timeline.svg";
const GRAY_A_CHART: &str = "e2e-gray-not-serving-timeline.svg";
const GRAY_B_CHART: &str = "e2e-gray-half-failing-timeline.svg";

async fn tonic_channel(backend: &Backend) -> EchoClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", backend.addr()))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

fn balance_list(backends: &[Backend]) -> EchoClient<Channel> {
    let endpoints = backends.iter().map(|b| {
        Endpoint::from_shared(format!("http://{}", b.addr()))
            .unwrap()
            .tcp_nodelay(true)
    });
    EchoClient::new(Channel::balance_list(endpoints))
}

/// A service config with round_robin and, with `retry`, a retry policy on the echo
/// service (UNAVAILABLE, up to 5 attempts).
fn service_config(retry: bool) -> String {
    let policy = if retry {
        r#", "methodConfig": [{"name": [{"service": "echo.Echo"}],
             "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]"#
    } else {
        ""
    };
    format!(r#"{{"loadBalancingConfig": [{{"round_robin": {{}}}}]{policy}}}"#)
}

fn lb_channel_to(addrs: &[String], retry: bool) -> EchoClient<LbChannel> {
    let channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
        .default_service_config(service_config(retry))
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(100),
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    EchoClient::new(channel)
}

async fn lb_channel(backends: &[Backend], retry: bool) -> EchoClient<LbChannel> {
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let mut client = lb_channel_to(&addrs, retry);
    // Wait until every backend is connected so every run starts from the same state.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends.iter().any(|b| b.open_connections() == 0) && Instant::now() < deadline {
        let _ = client.unary_echo(EchoRequest::default()).await;
    }
    client
}

/// What a fault or graceful-stop run saw.
struct FaultRun {
    failed: usize,
    /// From the kill (or the first stop) to the last failure.
    last_failure: Duration,
    p99: Duration,
    ok: usize,
    /// RPCs served per backend and failed, per 100 ms since the load started.
    timeline: charts::Timeline,
}

/// Stops the callers and sums up their RPCs: failures counted from `since`, the
/// timeline from `load_started`.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
    stop: &AtomicBool,
    load_started: Instant,
    since: Instant,
) -> FaultRun {
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut failed, mut last) = (Vec::new(), 0, Duration::ZERO);
    let mut timeline = charts::Timeline::new(load_started, Instant::now());
    for t in tasks {
        for (done, outcome) in t.await.unwrap() {
            match outcome {
                Some((latency, server)) => {
                    all.push(latency);
                    timeline.served(&server, done);
                }
                None => {
                    failed += 1;
                    last = last.max(done.saturating_duration_since(since));
                    timeline.failed(done);
                }
            }
        }
    }
    all.sort_unstable();
    FaultRun {
        failed,
        last_failure: last,
        p99: quantile(&all, 0.99),
        ok: all.len(),
        timeline,
    }
}

/// Concurrency 32: one of three backends is killed (listener and connections dropped
/// at once) after 1 s of load, and restarted on its port 2 s later; 1 s more of load.
async fn fault_run(make: impl AsyncFnOnce(&[Backend]) -> Client) -> FaultRun {
    let mut backends = Vec::new();
    for name in ["f1", "f2", "f3"] {
        backends.push(Backend::start_restartable(name).await.unwrap());
    }
    let client = make(&backends).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks = callers(&client, 32, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    backends[0].kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    backends[0].restart().await.unwrap();
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut run = collect(tasks, &stop, load_started, killed_at).await;
    run.timeline.mark(killed_at, "f1 killed");
    run.timeline.mark(restarted_at, "f1 restarted");
    run
}

/// Concurrency 32 against three tonic servers; 20 times, one of them stops gracefully
/// (GOAWAY, in-flight RPCs finish) and starts again on its port, 100 ms apart.
async fn graceful_run(make: impl AsyncFnOnce(&[String]) -> Client) -> FaultRun {
    let mut servers = Vec::new();
    for name in ["g1", "g2", "g3"] {
        servers.push(GracefulServer::start_restartable(name).await.unwrap());
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let client = make(&addrs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks = callers(&client, 32, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = Instant::now();
    for round in 0..20 {
        servers[round % 3].restart().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collect(tasks, &stop, load_started, first).await
}

/// A gray failure: the backend stays up and connected, but something is wrong.
#[derive(Clone, Copy)]
enum Gray {
    /// Its health service says NOT_SERVING for 2 s, and it fails its RPCs meanwhile
    /// (lost its database), starting at the same moment.
    NotServing,
    /// The same, but its RPCs start failing 100 ms after it says NOT_SERVING (a
    /// server that drains before it stops serving).
    NotServingDraining,
    /// It fails half its RPCs with UNAVAILABLE for 3 s.
    HalfFailing,
}

/// Concurrency 32 over three backends (serving the health service too); after 1 s
/// one of them goes gray, then recovers; 1 s more of load.
async fn gray_run(gray: Gray, make: impl AsyncFnOnce(&[String]) -> Client) -> FaultRun {
    let mut backends = Vec::new();
    for name in ["h1", "h2", "h3"] {
        let b = Backend::start_with_health(name).await.unwrap();
        b.set_health("echo", true).await;
        backends.push(b);
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let client = make(&addrs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks = callers(&client, 32, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let sick = &backends[1];
    let (went, came) = match gray {
        Gray::NotServing | Gray::NotServingDraining => {
            sick.set_health("echo", false).await;
            if matches!(gray, Gray::NotServingDraining) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sick.service().set_failure(100, tonic::Code::Unavailable);
            tokio::time::sleep(Duration::from_secs(2)).await;
            sick.service().set_failure(0, tonic::Code::Ok);
            sick.set_health("echo", true).await;
            ("h2 NOT_SERVING", "h2 serving")
        }
        Gray::HalfFailing => {
            sick.service().set_failure(50, tonic::Code::Unavailable);
            tokio::time::sleep(Duration::from_secs(3)).await;
            sick.service().set_failure(0, tonic::Code::Ok);
            ("h2 fails 50%", "h2 recovered")
        }
    };
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut run = collect(tasks, &stop, load_started, started).await;
    run.timeline.mark(started, went);
    run.timeline.mark(recovered, came);
    run
}

const ROUND_ROBIN: &str = r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#;
const HEALTH_CHECKED: &str = r#"{"loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "echo"}}"#;
const OUTLIER_DETECTION: &str = r#"{"loadBalancingConfig": [{"outlier_detection": {
    "interval": "0.1s", "baseEjectionTime": "30s", "maxEjectionPercent": 34,
    "failurePercentageEjection": {"threshold": 30, "minimumHosts": 3, "requestVolume": 50},
    "childPolicy": [{"round_robin": {}}]}}]}"#;

/// What a bad-peer run saw.
struct BadPeerRun {
    ok: usize,
    failed: usize,
    attempts: usize,
}

/// Round robin over a good backend and a peer that misbehaves: 8 callers for 3 s,
/// each RPC with a 1 s deadline (so that one stuck on the peer ends).
async fn bad_peer_run(
    behavior: Misbehavior,
    make: impl AsyncFnOnce(&Backend, &BadPeer) -> Client,
) -> BadPeerRun {
    let good = Backend::start("good").await.unwrap();
    let peer = BadPeer::start(behavior).await.unwrap();
    let client = make(&good, &peer).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_secs(1), client.echo()).await {
                        Ok(Ok(_)) => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    BadPeerRun {
        ok,
        failed,
        attempts: peer.accepted(),
    }
}

fn two(good: &Backend, peer: &BadPeer) -> [String; 2] {
    [good.addr().to_string(), peer.addr().to_string()]
}

#[tokio::main]
async fn main() {
    // Run only as a benchmark (`cargo bench` passes --bench), not as a test target.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3"] {
        backends.push(Backend::start(name).await.unwrap());
    }
    let clients = [
        (
            "tonic Channel (1 backend)",
            Client::Tonic(tonic_channel(&backends[0]).await),
        ),
        (
            "tonic balance_list (3)",
            Client::Tonic(balance_list(&backends)),
        ),
        (
            "LbChannel round_robin (3)",
            Client::Lb(lb_channel(&backends, false).await),
        ),
        (
            "LbChannel round_robin (3) + retryPolicy",
            Client::Lb(lb_channel(&backends, true).await),
        ),
    ];
    let mut table = String::from(
        "| client | concurrency | RPC/s | vs plain Channel | p50 ms | p99 ms | failed |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut points: Vec<Vec<charts::Point>> = clients.iter().map(|_| Vec::new()).collect();
    for concurrency in CONCURRENCY {
        // This machine's speed drifts (other tenants): the clients take turns, in
        // ROUNDS rounds of RUN / ROUNDS each, and each cell is the median round.
        for (_, client) in &clients {
            load(client, concurrency, WARM_UP).await;
        }
        let mut rounds: Vec<Vec<Stats>> = clients.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, (_, client)) in clients.iter().enumerate() {
                rounds[i].push(load(client, concurrency, RUN / ROUNDS).await);
            }
        }
        let mut baseline = None;
        for (((name, _), mut runs), points) in clients.iter().zip(rounds).zip(&mut points) {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let s = &runs[runs.len() / 2];
            points.push(charts::Point {
                concurrency,
                rps: s.rps,
                p99: s.p99,
            });
            let base = *baseline.get_or_insert(s.rps);
            let row = format!(
                "| {name} | {concurrency} | {:.0} | {:.2}× | {} | {} | {} |\n",
                s.rps,
                s.rps / base,
                ms(s.p50),
                ms(s.p99),
                s.failed
            );
            print!("{row}");
            table.push_str(&row);
        }
    }
    let named: Vec<(&str, Vec<charts::Point>)> =
        clients.iter().map(|(name, _)| *name).zip(points).collect();
    charts::concurrency_chart(
        CONCURRENCY_CHART,
        "Unary echo over three loopback backends (per point, the round of median throughput of 3)",
        &named,
    );

    // The retry machinery's cost when nothing is retried: the same channel with and
    // without a retry policy, alternating, five 2 s runs each at concurrency 16; the
    // median RPC/s of each. (The table above has one run per cell; this is steadier.)
    let (plain, retrying) = (&clients[2].1, &clients[3].1);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(load(plain, 16, Duration::from_secs(2)).await.rps);
        with.push(load(retrying, 16, Duration::from_secs(2)).await.rps);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with) = (median(&mut without), median(&mut with));
    let overhead = format!(
        "Retry machinery with nothing retried (concurrency 16, median of five alternating 2 s runs): {without:.0} RPC/s without a retry policy, {with:.0} RPC/s with one, {:.3}×.\n",
        with / without
    );
    print!("{overhead}");

    let mut faults = String::from(
        "| client | failed RPCs | kill → last failure | p99 ms | RPCs served in the run |\n|---|---:|---:|---:|---:|\n",
    );
    let runs = [
        (
            "tonic balance_list (3)",
            fault_run(async |b: &[Backend]| Client::Tonic(balance_list(b))).await,
        ),
        (
            "LbChannel round_robin (3)",
            fault_run(async |b: &[Backend]| Client::Lb(lb_channel(b, false).await)).await,
        ),
        (
            "LbChannel round_robin (3) + retryPolicy",
            fault_run(async |b: &[Backend]| Client::Lb(lb_channel(b, true).await)).await,
        ),
    ];
    for (name, run) in &runs {
        let row = format!(
            "| {name} | {} | {} ms | {} | {} |\n",
            run.failed,
            ms(run.last_failure),
            ms(run.p99),
            run.ok
        );
        print!("{row}");
        faults.push_str(&row);
    }
    let timelines: Vec<(&str, &charts::Timeline)> = runs
        .iter()
        .map(|(name, run)| (*name, &run.timeline))
        .collect();
    charts::timeline_chart(
        FAULT_CHART,
        "Fault run: f1 killed at 1 s, restarted at 3 s (concurrency 32)",
        &timelines,
    );

    let mut graceful = String::from(
        "| client | failed RPCs | p99 ms | RPCs served in the run |\n|---|---:|---:|---:|\n",
    );
    let runs = [
        (
            "tonic balance_list (3)",
            graceful_run(async |a: &[String]| balance_list_to(a)).await,
        ),
        (
            "LbChannel round_robin (3)",
            graceful_run(async |a: &[String]| Client::Lb(lb_channel_to(a, false))).await,
        ),
    ];
    for (name, run) in runs {
        let row = format!(
            "| {name} | {} | {} | {} |\n",
            run.failed,
            ms(run.p99),
            run.ok
        );
        print!("{row}");
        graceful.push_str(&row);
    }

    let mut bad_peers = String::from(
        "| peer | client | RPCs served | RPCs failed | connection attempts to the peer |\n|---|---|---:|---:|---:|\n",
    );
    for (peer, behavior) in [
        ("accepts and closes", Misbehavior::AcceptAndClose),
        ("accepts, never speaks", Misbehavior::Silent),
    ] {
        let runs = [
            (
                "tonic balance_list",
                bad_peer_run(behavior.clone(), async |g: &Backend, p: &BadPeer| {
                    let endpoints = two(g, p).map(|a| {
                        Endpoint::from_shared(format!("http://{a}"))
                            .unwrap()
                            .tcp_nodelay(true)
                    });
                    Client::Tonic(EchoClient::new(Channel::balance_list(
                        endpoints.into_iter(),
                    )))
                })
                .await,
            ),
            (
                "LbChannel round_robin",
                bad_peer_run(behavior.clone(), async |g: &Backend, p: &BadPeer| {
                    // gRPC's default backoff and connect timeout.
                    let channel = LbChannel::builder(format!("static:///{}", two(g, p).join(",")))
                        .policy("round_robin")
                        .build()
                        .unwrap();
                    Client::Lb(EchoClient::new(channel))
                })
                .await,
            ),
        ];
        for (name, run) in runs {
            let row = format!(
                "| {peer} | {name} | {} | {} | {} |\n",
                run.ok, run.failed, run.attempts
            );
            print!("{row}");
            bad_peers.push_str(&row);
        }
    }

    let mut grays = String::from(
        "| gray failure | client | failed RPCs | p99 ms | RPCs served in the run |\n|---|---|---:|---:|---:|\n",
    );
    let runs = [
        (
            "(a) NOT_SERVING for 2 s",
            "LbChannel round_robin + health checking",
            gray_run(Gray::NotServing, async |a: &[String]| {
                lb_channel_with(a, HEALTH_CHECKED)
            })
            .await,
        ),
        (
            "(a') NOT_SERVING, failing 100 ms later",
            "LbChannel round_robin + health checking",
            gray_run(Gray::NotServingDraining, async |a: &[String]| {
                lb_channel_with(a, HEALTH_CHECKED)
            })
            .await,
        ),
        (
            "(a) NOT_SERVING for 2 s",
            "LbChannel round_robin",
            gray_run(Gray::NotServing, async |a: &[String]| {
                lb_channel_with(a, ROUND_ROBIN)
            })
            .await,
        ),
        (
            "(a) NOT_SERVING for 2 s",
            "tonic balance_list",
            gray_run(Gray::NotServing, async |a: &[String]| balance_list_to(a)).await,
        ),
        (
            "(b) 50% UNAVAILABLE for 3 s",
            "LbChannel outlier_detection(round_robin)",
            gray_run(Gray::HalfFailing, async |a: &[String]| {
                lb_channel_with(a, OUTLIER_DETECTION)
            })
            .await,
        ),
        (
            "(b) 50% UNAVAILABLE for 3 s",
            "LbChannel round_robin",
            gray_run(Gray::HalfFailing, async |a: &[String]| {
                lb_channel_with(a, ROUND_ROBIN)
            })
            .await,
        ),
        (
            "(b) 50% UNAVAILABLE for 3 s",
            "tonic balance_list",
            gray_run(Gray::HalfFailing, async |a: &[String]| balance_list_to(a)).await,
        ),
    ];
    for (gray, name, run) in &runs {
        let row = format!(
            "| {gray} | {name} | {} | {} | {} |\n",
            run.failed,
            ms(run.p99),
            run.ok
        );
        print!("{row}");
        grays.push_str(&row);
    }
    // One chart per kind of gray failure, (a') aside.
    for (kind, chart, title) in [
        (
            "(a)",
            GRAY_A_CHART,
            "Gray failure (a): h2 NOT_SERVING and failing its RPCs from 1 s to 3 s (concurrency 32)",
        ),
        (
            "(b)",
            GRAY_B_CHART,
            "Gray failure (b): h2 fails half its RPCs from 1 s to 4 s (concurrency 32)",
        ),
    ] {
        let timelines: Vec<(&str, &charts::Timeline)> = runs
            .iter()
            .filter(|(gray, _, _)| gray.starts_with(kind))
            .map(|(_, name, run)| (*name, &run.timeline))
            .collect();
        charts::timeline_chart(chart, title, &timelines);
    }

    {
        let mut section = String::new();
        let _ = writeln!(
            section,
            "Unary echo, three loopback backends in the same process; per cell, after {} ms of warm-up, the clients take turns in {ROUNDS} rounds of {} ms and the median round is shown.\n",
            WARM_UP.as_millis(),
            (RUN / ROUNDS).as_millis()
        );
        section.push_str(&table);
        let _ = writeln!(
            section,
            "\n![Throughput and p99 latency against concurrency, per client](charts/{CONCURRENCY_CHART})"
        );
        section.push('\n');
        section.push_str(&overhead);
        section.push_str("\nFault run: concurrency 32, one of three backends killed after 1 s (listener and every connection dropped at once, as a SIGKILLed process), restarted on its port 2 s later, 1 s more of load. The retry policy retries UNAVAILABLE up to 5 attempts.\n\n");
        section.push_str(&faults);
        let _ = writeln!(
            section,
            "\nPer 100 ms of the fault runs: RPCs that succeeded, per backend (lines), and RPCs that failed (bars). A failure names no backend, but f1 is the only one that goes away. In the gray-failure charts below, the sick backend's line is its successes only: with plain round robin it still gets its third of the RPCs, and they fail.\n\n![Fault-run timeline: RPCs served per backend and failed, per 100 ms, balance_list against LbChannel](charts/{FAULT_CHART})"
        );
        section.push_str("\nGraceful-stop run: concurrency 32, three tonic servers; 20 times, one stops gracefully (GOAWAY, in-flight RPCs finish) and starts again on its port, 100 ms apart. No retry policy.\n\n");
        section.push_str(&graceful);
        section.push_str("\nGray-failure run: concurrency 32, three backends that serve the health service; after 1 s one goes gray, (a) NOT_SERVING and failing its RPCs for 2 s (in (a') its RPCs start failing 100 ms after its health changes, as a draining server's would), or (b) failing half its RPCs with UNAVAILABLE for 3 s; 1 s more of load. Outlier detection sweeps every 100 ms (failure percentage over 30%, 50 RPCs at least, one backend of three at most).\n\n");
        section.push_str(&grays);
        let _ = writeln!(
            section,
            "\n![Gray failure (a) timeline: RPCs served per backend and failed, per 100 ms](charts/{GRAY_A_CHART})\n\n![Gray failure (b) timeline: RPCs served per backend and failed, per 100 ms](charts/{GRAY_B_CHART})"
        );
        section.push_str("\nBad-peer run: round robin over a good backend and a misbehaving peer, concurrency 8 for 3 s, each RPC bounded by 1 s.\n\n");
        section.push_str(&bad_peers);
        write_doc_section("e2e", &section);
    }
}
