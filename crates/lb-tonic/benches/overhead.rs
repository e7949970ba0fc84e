//! What the channel's counters and metrics cost: the same channel with metrics on
//! (the default, no recorder installed) and with `Builder::disable_metrics()`, in
//! alternating rounds against the same three echo servers, compared by median
//! throughput. gRFC A78-style metrics must stay within 2% of the channel without
//! them.
//!
//! Run: `cargo bench -p lb-tonic --bench overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure report

mod common;

use std::time::Duration;

use common::{Client, load, write_doc_section};
use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;

const ROUNDS: usize = 7;
const RUN: Duration = Duration::from_secs(2);

fn channel(addrs: &[String], metrics: bool) -> Client {
    let mut builder =
        LbChannel::builder(format!("static:///{}", addrs.join(","))).policy("round_robin");
    if !metrics {
        builder = builder.disable_metrics();
    }
    Client::Lb(EchoClient::new(builder.build().unwrap()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await.unwrap());
    }
    let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let mut table = String::from(
        "| concurrency | metrics on, no recorder (median RPC/s) | `disable_metrics()` (median RPC/s) | ratio |\n|---:|---:|---:|---:|\n",
    );
    for concurrency in [1, 16] {
        let on = channel(&addrs, true);
        let off = channel(&addrs, false);
        // Warm both up.
        load(&on, concurrency, Duration::from_millis(300)).await;
        load(&off, concurrency, Duration::from_millis(300)).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which goes first, so drift hits both alike.
            if round % 2 == 0 {
                with.push(load(&on, concurrency, RUN).await.rps);
                without.push(load(&off, concurrency, RUN).await.rps);
            } else {
                without.push(load(&off, concurrency, RUN).await.rps);
                with.push(load(&on, concurrency, RUN).await.rps);
            }
        }
        let (w, wo) = (median(with), median(without));
        println!(
            "c={concurrency}: metrics on {w:.0} RPC/s, off {wo:.0} RPC/s, ratio {:.3}",
            w / wo
        );
        table.push_str(&format!(
            "| {concurrency} | {w:.0} | {wo:.0} | {:.3} |\n",
            w / wo
        ));
    }
    println!("{table}");
    write_doc_section("overhead", &table);
}
