//! Retries and hedging (gRFC A6) against real tonic servers on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{Code, DoneInfo, LbConfig, OnDone, Pick, PickInfo, PickResult, Picker, SubConn};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, GracefulServer, ManualResolver};
use lb_tonic::{Attempt, BufferLimits, LbChannel, ServedBy};
use tokio::time::Instant;

mod common;
use common::*;

/// A retry policy for the echo service: `codes` retried, up to `attempts`.
fn retry_config(attempts: u32, initial: &str, codes: &[&str]) -> String {
    let codes: Vec<String> = codes.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        r#"{{"loadBalancingConfig": [{{"round_robin": {{}}}}],
            "methodConfig": [{{"name": [{{"service": "echo.Echo"}}],
              "retryPolicy": {{"maxAttempts": {attempts}, "initialBackoff": "{initial}",
                "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": [{}]}}}}]}}"#,
        codes.join(",")
    )
}

fn channel(backends: &[&Backend], config: &str) -> LbChannel {
    LbChannel::builder(static_target(backends))
        .default_service_config(config)
        .backoff(fast_backoff())
        .wait_for_ready(true)
        .build()
        .unwrap()
}

async fn backends(n: usize) -> Vec<Backend> {
    let names = ["a", "b", "c", "d"];
    start(&names[..n]).await
}

#[tokio::test]
async fn unavailable_twice_then_success_retries_on_different_backends() {
    let backends = backends(3).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let mut client = EchoClient::new(channel(&all, &retry_config(4, "0.01s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b", "c"]).await;
    let before: Vec<usize> = backends.iter().map(Backend::hits).collect();

    let response = client.unary_echo(echo_req("fail-until:2")).await.unwrap();
    let attempt = *response.extensions().get::<Attempt>().unwrap();
    let served_by = response.extensions().get::<ServedBy>().unwrap().clone();
    let reply = response.into_inner();
    assert_eq!(attempt.number, 3, "two failures, then the third attempt");
    assert_eq!(
        reply.previous_attempts, 2,
        "grpc-previous-rpc-attempts reached the server"
    );
    assert_eq!(
        served_by.0.addr(),
        backends
            .iter()
            .find(|b| b.name() == reply.server)
            .unwrap()
            .addr()
            .to_string()
    );
    // Each attempt picked again: round robin sent them to the three backends.
    let after: Vec<usize> = backends.iter().map(Backend::hits).collect();
    let per_backend: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(per_backend, [1, 1, 1], "attempts per backend");
}

#[tokio::test]
async fn a_non_retryable_code_is_not_retried_and_attempts_stop_at_max() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let mut client = EchoClient::new(channel(&all, &retry_config(3, "0.01s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b"]).await;
    let hits = |b: &[Backend]| b.iter().map(Backend::hits).sum::<usize>();

    let before = hits(&backends);
    let status = echo(&mut client, echo_req("fail:3")).await.unwrap_err(); // INVALID_ARGUMENT
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        hits(&backends) - before,
        1,
        "INVALID_ARGUMENT is not retryable"
    );

    let before = hits(&backends);
    let status = echo(&mut client, echo_req("fail:14")).await.unwrap_err(); // UNAVAILABLE
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(hits(&backends) - before, 3, "maxAttempts 3");
}

