//! Runnable examples for grpc-lb; see the `[[example]]` targets. This library holds
//! what several of them share.

use std::time::Duration;

use lb_server::{Registration, Shutdown, Stopped};
use lb_testkit::EchoService;
use lb_testkit::pb::echo_server::EchoServer;
use tonic::transport::server::TcpIncoming;

/// Serves the echo service (answering as `name`) and `grpc.health.v1.Health` on
/// `incoming` until SIGTERM, Ctrl-C or `run_for`, then stops without failing an RPC:
/// `lb_server::Shutdown` says NOT_SERVING, removes `registration`, waits for
/// clients to see it, and drains.
pub async fn serve_registered(
    incoming: TcpIncoming,
    name: String,
    registration: impl Registration,
    run_for: Duration,
) -> Result<Stopped, tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    Shutdown::new()
        .deregister(registration)
        .health(health, ["echo.Echo"])
        .on(async move {
            tokio::select! {
                () = lb_server::stop_signal() => println!("asked to stop"),
                () = tokio::time::sleep(run_for) => println!("ran for {run_for:?}"),
            }
        })
        .serve(|drained| {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(EchoServer::new(EchoService::new(name)))
                .serve_with_incoming_shutdown(incoming, drained)
        })
        .await
}
