//! Discovery latency through real registries (etcd, ZooKeeper): how long after a
//! server registers the first RPC reaches it, and how long after it starts
//! deregistering the last RPC does.
//!
//! Run: `cargo xtask bench --bench discovery` (needs etcd and ZooKeeper installed;
//! `cargo xtask test` installs them). With `GRPC_LB_BENCH_DOC=<path>` the results
//! replace the section between `<!-- discovery:start -->` and `<!-- discovery:end -->`
//! in that file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a panic is a failure report

use std::time::{Duration, Instant};

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, EtcdServer, ZooKeeperServer};
use lb_tonic::{LbChannel, WaitForReady};

const ROUNDS: usize = 10;

/// A registration in either registry.
enum Registration {
    Etcd(EtcdRegistrar),
    Zk(ZkRegistrar),
}

impl Registration {
    async fn deregister(self) {
        match self {
            Registration::Etcd(r) => r.deregister().await,
            Registration::Zk(r) => r.deregister().await,
        }
    }
}

/// How a benchmark registers a backend.
#[derive(Clone)]
enum Registry {
    Etcd(EtcdOptions),
    Zk(ZkOptions),
}

impl Registry {
    async fn register(&self, backend: &Backend) -> Registration {
        let addr = backend.addr();
        match self {
            Registry::Etcd(o) => Registration::Etcd(
                EtcdRegistrar::register(
                    o.clone(),
                    "bench",
                    &addr.to_string(),
                    None,
                    Duration::from_secs(10),
                )
                .await
                .unwrap(),
            ),
            Registry::Zk(o) => Registration::Zk(
                ZkRegistrar::register(
                    o.clone(),
                    "bench",
                    backend.name(),
                    &addr.ip().to_string(),
                    addr.port(),
                    None,
                )
                .await
                .unwrap(),
            ),
        }
    }
}

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

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.1} ms | {:.1} ms | {:.1} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

/// Returns the table rows for one registry.
async fn measure(label: &str, target: String, registry: Registry) -> String {
    let base = Backend::start("base").await.unwrap();
    let _base = registry.register(&base).await;
    let channel = LbChannel::builder(target)
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
        let registration = registry.register(&backend).await;
        while echo(&mut client).await.as_deref() != Some(name.as_str()) {}
        up.push(t0.elapsed());

        // Deregister while RPCs keep flowing.
        let t1 = Instant::now();
        let deregistering = tokio::spawn(registration.deregister());
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
    format!(
        "| {label} | registration → first RPC routed there | {} |\n| {label} | deregistration starts → last RPC routed there | {} |\n",
        summary(up),
        summary(down)
    )
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut table = format!(
        "| registry | event ({ROUNDS} rounds) | min | median | max |\n|---|---|---:|---:|---:|\n"
    );

    let etcd = EtcdServer::start().await.unwrap();
    let etcd_options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    };
    table.push_str(
        &measure(
            "etcd",
            format!("etcd://{}/bench", etcd.addr()),
            Registry::Etcd(etcd_options),
        )
        .await,
    );

    let zk = ZooKeeperServer::start().await.unwrap();
    let zk_options = ZkOptions {
        cluster: zk.connect_string(),
        ..ZkOptions::default()
    };
    table.push_str(
        &measure(
            "ZooKeeper",
            format!("zk://{}/bench", zk.connect_string()),
            Registry::Zk(zk_options),
        )
        .await,
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
