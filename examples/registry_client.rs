//! A client that finds its servers in a registry (etcd or ZooKeeper) and balances
//! over them. The target chooses the registry; nothing else changes.
//!
//! Run (with a few `etcd_server` or `zk_server` examples registered):
//!
//! ```sh
//! cargo run -p examples --features registries --example registry_client                                  # etcd://127.0.0.1:2379/greeter
//! TARGET=zk://127.0.0.1:2181/greeter cargo run -p examples --features registries --example registry_client
//! ```
//!
//! It sends one RPC every 200 ms for `RUN_SECS` (default 30) seconds and prints which
//! server answered; start and stop servers meanwhile and watch the traffic follow.
//! Every channel of a process that follows the same registry shares one connection
//! to it (one etcd client, one ZooKeeper session).
//! `POLICY` (default `round_robin`; try `weighted_round_robin` with `WEIGHT` set on
//! the servers) can be set.

use std::time::{Duration, Instant};

use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{LbChannel, ServedBy, WaitForReady};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target =
        std::env::var("TARGET").unwrap_or_else(|_| "etcd://127.0.0.1:2379/greeter".to_owned());
    let policy = std::env::var("POLICY").unwrap_or_else(|_| "round_robin".to_owned());
    let run_for = Duration::from_secs(
        std::env::var("RUN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );

    // `lb_resolvers::registry()` has the etcd and zk schemes with those features on.
    let channel = LbChannel::builder(&target).policy(&policy).build()?;
    let mut client = EchoClient::new(channel.clone());
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        let mut request = tonic::Request::new(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        });
        request.extensions_mut().insert(WaitForReady(true));
        request.set_timeout(Duration::from_secs(2));
        match client.unary_echo(request).await {
            Ok(response) => {
                let by = response
                    .extensions()
                    .get::<ServedBy>()
                    .map(|s| s.0.to_string())
                    .unwrap_or_default();
                println!("served by {by}");
            }
            Err(status) => println!("failed: {status} (channel {})", channel.state()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
