//! The channel's metrics in Prometheus text: install a recorder, build channels,
//! and scrape `/metrics`.
//!
//! Run: `cargo run -p examples --example prometheus`
//!
//! Three echo servers on 127.0.0.1, one of them failing a third of its RPCs, and an
//! address nothing listens on. A `round_robin` channel and a `weighted_round_robin`
//! channel send RPCs for a few seconds; then the example scrapes its own exporter
//! and prints the `grpc_lb` and `grpc.lb.wrr` series (Prometheus spells the dots as
//! underscores). It also prints the round-robin channel's snapshot.
//!
//! `GRPC_LB_METRICS_ADDR=127.0.0.1:9464` picks the exporter's address (default: a
//! free port) and `GRPC_LB_SERVE_SECS=60` keeps it serving that long afterwards, for
//! a real Prometheus to scrape. Every server stops by itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_testkit::EchoService;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_tonic::LbChannel;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::server::TcpIncoming;

async fn serve(service: EchoService) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = tonic::transport::Server::builder()
            .add_service(EchoServer::new(service))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("server error: {e}");
        }
    });
    Ok(addr)
}

/// A free port on 127.0.0.1 for the exporter.
fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// `GET /metrics` from the exporter, the way Prometheus scrapes it.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}

async fn load(channel: LbChannel, for_how_long: Duration) -> (usize, usize) {
    let mut client = EchoClient::new(channel);
    let (mut ok, mut failed) = (0, 0);
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        let request = EchoRequest {
            message: "hi".into(),
            ..Default::default()
        };
        match client.unary_echo(request).await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics_addr = match std::env::var("GRPC_LB_METRICS_ADDR") {
        Ok(addr) => addr
            .parse()
            .map_err(|e| format!("GRPC_LB_METRICS_ADDR={addr:?}: {e}"))?,
        Err(_) => free_addr()?,
    };
    // Install the recorder first: channels register their metrics when built.
    PrometheusBuilder::new()
        .with_http_listener(metrics_addr)
        .install()?;
    println!("Prometheus exporter on http://{metrics_addr}/metrics");

    let flaky = EchoService::new("flaky");
    flaky.set_failure(33, tonic::Code::Unavailable);
    let addrs = [
        serve(EchoService::new("a")).await?,
        serve(EchoService::new("b")).await?,
        serve(flaky).await?,
    ];
    let dead = free_addr()?; // nothing listens here
    let list: Vec<String> = addrs
        .iter()
        .chain([&dead])
        .map(ToString::to_string)
        .collect();
    let target = format!("static:///{}", list.join(","));

    let rr = LbChannel::builder(&target).policy("round_robin").build()?;
    let wrr = LbChannel::builder(format!(
        "static:///{}",
        addrs.map(|a| a.to_string()).join(",")
    ))
    .default_service_config(
        r#"{"loadBalancingConfig": [{"weighted_round_robin": {"weightUpdatePeriod": "0.2s"}}]}"#,
    )
    .build()?;
    let (rr_load, wrr_load) = tokio::join!(
        load(rr.clone(), Duration::from_secs(2)),
        load(wrr, Duration::from_secs(2))
    );
    println!("round_robin: {} ok, {} failed", rr_load.0, rr_load.1);
    println!(
        "weighted_round_robin: {} ok, {} failed",
        wrr_load.0, wrr_load.1
    );

    println!("\n# round_robin channel snapshot");
    let snapshot = rr.snapshot();
    println!("{} {} {}", snapshot.target, snapshot.policy, snapshot.state);
    for sc in &snapshot.subconns {
        println!(
            "  {:<22} {:<18} rpcs ok {:>6} failed {:>5}  {}",
            sc.address.addr(),
            sc.state.to_string(),
            sc.rpcs.succeeded,
            sc.rpcs.failed,
            sc.last_error.as_deref().unwrap_or("")
        );
    }

    println!("\n# scraped from http://{metrics_addr}/metrics (grpc_lb series, zeros left out)");
    let text = scrape(metrics_addr).await?;
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("grpc_lb") && !l.ends_with(" 0") && !l.contains("quantile"))
        .collect();
    lines.sort_unstable();
    for line in lines {
        println!("{line}");
    }

    if let Some(secs) = std::env::var("GRPC_LB_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!("\nserving metrics for {secs} s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    Ok(())
}
