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

/// gRPC C-core's xDS client (grpcio) against our test ADS server: it reads the same
/// resources our client does and routes by them, and it NACKs each invalid resource
/// of the bad-input table that our decoder rejects, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_c_core_follows_our_ads_server_and_rejects_what_we_reject() {
    use envoy_types::pb::envoy::config::cluster::v3 as cluster;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::google::protobuf::UInt64Value;
    use lb_testkit::xds::{
        AdsServer, CLUSTER, ENDPOINTS, LISTENER, ROUTE, TestLocality, any, eds_cluster,
        endpoints_message, listener_with, route_config, route_weighted, simple,
    };
    use lb_xds::resource::{ResourceType, decode};
    use tokio::io::AsyncWriteExt;

    let a = lb_testkit::Backend::start("a").await.unwrap();
    let b = lb_testkit::Backend::start("b").await.unwrap();
    let server = AdsServer::start().await.unwrap();
    let mut good = simple(
        "echo",
        &[
            ("ca", vec![TestLocality::new("z", 0, &[a.addr()])]),
            ("cb", vec![TestLocality::new("z", 0, &[b.addr()])]),
        ],
    );
    good[1].2 = route_config(
        "echo-route",
        vec![route_weighted(&[("ca", 80), ("cb", 20)])],
    );
    server.set_all(good.clone());
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap, server.bootstrap_json("grpcio")).unwrap();

    let mut process = Command::new(python())
        .arg(script("xds_client.py"))
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = process.stdin.take().unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut rpcs = async |n: usize| -> Value {
        stdin
            .write_all(format!("rpcs {n}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("grpcio answered")
            .unwrap()
            .expect("a line");
        serde_json::from_str(&line).unwrap()
    };

    // C-core ACKs every resource and splits 80/20 by our route.
    let counts = rpcs(1_000).await;
    let share = counts["a"].as_u64().unwrap_or(0);
    assert!((730..=870).contains(&share), "{counts}");
    assert!(server.nacks().is_empty(), "{:?}", server.nacks());
    for type_url in [LISTENER, ROUTE, CLUSTER, ENDPOINTS] {
        assert!(
            server.requests().iter().any(|r| r.type_url == type_url
                && !r.version_info.is_empty()
                && r.error_detail.is_none()),
            "C-core ACKed no {type_url}"
        );
    }

    // The bad-input table's rows, each NACKed by C-core and rejected by us.
    let mut maglev = eds_cluster("ca");
    maglev.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    let mut ring = eds_cluster("ca");
    ring.lb_policy = cluster::cluster::LbPolicy::RingHash as i32;
    ring.lb_config = Some(cluster::cluster::LbConfig::RingHashLbConfig(
        cluster::cluster::RingHashLbConfig {
            maximum_ring_size: Some(UInt64Value {
                value: 8 * 1024 * 1024 + 1,
            }),
            ..Default::default()
        },
    ));
    let mut no_locality = endpoints_message("ca", &[TestLocality::new("z", 0, &[a.addr()])]);
    no_locality.endpoints[0].locality = None;
    let no_router = listener_with(
        "echo",
        hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
                    config_source_specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                }),
                route_config_name: "echo-route".into(),
            })),
            ..Default::default()
        },
    );
    let bad = [
        (
            "an unknown lb_policy",
            CLUSTER,
            ResourceType::Cluster,
            "ca",
            any(&maglev),
        ),
        (
            "a ring size past the cap",
            CLUSTER,
            ResourceType::Cluster,
            "ca",
            any(&ring),
        ),
        (
            "weights summing to 0",
            ROUTE,
            ResourceType::RouteConfig,
            "echo-route",
            route_config("echo-route", vec![route_weighted(&[("ca", 0), ("cb", 0)])]),
        ),
        (
            "an EDS locality without a locality",
            ENDPOINTS,
            ResourceType::Endpoints,
            "ca",
            any(&no_locality),
        ),
        (
            "a listener without the router",
            LISTENER,
            ResourceType::Listener,
            "echo",
            no_router,
        ),
    ];
    for (what, type_url, ty, name, resource) in bad {
        assert!(decode(ty, &resource).result.is_err(), "we accept {what}");
        let before = server.nacks().len();
        server.set(type_url, name, resource);
        let nacked = tokio::time::timeout(Duration::from_secs(10), async {
            while server.nacks().len() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(nacked.is_ok(), "C-core did not NACK {what}");
        let nack = server.nacks().pop().unwrap();
        assert_eq!(nack.type_url, type_url, "{what}: {nack:?}");
        // It keeps serving from the last good version.
        let counts = rpcs(20).await;
        let served: u64 = ["a", "b"].iter().filter_map(|n| counts[n].as_u64()).sum();
        assert_eq!(served, 20, "{what}: {counts}");
        // Put the good one back.
        let restore = good
            .iter()
            .find(|(t, n, _)| *t == type_url && n == name)
            .unwrap();
        server.set(type_url, name, restore.2.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.set_all(vec![]);
    }
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
