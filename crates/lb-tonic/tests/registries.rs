//! End to end: servers register themselves in a real registry (etcd, ZooKeeper), a
//! client balances over whatever is registered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, EtcdServer, ZooKeeperServer};
use lb_tonic::{BackoffConfig, LbChannel, WaitForReady};

/// How long a dead server's registration lives on (lease TTL, session timeout).
const EXPIRY: Duration = Duration::from_secs(3);

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

/// Three servers register with `register` (which returns a handle whose drop is the
/// process dying); the channel at `target` must use them, drop a killed one, and
/// pick up a new one.
async fn follow_registrations<R, F>(target: String, register: impl Fn(Backend) -> F)
where
    F: Future<Output = (Backend, R)>,
{
    let mut servers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        servers.push(register(Backend::start_restartable(name).await.unwrap()).await);
    }
    let channel = LbChannel::builder(target)
        .policy("round_robin")
        .backoff(BackoffConfig {
            base_delay: Duration::from_millis(50),
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    tokio::time::timeout(Duration::from_secs(15), async {
        while served_by(&mut client, 12).await.len() < 3 {}
    })
    .await
    .expect("all three registered servers get traffic");

    // s1's process dies: its connections drop and its registration expires.
    let (mut backend, registration) = servers.remove(0);
    backend.kill().await;
    drop(registration);
    tokio::time::timeout(EXPIRY + Duration::from_secs(10), async {
        while served_by(&mut client, 12).await.contains("s1") {}
    })
    .await
    .expect("s1 kept getting traffic");

    servers.push(register(Backend::start_restartable("s4").await.unwrap()).await);
    tokio::time::timeout(Duration::from_secs(15), async {
        while !served_by(&mut client, 12).await.contains("s4") {}
    })
    .await
    .expect("the new server got no traffic");
    assert_eq!(
        served_by(&mut client, 30).await,
        HashSet::from(["s2".to_owned(), "s3".to_owned(), "s4".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_registered_in_etcd() {
    let etcd = EtcdServer::start().await.unwrap();
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        retry_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    follow_registrations(format!("etcd://{}/greeter", etcd.addr()), |backend| {
        let options = options.clone();
        async move {
            let addr = backend.addr().to_string();
            let r = EtcdRegistrar::register(options, "greeter", &addr, None, EXPIRY)
                .await
                .unwrap();
            (backend, r)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_registered_in_zookeeper() {
    let zk = ZooKeeperServer::start().await.unwrap();
    let options = ZkOptions {
        cluster: zk.connect_string(),
        session_timeout: EXPIRY,
        retry_interval: Duration::from_millis(200),
        ..ZkOptions::default()
    };
    follow_registrations(format!("zk://{}/greeter", zk.connect_string()), |backend| {
        let options = options.clone();
        async move {
            let addr = backend.addr();
            let id = backend.name().to_owned();
            let r = ZkRegistrar::register(
                options,
                "greeter",
                &id,
                &addr.ip().to_string(),
                addr.port(),
                None,
            )
            .await
            .unwrap();
            (backend, r)
        }
    })
    .await;
}

/// RPCs to a service nobody registered fail saying where the resolver looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_service_fails_rpcs_naming_the_prefix_or_path_watched() {
    let etcd = EtcdServer::start().await.unwrap();
    let zk = ZooKeeperServer::start().await.unwrap();
    for (target, expected) in [
        (
            format!("etcd://{}/greetr", etcd.addr()),
            format!("no keys under `greetr/` in etcd at http://{}", etcd.addr()),
        ),
        (
            format!("zk://{}/greetr", zk.connect_string()),
            "in ZooKeeper at".to_owned(),
        ),
    ] {
        for policy in ["pick_first", "round_robin"] {
            let channel = LbChannel::builder(&target).policy(policy).build().unwrap();
            let mut client = EchoClient::new(channel);
            let status = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match client.unary_echo(EchoRequest::default()).await {
                        Err(s) if s.message().contains("no addresses") => return s,
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
            .await
            .expect("RPCs fail once the resolver reports");
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(
                status.message().contains(&expected),
                "{policy} {target}: {status:?}"
            );
        }
    }
}
