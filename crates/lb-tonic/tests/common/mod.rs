//! What the channel tests share: backends, channels, RPC helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::future::Future;
use std::time::Duration;

use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, ManualResolver};
use lb_tonic::{BackoffConfig, LbChannel, WaitForReady};
use tonic::Request;

/// A channel to `manual:///svc`, fed by `resolver`, with [`fast_backoff`].
pub fn manual_channel(resolver: &ManualResolver) -> LbChannel {
    LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

/// Short backoff so that restarts are noticed in well under a second.
pub fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        min_connect_timeout: Duration::from_secs(2),
        ..BackoffConfig::default()
    }
}

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn static_target(backends: &[&Backend]) -> String {
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    format!("static:///{}", addrs.join(","))
}

pub fn echo_req(message: &str) -> Request<EchoRequest> {
    Request::new(EchoRequest {
        message: message.into(),
        ..Default::default()
    })
}

pub fn wfr(mut req: Request<EchoRequest>) -> Request<EchoRequest> {
    req.extensions_mut().insert(WaitForReady(true));
    req
}

/// Sends one unary echo; returns the name of the backend that answered.
pub async fn echo(
    client: &mut EchoClient<LbChannel>,
    req: Request<EchoRequest>,
) -> Result<String, tonic::Status> {
    client.unary_echo(req).await.map(|r| r.into_inner().server)
}

/// Sends unary echoes until one fails with a status `wanted` accepts (within
/// [`within`]'s bound); returns it.
pub async fn first_failure(
    client: &mut EchoClient<LbChannel>,
    what: &str,
    wanted: impl Fn(&tonic::Status) -> bool,
) -> tonic::Status {
    within(what, async {
        loop {
            match echo(client, echo_req("x")).await {
                Err(s) if wanted(&s) => return s,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
}

/// A server-streaming RPC of `count` replies; returns their messages.
pub async fn server_stream(
    client: &mut EchoClient<LbChannel>,
    message: &str,
    count: u32,
) -> Vec<String> {
    let request = EchoRequest {
        message: message.into(),
        count,
        ..Default::default()
    };
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        got.push(reply.message);
    }
    got
}

/// Sends RPCs until every named backend has answered one.
pub async fn warm_up(client: &mut EchoClient<LbChannel>, names: &[&str]) {
    within("every backend to answer", async {
        let mut seen = std::collections::HashSet::new();
        while !names.iter().all(|n| seen.contains(*n)) {
            if let Ok(server) = echo(client, wfr(echo_req("warm-up"))).await {
                seen.insert(server);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

pub async fn start(names: &[&str]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start_restartable(n).await.unwrap());
    }
    out
}

/// A round_robin channel that follows `resolver`.
pub fn manual_rr_channel(resolver: &ManualResolver) -> LbChannel {
    LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .policy("round_robin")
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

pub fn rr_channel(target: String) -> LbChannel {
    LbChannel::builder(target)
        .policy("round_robin")
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

/// Waits until no backend has a connection open.
pub async fn every_connection_closed(backends: &[Backend]) {
    within("every connection to close", async {
        while backends.iter().any(|b| b.open_connections() > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
