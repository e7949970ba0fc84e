//! Channelz interop with an independent implementation, gRPC C-core through
//! `grpcio` and `grpcio-channelz` from PyPI (`cargo xtask test` installs them in a
//! virtualenv and names its python in `GRPC_LB_PYTHON`): its generated client reads
//! our channelz, and `grpc-lb channelz` reads a grpcio process's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The python with grpcio and grpcio-channelz.
fn python() -> PathBuf {
    let path = std::env::var_os("GRPC_LB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop-venv/bin/python")
        });
    assert!(
        path.exists(),
        "no python with grpcio at {}: run `cargo xtask test`, which installs it",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_reads_our_channelz() {
    let common::LiveAndDead {
        live: a,
        dead,
        target,
        channel,
    } = common::live_and_dead(4).await;
    let server = common::admin().await;
    let (addr, stats) = (server.addr, &server.stats);
    let mut reader = Command::new(python());
    reader
        .arg(script("channelz_reader.py"))
        .arg(addr.to_string());
    let out = common::output(reader).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = channel.snapshot().channelz_id.unwrap();
    let ours = tree["channels"]
        .as_array()
        .unwrap()
        .iter()
        // proto3 JSON writes int64 as a string.
        .find(|c| c["ref"]["channel_id"].as_str() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("channel {id} in {tree}"));
    assert_eq!(ours["data"]["target"], target);
    assert_eq!(ours["data"]["state"]["state"], "READY");
    assert_eq!(ours["data"]["calls_started"], "4");
    assert_eq!(ours["data"]["calls_succeeded"], "4");
    let subs = ours["subchannels"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    let live = subs
        .iter()
        .find(|s| s["data"]["target"] == a.addr().to_string())
        .unwrap();
    assert_eq!(live["data"]["state"]["state"], "READY");
    assert_eq!(live["data"]["calls_started"], "4");
    let socket = &live["sockets"][0];
    assert_eq!(socket["data"]["streams_started"], "4");
    assert_eq!(socket["data"]["streams_succeeded"], "4");
    assert_eq!(socket["remote"]["tcpip_address"]["port"], a.addr().port());
    let dead_sub = subs.iter().find(|s| s["data"]["target"] == dead).unwrap();
    assert_ne!(dead_sub["data"]["state"]["state"], "READY");
    // The reader's own calls reach the server we count.
    let server_entry = tree["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["ref"]["server_id"].as_str() == Some(stats.id().to_string().as_str()))
        .unwrap_or_else(|| panic!("server {} in {tree}", stats.id()));
    assert!(
        server_entry["data"]["calls_started"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 3
    );
    drop(server);
    channel.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_lb_channelz_reads_a_grpcio_process() {
    let mut process = Command::new(python())
        .arg(script("channelz_process.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the grpcio process starts")
        .unwrap()
        .expect("its port");
    let mut words = first.split_whitespace();
    let port: u16 = words.next().unwrap().parse().unwrap();
    let calls: u64 = words.next().unwrap().parse().unwrap();
    let port_arg = format!("127.0.0.1:{port}");
    let out = common::run(&[
        "channelz",
        &port_arg,
        "--json",
        "--sockets",
        "--page-size",
        "1",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree: Value = serde_json::from_slice(&out.stdout).unwrap();
    let channel = tree["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["target"]
                .as_str()
                .unwrap()
                .ends_with(&format!("127.0.0.1:{port}"))
        })
        .unwrap_or_else(|| panic!("the grpcio channel in {tree}"));
    assert_eq!(channel["state"], "READY");
    assert_eq!(channel["calls"]["started"], calls);
    assert_eq!(channel["calls"]["succeeded"], calls);
    let sub = &channel["subchannels"][0];
    assert_eq!(sub["state"], "READY");
    assert!(!sub["trace"]["events"].as_array().unwrap().is_empty());
    assert_eq!(sub["sockets"][0]["remote"], format!("127.0.0.1:{port}"));
    assert_eq!(sub["sockets"][0]["streams"]["started"], calls);
    let server = &tree["servers"][0];
    // Its channel's calls and ours reached it.
    assert!(server["calls"]["started"].as_u64().unwrap() > calls);
    assert!(!server["sockets"].as_array().unwrap().is_empty());
    drop(process.stdin.take()); // it stops when its stdin closes
    let _ = tokio::time::timeout(Duration::from_secs(10), process.wait()).await;
}
