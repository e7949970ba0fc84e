//! A server that registers itself in etcd and keeps the registration alive.
//!
//! Run (with etcd on 127.0.0.1:2379, e.g. `etcd` from Debian's `etcd-server`):
//!
//! ```sh
//! cargo run -p examples --features registries --example etcd_server -- 127.0.0.1:50051
//! ```
//!
//! It serves the echo service and `grpc.health.v1.Health`, registers
//! `greeter/127.0.0.1:50051` in the format of etcd's Go `naming/endpoints` package (so
//! Go clients find it too), and on SIGTERM, Ctrl-C or after `RUN_SECS` (default 300)
//! seconds stops without failing an RPC (`lb_server::Shutdown`: NOT_SERVING,
//! deregister, 1 s for clients to see it, drain with GOAWAY, exit). If another process registers
//! the same address meanwhile (the new process of a rolling restart), the key becomes
//! its, and this one's deregistration leaves it in place. Kill it with SIGKILL instead
//! and the key expires with its 10 s lease. `ETCD_ENDPOINTS` (comma-separated) overrides
//! the etcd address; `WEIGHT` sets `Metadata.weight` for weighted_round_robin clients.

use std::net::SocketAddr;
use std::time::Duration;

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use tonic::transport::server::TcpIncoming;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()?;
    let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let run_for = Duration::from_secs(
        std::env::var("RUN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let metadata = std::env::var("WEIGHT")
        .ok()
        .and_then(|w| w.parse::<u32>().ok())
        .map(|w| serde_json::json!({ "weight": w }));

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let options = EtcdOptions {
        endpoints,
        ..EtcdOptions::default()
    };
    let registrar = EtcdRegistrar::register(
        options,
        "greeter",
        &addr.to_string(),
        metadata,
        Duration::from_secs(10),
    )
    .await?;
    println!("serving on {addr}, registered as {}", registrar.key());

    let stopped =
        examples::serve_registered(incoming, addr.to_string(), registrar, run_for).await?;
    println!("deregistered and drained: {stopped:?}");
    Ok(())
}
