//! What the end-to-end benches share: the clients compared, the load generator, and
//! the writer of their section of `docs/benchmarks.md`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each bench uses a part

pub mod charts;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;
use tonic::transport::{Channel, Endpoint};

/// A client under test: tonic's own channel, or ours.
#[derive(Clone)]
pub enum Client {
    Tonic(EchoClient<Channel>),
    Lb(EchoClient<LbChannel>),
}

impl Client {
    /// One unary echo; the name of the server that answered.
    pub async fn echo(&mut self) -> Result<String, tonic::Status> {
        let req = EchoRequest {
            message: "bench".into(),
            ..Default::default()
        };
        let reply = match self {
            Client::Tonic(c) => c.unary_echo(req).await?,
            Client::Lb(c) => c.unary_echo(req).await?,
        };
        Ok(reply.into_inner().server)
    }
}

pub struct Stats {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub failed: usize,
}

/// The `p`-quantile of sorted latencies.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// `concurrency` tasks send unary RPCs back to back for `run`.
pub async fn load(client: &Client, concurrency: usize, run: Duration) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(200_000);
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.echo().await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
        failed,
    }
}

/// One RPC of a caller: when it ended, and its latency and the server that answered
/// (`None`: it failed).
pub type Outcome = (Instant, Option<(Duration, String)>);

/// `concurrency` callers sending unary RPCs until `stop`; each returns what each of
/// its RPCs did.
pub fn callers(
    client: &Client,
    concurrency: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let result = client.echo().await;
                    let done = Instant::now();
                    outcomes.push((done, result.ok().map(|server| (done - t, server))));
                }
                outcomes
            })
        })
        .collect()
}

pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Our channel to `addrs` with this service config.
pub fn lb_channel_with(addrs: &[String], config: &str) -> Client {
    let channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
        .default_service_config(config)
        .build()
        .unwrap();
    Client::Lb(EchoClient::new(channel))
}

/// tonic's `Channel::balance_list` over `addrs`.
pub fn balance_list_to(addrs: &[String]) -> Client {
    let endpoints = addrs.iter().map(|a| {
        Endpoint::from_shared(format!("http://{a}"))
            .unwrap()
            .tcp_nodelay(true)
    });
    Client::Tonic(EchoClient::new(Channel::balance_list(endpoints)))
}

/// Replaces the part of the file at `GRPC_LB_BENCH_DOC` between
/// `<!-- {marker}:start -->` and `<!-- {marker}:end -->` with `section`; does nothing
/// without the variable.
pub fn write_doc_section(marker: &str, section: &str) {
    let Ok(path) = std::env::var("GRPC_LB_BENCH_DOC") else {
        return;
    };
    let (open, close) = (
        format!("<!-- {marker}:start -->"),
        format!("<!-- {marker}:end -->"),
    );
    match std::fs::read_to_string(&path) {
        Ok(doc) => match (doc.find(&open), doc.find(&close)) {
            (Some(a), Some(b)) if a < b => {
                let start = a + open.len();
                let updated = format!("{}\n{}{}", &doc[..start], section, &doc[b..]);
                std::fs::write(&path, updated).unwrap();
                println!("wrote {path}");
            }
            _ => eprintln!("{path} has no {open} / {close} markers"),
        },
        Err(e) => eprintln!("cannot read {path}: {e}"),
    }
}

/// A bench's `main` when its backends may run in child processes: a child serves and
/// exits ([`lb_testkit::child::serve_if_asked`], which builds its own runtime);
/// anything but `cargo bench` (which passes `--bench`: not a test run, nor a
/// `--list`) returns; the bench runs `run` on a multi-threaded runtime.
pub fn bench_main<F: std::future::Future<Output = ()>>(run: impl FnOnce() -> F) {
    lb_testkit::child::serve_if_asked();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
