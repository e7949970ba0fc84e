//! `grpc-lb resolve` and `probe` on `xds:///` targets, against the test ADS server:
//! the bootstrap from `GRPC_XDS_BOOTSTRAP` (a file) or `GRPC_XDS_BOOTSTRAP_CONFIG`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::{BIN, output};
use lb_testkit::Backend;
use lb_testkit::xds::{AdsServer, TestLocality, simple};
use serde_json::Value;
use tokio::process::Command;

async fn setup() -> (AdsServer, Backend, Backend) {
    let a = Backend::start_with_health("a").await.unwrap();
    let b = Backend::start_with_health("b").await.unwrap();
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[(
            "c1",
            vec![
                TestLocality::new("z1", 0, &[a.addr()]),
                TestLocality::new("z2", 1, &[b.addr()]),
            ],
        )],
    ));
    (server, a, b)
}

/// Runs the command with `args` and a `GRPC_XDS_BOOTSTRAP_CONFIG` naming `server`
/// (node `node`); its JSON output.
async fn with_inline_bootstrap(server: &AdsServer, node: &str, args: &[&str]) -> Value {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", server.bootstrap_json(node));
    let out = output(command).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn resolve_prints_the_xds_tree_from_a_bootstrap_file() {
    let (server, a, b) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, server.bootstrap_json("cli")).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["resolve", "xds:///echo"])
        .env("GRPC_XDS_BOOTSTRAP", &path)
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
    let out = output(command).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "2 addresses",
        &format!("{}", a.addr()),
        "cluster c1 priority c1/p0 locality r/z1/",
        "cluster c1 priority c1/p1 locality r/z2/",
        "listener \"echo\": ACKed",
        "routes from RDS \"echo-route\"",
        "prefix \"\" -> c1 (weight 1)",
        "cluster \"c1\": ACKed",
        "EDS \"c1\", policy [{\"round_robin\":{}}] per locality, max_requests 1024",
        "priority 1",
        &format!("{:<24} weight 1 HEALTHY", b.addr()),
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[tokio::test]
async fn resolve_json_and_probe_work_with_an_inline_bootstrap() {
    let (server, _a, _b) = setup().await;
    let value =
        with_inline_bootstrap(&server, "cli-json", &["resolve", "xds:///echo", "--json"]).await;
    let resources = value["xds"].as_array().unwrap();
    assert_eq!(resources.len(), 4, "{value}");
    assert!(resources.iter().all(|r| r["status"] == "ACKed"), "{value}");
    let endpoints = resources
        .iter()
        .find(|r| r["type"] == "envoy.config.endpoint.v3.ClusterLoadAssignment")
        .unwrap();
    assert_eq!(
        endpoints["value"]["priorities"].as_array().unwrap().len(),
        2
    );
    assert_eq!(value["addresses"][0]["xds"]["cluster"], "c1");

    // Priority 0 serves every RPC of a probe.
    let value = with_inline_bootstrap(
        &server,
        "cli-probe",
        &["probe", "xds:///echo", "-n", "50", "--json"],
    )
    .await;
    assert_eq!(value["succeeded"], 50, "{value}");
}

#[tokio::test]
async fn resolve_without_a_bootstrap_says_which_variables_it_read() {
    let mut command = Command::new(BIN);
    command
        .args(["resolve", "xds:///echo"])
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG");
    let out = output(command).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GRPC_XDS_BOOTSTRAP_CONFIG"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut command = Command::new(BIN);
    command
        .args(["resolve", "xds:///echo"])
        .env(
            "GRPC_XDS_BOOTSTRAP_CONFIG",
            r#"{"xds_servers": [{"server_uri": "x:1"}]}"#,
        )
        .env_remove("GRPC_XDS_BOOTSTRAP");
    let out = output(command).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("xds_servers[0].channel_creds: is required"),
        "{err}"
    );
}

#[tokio::test]
async fn watch_follows_an_xds_channel() {
    let (server, a, _b) = setup().await;
    let mut command = Command::new(BIN);
    command
        .args(["watch", "xds:///echo", "--for", "1s", "--json"])
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env(
            "GRPC_XDS_BOOTSTRAP_CONFIG",
            server.bootstrap_json("cli-watch"),
        );
    let out = output(command).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The tree's root policy, and both priorities' endpoints resolved; priority 0's
    // subconn is the one that connects.
    assert!(
        events.iter().any(|e| e["event"] == "channel"
            && e["policy"] == "xds_cluster_manager_experimental"
            && e["state"] == "READY"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "resolver"
                && e["addresses"].as_array().is_some_and(|a| a.len() == 2)),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "subconn"
            && e["subconn"]["address"] == a.addr().to_string()
            && e["subconn"]["state"] == "READY"),
        "{events:?}"
    );
}
