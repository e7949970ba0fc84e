//! What the channel's counters cost, in alternating rounds against the same three
//! echo servers, compared by the median of each round's throughput ratio (a round's
//! two runs are back to back):
//!
//! * metrics: metrics on (the default, no recorder installed) against
//!   `Builder::disable_metrics()`, both with channelz off; gRFC A78-style metrics
//!   must stay within 2% of the channel without them;
//! * channelz: the default channel (metrics and channelz on) against
//!   `Builder::channelz(false)`; keeping the channelz registry must stay within 1%.
//!
//! Run: `cargo bench -p lb-tonic --bench overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failure report

mod common;

use std::time::Duration;

use common::{Client, load, write_doc_section};
use lb_testkit::Backend;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{Builder, LbChannel};

const ROUNDS: usize = 7;
const RUN: Duration = Duration::from_secs(2);

fn channel(addrs: &[String], configure: fn(Builder) -> Builder) -> Client {
    let builder =
        LbChannel::builder(format!("static:///{}", addrs.join(","))).policy("round_robin");
    Client::Lb(EchoClient::new(configure(builder).build().unwrap()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One comparison: `with` over `without`, at concurrency 1 and 16, as a table.
async fn compare(
    addrs: &[String],
    name: &str,
    (with_label, with_cfg): (&str, fn(Builder) -> Builder),
    (without_label, without_cfg): (&str, fn(Builder) -> Builder),
) -> String {
    let mut table = format!(
        "| concurrency | {with_label} (median RPC/s) | {without_label} (median RPC/s) | ratio (median of paired rounds) | paired ratios, lowest to highest |\n|---:|---:|---:|---:|---|\n",
    );
    for concurrency in [1, 16] {
        let on = channel(addrs, with_cfg);
        let off = channel(addrs, without_cfg);
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
        // Each round's two runs are back to back: their ratio cancels the machine's
        // slower and faster spells, which a ratio of medians does not.
        let mut ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = median(ratios.clone());
        let (w, wo) = (median(with), median(without));
        let spread: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "{name} c={concurrency}: with {w:.0} RPC/s, without {wo:.0} RPC/s, paired ratio {ratio:.3} ({})",
            spread.join(" ")
        );
        table.push_str(&format!(
            "| {concurrency} | {w:.0} | {wo:.0} | {ratio:.3} | {} |\n",
            spread.join(" ")
        ));
    }
    println!("{table}");
    table
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
    let metrics = compare(
        &addrs,
        "metrics",
        ("metrics on, no recorder", |b| b.channelz(false)),
        ("`disable_metrics()`", |b| {
            b.channelz(false).disable_metrics()
        }),
    )
    .await;
    write_doc_section("overhead", &metrics);
    let channelz = compare(
        &addrs,
        "channelz",
        ("default (channelz on)", |b| b),
        ("`channelz(false)`", |b| b.channelz(false)),
    )
    .await;
    write_doc_section("channelz", &channelz);
}
