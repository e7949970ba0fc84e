//! `LbChannel::snapshot` and the channel's metrics, against real echo servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use lb_core::ConnectivityState;
use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{LbChannel, SubConnSnapshot, metric_names};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

fn by_addr(subconns: &[SubConnSnapshot]) -> HashMap<String, SubConnSnapshot> {
    subconns
        .iter()
        .map(|s| (s.address.addr().to_owned(), s.clone()))
        .collect()
}

/// Two echo servers and a port nothing listens on: the snapshot names the target
/// and policy, lists the three addresses the resolver gave, shows the dead one in
/// TRANSIENT_FAILURE with its error, and counts each server's RPCs exactly.
#[tokio::test]
async fn snapshot_shows_states_errors_and_rpc_counts() {
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let target = format!("static:///{},{},{dead}", a.addr(), b.addr());
    let channel = rr_channel(target.clone());
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    let before = by_addr(&channel.snapshot().subconns);
    let sent = 200;
    for _ in 0..sent {
        echo(&mut client, echo_req("x")).await.unwrap();
    }
    within("the dead address to fail", async {
        loop {
            let snap = channel.snapshot();
            let subconns = by_addr(&snap.subconns);
            if subconns
                .get(&dead)
                .is_some_and(|s| s.state == ConnectivityState::TransientFailure)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let snap = channel.snapshot();
    assert_eq!(snap.target, target);
    assert_eq!(snap.policy, "round_robin");
    assert_eq!(snap.state, ConnectivityState::Ready);
    assert!(snap.picker_updates >= 2, "{snap:?}");
    assert_eq!(snap.calls_in_flight, 0);
    assert_eq!(snap.resolver.addresses.len(), 3);
    assert_eq!(snap.resolver.updates, 1);
    assert_eq!(snap.resolver.errors, 0);
    assert_eq!(snap.subconns.len(), 3, "{snap:?}");
    let subconns = by_addr(&snap.subconns);
    let dead_sc = &subconns[&dead];
    let error = dead_sc.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&dead),
        "the error names the address: {error}"
    );
    assert!(dead_sc.connection_attempts >= 1);
    assert_eq!(dead_sc.rpcs.started, 0);
    let mut counted = 0;
    for backend in [&a, &b] {
        let sc = &subconns[&backend.addr().to_string()];
        assert_eq!(sc.state, ConnectivityState::Ready);
        assert_eq!(sc.last_error, None);
        assert_eq!(sc.rpcs.in_flight, 0);
        assert_eq!(sc.rpcs.failed, 0);
        assert_eq!(sc.rpcs.started, sc.rpcs.succeeded);
        let during = sc.rpcs.succeeded - before[&backend.addr().to_string()].rpcs.succeeded;
        // Round robin over two ready subconns: an even split.
        assert_eq!(during, sent / 2, "{sc:?}");
        counted += sc.rpcs.succeeded;
    }
    assert_eq!(counted as usize, a.hits() + b.hits());
}

/// Failed RPCs count as failed; RPCs under way count as in flight; a subconn the
/// policy removed leaves the snapshot.
#[tokio::test]
async fn snapshot_counts_failures_in_flight_and_forgets_removed_subconns() {
    let a = Backend::start("a").await.unwrap();
    let resolver = lb_testkit::ManualResolver::new();
    let channel = manual_rr_channel(&resolver);
    resolver.update_addrs(&[a.addr()]);
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a"]).await;
    a.service().set_failure(100, tonic::Code::Internal);
    for _ in 0..5 {
        assert!(echo(&mut client, echo_req("x")).await.is_err());
    }
    a.service().set_failure(0, tonic::Code::Ok);
    a.service().set_delay(Duration::from_millis(500));
    let slow = tokio::spawn({
        let mut client = client.clone();
        async move { echo(&mut client, echo_req("slow")).await }
    });
    within("the slow RPC to be in flight", async {
        while channel.snapshot().subconns[0].rpcs.in_flight != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(channel.snapshot().calls_in_flight, 1);
    within("the slow RPC", slow).await.unwrap().unwrap();
    let sc = channel.snapshot().subconns[0].clone();
    assert_eq!(sc.rpcs.failed, 5);
    assert_eq!(sc.rpcs.in_flight, 0);
    assert_eq!(sc.rpcs.started, sc.rpcs.succeeded + 5);

    let b = Backend::start("b").await.unwrap();
    resolver.update_addrs(&[b.addr()]);
    within("a's subconn to leave the snapshot", async {
        loop {
            let snap = channel.snapshot();
            let addrs: Vec<_> = snap
                .subconns
                .iter()
                .map(|s| s.address.addr().to_owned())
                .collect();
            if addrs == [b.addr().to_string()] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(channel.snapshot().resolver.updates, 2);
}

/// `disable_metrics` keeps states but counts no RPCs.
#[tokio::test]
async fn disabled_metrics_count_no_rpcs() {
    let a = Backend::start("a").await.unwrap();
    let channel = LbChannel::builder(static_target(&[&a]))
        .policy("round_robin")
        .disable_metrics()
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a"]).await;
    let snap = channel.snapshot();
    assert_eq!(snap.subconns[0].state, ConnectivityState::Ready);
    assert_eq!(snap.subconns[0].rpcs, Default::default());
}

fn counter(
    snapshot: &[(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    label: (&str, &str),
) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _, _, _)| key.kind() == MetricKind::Counter && key.key().name() == name)
        .filter(|(key, _, _, _)| {
            key.key()
                .labels()
                .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

/// With a recorder installed, the channel's counters add up to what happened.
#[tokio::test]
async fn metrics_count_attempts_states_connections_and_resolver_updates() {
    let a = Backend::start("a").await.unwrap();
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let target = format!("static:///{},{dead}", a.addr());
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are registered when the channel is built: a recorder installed for
    // that moment is the one it records to.
    let channel = metrics::with_local_recorder(&recorder, || rr_channel(target.clone()));
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a"]).await;
    let warm = a.hits() as u64;
    for _ in 0..20 {
        echo(&mut client, echo_req("x")).await.unwrap();
    }
    a.service().set_failure(100, tonic::Code::Internal);
    for _ in 0..3 {
        assert!(echo(&mut client, echo_req("x")).await.is_err());
    }
    within("a failed connection attempt to the dead address", async {
        while !channel
            .snapshot()
            .subconns
            .iter()
            .any(|s| s.state == ConnectivityState::TransientFailure)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // One snapshot: the debugging recorder's counters start over after each.
    let s = snapshotter.snapshot().into_vec();
    assert!(counter(&s, metric_names::CONNECTION_ATTEMPTS, ("outcome", "failed")) >= 1);
    assert_eq!(
        counter(&s, metric_names::ATTEMPTS, ("grpc.status", "OK")),
        warm + 20
    );
    assert_eq!(
        counter(&s, metric_names::ATTEMPTS, ("grpc.status", "INTERNAL")),
        3
    );
    assert_eq!(
        counter(&s, metric_names::ATTEMPTS, ("grpc.target", &target)),
        warm + 23
    );
    assert_eq!(
        counter(
            &s,
            metric_names::CONNECTION_ATTEMPTS,
            ("outcome", "succeeded")
        ),
        1
    );
    assert!(counter(&s, metric_names::STATE_CHANGES, ("state", "READY")) >= 1);
    assert!(
        counter(
            &s,
            metric_names::STATE_CHANGES,
            ("state", "TRANSIENT_FAILURE")
        ) >= 1
    );
    assert_eq!(
        counter(&s, metric_names::RESOLVER_UPDATES, ("grpc.target", &target)),
        1
    );
    let gauge = s
        .iter()
        .find(|(k, _, _, _)| k.key().name() == metric_names::RESOLVER_ADDRESSES)
        .map(|(_, _, _, v)| match v {
            DebugValue::Gauge(g) => g.into_inner(),
            _ => f64::NAN,
        });
    assert_eq!(gauge, Some(2.0));
}

/// Picks that wait for a connection, and picks that fail, are counted.
#[tokio::test]
async fn metrics_count_queued_and_failed_picks() {
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let channel = metrics::with_local_recorder(&recorder, || {
        LbChannel::builder(format!("static:///{dead}"))
            .policy("round_robin")
            .backoff(fast_backoff())
            .build()
            .unwrap()
    });
    let mut client = EchoClient::new(channel.clone());
    // The first RPC waits for the first connection attempt, which fails.
    let err = within("the RPC to fail", echo(&mut client, echo_req("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let s = snapshotter.snapshot().into_vec();
    assert_eq!(counter(&s, metric_names::PICKS, ("result", "queued")), 1);
    assert_eq!(counter(&s, metric_names::PICKS, ("result", "failed")), 1);
}

/// With channelz off the channel, its subchannels and its connections are not in
/// the registry, and the snapshot still counts RPCs.
#[tokio::test]
async fn a_channel_without_channelz_is_not_registered_and_still_counts() {
    let a = Backend::start("a").await.unwrap();
    let on = LbChannel::builder(format!("static:///{}", a.addr()))
        .build()
        .unwrap();
    let off = LbChannel::builder(format!("static:///{}", a.addr()))
        .channelz(false)
        .build()
        .unwrap();
    for channel in [&on, &off] {
        let mut client = EchoClient::new(channel.clone());
        for _ in 0..3 {
            within(
                "an RPC",
                client.unary_echo(lb_testkit::pb::EchoRequest::default()),
            )
            .await
            .unwrap();
        }
    }
    let registry = lb_core::channelz::registry();
    let snapshot = off.snapshot();
    assert_eq!(snapshot.channelz_id, None);
    assert_eq!(snapshot.subconns[0].channelz_id, None);
    assert_eq!(snapshot.subconns[0].rpcs.succeeded, 3);
    let target = snapshot.target.clone();
    let mut listed_ids = Vec::new();
    let mut start = 0;
    loop {
        let page = registry.top_channels(start, 0);
        listed_ids.extend(
            page.items
                .iter()
                .filter(|(_, data)| data.target == target)
                .map(|(id, _)| *id),
        );
        if page.end {
            break;
        }
        start = page.items.last().map_or(start, |(id, _)| id + 1);
    }
    assert_eq!(listed_ids, [on.snapshot().channelz_id.unwrap()]);
    let listed = registry
        .channel(on.snapshot().channelz_id.unwrap())
        .unwrap();
    assert_eq!(listed.calls.succeeded, 3);
    on.close();
    off.close();
}

/// An h2 server that answers every stream with gRPC headers and one empty message
/// that ends the stream: no trailers, so no status.
async fn bare_end_of_stream_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A server that ends a stream without trailers (a bare end of stream): the RPC
/// fails, its subchannel counts a failed attempt, and its connection a stream the
/// server ended, as A14 counts streams.
#[tokio::test]
async fn a_bare_end_of_stream_is_a_failed_call_on_a_stream_that_succeeded() {
    let (addr, server) = bare_end_of_stream_server().await;
    let channel = LbChannel::builder(format!("static:///{addr}"))
        .build()
        .unwrap();
    let status = within(
        "an RPC",
        EchoClient::new(channel.clone()).unary_echo(lb_testkit::pb::EchoRequest::default()),
    )
    .await
    .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    let snapshot = channel.snapshot();
    let registry = lb_core::channelz::registry();
    let sub = registry
        .subchannel(snapshot.subconns[0].channelz_id.unwrap())
        .unwrap();
    assert_eq!((sub.calls.started, sub.calls.failed), (1, 1));
    let socket = registry.socket(sub.sockets[0]).unwrap();
    assert_eq!(
        (
            socket.streams_started,
            socket.streams_succeeded,
            socket.streams_failed
        ),
        (1, 1, 0)
    );
    assert_eq!(socket.messages_received, 1);
    let calls = registry
        .channel(snapshot.channelz_id.unwrap())
        .unwrap()
        .calls;
    assert_eq!((calls.started, calls.succeeded, calls.failed), (1, 0, 1));
    channel.close();
    server.abort();
}

/// A backend that dies and comes back: its connection leaves channelz with it, and
/// the new connection is a new socket whose counts start at zero, while the
/// subchannel's span both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_backend_gets_a_new_channelz_socket() {
    let mut backend = Backend::start_restartable("a").await.unwrap();
    let channel = LbChannel::builder(format!("static:///{}", backend.addr()))
        .backoff(fast_backoff())
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    for _ in 0..3 {
        within(
            "an RPC",
            client.unary_echo(lb_testkit::pb::EchoRequest::default()),
        )
        .await
        .unwrap();
    }
    let registry = lb_core::channelz::registry();
    let sub_id = channel.snapshot().subconns[0].channelz_id.unwrap();
    let first = registry.subchannel(sub_id).unwrap().sockets[0];
    assert_eq!(registry.socket(first).unwrap().streams_started, 3);

    backend.kill().await;
    within("the dead connection to leave channelz", async {
        while registry.socket(first).is_some()
            || registry
                .subchannel(sub_id)
                .unwrap()
                .sockets
                .contains(&first)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    backend.restart().await.unwrap();
    for _ in 0..2 {
        within(
            "an RPC after the restart",
            client.unary_echo(lb_testkit::pb::EchoRequest::default()),
        )
        .await
        .unwrap();
    }
    let sub = registry.subchannel(sub_id).unwrap();
    assert_eq!(sub.sockets.len(), 1);
    let second = sub.sockets[0];
    assert_ne!(second, first);
    let socket = registry.socket(second).unwrap();
    assert_eq!((socket.streams_started, socket.streams_succeeded), (2, 2));
    assert_eq!((sub.calls.started, sub.calls.succeeded), (5, 5));
    channel.close();
}