#[tokio::test]
async fn server_pushback_replaces_the_backoff_or_stops_retries() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    // A 30 s backoff: only the server's pushback can make the retry come sooner.
    let mut client = EchoClient::new(channel(&all, &retry_config(3, "30s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b"]).await;

    let started = Instant::now();
    let reply = within(
        "a pushed-back retry",
        echo_reply(&mut client, "pushback:300"),
    )
    .await
    .unwrap();
    assert_eq!(reply.previous_attempts, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the retry came {waited:?} after the first attempt, before the pushback's 300 ms"
    );

    // A negative pushback means: do not retry.
    let before: usize = backends.iter().map(Backend::hits).sum();
    let status = echo(&mut client, echo_req("pushback:-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        1
    );
}

async fn echo_reply(
    client: &mut EchoClient<LbChannel>,
    message: &str,
) -> Result<lb_testkit::pb::EchoReply, tonic::Status> {
    client
        .unary_echo(echo_req(message))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn throttling_caps_attempts_when_every_backend_fails() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let config = retry_config(5, "0.001s", &["UNAVAILABLE"]).replacen(
        "\"methodConfig\"",
        r#""retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}, "methodConfig""#,
        1,
    );
    let mut client = EchoClient::new(channel(&all, &config));
    warm_up(&mut client, &["a", "b"]).await;
    for b in &backends {
        b.service().set_failure(100, tonic::Code::Unavailable);
    }
    let before: usize = backends.iter().map(Backend::hits).sum();
    for _ in 0..100 {
        assert!(echo(&mut client, echo_req("x")).await.is_err());
    }
    let attempts = backends.iter().map(Backend::hits).sum::<usize>() - before;
    // Without throttling: 500 attempts. With it the bucket (10 tokens, retries only
    // above 5) allows the first RPC its retries, then none: about 104.
    assert!(
        (100..=110).contains(&attempts),
        "{attempts} attempts for 100 RPCs"
    );
}

#[tokio::test]
async fn hedging_sends_the_next_attempt_after_the_delay_and_cancels_the_loser() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let config = r#"{"loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": "echo.Echo"}],
          "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.1s",
                            "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let mut client = EchoClient::new(channel(&all, config));
    warm_up(&mut client, &["a", "b"]).await;
    let cancelled_before: usize = backends.iter().map(|b| b.service().cancelled()).sum();

    let started = Instant::now();
    // The first attempt would take 5 s; the hedge sent 100 ms later answers at once.
    let response = within(
        "the hedged call",
        client.unary_echo(echo_req("slow-first:5000")),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(response.extensions().get::<Attempt>().unwrap().number, 2);
    assert_eq!(response.into_inner().previous_attempts, 1);
    assert!(
        took >= Duration::from_millis(100),
        "the hedge went out after {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the call waited for the slow attempt"
    );
    // The slow attempt was cancelled: its server handler is dropped.
    within("the loser's cancellation", async {
        while backends
            .iter()
            .map(|b| b.service().cancelled())
            .sum::<usize>()
            == cancelled_before
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_fatal_status_ends_a_hedged_call_at_once() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let config = r#"{"methodConfig": [{"name": [{"service": "echo.Echo"}],
          "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "1s",
                            "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let mut client = EchoClient::new(channel(&all, config));
    let before: usize = backends.iter().map(Backend::hits).sum();
    let status = echo(&mut client, echo_req("fail:9")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        1
    );
    // A non-fatal one sends the next hedge at once, up to maxAttempts.
    let before: usize = backends.iter().map(Backend::hits).sum();
    let started = Instant::now();
    let status = echo(&mut client, echo_req("fail:14")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        3
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "hedges waited for their delay"
    );
}

/// A client stream of these messages.
fn messages(ms: &[&str]) -> impl tokio_stream::Stream<Item = EchoRequest> + Send + 'static {
    let ms: Vec<EchoRequest> = ms
        .iter()
        .map(|m| EchoRequest {
            message: (*m).to_owned(),
            ..Default::default()
        })
        .collect();
    tokio_stream::iter(ms)
}

#[tokio::test]
async fn a_client_stream_is_replayed_to_the_next_attempt_and_the_buffer_limit_commits() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let config = retry_config(3, "0.01s", &["UNAVAILABLE"]);
    let mut client = EchoClient::new(channel(&all, &config));
    warm_up(&mut client, &["a", "b"]).await;

    // The first attempt reads the whole stream and fails; the retry replays it.
    let reply = client
        .client_stream(messages(&["fail-until:1", "two", "three"]))
        .await
        .unwrap();
    assert_eq!(reply.extensions().get::<Attempt>().unwrap().number, 2);
    assert_eq!(reply.into_inner().message, "fail-until:1,two,three");

    // A stream larger than the per-call buffer commits to its first attempt.
    let small = LbChannel::builder(static_target(&all))
        .default_service_config(config.as_str())
        .retry_buffer(BufferLimits {
            per_call: 1024,
            per_channel: 1 << 20,
        })
        .wait_for_ready(true)
        .build()
        .unwrap();
    let big = "x".repeat(4096);
    let before: usize = backends.iter().map(Backend::hits).sum();
    let status = EchoClient::new(small.clone())
        .client_stream(messages(&["fail-until:1", &big]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        1,
        "committed: not retried"
    );
    // Within the buffer, the same stream is retried.
    let reply = EchoClient::new(small)
        .client_stream(messages(&["fail-until:1", "small"]))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().previous_attempts, 1);
}

#[tokio::test]
async fn a_stream_is_not_retried_after_its_response_headers() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let mut client = EchoClient::new(channel(&all, &retry_config(5, "0.01s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b"]).await;
    let before: usize = backends.iter().map(Backend::hits).sum();
    let mut replies = client
        .bidi_stream(messages(&["fail-after-first", "second"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replies.message().await.unwrap().unwrap().message,
        "fail-after-first"
    );
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        1,
        "committed at the response headers"
    );
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_retried_call() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let mut client = EchoClient::new(channel(&all, &retry_config(5, "0.2s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b"]).await;
    let mut req = echo_req("fail:14");
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = within("the deadline", echo(&mut client, req))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("after"), "{status:?}");
    assert!(status.message().contains("attempt"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A policy that records every attempt's final status through the completion
/// callback.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Code>>>);

struct RecordingPicker {
    ready: Vec<SubConn>,
    next: std::sync::atomic::AtomicUsize,
    on_done: Arc<dyn OnDone>,
}

impl Picker for RecordingPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.ready.len();
        PickResult::Pick(Pick::new(&self.ready[i]).with_on_done(self.on_done.clone()))
    }
}

impl PickerBuilder for Recording {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        let log = self.0.clone();
        Arc::new(RecordingPicker {
            ready: ready.iter().map(|r| r.subconn.clone()).collect(),
            next: Default::default(),
            on_done: Arc::new(move |info: &DoneInfo<'_>| {
                log.lock().unwrap().push(info.status.code())
            }),
        })
    }
}

#[tokio::test]
async fn every_attempts_outcome_reaches_the_completion_callback() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let recording = Recording::default();
    let mut balancers = lb_policies::registry();
    balancers.register(BaseBuilder::new("recording", recording.clone()));
    let config = retry_config(4, "0.01s", &["UNAVAILABLE"])
        .replace(r#"{"round_robin": {}}"#, r#"{"recording": {}}"#);
    let channel = LbChannel::builder(static_target(&all))
        .balancers(balancers)
        .default_service_config(config)
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;
    recording.0.lock().unwrap().clear();
    echo(&mut client, echo_req("fail-until:2")).await.unwrap();
    assert_eq!(
        *recording.0.lock().unwrap(),
        [Code::Unavailable, Code::Unavailable, Code::Ok]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_under_load_loses_no_rpc_with_a_retry_policy() {
    let mut backends = start(&["a", "b", "c"]).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let mut client = EchoClient::new(channel(&all, &retry_config(5, "0.01s", &["UNAVAILABLE"])));
    warm_up(&mut client, &["a", "b", "c"]).await;
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for i in 0..300 {
                    // Not wait-for-ready: only the retry policy can save these.
                    let mut req = echo_req(&format!("{i}"));
                    req.extensions_mut().insert(lb_tonic::WaitForReady(false));
                    if let Err(status) = echo(&mut client, req).await {
                        failed.push(status);
                    }
                }
                failed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    backends[0].kill().await;
    let mut failed = Vec::new();
    for w in workers {
        failed.extend(within("the load", w).await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_graceful_server_stops_under_load_lose_no_rpc() {
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(GracefulServer::start_restartable(name).await.unwrap());
    }
    let resolver = ManualResolver::new();
    resolver.update_addrs(&servers.iter().map(GracefulServer::addr).collect::<Vec<_>>());
    let channel = manual_rr_channel(&resolver);
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b", "c"]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // No retry policy, not wait-for-ready: transparent retry only.
                    match echo(&mut client, echo_req("x")).await {
                        Ok(_) => ok += 1,
                        Err(status) => failed.push(status),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // A rolling restart: each server in turn stops gracefully (GOAWAY, in-flight
    // RPCs finish), starts again on its port, and serves again before the next one
    // stops.
    for round in 0..50 {
        let s = &mut servers[round % 3];
        within("a graceful stop and restart", s.restart())
            .await
            .unwrap();
        let hits = s.service().hits();
        within("the restarted server to serve", async {
            while s.service().hits() == hits {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = within("the load", w).await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    assert!(ok > 1000, "only {ok} RPCs ran");
    let served: HashMap<&str, usize> = servers
        .iter()
        .zip(["a", "b", "c"])
        .map(|(s, n)| (n, s.service().hits()))
        .collect();
    assert!(served.values().all(|h| *h > 0), "{served:?}");
}

#[tokio::test]
async fn disabling_retries_leaves_only_transparent_ones() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    let channel = LbChannel::builder(static_target(&all))
        .default_service_config(retry_config(4, "0.01s", &["UNAVAILABLE"]))
        .disable_retries()
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;
    let before: usize = backends.iter().map(Backend::hits).sum();
    assert!(echo(&mut client, echo_req("fail-until:1")).await.is_err());
    assert_eq!(
        backends.iter().map(Backend::hits).sum::<usize>() - before,
        1
    );
}

#[tokio::test]
async fn a_proxys_503_is_not_a_committed_answer_and_the_retry_policy_applies() {
    // An HTTP/2 proxy answering for a down backend: `:status 503`, text/plain, no
    // grpc-status. As in grpc-go that is UNAVAILABLE with the call not committed,
    // so the retry policy sends attempt 2 to the echo server.
    let proxy = lb_testkit::HttpPeer::start(503, "text/plain")
        .await
        .unwrap();
    let backend = Backend::start("a").await.unwrap();
    let target = format!("static:///{},{}", proxy.addr(), backend.addr());
    let channel = LbChannel::builder(target)
        .default_service_config(retry_config(2, "0.01s", &["UNAVAILABLE"]))
        .backoff(fast_backoff())
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a"]).await;
    let proxied_before = proxy.hits();
    let mut through_proxy = 0;
    for i in 0..20 {
        let response = client.unary_echo(echo_req(&format!("{i}"))).await.unwrap();
        let attempt = response.extensions().get::<Attempt>().unwrap().number;
        assert_eq!(response.into_inner().server, "a");
        if attempt == 2 {
            through_proxy += 1;
        }
    }
    assert!(through_proxy > 0, "round robin reached the proxy");
    assert_eq!(
        through_proxy,
        proxy.hits() - proxied_before,
        "every 503 was retried once"
    );

    // Without a retry policy the RPC fails with what the proxy said.
    let channel = LbChannel::builder(format!("static:///{}", proxy.addr()))
        .wait_for_ready(true)
        .build()
        .unwrap();
    let status = EchoClient::new(channel)
        .unary_echo(echo_req("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("503") && status.message().contains("text/plain"),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_grpc_maps_its_http_status_as_grpc_go_does() {
    for (http, content_type, code) in [
        (404, "text/html", tonic::Code::Unimplemented),
        (401, "text/plain", tonic::Code::Unauthenticated),
        (403, "text/plain", tonic::Code::PermissionDenied),
        (429, "text/plain", tonic::Code::Unavailable),
        (500, "text/plain", tonic::Code::Unknown),
        // 200, but not gRPC: no status of its own.
        (200, "text/html", tonic::Code::Unknown),
    ] {
        let peer = lb_testkit::HttpPeer::start(http, content_type)
            .await
            .unwrap();
        let channel = LbChannel::builder(format!("static:///{}", peer.addr()))
            .wait_for_ready(true)
            .build()
            .unwrap();
        let status = EchoClient::new(channel)
            .unary_echo(echo_req("x"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{http} {content_type}: {status:?}");
        assert!(status.message().contains(content_type), "{status:?}");
    }
}

#[tokio::test]
async fn two_pushback_values_mean_no_retry_and_count_against_the_throttle() {
    let backends = backends(2).await;
    let all: Vec<&Backend> = backends.iter().collect();
    // Three tokens: retries go out while more than one and a half are left.
    let config = |retryable: &str| {
        format!(
            r#"{{"loadBalancingConfig": [{{"round_robin": {{}}}}],
            "retryThrottling": {{"maxTokens": 3, "tokenRatio": 0.1}},
            "methodConfig": [{{"name": [{{"service": "echo.Echo"}}],
              "retryPolicy": {{"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["{retryable}"]}}}}]}}"#
        )
    };
    let hits = |b: &[Backend]| b.iter().map(Backend::hits).sum::<usize>();

    // UNAVAILABLE is retryable, but two pushback values say "do not retry".
    let mut client = EchoClient::new(channel(&all, &config("UNAVAILABLE")));
    warm_up(&mut client, &["a", "b"]).await;
    let before = hits(&backends);
    let status = echo(&mut client, echo_req("pushback:10,20"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(hits(&backends) - before, 1, "two pushback values: no retry");

    // A non-retryable failure with two pushback values still costs a token: the
    // next retryable failure finds the bucket at two and may not retry.
    let mut client = EchoClient::new(channel(&all, &config("RESOURCE_EXHAUSTED")));
    warm_up(&mut client, &["a", "b"]).await;
    let status = echo(&mut client, echo_req("pushback:10,20"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let before = hits(&backends);
    let status = echo(&mut client, echo_req("fail:8")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(hits(&backends) - before, 1, "throttled");
}

#[tokio::test]
async fn a_goaway_refusing_every_stream_is_retried_once_and_ends_unavailable() {
    // GOAWAY(ENHANCE_YOUR_CALM, last stream 0) on every request: the server refused
    // the stream, so it goes again once, transparently; then the call ends
    // UNAVAILABLE (a refused stream is not RESOURCE_EXHAUSTED).
    let peer = lb_testkit::BadPeer::start(lb_testkit::Misbehavior::GoAwayOnRequest { code: 0xb })
        .await
        .unwrap();
    let channel = LbChannel::builder(format!("static:///{}", peer.addr()))
        .backoff(fast_backoff())
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let status = within("the refused call", echo(&mut client, echo_req("x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        peer.accepted(),
        2,
        "one transparent retry, on a new connection"
    );
}
