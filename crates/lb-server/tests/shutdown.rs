//! `Shutdown` against a real etcd, a real tonic server and an `LbChannel` following
//! the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_core::ConnectivityState;
use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_server::{Shutdown, Stopped};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_testkit::{EchoService, EtcdServer};
use lb_tonic::LbChannel;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

fn options(etcd: &EtcdServer) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    }
}

/// A server run by `Shutdown`, stopped by the returned sender.
async fn start(
    etcd: &EtcdServer,
    name: &str,
    delay: Duration,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<Stopped, tonic::transport::Error>>,
    tonic_health::server::HealthReporter,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registrar = EtcdRegistrar::register(
        options(etcd),
        "svc",
        &addr.to_string(),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (health, health_service) = tonic_health::server::health_reporter();
    let service = EchoService::new(name);
    service.set_delay(Duration::from_millis(5));
    let shutdown = Shutdown::new()
        .deregister(registrar)
        .health(health.clone(), ["echo"])
        .propagation_delay(delay)
        .on(async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(shutdown.serve(move |drained| {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(EchoServer::new(service))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                drained,
            )
    }));
    (addr, stop, task, health)
}

async fn ready(channel: &LbChannel, n: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while channel
            .snapshot()
            .subconns
            .iter()
            .filter(|s| s.state == ConnectivityState::Ready)
            .count()
            < n
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("ready subconns");
}

/// Under load at concurrency 16, one of two servers shuts down: no RPC fails, its
/// key is gone, its health says NOT_SERVING while it drains, and it reports a
/// complete drain.
#[tokio::test]
async fn a_server_leaves_under_load_without_failing_an_rpc() {
    let etcd = EtcdServer::start().await.unwrap();
    let (_a, _stop_a, _task_a, _) = start(&etcd, "a", Duration::from_millis(500)).await;
    let (b, stop_b, task_b, health_b) = start(&etcd, "b", Duration::from_millis(500)).await;
    let channel = LbChannel::builder(format!("etcd://{}/svc", etcd.addr()))
        .policy("round_robin")
        .build()
        .unwrap();
    ready(&channel, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let mut client = EchoClient::new(channel.clone());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = EchoRequest {
                        message: "x".into(),
                        ..Default::default()
                    };
                    match client.unary_echo(request).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    stop_b.send(()).unwrap();
    // The health service says NOT_SERVING as soon as the shutdown starts.
    // Straight to b, not through the channel (which stops picking b).
    let direct = LbChannel::builder(format!("static:///{b}"))
        .build()
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(direct);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "echo".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.ok()
                == Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("NOT_SERVING while draining");
    drop(health);
    drop(health_b);
    let stopped = tokio::time::timeout(Duration::from_secs(20), task_b)
        .await
        .expect("b stops")
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "the propagation delay"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    let keys = etcd
        .etcdctl(&["get", "svc/", "--prefix", "--keys-only"])
        .await
        .unwrap();
    assert!(!keys.contains(&b.to_string()), "b's key is gone: {keys}");
    assert_eq!(channel.snapshot().resolver.addresses.len(), 1);
}

/// A registry that is down does not keep the server from stopping: the
/// deregistration gives up after its timeout.
#[tokio::test]
async fn a_dead_registry_does_not_block_the_shutdown() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registrar = EtcdRegistrar::register(
        options(&etcd),
        "svc",
        &addr.to_string(),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    etcd.kill().await;
    let asked = Instant::now();
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        Shutdown::new()
            .deregister(registrar)
            .deregister_timeout(Duration::from_millis(500))
            .propagation_delay(Duration::ZERO)
            .on(async {})
            .serve(|drained| {
                tonic::transport::Server::builder()
                    .add_service(EchoServer::new(EchoService::new("a")))
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), drained)
            }),
    )
    .await
    .expect("stops")
    .unwrap();
    assert_eq!(stopped, Stopped::Drained);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

/// A server that fails by itself returns its error (and deregisters).
#[tokio::test]
async fn a_failing_server_returns_its_error() {
    let result: Result<Stopped, &str> = Shutdown::new()
        .on(std::future::pending())
        .serve(|_drained| async { Err("bind failed") })
        .await;
    assert_eq!(result, Err("bind failed"));
}
