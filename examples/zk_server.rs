//! A server that registers itself in ZooKeeper as an ephemeral node, in Apache
//! Curator's service-discovery format (Java services using Curator see it too).
//!
//! Run (with ZooKeeper on 127.0.0.1:2181, e.g. Debian's `zookeeper` package):
//!
//! ```sh
//! cargo run -p examples --features registries --example zk_server -- 127.0.0.1:50051
//! ```
//!
//! It serves the echo service and `grpc.health.v1.Health`, creates
//! `/services/greeter/<id>`, and on SIGTERM, Ctrl-C or after `RUN_SECS` (default 300)
//! seconds stops without failing an RPC (`lb_server::Shutdown`: NOT_SERVING, delete
//! the node, 1 s for clients to see it, drain with GOAWAY, exit); killed, its node vanishes with
//! its 10 s session. If a node with its id exists under another session (the old
//! process of a rolling restart), it waits for that one to go, then creates its own;
//! it never deletes a node it does not own. `ZK` (connect string) and `WEIGHT` (`payload.weight`) can be set.

use std::net::SocketAddr;
use std::time::Duration;

use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
use tonic::transport::server::TcpIncoming;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()?;
    let cluster = std::env::var("ZK").unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
    let run_for = Duration::from_secs(
        std::env::var("RUN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let payload = std::env::var("WEIGHT")
        .ok()
        .and_then(|w| w.parse::<u32>().ok())
        .map(|w| serde_json::json!({ "weight": w }));

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let options = ZkOptions {
        cluster,
        ..ZkOptions::default()
    };
    // One id per instance; Curator uses a UUID, any unique name works.
    let id = format!("{}-{}", addr.ip(), addr.port());
    let registrar = ZkRegistrar::register(
        options,
        "greeter",
        &id,
        &addr.ip().to_string(),
        addr.port(),
        payload,
    )
    .await?;
    println!("serving on {addr}, registered at {}", registrar.path());

    let stopped =
        examples::serve_registered(incoming, addr.to_string(), registrar, run_for).await?;
    println!("deregistered and drained: {stopped:?}");
    Ok(())
}
