//! The transport as grpc-go's: a subconn is READY only once the server has spoken,
//! misbehaving peers are failed connects that back off, keepalive follows grpc-go's
//! floor and back-off, large trailers arrive, and Unix sockets work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lb_core::ConnectivityState;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, BadPeer, Misbehavior, UnixBackend};
use lb_tonic::{BackoffConfig, Keepalive, LbChannel};
use tokio::time::Instant;

mod common;
use common::*;

/// Runs `workers` callers sending unary echoes for `length`; returns (ok, failed).
async fn load(
    client: &EchoClient<LbChannel>,
    workers: usize,
    length: Duration,
) -> (usize, Vec<tonic::Status>) {
    let until = Instant::now() + length;
    let ok = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let mut client = client.clone();
            let ok = ok.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                while Instant::now() < until {
                    let mut req = echo_req("load");
                    req.set_timeout(Duration::from_secs(5));
                    match echo(&mut client, req).await {
                        Ok(server) => {
                            assert_eq!(server, "good");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => failed.push(status),
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(within("the load", t).await.unwrap());
    }
    (ok.load(Ordering::Relaxed), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_and_closes_loses_no_rpc_and_is_retried_with_backoff() {
    let good = Backend::start("good").await.unwrap();
    let bad = BadPeer::start(Misbehavior::AcceptAndClose).await.unwrap();
    // gRPC's default backoff: 1 s, then 1.6 s, ... (±20%).
    let channel = LbChannel::builder(format!("static:///{},{}", good.addr(), bad.addr()))
        .policy("round_robin")
        .build()
        .unwrap();
    let client = EchoClient::new(channel);
    let (ok, failed) = load(&client, 8, Duration::from_secs(3)).await;
    // Before the server preface counted, this lost 17% of its RPCs to the closing
    // peer, and made thousands of connection attempts without backing off.
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 100, "only {ok} RPCs in 3 s");
    let attempts = bad.accepted();
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} connection attempts in 3 s: the backoff is not applied"
    );
}

#[tokio::test]
async fn pick_first_over_a_closing_peer_fails_fast_with_the_reason_while_backing_off() {
    let bad = BadPeer::start(Misbehavior::AcceptAndClose).await.unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", bad.addr()))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await,
        "state {}",
        channel.state()
    );
    let started = Instant::now();
    let mut req = echo_req("x");
    req.set_timeout(Duration::from_secs(20));
    let status = echo(&mut client, req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("closed before the server preface"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the RPC waited instead of failing fast"
    );
    assert_eq!(channel.state(), ConnectivityState::TransientFailure);
    assert!(bad.accepted() <= 2, "{} attempts", bad.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_gets_no_rpc_and_times_out_as_a_failed_connect() {
    let good = Backend::start("good").await.unwrap();
    let silent = BadPeer::start(Misbehavior::Silent).await.unwrap();
    let backoff = BackoffConfig {
        min_connect_timeout: Duration::from_millis(500),
        ..fast_backoff()
    };
    let channel = LbChannel::builder(format!("static:///{},{}", good.addr(), silent.addr()))
        .policy("round_robin")
        .backoff(backoff)
        .build()
        .unwrap();
    // RPCs without a deadline: one routed to the silent peer would hang forever.
    let mut client = EchoClient::new(channel);
    within("RPCs with no deadline", async {
        for i in 0..200 {
            let server = echo(&mut client, wfr(echo_req(&format!("{i}"))))
                .await
                .unwrap();
            assert_eq!(server, "good");
        }
    })
    .await;

    // Alone, it is a failed connect once the connect timeout passes.
    let channel = LbChannel::builder(format!("passthrough:///{}", silent.addr()))
        .backoff(backoff)
        .build()
        .unwrap();
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await
    );
    let status = echo(&mut EchoClient::new(channel), echo_req("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("sent no server preface within 500ms"),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_http1_server_is_not_an_http2_server() {
    let peer = BadPeer::start(Misbehavior::Http1).await.unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", peer.addr()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await
    );
    let status = echo(&mut EchoClient::new(channel), echo_req("x"))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("is not an HTTP/2 server"),
        "{status:?}"
    );
}

fn keepalive(interval: Duration) -> Keepalive {
    Keepalive {
        interval,
        timeout: Duration::from_millis(300),
        while_idle: true,
    }
}

#[tokio::test]
async fn keepalive_pings_detect_a_backend_that_stops_answering() {
    // Speaks HTTP/2, then never answers again (a stopped process, a dead path).
    let peer = BadPeer::start(Misbehavior::RawHttp2 {
        answer_pings: false,
        goaway: None,
    })
    .await
    .unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", peer.addr()))
        .backoff(fast_backoff())
        .keepalive(keepalive(Keepalive::MIN_INTERVAL))
        .build()
        .unwrap();
    assert!(
        channel
            .wait_for_state(ConnectivityState::Ready, Duration::from_secs(5))
            .await
    );
    // After 10 quiet seconds a ping goes out; nothing answers within 300 ms.
    assert!(
        channel
            .wait_for_state(ConnectivityState::Idle, Duration::from_secs(15))
            .await,
        "the dead connection was never detected (state {})",
        channel.state()
    );
    assert_eq!(peer.pings(), 1);
}

#[tokio::test]
async fn the_keepalive_interval_has_grpc_gos_ten_second_floor() {
    let peer = BadPeer::start(Misbehavior::RawHttp2 {
        answer_pings: true,
        goaway: None,
    })
    .await
    .unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", peer.addr()))
        .keepalive(keepalive(Duration::from_millis(100)))
        .build()
        .unwrap();
    assert_eq!(channel.keepalive_interval(), Some(Keepalive::MIN_INTERVAL));
    assert!(
        channel
            .wait_for_state(ConnectivityState::Ready, Duration::from_secs(5))
            .await
    );
    // At 100 ms there would be ~20 pings by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(peer.pings(), 0);
    assert_eq!(channel.state(), ConnectivityState::Ready);
}

#[tokio::test]
async fn too_many_pings_doubles_the_keepalive_interval() {
    // What a gRPC server sends a client that pings more often than it permits.
    let peer = BadPeer::start(Misbehavior::RawHttp2 {
        answer_pings: true,
        goaway: Some((0xb, b"too_many_pings".to_vec())),
    })
    .await
    .unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", peer.addr()))
        .backoff(fast_backoff())
        .keepalive(keepalive(Duration::from_secs(15)))
        .build()
        .unwrap();
    within("the interval to double", async {
        while channel.keepalive_interval() != Some(Duration::from_secs(30)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_64_kib_trailer_arrives_intact_and_the_limit_is_configurable() {
    let backend = Backend::start("a").await.unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let status = echo(&mut client, wfr(echo_req("details:65536")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let expected: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
    assert_eq!(status.details(), &expected[..]);

    // A smaller limit is enforced: the trailer is refused.
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .max_header_list_size(16 * 1024)
        .build()
        .unwrap();
    let status = echo(
        &mut EchoClient::new(channel),
        wfr(echo_req("details:65536")),
    )
    .await
    .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.details().is_empty());
}

#[tokio::test]
async fn unix_socket_targets_serve_rpcs() {
    let backend = UnixBackend::start("uds").await.unwrap();
    let path = backend.path().unwrap().to_owned();
    for target in [format!("unix://{path}"), format!("unix:{path}")] {
        let channel = LbChannel::builder(target.as_str()).build().unwrap();
        let server = echo(&mut EchoClient::new(channel), wfr(echo_req("hi")))
            .await
            .unwrap();
        assert_eq!(server, "uds", "{target}");
    }
    assert_eq!(backend.authorities(), ["localhost"]);

    let abstract_backend = UnixBackend::start_abstract("abstract").await.unwrap();
    let target = format!(
        "unix-abstract:{}",
        abstract_backend.abstract_name().unwrap()
    );
    let channel = LbChannel::builder(target).build().unwrap();
    let server = echo(&mut EchoClient::new(channel), wfr(echo_req("hi")))
        .await
        .unwrap();
    assert_eq!(server, "abstract");
}
