//! End to end: servers register themselves in a real etcd, a client balances over
//! whatever is registered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::time::Duration;

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, EtcdServer};
use lb_tonic::{BackoffConfig, LbChannel, WaitForReady};

const TTL: Duration = Duration::from_secs(3);

async fn served_by(client: &mut EchoClient<LbChannel>, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let mut req = tonic::Request::new(EchoRequest::default());
        req.extensions_mut().insert(WaitForReady(true));
        req.set_timeout(Duration::from_secs(10));
        if let Ok(r) = client.unary_echo(req).await {
            seen.insert(r.into_inner().server);
        }
    }
    seen
}

/// A backend that registers itself, as a server process would.
async fn server(name: &str, etcd: &EtcdServer) -> (Backend, EtcdRegistrar) {
    let backend = Backend::start_restartable(name).await.unwrap();
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        retry_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    let registrar =
        EtcdRegistrar::register(options, "greeter", &backend.addr().to_string(), None, TTL)
            .await
            .unwrap();
    (backend, registrar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_register_and_the_channel_follows_them() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut servers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        servers.push(server(name, &etcd).await);
    }
    let channel = LbChannel::builder(format!("etcd://{}/greeter", etcd.addr()))
        .policy("round_robin")
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(50),
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    tokio::time::timeout(Duration::from_secs(10), async {
        while served_by(&mut client, 12).await.len() < 3 {}
    })
    .await
    .expect("all three registered servers get traffic");

    // s1's process dies: its connections drop and its registration expires.
    let (mut backend, registrar) = servers.remove(0);
    backend.kill().await;
    drop(registrar);
    tokio::time::timeout(TTL + Duration::from_secs(5), async {
        while served_by(&mut client, 12).await.contains("s1") {}
    })
    .await
    .expect("s1 kept getting traffic");

    // A new server registers and is used.
    servers.push(server("s4", &etcd).await);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !served_by(&mut client, 12).await.contains("s4") {}
    })
    .await
    .expect("the new server got no traffic");
    assert_eq!(
        served_by(&mut client, 30).await,
        HashSet::from(["s2".to_owned(), "s3".to_owned(), "s4".to_owned()])
    );
}
