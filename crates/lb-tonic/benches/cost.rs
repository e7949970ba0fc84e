//! What one unary RPC costs the client: CPU time (user + system) and heap
//! allocations per RPC, for our channel and for two floors, in the same run.
//!
//! Run: `cargo xtask bench --bench cost` (or `cargo bench -p lb-tonic --bench cost`).
//! With `GRPC_LB_BENCH_DOC=<path>` the tables replace the section between
//! `<!-- cost:start -->` and `<!-- cost:end -->` in that file.
//!
//! The three echo backends run in child processes, so everything this process spends
//! is the client's: its CPU time is read from `/proc/self/stat` and its allocations
//! are counted by a counting global allocator (which every client below pays alike).
//! Each client spreads its RPCs over the same three backends, one HTTP/2 connection
//! each:
//! * `h2 floor`: a bare `h2` client writing the frames a unary gRPC call writes (the
//!   request head, one length-prefixed message, end of stream) and reading the
//!   response to its trailers; no codec, no tower, no balancer: the transport floor.
//! * `tonic floor`: tonic's generated client over a hyper HTTP/2 connection used
//!   directly as its transport, with no balancing (the caller takes the three
//!   connections in turn): what every tonic user pays.
//! * `LbChannel` with round_robin under the generated client: as is, with a retry
//!   policy configured (that never triggers), and with metrics off.
//! * `LbChannel, no tonic client`: the same requests as the h2 floor, sent through
//!   `LbChannel` as a `tower::Service` and read to the trailers. Its cost less the
//!   h2 floor's is the channel layer's own.
//!
//! Rounds alternate between the clients so that drift hits them alike; CPU and RPCs
//! are summed over the rounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure report

mod common;

use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::write_doc_section;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_testkit::child::ChildBackend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;
use prost::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::net::TcpStream;
use tower::{Service as _, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RUN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;
const PATH: &str = "/echo.Echo/UnaryEcho";
const USER_AGENT: &str = "bench";

/// The clients compared, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    H2,
    Tonic,
    Lb,
    LbRetry,
    LbNoMetrics,
    LbNoChannelz,
    LbRaw,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::H2,
        Kind::Tonic,
        Kind::Lb,
        Kind::LbRetry,
        Kind::LbNoMetrics,
        Kind::LbNoChannelz,
        Kind::LbRaw,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::H2 => "h2 floor (bare HTTP/2)",
            Kind::Tonic => "tonic floor (generated client on hyper HTTP/2)",
            Kind::Lb => "`LbChannel` round_robin",
            Kind::LbRetry => "`LbChannel` round_robin, retry policy",
            Kind::LbNoMetrics => "`LbChannel` round_robin, `disable_metrics()`",
            Kind::LbNoChannelz => "`LbChannel` round_robin, `channelz(false)`",
            Kind::LbRaw => "`LbChannel` round_robin, no tonic client",
        }
    }
}

