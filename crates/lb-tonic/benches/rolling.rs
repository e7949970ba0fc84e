//! A rolling restart under load: three self-registering echo servers (etcd, then
//! ZooKeeper), each in its own process, stopped with SIGTERM one after another and
//! started again on the same port, while 32 callers send RPCs through an
//! `LbChannel` that follows the registry.
//!
//! Two kinds of server are compared in the same run:
//! * **plain**: what the examples did before `lb-server` (Ctrl-C only): SIGTERM
//!   kills the process, its registration stays until it is registered again;
//! * **lb-server**: `lb_server::Shutdown`: deregister, wait 1 s for clients to see
//!   it, drain with GOAWAY, exit.
//!
//! Run: `cargo bench -p lb-tonic --bench rolling` (etcd and ZooKeeper installed;
//! `cargo xtask bench` writes the table into `docs/benchmarks.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure report

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_core::ConnectivityState;
use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_testkit::{EchoService, EtcdServer, ZooKeeperServer};
use lb_tonic::LbChannel;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::server::TcpIncoming;

use common::{Client, write_doc_section};

/// `kind,registry,addr,service,mode`: makes this binary a child server.
const CHILD_ENV: &str = "GRPC_LB_ROLLING_CHILD";
const CONCURRENCY: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Registry {
    Etcd,
    Zk,
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks for benchmark names: none here
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        let etcd = EtcdServer::start().await.unwrap();
        for graceful in [false, true] {
            rows.push(rolling(Registry::Etcd, &etcd.addr().to_string(), graceful).await);
        }
        drop(etcd);
        let zk = ZooKeeperServer::start().await.unwrap();
        for graceful in [false, true] {
            rows.push(rolling(Registry::Zk, &zk.connect_string(), graceful).await);
        }
        drop(zk);
        let mut table = String::from(
            "| registry | server shutdown | RPCs | failed | restarts | SIGTERM to exit (each) | took |\n|---|---|---:|---:|---:|---|---:|\n",
        );
        for row in &rows {
            println!("{row:?}");
            table.push_str(&format!(
                "| {} | {} | {} | {} | 3 | {} | {:.1} s |\n",
                match row.registry {
                    Registry::Etcd => "etcd",
                    Registry::Zk => "ZooKeeper",
                },
                if row.graceful {
                    "`lb_server::Shutdown`"
                } else {
                    "plain (SIGTERM kills)"
                },
                row.ok + row.failed,
                row.failed,
                row.stops
                    .iter()
                    .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
                    .collect::<Vec<_>>()
                    .join(", "),
                row.took.as_secs_f64()
            ));
        }
        println!("{table}");
        write_doc_section("rolling", &table);
    });
}

#[derive(Debug)]
struct Row {
    registry: Registry,
    graceful: bool,
    ok: u64,
    failed: u64,
    took: Duration,
    /// From SIGTERM to the process's exit, per restart.
    stops: Vec<Duration>,
}

/// A child server process.
struct Server {
    child: Child,
}

impl Server {
    async fn spawn(
        registry: Registry,
        at: &str,
        addr: SocketAddr,
        service: &str,
        graceful: bool,
    ) -> Self {
        let kind = match registry {
            Registry::Etcd => "etcd",
            Registry::Zk => "zk",
        };
        let mode = if graceful { "graceful" } else { "plain" };
        // SIGTERM goes straight to it (a `timeout` wrapper would not wait for a
        // graceful exit); it bounds its own life instead.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, format!("{kind},{at},{addr},{service},{mode}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("REGISTERED") {
                    return;
                }
            }
            panic!("the server exited before registering");
        })
        .await
        .expect("the server registers within 30 s");
        Self { child }
    }

    /// SIGTERM to the server, and its end; how long it took to stop.
    async fn terminate(mut self) -> Duration {
        let asked = Instant::now();
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the server ends after SIGTERM")
            .unwrap();
        asked.elapsed()
    }
}

async fn rolling(registry: Registry, at: &str, graceful: bool) -> Row {
    let service = format!("rolling-{}", if graceful { "graceful" } else { "plain" });
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| {
            format!("127.0.0.1:{}", lb_testkit::free_port().unwrap())
                .parse()
                .unwrap()
        })
        .collect();
    let mut servers = Vec::new();
    for addr in &addrs {
        servers.push(Some(
            Server::spawn(registry, at, *addr, &service, graceful).await,
        ));
    }
    let target = match registry {
        Registry::Etcd => format!("etcd://{at}/{service}"),
        Registry::Zk => format!("zk://{at}/{service}"),
    };
    let channel = LbChannel::builder(target)
        .policy("round_robin")
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;

    let client = Client::Lb(EchoClient::new(channel.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (mut client, stop, ok, failed) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.echo().await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut stops = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, addr) in addrs.iter().enumerate() {
        if let Some(server) = servers[i].take() {
            stops.push(server.terminate().await);
        }
        servers[i] = Some(Server::spawn(registry, at, *addr, &service, graceful).await);
        wait_ready(&channel, 3).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let took = started.elapsed();
    for server in servers.into_iter().flatten() {
        server.terminate().await;
    }
    Row {
        registry,
        graceful,
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        took,
        stops,
    }
}

/// Until `n` subconns are READY (at most 30 s).
async fn wait_ready(channel: &LbChannel, n: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ready = channel
                .snapshot()
                .subconns
                .iter()
                .filter(|s| s.state == ConnectivityState::Ready)
                .count();
            if ready >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every server ready within 30 s");
}

/// The child: an echo server on `addr` registered in the registry; `graceful`
/// stops it with `lb_server::Shutdown`, `plain` leaves SIGTERM's default (death).
fn child(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [kind, at, addr, service, mode] = parts[..] else {
        eprintln!("bad {CHILD_ENV}: {spec}");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let addr: SocketAddr = addr.parse().unwrap();
        // The previous process may have just let the port go.
        let listener = {
            let mut tries = 0;
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let echo = EchoServer::new(EchoService::new(addr.to_string()));
        let (host, port) = (addr.ip().to_string(), addr.port());
        let registration: Box<dyn lb_server::Registration> = match kind {
            "etcd" => Box::new(
                EtcdRegistrar::register(
                    EtcdOptions {
                        endpoints: vec![format!("http://{at}")],
                        ..EtcdOptions::default()
                    },
                    service,
                    &addr.to_string(),
                    None,
                    Duration::from_secs(10),
                )
                .await
                .unwrap(),
            ),
            _ => Box::new(
                ZkRegistrar::register(
                    ZkOptions {
                        cluster: at.to_owned(),
                        ..ZkOptions::default()
                    },
                    service,
                    &format!("{host}:{port}"),
                    &host,
                    port,
                    None,
                )
                .await
                .unwrap(),
            ),
        };
        println!("REGISTERED");
        // Bounded: five minutes at most (the parent kills it when dropped). Not
        // watching stdin: a SIGTERM interrupts that read.
        let orphaned = tokio::time::sleep(Duration::from_secs(300));
        let server = tonic::transport::Server::builder().add_service(echo);
        if mode == "graceful" {
            let shutdown = lb_server::Shutdown::new().deregister(registration);
            tokio::select! {
                r = shutdown.serve(|drained| server.serve_with_incoming_shutdown(incoming, drained)) => {
                    r.unwrap();
                }
                () = orphaned => {}
            }
        } else {
            // SIGTERM's default action ends the process here, registered.
            tokio::select! {
                r = server.serve_with_incoming(incoming) => r.unwrap(),
                () = orphaned => {}
            }
            drop(registration);
        }
    });
    std::process::exit(0);
}
