//! xDS channels against the test ADS server and in-process echo backends: the
//! targets of the xDS work, measured (not asserted).
//!
//! * splits: a weighted-clusters route 80/20, and locality weights 2:1 under
//!   round_robin, over 20,000 RPCs each;
//! * priority failover: every backend of priority 0 killed under load (a route retry
//!   policy on), how soon priority 1 serves, how many RPCs fail, and how soon
//!   traffic returns when priority 0 does;
//! * an EDS update that adds an endpoint: from the update leaving the server to the
//!   first RPC served by the new endpoint, over 20 updates;
//! * 20 config updates (endpoints, locality weights, routes) under load at
//!   concurrency 32: failed RPCs;
//! * one EDS resource of 10,000 endpoints: from the update to the first RPC served by
//!   its new live endpoint, and the process's memory growth;
//! * the per-RPC cost of an xDS channel (one route, one cluster) against a plain
//!   round_robin channel over the same backends, in alternating rounds.
//!
//! Run: `cargo bench -p lb-tonic --features xds --bench xds`; with
//! `GRPC_LB_BENCH_DOC=<path>` the tables replace the `xds` section of that file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure report

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, bench_main, callers, load, write_doc_section};
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::google::protobuf::UInt32Value;
use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::xds::{
    AdsServer, ENDPOINTS, ROUTE, TestLocality, endpoints, route_config, route_to, route_weighted,
    simple,
};
use lb_tonic::LbChannel;
use lb_xds::{Bootstrap, XdsClientOptions};

fn xds_channel(server: &AdsServer, node: &str) -> Client {
    Client::Lb(EchoClient::new(xds_lb_channel(server, node)))
}

fn xds_lb_channel(server: &AdsServer, node: &str) -> LbChannel {
    let bootstrap = Bootstrap::parse(&server.bootstrap_json(node)).unwrap();
    let mut options = XdsClientOptions::default();
    options.initial_backoff = Duration::from_millis(100);
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(
        lb_tonic::xds::resolver()
            .with_bootstrap(bootstrap)
            .with_options(options),
    );
    LbChannel::builder("xds:///echo")
        .resolvers(resolvers)
        .build()
        .unwrap()
}

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start_restartable(n).await.unwrap());
    }
    out
}

