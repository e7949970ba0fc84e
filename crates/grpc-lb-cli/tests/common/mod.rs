//! What the CLI's test files share: running the binary (or any program) to its end,
//! and a tonic server with the admin services.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_grpc-lb");

/// Runs `command` to its end (at most 60 s) with no stdin.
pub async fn output(mut command: Command) -> Output {
    let what = format!("{command:?}");
    let child = command.stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end"))
        .unwrap()
}

/// Runs the binary with `args` to its end (at most 60 s).
pub async fn run(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    output(command).await
}

/// A tonic server with the admin services, in channelz itself; stops when dropped.
pub struct Admin {
    pub addr: SocketAddr,
    pub stats: lb_server::admin::ServerStats,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn admin() -> Admin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = lb_server::admin::ServerStats::new();
    let incoming = stats.incoming(listener).unwrap();
    let router = tonic::transport::Server::builder()
        .layer(stats.layer())
        .add_routes(lb_server::admin::services());
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Admin { addr, stats, task }
}

/// One live echo backend and one dead address behind a round_robin channel that has
/// sent `rpcs` successful RPCs.
pub struct LiveAndDead {
    pub live: lb_testkit::Backend,
    pub dead: String,
    pub target: String,
    pub channel: lb_tonic::LbChannel,
}

pub async fn live_and_dead(rpcs: usize) -> LiveAndDead {
    use lb_testkit::pb::{EchoRequest, echo_client::EchoClient};
    let live = lb_testkit::Backend::start("live").await.unwrap();
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let target = format!("static:///{},{dead}", live.addr());
    let channel = lb_tonic::LbChannel::builder(target.clone())
        .policy("round_robin")
        .build()
        .unwrap();
    let mut echo = EchoClient::new(channel.clone());
    for _ in 0..rpcs {
        echo.unary_echo(EchoRequest::default()).await.unwrap();
    }
    LiveAndDead {
        live,
        dead,
        target,
        channel,
    }
}
