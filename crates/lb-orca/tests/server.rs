//! The server side against a real tonic server and client: the layer's trailer on
//! answers and on errors, the counted rates, and a handler's per-call values.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::pin::Pin;
use std::time::Duration;

use lb_core::LoadReport;
use lb_orca::server::{CallMetrics, OrcaLayer, ServerMetricsRecorder};
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::{Echo, EchoServer};
use lb_testkit::pb::{EchoReply, EchoRequest};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Answers `fail` with `UNAVAILABLE`, anything else with a reply; records the
/// size of a non-empty request as its cost.
struct Handler;

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Handler {
    async fn unary_echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if let Some(metrics) = req.extensions().get::<CallMetrics>()
            && !req.get_ref().message.is_empty()
        {
            metrics.set_request_cost("bytes", req.get_ref().message.len() as f64);
        }
        if req.get_ref().message == "fail" {
            return Err(Status::unavailable("asked to fail"));
        }
        Ok(Response::new(EchoReply {
            message: req.into_inner().message,
            ..Default::default()
        }))
    }

    type ServerStreamStream = Replies;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    type BidiStreamStream = Replies;

    async fn bidi_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("unary only"))
    }
}

async fn serve(layer: OrcaLayer) -> EchoClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(layer)
            .add_service(EchoServer::new(Handler))
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

fn req(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

fn report_in(metadata: &tonic::metadata::MetadataMap) -> LoadReport {
    let headers = metadata.clone().into_headers();
    lb_orca::from_trailers(&headers)
        .expect("a load report")
        .expect("a valid load report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_errors_carry_the_report_with_counted_rates() {
    let recorder = ServerMetricsRecorder::new();
    recorder.set_cpu_utilization(0.4).unwrap();
    recorder.set_named_metric("queue", 3.0).unwrap();
    let mut client =
        serve(OrcaLayer::new(recorder.clone()).count_rates(Duration::from_millis(200))).await;

    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    let mut sent = 0u32;
    while tokio::time::Instant::now() < until {
        // One in four fails.
        let message = if sent.is_multiple_of(4) {
            "fail"
        } else {
            "hello"
        };
        let _ = client.unary_echo(req(message)).await;
        sent += 1;
    }
    let answer = client.unary_echo(req("hello")).await.unwrap();
    let r = report_in(answer.metadata());
    assert_eq!(r.cpu_utilization, 0.4);
    assert_eq!(r.named_metrics["queue"], 3.0);
    assert_eq!(r.request_cost["bytes"], 5.0, "the handler's per-call value");
    assert!(r.rps_fractional > 0.0, "{r:?}");
    let error_ratio = r.eps / r.rps_fractional;
    assert!((0.15..0.35).contains(&error_ratio), "{r:?}");

    // A trailers-only error carries it too.
    let failed = client.unary_echo(req("fail")).await.unwrap_err();
    let r = report_in(failed.metadata());
    assert_eq!(r.cpu_utilization, 0.4);
}

#[tokio::test]
async fn a_recorder_with_nothing_set_sends_no_trailer() {
    let mut client = serve(OrcaLayer::new(ServerMetricsRecorder::new())).await;
    let answer = client.unary_echo(req("")).await.unwrap();
    assert!(answer.metadata().get_bin(lb_orca::TRAILER).is_none());
}

#[tokio::test]
async fn explicit_rates_are_reported_without_counting() {
    let recorder = ServerMetricsRecorder::new();
    recorder.set_application_utilization(0.7).unwrap();
    recorder.set_qps(250.0).unwrap();
    recorder.set_eps(2.0).unwrap();
    let mut client = serve(OrcaLayer::new(recorder)).await;
    let answer = client.unary_echo(req("x")).await.unwrap();
    let r = report_in(answer.metadata());
    assert_eq!(
        (r.application_utilization, r.rps_fractional, r.eps),
        (0.7, 250.0, 2.0)
    );
}
