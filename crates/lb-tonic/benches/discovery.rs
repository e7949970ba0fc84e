//! Discovery latency through a real etcd: how long after a server registers the
//! first RPC reaches it, and how long after it deregisters the last RPC does.
//!
//! Run: `cargo xtask bench --bench discovery` (needs `etcd` on PATH; `cargo xtask test`
//! installs it). With `GRPC_LB_BENCH_DOC=<path>` the results replace the section
//! between `<!-- discovery:start -->` and `<!-- discovery:end -->` in that file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a panic is a failure report

use std::time::{Duration, Instant};

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, EtcdServer};
use lb_tonic::{LbChannel, WaitForReady};

const ROUNDS: usize = 10;

async fn echo(client: &mut EchoClient<LbChannel>) -> Option<String> {
    let mut req = tonic::Request::new(EchoRequest::default());
    req.extensions_mut().insert(WaitForReady(true));
    req.set_timeout(Duration::from_secs(5));
    client
        .unary_echo(req)
        .await
        .ok()
        .map(|r| r.into_inner().server)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{:.1} ms | {:.1} ms | {:.1} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let etcd = EtcdServer::start().await.unwrap();
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    };
    let ttl = Duration::from_secs(10);
    let base = Backend::start("base").await.unwrap();
    let _base = EtcdRegistrar::register(
        options.clone(),
        "bench",
        &base.addr().to_string(),
        None,
        ttl,
    )
    .await
    .unwrap();
    let channel = LbChannel::builder(format!("etcd://{}/bench", etcd.addr()))
        .policy("round_robin")
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    while echo(&mut client).await.is_none() {}

    let (mut up, mut down) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let name = format!("new{round}");
        let backend = Backend::start(&name).await.unwrap();
        let t0 = Instant::now();
        let registrar = EtcdRegistrar::register(
            options.clone(),
            "bench",
            &backend.addr().to_string(),
            None,
            ttl,
        )
        .await
        .unwrap();
        loop {
            if echo(&mut client).await.as_deref() == Some(name.as_str()) {
                break;
            }
        }
        up.push(t0.elapsed());

        // Deregister while RPCs keep flowing.
        let t1 = Instant::now();
        let deregistering = tokio::spawn(registrar.deregister());
        let mut last = Duration::ZERO;
        let window = Instant::now() + Duration::from_secs(1);
        while Instant::now() < window {
            if echo(&mut client).await.as_deref() == Some(name.as_str()) {
                last = t1.elapsed();
            }
        }
        deregistering.await.unwrap();
        down.push(last);
    }
    let table = format!(
        "| event (etcd, {ROUNDS} rounds) | min | median | max |\n|---|---:|---:|---:|\n| registration → first RPC routed there | {} |\n| deregistration starts → last RPC routed there | {} |\n",
        summary(up),
        summary(down)
    );
    print!("{table}");
    if let Ok(path) = std::env::var("GRPC_LB_BENCH_DOC") {
        let doc = std::fs::read_to_string(&path).unwrap();
        if let (Some(a), Some(b)) = (
            doc.find("<!-- discovery:start -->"),
            doc.find("<!-- discovery:end -->"),
        ) {
            let start = a + "<!-- discovery:start -->".len();
            std::fs::write(&path, format!("{}\n{table}{}", &doc[..start], &doc[b..])).unwrap();
            println!("wrote {path}");
        }
    }
}
