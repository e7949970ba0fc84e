//! Quickstart: three echo servers on 127.0.0.1, one round_robin `LbChannel` over them.
//!
//! Run: `cargo run -p examples --example quickstart` (or `cargo xtask demo`)
//!
//! It sends RPCs and prints how they were spread, stops one server (gracefully, with
//! GOAWAY) in the middle of 600 wait-for-ready RPCs and shows the traffic moving to
//! the other two, then brings the server back and shows it serving again. No etcd,
//! no ZooKeeper, no system packages; it finishes in a few seconds.
//!
//! No RPC fails: the RPCs that crossed beta's GOAWAY are above its last stream id, so
//! beta never processed them and the channel sends them to alpha or gamma instead
//! (see "Transparent retry" in docs/channel.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lb_testkit::EchoService;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_tonic::{BackoffConfig, LbChannel, ServedBy};
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

/// A running server and the means to stop it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves the echo service named `name` on `addr` (port 0: any free port).
async fn serve(name: &str, addr: SocketAddr) -> std::io::Result<Server> {
    // tokio's listener sets SO_REUSEADDR, so a restarted server can take its port back.
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let service = EchoServer::new(EchoService::new(name));
    let task = tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("server error: {e}");
        }
    });
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
    })
}

impl Server {
    /// Graceful stop: the server sends GOAWAY, finishes what is in flight, closes.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Sends `n` RPCs from 8 concurrent tasks; returns how many each backend served and
/// how many failed.
async fn round(client: &EchoClient<LbChannel>, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            let mut failed = 0;
            for i in (worker..n).step_by(8) {
                let mut request = tonic::Request::new(EchoRequest {
                    message: format!("hello {i}"),
                    ..Default::default()
                });
                // Wait for a ready backend instead of failing while one is down.
                request
                    .extensions_mut()
                    .insert(lb_tonic::WaitForReady(true));
                request.set_timeout(Duration::from_secs(5));
                match client.unary_echo(request).await {
                    Ok(response) => {
                        let by = response
                            .extensions()
                            .get::<ServedBy>()
                            .map(|s| s.0.to_string());
                        served.push(format!(
                            "{} ({})",
                            response.into_inner().server,
                            by.unwrap_or_default()
                        ));
                    }
                    Err(status) => {
                        eprintln!("RPC failed: {status}");
                        failed += 1;
                    }
                }
            }
            (served, failed)
        }));
    }
    let mut counts = BTreeMap::new();
    let mut failed = 0;
    for task in tasks {
        if let Ok((served, f)) = task.await {
            for s in served {
                *counts.entry(s).or_insert(0) += 1;
            }
            failed += f;
        }
    }
    (counts, failed)
}

fn print_round(title: &str, (counts, failed): &(BTreeMap<String, usize>, usize)) {
    println!("{title}");
    for (server, n) in counts {
        println!("  {server:<24} {n:>4} RPCs");
    }
    println!("  failed                   {failed:>4}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;
    let mut servers = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let server = serve(name, any_port).await?;
        println!("started {name} on {}", server.addr);
        servers.push(server);
    }

    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let target = format!("static:///{}", addrs.join(","));
    let channel = LbChannel::builder(&target)
        .policy("round_robin")
        // Reconnect quickly in the demo; gRPC's defaults start at 1 s.
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            ..BackoffConfig::default()
        })
        .build()?;
    println!("channel to {target}");
    let client = EchoClient::new(channel.clone());

    print_round("\n300 RPCs over three servers:", &round(&client, 300).await);

    println!("\nstopping beta while 600 RPCs are under way ...");
    let load = tokio::spawn({
        let client = client.clone();
        async move { round(&client, 600).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    servers[1].stop().await;
    print_round("600 RPCs, beta stopped part-way:", &load.await?);
    print_round("300 RPCs while beta is down:", &round(&client, 300).await);

    println!("\nrestarting beta on {} ...", servers[1].addr);
    let mut restarted = None;
    for _ in 0..50 {
        match serve("beta", servers[1].addr).await {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    servers[1] = restarted.ok_or("could not rebind beta's port")?;
    // Give the channel a moment to reconnect (its backoff is at most 500 ms here).
    tokio::time::sleep(Duration::from_millis(700)).await;
    print_round("300 RPCs with beta back:", &round(&client, 300).await);

    println!("\nchannel state: {}", channel.state());
    for server in &mut servers {
        server.stop().await;
    }
    Ok(())
}
