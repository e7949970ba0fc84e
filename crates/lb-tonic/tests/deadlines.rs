//! Deadlines cover whole calls: response streams included, the smaller of the
//! caller's timeout and the method config's, sent to the server as grpc-go sends it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use lb_testkit::Backend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::*;

fn channel_to(backend: &Backend, service_config: Option<&str>) -> LbChannel {
    let mut builder =
        LbChannel::builder(format!("passthrough:///{}", backend.addr())).wait_for_ready(true);
    if let Some(json) = service_config {
        builder = builder.default_service_config(json);
    }
    builder.build().unwrap()
}

/// Waits until the backend has no response stream open: the client reset it.
async fn until_no_open_streams(backend: &Backend) {
    within("the server to see its stream reset", async {
        while backend.open_streams() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_bidi_stream_past_its_deadline_ends_with_deadline_exceeded_and_is_reset() {
    let backend = Backend::start("a").await.unwrap();
    let mut client = EchoClient::new(channel_to(&backend, None));
    let (tx, rx) = mpsc::channel(4);
    tx.send(EchoRequest {
        message: "first".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(300));
    let mut replies = within("the stream to open", client.bidi_stream(request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().message, "first");
    assert_eq!(backend.open_streams(), 1);
    // The request stream stays open (`tx` lives) and the server waits for more.
    let status = within("the deadline", replies.message()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline of"), "{status:?}");
    until_no_open_streams(&backend).await;
    drop(tx);
}

#[tokio::test]
async fn a_server_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let backend = Backend::start("a").await.unwrap();
    let mut client = EchoClient::new(channel_to(&backend, None));
    let mut request = tonic::Request::new(EchoRequest {
        message: "slow".into(),
        count: 1000,
        interval_ms: 50,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(400));
    let mut replies = client.server_stream(request).await.unwrap().into_inner();
    let mut got = 0;
    let status = within("the deadline", async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the stream ended before its deadline"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        (2..20).contains(&got),
        "{got} replies in 400 ms at one per 50 ms"
    );
    until_no_open_streams(&backend).await;
}

#[tokio::test]
async fn the_method_configs_timeout_bounds_a_stream_and_the_smaller_timeout_wins() {
    let backend = Backend::start("a").await.unwrap();
    let config = r#"{"methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "0.3s"}]}"#;
    let mut client = EchoClient::new(channel_to(&backend, Some(config)));
    // The caller allows 10 s; the method config 0.3 s.
    let mut request = tonic::Request::new(EchoRequest {
        count: 1000,
        interval_ms: 50,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    let mut replies = client.server_stream(request).await.unwrap().into_inner();
    let status = within("the method deadline", async {
        loop {
            if let Err(status) = replies.message().await {
                return status;
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // The server was told the method's timeout, not the caller's.
    let sent = backend.last_grpc_timeout().unwrap();
    let sent = parse_grpc_timeout(&sent);
    assert!(
        sent <= Duration::from_millis(300) && sent > Duration::from_millis(200),
        "{sent:?}"
    );

    // The other way round: the caller's shorter timeout is what the server sees.
    let mut request = echo_req("unary");
    request.set_timeout(Duration::from_millis(150));
    echo(&mut client, request).await.unwrap();
    let sent = parse_grpc_timeout(&backend.last_grpc_timeout().unwrap());
    assert!(sent <= Duration::from_millis(150), "{sent:?}");
}

#[tokio::test]
async fn a_long_method_timeout_is_sent_in_at_most_eight_digits() {
    let backend = Backend::start("a").await.unwrap();
    let config = r#"{"methodConfig": [{"name": [{}], "timeout": "200000s"}]}"#;
    let mut client = EchoClient::new(channel_to(&backend, Some(config)));
    echo(&mut client, echo_req("x")).await.unwrap();
    let sent = backend.last_grpc_timeout().unwrap();
    // 200,000 s is 200,000,000 ms: nine digits, which a server must reject.
    assert!(sent.len() <= 9, "{sent}");
    let d = parse_grpc_timeout(&sent);
    assert!(
        d > Duration::from_secs(199_990) && d <= Duration::from_secs(200_000),
        "{sent}"
    );
}

/// A `grpc-timeout` value; panics on one that breaks the protocol's 8 digits.
fn parse_grpc_timeout(v: &str) -> Duration {
    let (digits, unit) = v.split_at(v.len() - 1);
    assert!(digits.len() <= 8, "{v}: more than 8 digits");
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad unit in {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_always_has_data_still_ends_at_its_deadline() {
    // The server answers in a tight loop and keeps the receive buffer full, so the
    // stream never has nothing ready; the caller takes 1 ms per message. The
    // deadline must still end it, saying how long the call ran.
    let backend = Backend::start("a").await.unwrap();
    let mut client = EchoClient::new(channel_to(&backend, None));
    let mut request = tonic::Request::new(EchoRequest {
        message: "flood".into(),
        count: u32::MAX,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let mut replies = client.server_stream(request).await.unwrap().into_inner();
    let mut got = 0u32;
    let status = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => {
                    got += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(None) => panic!("the stream ended"),
                Err(status) => return status,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a busy stream ran past its 200 ms deadline ({got} messages)"));
    let ran = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(got > 10, "the flood flowed: {got} messages");
    assert!(ran < Duration::from_secs(1), "ended after {ran:?}");
    // The message gives the call's timeout and how long it ran, not the time that
    // was left when the response headers came.
    assert!(
        status
            .message()
            .contains("deadline of 200ms exceeded: the call ran"),
        "{status:?}"
    );
    until_no_open_streams(&backend).await;
}

#[tokio::test]
async fn a_malformed_grpc_timeout_fails_the_call_naming_the_header() {
    let backend = Backend::start("a").await.unwrap();
    let mut client = EchoClient::new(channel_to(&backend, None));
    let mut request = tonic::Request::new(EchoRequest::default());
    request
        .metadata_mut()
        .insert("grpc-timeout", "5x".parse().unwrap());
    let status = client.unary_echo(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status.message().contains("grpc-timeout") && status.message().contains("\"5x\""),
        "{status:?}"
    );
    assert_eq!(backend.hits(), 0, "not sent without its deadline");
}