/// Sends RPCs until one is served by `name`.
async fn until(client: &Client, name: &str) {
    let mut c = client.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if c.echo().await.ok().as_deref() == Some(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no RPC served by {name}");
}

/// `count` RPCs from 8 callers; how many each backend served.
async fn split(client: &Client, count: usize) -> HashMap<String, usize> {
    let per = count / 8;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for _ in 0..per {
                    let name = c.echo().await.unwrap_or_else(|_| "failed".into());
                    *counts.entry(name).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut all: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn pct(n: usize, of: usize) -> f64 {
    n as f64 * 100.0 / of as f64
}

async fn splits() -> String {
    const N: usize = 20_000;
    let b = backends(&["a", "b"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut all = simple(
        "echo",
        &[
            ("ca", vec![TestLocality::new("z", 0, &[b[0].addr()])]),
            ("cb", vec![TestLocality::new("z", 0, &[b[1].addr()])]),
        ],
    );
    all[1].2 = route_config(
        "echo-route",
        vec![route_weighted(&[("ca", 80), ("cb", 20)])],
    );
    server.set_all(all);
    let client = xds_channel(&server, "split");
    until(&client, "a").await;
    until(&client, "b").await;
    let clusters = split(&client, N).await;
    let a = clusters.get("a").copied().unwrap_or(0);

    let server2 = AdsServer::start().await.unwrap();
    server2.set_all(simple(
        "echo",
        &[(
            "c",
            vec![
                TestLocality::new("z1", 0, &[b[0].addr()]).weight(2),
                TestLocality::new("z2", 0, &[b[1].addr()]),
            ],
        )],
    ));
    let client = xds_channel(&server2, "localities");
    until(&client, "a").await;
    until(&client, "b").await;
    let localities = split(&client, N).await;
    let heavy = localities.get("a").copied().unwrap_or(0);
    format!(
        "| split | wanted | measured over {N} RPCs | off by |\n|---|---:|---:|---:|\n\
         | weighted clusters 80/20 | 80.0% | {:.2}% | {:+.2} points |\n\
         | locality weights 2:1, round_robin | 66.67% | {:.2}% | {:+.2} points |\n",
        pct(a, N),
        pct(a, N) - 80.0,
        pct(heavy, N),
        pct(heavy, N) - 200.0 / 3.0,
    )
}

async fn failover() -> String {
    let mut b = backends(&["p0-a", "p0-b", "p1-a", "p1-b"]).await;
    let server = AdsServer::start().await.unwrap();
    let mut r = route_to("c");
    if let Some(route::route::Action::Route(a)) = r.action.as_mut() {
        a.retry_policy = Some(route::RetryPolicy {
            retry_on: "unavailable".into(),
            num_retries: Some(UInt32Value { value: 4 }),
            ..Default::default()
        });
    }
    let mut all = simple(
        "echo",
        &[(
            "c",
            vec![
                TestLocality::new("z0", 0, &[b[0].addr(), b[1].addr()]),
                TestLocality::new("z1", 1, &[b[2].addr(), b[3].addr()]),
            ],
        )],
    );
    all[1].2 = route_config("echo-route", vec![r]);
    server.set_all(all);
    let client = xds_channel(&server, "failover");
    until(&client, "p0-a").await;
    until(&client, "p0-b").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    b[0].kill().await;
    b[1].kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = Instant::now();
    b[0].restart().await.unwrap();
    b[1].restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    outcomes.sort_by_key(|(t, _)| *t);
    let failed = outcomes.iter().filter(|(_, r)| r.is_none()).count();
    let first = |after: Instant, prefix: &str| {
        outcomes
            .iter()
            .find(|(t, r)| *t >= after && r.as_ref().is_some_and(|(_, s)| s.starts_with(prefix)))
            .map(|(t, _)| *t - after)
    };
    let to_p1 = first(killed, "p1");
    let to_p0 = first(back, "p0");
    let last_second: Vec<_> = outcomes
        .iter()
        .filter(|(t, _)| *t >= back + Duration::from_secs(2))
        .collect();
    let on_p0 = last_second
        .iter()
        .filter(|(_, r)| r.as_ref().is_some_and(|(_, s)| s.starts_with("p0")))
        .count();
    let fmt = |d: Option<Duration>| {
        d.map_or("never".into(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        })
    };
    format!(
        "| all of priority 0 killed under load (16 callers, retry policy on) | measured |\n|---|---:|\n\
         | RPCs | {} |\n| failed RPCs | {failed} |\n\
         | kill → first RPC served by priority 1 | {} |\n\
         | priority 0 back → first RPC served by it | {} |\n\
         | share on priority 0, 2 s after it came back | {:.1}% of {} |\n",
        outcomes.len(),
        fmt(to_p1),
        fmt(to_p0),
        pct(on_p0, last_second.len().max(1)),
        last_second.len(),
    )
}

async fn eds_update() -> String {
    let first = Backend::start("base").await.unwrap();
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[first.addr()])])],
    ));
    let client = xds_channel(&server, "eds-update");
    until(&client, "base").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mut c = client.clone();
            let stop = stop.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(name) = c.echo().await {
                        let now = Instant::now();
                        seen.lock().unwrap().entry(name).or_insert(now);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut extra: Vec<Backend> = Vec::new();
    for i in 0..20 {
        let name = format!("new-{i}");
        let b = Backend::start(&name).await.unwrap();
        let mut addrs: Vec<SocketAddr> = vec![first.addr()];
        addrs.push(b.addr());
        extra.push(b);
        let sent = Instant::now();
        server.set(
            ENDPOINTS,
            "c",
            endpoints("c", &[TestLocality::new("z", 0, &addrs)]),
        );
        let deadline = sent + Duration::from_secs(10);
        loop {
            if let Some(at) = seen.lock().unwrap().get(&name) {
                latencies.push(*at - sent);
                break;
            }
            assert!(Instant::now() < deadline, "{name} never served");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    latencies.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    format!(
        "| an EDS update adds an endpoint (20 updates, 4 callers) | measured |\n|---|---:|\n\
         | update sent → first RPC served by it, median | {} |\n| fastest | {} |\n| slowest | {} |\n",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[0]),
        ms(latencies[latencies.len() - 1]),
    )
}

async fn updates_under_load() -> String {
    let b = backends(&["a", "b", "c", "d"]).await;
    let server = AdsServer::start().await.unwrap();
    let cluster = |name: &str, addrs: &[SocketAddr], w: u32| {
        (
            name.to_owned(),
            vec![
                TestLocality::new("z1", 0, &addrs[..1]).weight(w),
                TestLocality::new("z2", 0, &addrs[1..]),
            ],
        )
    };
    let ab = [b[0].addr(), b[1].addr()];
    let cd = [b[2].addr(), b[3].addr()];
    let (c1, c2) = (cluster("c1", &ab, 1), cluster("c2", &cd, 1));
    server.set_all(simple(
        "echo",
        &[(&c1.0, c1.1.clone()), (&c2.0, c2.1.clone())],
    ));
    let client = xds_channel(&server, "updates");
    until(&client, "a").await;
    until(&client, "b").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 32, &stop);
    for i in 0..20u32 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        match i % 4 {
            // Endpoints: one backend of c1 leaves or comes back.
            0 => server.set(
                ENDPOINTS,
                "c1",
                endpoints("c1", &[TestLocality::new("z1", 0, &ab[..1])]),
            ),
            1 => server.set(ENDPOINTS, "c1", endpoints("c1", &cluster("c1", &ab, 1).1)),
            // Locality weights.
            2 => server.set(
                ENDPOINTS,
                "c1",
                endpoints("c1", &cluster("c1", &ab, 1 + i).1),
            ),
            // Routes: the weighted split between the clusters moves.
            _ => server.set(
                ROUTE,
                "echo-route",
                route_config(
                    "echo-route",
                    vec![route_weighted(&[("c1", 10 + i), ("c2", 30 - i)])],
                ),
            ),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    let failed = outcomes.iter().filter(|(_, r)| r.is_none()).count();
    let served: std::collections::HashSet<_> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().map(|(_, s)| s.clone()))
        .collect();
    format!(
        "| 20 updates in 3 s under load (32 callers) | measured |\n|---|---:|\n\
         | RPCs | {} |\n| failed RPCs | {failed} |\n| backends that served | {} of 4 |\n",
        outcomes.len(),
        served.len(),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

async fn ten_thousand() -> String {
    let live = Backend::start("live").await.unwrap();
    let new = Backend::start("new").await.unwrap();
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[live.addr()])])],
    ));
    let channel = xds_lb_channel(&server, "10k");
    let client = Client::Lb(EchoClient::new(channel.clone()));
    until(&client, "live").await;
    let before = rss_kib();
    // 9,998 addresses where nothing listens (10 localities), the live one and a new one.
    let dead_port = lb_testkit::free_port().unwrap();
    let dead = |z: usize, i: usize| {
        SocketAddr::from((
            [127, 1 + z as u8, (i / 250) as u8, (i % 250 + 1) as u8],
            dead_port,
        ))
    };
    let mut localities: Vec<TestLocality> = (0..10)
        .map(|z| {
            TestLocality::new(
                &format!("z{z}"),
                0,
                &(0..1000).map(|i| dead(z, i)).collect::<Vec<_>>(),
            )
        })
        .collect();
    localities[0].endpoints.truncate(998);
    localities[0].endpoints.push(live.addr());
    localities[0].endpoints.push(new.addr());
    let update = endpoints("c", &localities);
    let size = update.value.len();
    let sent = Instant::now();
    server.set(ENDPOINTS, "c", update);
    // When the channel has every subconn, then when the new endpoint serves.
    while channel.snapshot().subconns.len() < 10_000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let built = sent.elapsed();
    until(&client, "new").await;
    let routed = sent.elapsed();
    // Let every connection attempt settle before measuring memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();

    // Then the usual update of a large resource: the whole 10,000 again, one dead
    // endpoint replaced by a live one; five rounds.
    let mut latencies = Vec::new();
    let mut extra = Vec::new();
    for round in 0..5 {
        let name = format!("added-{round}");
        let b = Backend::start(&name).await.unwrap();
        localities[1 + round].endpoints[0] = b.addr();
        extra.push(b);
        let sent = Instant::now();
        server.set(ENDPOINTS, "c", endpoints("c", &localities));
        until(&client, &name).await;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    format!(
        "| one EDS resource of 10,000 endpoints ({} KiB on the wire) | measured |\n|---|---:|\n\
         | from 1 endpoint to 10,000: update sent → every subconn created | {:.0} ms |\n\
         | from 1 endpoint to 10,000: update sent → first RPC served by its new live endpoint | {:.0} ms |\n\
         | 10,000 endpoints with one replaced by a live one: update sent → first RPC to it (median of 5; min, max) | {:.0} ms ({:.0}, {:.0}) |\n\
         | process memory growth with 10,000 subconns (RSS, all in one process with the server and backends) | {:.1} MiB |\n",
        size / 1024,
        built.as_secs_f64() * 1e3,
        routed.as_secs_f64() * 1e3,
        latencies[2].as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3,
        latencies[4].as_secs_f64() * 1e3,
        (after.saturating_sub(before)) as f64 / 1024.0,
    )
}

