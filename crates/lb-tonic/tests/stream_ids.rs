//! Connections near the end of their stream ids (a test-only h2 hook starts them
//! there): they are replaced before they run out, and RPCs that find the ids used
//! up go to the next connection. Needs the `test-hooks` feature.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{Attempt, LbChannel};

mod common;
use common::*;

/// A pick_first channel whose connections start 16 stream ids before the end of the
/// space (2^31 - 1).
fn near_the_end(backend: &Backend) -> lb_tonic::Builder {
    LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .backoff(fast_backoff())
        .initial_stream_id(0x7fff_ffe1)
        .wait_for_ready(true)
}

#[tokio::test]
async fn a_connection_near_the_end_of_its_stream_ids_is_replaced_without_failing_an_rpc() {
    let backend = Backend::start("a").await.unwrap();
    // Past grpc-go's limit from the first stream: each connection is drained after
    // it, and the next RPC goes to a new one.
    let mut client = EchoClient::new(near_the_end(&backend).build().unwrap());
    for i in 0..20 {
        let reply = within("an RPC", echo(&mut client, echo_req(&format!("{i}"))))
            .await
            .unwrap_or_else(|s| panic!("RPC {i}: {s:?}"));
        assert_eq!(reply, "a");
    }
    assert_eq!(backend.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_that_find_the_stream_ids_used_up_go_to_the_next_connection() {
    // 100 RPCs at once on connections with 16 ids left each: those that find the
    // ids used up never left the client, and go again on the next connection.
    let backend = Backend::start("a").await.unwrap();
    // Never drained early: connections do run out of ids.
    let channel = near_the_end(&backend)
        .drain_after_stream_id(u32::MAX)
        .build()
        .unwrap();
    let client = EchoClient::new(channel);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.unary_echo(echo_req(&format!("{i}"))).await })
        })
        .collect();
    let mut most_resent = 0;
    for (i, call) in calls.into_iter().enumerate() {
        let response = within("an RPC", call)
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("RPC {i}: {s:?}"));
        let attempt = *response.extensions().get::<Attempt>().unwrap();
        most_resent = most_resent.max(attempt.transparent_retries);
        assert_eq!(response.into_inner().server, "a");
    }
    assert_eq!(backend.hits(), 100);
    // Some found the ids used up and were sent again (transparently, on the next
    // connection), rather than failing on a connection that stayed READY.
    assert!(most_resent >= 1, "no RPC found the ids used up");
}

#[tokio::test]
async fn an_even_initial_stream_id_is_refused() {
    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .initial_stream_id(2)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("initial_stream_id"), "{err}");
}
