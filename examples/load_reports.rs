//! Load reports (ORCA) end to end: three tonic servers report their load with
//! `lb-orca`'s server side, and a channel running `weighted_round_robin` sends each
//! of them traffic in proportion to what it says it can take.
//!
//! Run: `cargo run -p examples --example load_reports`
//!
//! The servers answer the same echo; "busy" reports three times the CPU utilization
//! of the other two at the same QPS, so once its reports count (after the 1 s
//! blackout of gRFC A58) it gets a seventh of the RPCs instead of a third.
//!
//! Then a policy of our own, `least_cpu`, shows the API a policy author uses: it asks
//! every ready subconn for out-of-band reports (`SubConn::watch_load_reports`), keeps
//! each backend's reported CPU in its `LoadReportListener`, and picks the lower of
//! two. Everything runs on 127.0.0.1 and ends by itself.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{
    LbConfig, LoadReport, LoadReportListener, LoadReportWatch, Pick, PickInfo, PickResult, Picker,
    SubConn, SubConnId,
};
use lb_orca::server::{OrcaLayer, OrcaService, ServerMetricsRecorder};
use lb_testkit::EchoService;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_tonic::LbChannel;
use tonic::transport::server::TcpIncoming;

/// Serves the echo service named `name`, reporting `recorder`'s load in every
/// response's trailer and on `OpenRcaService`.
async fn serve(name: &str, recorder: ServerMetricsRecorder) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = EchoServer::new(EchoService::new(name));
    // gRPC servers enforce 30 s between out-of-band reports by default; a demo
    // wants them faster.
    let oob = OrcaService::new(recorder.clone()).min_interval(Duration::from_millis(200));
    tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = tonic::transport::Server::builder()
            .layer(OrcaLayer::new(recorder))
            .add_service(echo)
            .add_service(oob.into_server())
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("server error: {e}");
        }
    });
    Ok(addr)
}

/// Sends `n` RPCs; how many each server answered.
async fn spread(client: &mut EchoClient<LbChannel>, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        match client.unary_echo(EchoRequest::default()).await {
            Ok(reply) => *counts.entry(reply.into_inner().server).or_default() += 1,
            Err(status) => eprintln!("RPC failed: {status}"),
        }
    }
    counts
}

/// `least_cpu`: the lower reported CPU utilization of two random ready backends.
#[derive(Clone, Default)]
struct LeastCpu {
    /// Each subconn's latest report, kept across pickers.
    cpu: HashMap<SubConnId, Arc<Cpu>>,
}

/// A backend's latest CPU utilization (as `f64` bits): the out-of-band listener.
#[derive(Default)]
struct Cpu(AtomicU64);

impl LoadReportListener for Cpu {
    fn on_load_report(&self, report: &LoadReport) {
        self.0
            .store(report.cpu_utilization.to_bits(), Ordering::Relaxed);
    }
}

impl PickerBuilder for LeastCpu {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        let entries = ready
            .iter()
            .map(|r| {
                let cpu = self.cpu.entry(r.subconn.id()).or_insert_with(|| {
                    let cpu = Arc::new(Cpu::default());
                    // The transport opens OpenRcaService/StreamCoreMetrics on the
                    // subconn's connection (again after each reconnection).
                    let listener: Arc<dyn LoadReportListener> = cpu.clone();
                    r.subconn
                        .watch_load_reports(Some(LoadReportWatch::out_of_band(
                            Duration::from_millis(200),
                            listener,
                        )));
                    cpu
                });
                (r.subconn.clone(), cpu.clone())
            })
            .collect();
        Arc::new(LeastCpuPicker(entries))
    }

    fn subconn_removed(&mut self, subconn: &SubConn) {
        self.cpu.remove(&subconn.id());
    }
}

struct LeastCpuPicker(Vec<(SubConn, Arc<Cpu>)>);

impl Picker for LeastCpuPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let n = self.0.len();
        let (a, b) = (fastrand::usize(..n), fastrand::usize(..n));
        let cpu = |i: usize| f64::from_bits(self.0[i].1.0.load(Ordering::Relaxed));
        let best = if cpu(b) < cpu(a) { b } else { a };
        PickResult::Pick(Pick::new(&self.0[best].0))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addrs = Vec::new();
    for (name, cpu) in [("calm-1", 0.3), ("calm-2", 0.3), ("busy", 0.9)] {
        // In a real server these come from the application's own sampling.
        let recorder = ServerMetricsRecorder::new();
        recorder.set_cpu_utilization(cpu)?;
        recorder.set_qps(100.0)?;
        addrs.push(serve(name, recorder).await?.to_string());
    }

    let channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
        .default_service_config(
            r#"{"loadBalancingConfig": [{"weighted_round_robin": {
                   "blackoutPeriod": "1s", "weightUpdatePeriod": "0.2s"}}]}"#,
        )
        .build()?;
    let mut client = EchoClient::new(channel);

    println!("During the blackout, reports are collected but not used yet:");
    println!("  {:?}", spread(&mut client, 700).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!("After it, weights are qps / utilization (333 : 333 : 111):");
    println!("  {:?}", spread(&mut client, 700).await);

    // Our own policy, registered next to the built-in ones.
    let mut policies = lb_policies::registry();
    policies.register(BaseBuilder::new("least_cpu", LeastCpu::default()));
    let channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
        .balancers(policies)
        .policy("least_cpu")
        .build()?;
    let mut client = EchoClient::new(channel);
    spread(&mut client, 30).await; // connects, and starts the out-of-band streams
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("least_cpu, from out-of-band reports (busy only when drawn twice):");
    println!("  {:?}", spread(&mut client, 900).await);
    Ok(())
}
