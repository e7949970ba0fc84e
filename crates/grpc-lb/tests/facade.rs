//! The facade as an application imports it.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

// A glob import of the facade leaves the `tonic` crate reachable by its name.
#[allow(unused_imports)]
use grpc_lb::*;

#[test]
fn a_glob_import_does_not_shadow_tonic() {
    let _server = tonic::transport::Server::builder();
    let _request = tonic::Request::new(());
}

#[tokio::test]
async fn the_channel_builds_from_the_facade_alone() {
    let channel = LbChannel::builder("static:///127.0.0.1:1")
        .policy("round_robin")
        .build()
        .unwrap();
    assert_eq!(channel.policy(), "round_robin");
    // The model and the policies are reachable from the same crate.
    let registry = policies::registry();
    assert!(registry.get("round_robin").is_some());
    assert!(
        ServiceConfig::parse(
            r#"{"loadBalancingConfig": [{"pick_first": {}}]}"#,
            &registry
        )
        .is_ok()
    );
}

#[cfg(all(feature = "server", feature = "etcd", feature = "zookeeper"))]
#[test]
fn the_server_side_has_its_registrars() {
    let _ = server::Shutdown::new();
    let _ = server::EtcdOptions::default();
    let _ = server::ZkOptions::default();
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_services_and_channelz_come_from_the_facade() {
    let _routes = server::admin::services();
    let stats = server::admin::ServerStats::new();
    assert!(channelz::registry().server(stats.id()).is_some());
}