async fn cost() -> String {
    const ROUNDS: usize = 7;
    const RUN: Duration = Duration::from_secs(2);
    let b = backends(&["a", "b", "c"]).await;
    let addrs: Vec<SocketAddr> = b.iter().map(Backend::addr).collect();
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &addrs)])],
    ));
    let mut table = "| concurrency | xDS channel (median RPC/s) | round_robin channel (median RPC/s) | ratio (median of paired rounds) | paired ratios |\n|---:|---:|---:|---:|---|\n".to_owned();
    for concurrency in [1, 16] {
        let xds = xds_channel(&server, &format!("cost-{concurrency}"));
        let plain = Client::Lb(EchoClient::new(
            LbChannel::builder(format!(
                "static:///{}",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .policy("round_robin")
            .build()
            .unwrap(),
        ));
        for name in ["a", "b", "c"] {
            until(&xds, name).await;
        }
        load(&xds, concurrency, Duration::from_millis(300)).await;
        load(&plain, concurrency, Duration::from_millis(300)).await;
        let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (x, p) = if round % 2 == 0 {
                let x = load(&xds, concurrency, RUN).await.rps;
                (x, load(&plain, concurrency, RUN).await.rps)
            } else {
                let p = load(&plain, concurrency, RUN).await.rps;
                (load(&xds, concurrency, RUN).await.rps, p)
            };
            with.push(x);
            without.push(p);
            ratios.push(x / p);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut shown = ratios.clone();
        shown.sort_by(f64::total_cmp);
        table.push_str(&format!(
            "| {concurrency} | {:.0} | {:.0} | {:.3} | {} |\n",
            median(with),
            median(without),
            median(ratios),
            shown
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    table
}

fn main() {
    bench_main(|| async {
        // GRPC_LB_XDS_BENCH=<part> runs one part (splits, failover, eds, updates,
        // 10k, cost) and writes nothing.
        if let Ok(part) = std::env::var("GRPC_LB_XDS_BENCH") {
            let table = match part.as_str() {
                "splits" => splits().await,
                "failover" => failover().await,
                "eds" => eds_update().await,
                "updates" => updates_under_load().await,
                "10k" => ten_thousand().await,
                _ => cost().await,
            };
            println!("{table}");
            return;
        }
        let mut section = String::new();
        for (title, table) in [
            ("Splits", splits().await),
            ("Priority failover", failover().await),
            ("EDS update to first RPC", eds_update().await),
            ("Config updates under load", updates_under_load().await),
            ("10,000 endpoints", ten_thousand().await),
            ("Per-RPC cost", cost().await),
        ] {
            println!("{title}\n{table}");
            section.push_str(&format!("\n**{title}**\n\n{table}"));
        }
        write_doc_section("xds", &section);
    });
}
