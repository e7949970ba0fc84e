//! A client that finds its servers in etcd and balances over them.
//!
//! Run (with etcd on 127.0.0.1:2379 and a few `etcd_server` examples registered):
//!
//! ```sh
//! cargo run -p examples --features etcd --example etcd_client
//! ```
//!
//! It sends one RPC every 200 ms for `RUN_SECS` (default 30) seconds and prints which
//! server answered; start and stop servers meanwhile and watch the traffic follow.
//! `ETCD` (`host:port`, default `127.0.0.1:2379`) and `POLICY` (default `round_robin`)
//! can be set.

use std::time::{Duration, Instant};

use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{LbChannel, ServedBy, WaitForReady};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = std::env::var("ETCD").unwrap_or_else(|_| "127.0.0.1:2379".to_owned());
    let policy = std::env::var("POLICY").unwrap_or_else(|_| "round_robin".to_owned());
    let run_for = Duration::from_secs(
        std::env::var("RUN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );

    // `lb_resolvers::registry()` has the etcd scheme when the `etcd` feature is on.
    let channel = LbChannel::builder(format!("etcd://{etcd}/greeter"))
        .policy(&policy)
        .build()?;
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
