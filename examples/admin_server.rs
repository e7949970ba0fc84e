//! A server that serves its own admin services (channelz, gRFC A14) beside its
//! business service, as grpc-go's `admin.Register` does.
//!
//! Run: `cargo run -p examples --example admin_server` and, while it runs, in
//! another shell: `cargo run -p grpc-lb-cli -- channelz 127.0.0.1:50100 --sockets`
//!
//! The process serves the echo service and `grpc.channelz.v1.Channelz` on
//! 127.0.0.1:50100 (or the address given as the first argument), and, to have a
//! channel worth looking at, also calls two backends of its own through a
//! round_robin `LbChannel`, one of which is down. It stops by itself after 5 minutes
//! (or the number of seconds given as the second argument), or at Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use lb_server::admin::{self, ServerStats};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_testkit::{Backend, EchoService};
use lb_tonic::LbChannel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:50100")
        .parse()?;
    let run_for = Duration::from_secs(args.next().map_or(Ok(300), |s| s.parse())?);

    // The process's own client side: a channel over one live and one dead backend.
    let backend = Backend::start("upstream").await?;
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port()?);
    let channel = LbChannel::builder(format!("static:///{},{dead}", backend.addr()))
        .policy("round_robin")
        .build()?;
    let caller = tokio::spawn({
        let mut client = EchoClient::new(channel.clone());
        async move {
            loop {
                let _ = client.unary_echo(EchoRequest::default()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    // The server: its business service, and the admin services beside it.
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let stats = ServerStats::new();
    let incoming = stats.incoming(listener)?;
    println!("serving echo and channelz on {addr} for {run_for:?}");
    println!("try: cargo run -p grpc-lb-cli -- channelz {addr} --sockets");
    let stop = async move {
        tokio::select! {
            () = tokio::time::sleep(run_for) => {}
            () = lb_server::stop_signal() => {}
        }
    };
    tonic::transport::Server::builder()
        .layer(stats.layer())
        .add_routes(admin::services())
        .add_service(EchoServer::new(EchoService::new("admin-example")))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    caller.abort();
    channel.close();
    Ok(())
}