/// One unary echo request as gRPC frames it: a 5-byte prefix and the message.
fn framed_request() -> Bytes {
    let message = EchoRequest {
        message: "bench".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(&message);
    buf.freeze()
}

/// A unary call's request as tonic's generated client hands it to its transport:
/// static header values, the method as an extension, the framed message as the body.
/// The h2 floor adds the user agent that the channel adds itself.
fn grpc_request(
    uri: http::Uri,
    framed: &Bytes,
    user_agent: bool,
) -> http::Request<tonic::body::Body> {
    let body = tonic::body::Body::new(http_body_util::Full::new(framed.clone()));
    let mut request = http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        )
        .header(http::header::TE, http::HeaderValue::from_static("trailers"));
    if user_agent {
        request = request.header(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
    }
    request
        .extension(tonic::GrpcMethod::new("echo.Echo", "UnaryEcho"))
        .body(body)
        .unwrap()
}

/// hyper's HTTP/2 connection as a tonic transport, nothing else.
#[derive(Clone)]
struct HyperConn(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type HyperFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower::Service<http::Request<tonic::body::Body>> for HyperConn {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = HyperFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// One caller's client: its own handles on the connections (or the channel).
enum Caller {
    H2(Vec<(h2::client::SendRequest<Bytes>, http::Uri)>),
    Tonic(Vec<EchoClient<HyperConn>>),
    Lb(EchoClient<LbChannel>),
    LbRaw(LbChannel),
}

/// What the callers share: the connections or the channel, ready to clone.
struct Client {
    kind: Kind,
    h2: Vec<(h2::client::SendRequest<Bytes>, http::Uri)>,
    tonic: Vec<EchoClient<HyperConn>>,
    lb: Option<LbChannel>,
}

impl Client {
    async fn new(kind: Kind, addrs: &[String]) -> Self {
        let mut client = Client {
            kind,
            h2: Vec::new(),
            tonic: Vec::new(),
            lb: None,
        };
        match kind {
            Kind::H2 => {
                for addr in addrs {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client
                        .h2
                        .push((send, format!("http://{addr}{PATH}").parse().unwrap()));
                }
            }
            Kind::Tonic => {
                for addr in addrs {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let (send, connection) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(tcp),
                    )
                    .await
                    .unwrap();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    let origin = format!("http://{addr}").parse().unwrap();
                    client
                        .tonic
                        .push(EchoClient::with_origin(HyperConn(send), origin));
                }
            }
            Kind::Lb | Kind::LbRetry | Kind::LbNoMetrics | Kind::LbNoChannelz | Kind::LbRaw => {
                let retry = r#", "methodConfig": [{"name": [{"service": "echo.Echo"}],
                    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]"#;
                let config = format!(
                    r#"{{"loadBalancingConfig": [{{"round_robin": {{}}}}]{}}}"#,
                    if kind == Kind::LbRetry { retry } else { "" }
                );
                let mut builder = LbChannel::builder(format!("static:///{}", addrs.join(",")))
                    .default_service_config(config)
                    .user_agent(USER_AGENT);
                if kind == Kind::LbNoMetrics {
                    builder = builder.disable_metrics();
                }
                if kind == Kind::LbNoChannelz {
                    builder = builder.channelz(false);
                }
                client.lb = Some(builder.build().unwrap());
            }
        }
        client
    }

    fn caller(&self) -> Caller {
        match self.kind {
            Kind::H2 => Caller::H2(self.h2.clone()),
            Kind::Tonic => Caller::Tonic(self.tonic.clone()),
            Kind::LbRaw => Caller::LbRaw(self.lb.clone().unwrap()),
            _ => Caller::Lb(EchoClient::new(self.lb.clone().unwrap())),
        }
    }
}

impl Caller {
    /// One unary echo; `turn` picks the connection where the caller balances.
    async fn echo(&mut self, turn: usize, framed: &Bytes) -> bool {
        match self {
            Caller::H2(connections) => {
                let n = connections.len();
                let (send, uri) = &mut connections[turn % n];
                h2_echo(send, uri, framed).await.is_some()
            }
            Caller::Tonic(clients) => {
                let n = clients.len();
                clients[turn % n].unary_echo(request()).await.is_ok()
            }
            Caller::Lb(client) => client.unary_echo(request()).await.is_ok(),
            Caller::LbRaw(channel) => raw_echo(channel, framed).await.is_some(),
        }
    }
}

fn request() -> EchoRequest {
    EchoRequest {
        message: "bench".into(),
        ..Default::default()
    }
}

/// A unary call on a bare h2 connection; `Some` when it ended with status 0. The
/// request is built and taken apart as a transport under tonic would.
async fn h2_echo(
    send: &mut h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    framed: &Bytes,
) -> Option<()> {
    let (parts, mut body) = grpc_request(uri.clone(), framed, true).into_parts();
    let data = body.frame().await?.ok()?.into_data().ok()?;
    let end = body.is_end_stream();
    let mut ready = send.clone().ready().await.ok()?;
    let (response, mut stream) = ready
        .send_request(http::Request::from_parts(parts, ()), false)
        .ok()?;
    stream.send_data(data, end).ok()?;
    let (head, mut body) = response.await.ok()?.into_parts();
    if head.status != http::StatusCode::OK {
        return None;
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok()??;
    (trailers.get("grpc-status")?.as_bytes() == b"0").then_some(())
}

/// The same call through the channel as a `tower::Service`.
async fn raw_echo(channel: &mut LbChannel, framed: &Bytes) -> Option<()> {
    let request = grpc_request(http::Uri::from_static(PATH), framed, false);
    let response = channel.ready().await.ok()?.call(request).await.ok()?;
    let mut body = response.into_body();
    let mut status_ok = false;
    while let Some(frame) = body.frame().await {
        if let Ok(trailers) = frame.ok()?.into_trailers() {
            status_ok = trailers.get("grpc-status")?.as_bytes() == b"0";
        }
    }
    status_ok.then_some(())
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name (which may hold spaces), fields 3 on; utime and stime
    // are fields 14 and 15, in clock ticks.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// What a client spent over its rounds.
#[derive(Default, Clone, Copy)]
struct Spent {
    rpcs: u64,
    failed: u64,
    cpu: Duration,
    wall: Duration,
    allocations: u64,
    bytes: u64,
}

impl Spent {
    fn cpu_per_rpc_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.rpcs.max(1) as f64
    }

    fn allocations_per_rpc(&self) -> f64 {
        self.allocations as f64 / self.rpcs.max(1) as f64
    }

    fn rps(&self) -> f64 {
        self.rpcs as f64 / self.wall.as_secs_f64()
    }
}

/// `concurrency` callers for `run`: RPCs done, CPU and allocations spent.
async fn round(client: &Client, concurrency: usize, run: Duration, framed: &Bytes) -> Spent {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let callers: Vec<Caller> = (0..concurrency).map(|_| client.caller()).collect();
    let region = Region::new(GLOBAL);
    let cpu = cpu_time();
    let start = Instant::now();
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(i, mut caller)| {
            let (stop, done, failed, framed) =
                (stop.clone(), done.clone(), failed.clone(), framed.clone());
            tokio::spawn(async move {
                let mut turn = i;
                while !stop.load(Ordering::Relaxed) {
                    turn += 1;
                    if caller.echo(turn, &framed).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let wall = start.elapsed();
    let cpu = cpu_time() - cpu;
    let change = region.change();
    Spent {
        rpcs: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        cpu,
        wall,
        allocations: change.allocations as u64 + change.reallocations as u64,
        bytes: change.bytes_allocated as u64,
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", a / b)
}

async fn measure(concurrency: usize, addrs: &[String], framed: &Bytes) -> Vec<(Kind, Spent)> {
    let mut clients = Vec::new();
    for kind in Kind::ALL {
        let client = Client::new(kind, addrs).await;
        // Warm up: connections made, pickers and pools settled.
        round(&client, concurrency, Duration::from_millis(300), framed).await;
        clients.push(client);
    }
    let mut spent = vec![Spent::default(); clients.len()];
    for r in 0..ROUNDS {
        // Alternate the order, so that drift hits every client alike.
        let order: Vec<usize> = if r % 2 == 0 {
            (0..clients.len()).collect()
        } else {
            (0..clients.len()).rev().collect()
        };
        for i in order {
            let s = round(&clients[i], concurrency, RUN, framed).await;
            let total = &mut spent[i];
            total.rpcs += s.rpcs;
            total.failed += s.failed;
            total.cpu += s.cpu;
            total.wall += s.wall;
            total.allocations += s.allocations;
            total.bytes += s.bytes;
        }
    }
    Kind::ALL.into_iter().zip(spent).collect()
}

/// The sizes of what the channel creates per RPC, and tonic's for comparison.
fn sizes(channel: &mut LbChannel) -> String {
    let request = grpc_request(http::Uri::from_static(PATH), &Bytes::new(), false);
    let future = channel.call(request);
    let call = std::mem::size_of_val(&*future);
    drop(future);
    let body = std::mem::size_of::<lb_tonic::ResponseBody>();
    let tonic_body = std::mem::size_of::<tonic::body::Body>();
    format!(
        "| what | bytes |\n|---|---:|\n\
         | `LbChannel::call`'s future (boxed once, moved by nothing after) | {call} |\n\
         | `ResponseBody` (the response body tonic polls) | {body} |\n\
         | `tonic::body::Body` (the request body, for comparison) | {tonic_body} |\n"
    )
}

fn main() {
    // The backends' child processes serve from here too.
    common::bench_main(run);
}

async fn run() {
    let framed = framed_request();
    if let Ok(rpcs) = std::env::var("COST_PROFILE_RPCS") {
        return profile(rpcs.parse().unwrap(), &framed).await;
    }
    let mut doc = String::new();
    let mut sizes_table = String::new();
    for concurrency in [1, 32] {
        // Fresh backends per concurrency: a child lives two minutes at most.
        let mut backends = Vec::new();
        for name in ["a", "b", "c"] {
            backends.push(ChildBackend::spawn(&[], name, None).await.unwrap());
        }
        let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
        let results = measure(concurrency, &addrs, &framed).await;
        let h2 = results[0].1;
        let tonic = results[1].1;
        let _ = writeln_table(&mut doc, concurrency, &results, &h2, &tonic);
        if sizes_table.is_empty() {
            let mut channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
                .build()
                .unwrap();
            sizes_table = sizes(&mut channel);
        }
    }
    doc.push_str("\nSizes on this build:\n\n");
    doc.push_str(&sizes_table);
    println!("{doc}");
    write_doc_section("cost", &doc);
}

/// Profile mode (`COST_PROFILE_RPCS=n`, under a heap profiler such as
/// `valgrind --tool=dhat`): `n` RPCs, one at a time, through the channel with no tonic
/// client (`COST_PROFILE_KIND=h2` for the h2 floor), after 100 to warm up.
async fn profile(rpcs: usize, framed: &Bytes) {
    let kind = match std::env::var("COST_PROFILE_KIND").as_deref() {
        Ok("h2") => Kind::H2,
        Ok("tonic") => Kind::Tonic,
        Ok("lb") => Kind::Lb,
        _ => Kind::LbRaw,
    };
    let backend = ChildBackend::spawn(&[], "a", None).await.unwrap();
    let client = Client::new(kind, &[backend.addr().to_string()]).await;
    let mut caller = client.caller();
    for turn in 0..100 {
        caller.echo(turn, framed).await;
    }
    let region = Region::new(GLOBAL);
    let mut ok = 0;
    for turn in 0..rpcs {
        ok += usize::from(caller.echo(turn, framed).await);
    }
    let change = region.change();
    println!(
        "{ok} of {rpcs} RPCs ok; {:.1} allocations per RPC",
        (change.allocations + change.reallocations) as f64 / rpcs as f64
    );
}

fn writeln_table(
    doc: &mut String,
    concurrency: usize,
    results: &[(Kind, Spent)],
    h2: &Spent,
    tonic: &Spent,
) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(
        doc,
        "\nConcurrency {concurrency}, {ROUNDS} rounds of {} s per client:\n",
        RUN.as_secs()
    )?;
    writeln!(
        doc,
        "| client | RPC/s | CPU µs per RPC | × h2 floor | × tonic floor | allocations per RPC | bytes allocated per RPC | failed |"
    )?;
    writeln!(doc, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (kind, s) in results {
        writeln!(
            doc,
            "| {} | {:.0} | {:.1} | {} | {} | {:.1} | {:.0} | {} |",
            kind.name(),
            s.rps(),
            s.cpu_per_rpc_us(),
            ratio(s.cpu_per_rpc_us(), h2.cpu_per_rpc_us()),
            ratio(s.cpu_per_rpc_us(), tonic.cpu_per_rpc_us()),
            s.allocations_per_rpc(),
            s.bytes as f64 / s.rpcs.max(1) as f64,
            s.failed,
        )?;
    }
    let raw = results
        .iter()
        .find(|(k, _)| *k == Kind::LbRaw)
        .map(|(_, s)| *s)
        .unwrap_or_default();
    writeln!(
        doc,
        "\nThe channel layer's own share (no tonic client less the h2 floor): {:.1} µs and {:.1} allocations per RPC.",
        raw.cpu_per_rpc_us() - h2.cpu_per_rpc_us(),
        raw.allocations_per_rpc() - h2.allocations_per_rpc(),
    )
}
