//! Every xDS decoder under a property sweep: 100,000 random and mutated inputs each
//! (the bootstrap's JSON; each resource type's protobuf, from rich valid examples).
//! None may panic or hang, and every error must say what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use envoy_types::pb::google::protobuf::Any;
use lb_core::test_util::sweep::{Mutator, sweep};
use lb_testkit::xds::{aggregate_cluster, any, listener_rds, route_config, route_weighted};
use lb_xds::Bootstrap;
use lb_xds::resource::{self, ResourceError, ResourceType};
use prost::Message;

const CASES: usize = 100_000;

fn check(_: &[u8], e: &ResourceError) -> Result<(), String> {
    if e.reason.trim().is_empty() {
        return Err(format!("an error without a reason (field {:?})", e.field));
    }
    Ok(())
}

fn sweep_type(ty: ResourceType, seed: u64, corpus: Vec<Vec<u8>>) {
    let mut inputs = Mutator::from_bytes(seed, &corpus);
    let report = sweep(
        ty.short_name(),
        CASES,
        || inputs.next_input(),
        |bytes| {
            let decoded = resource::decode(
                ty,
                &Any {
                    type_url: ty.type_url().into(),
                    value: bytes.to_vec(),
                },
            );
            decoded.result
        },
        check,
    );
    assert!(report.accepted > 0 && report.rejected > 0, "{report}");
}

fn bytes(a: &Any) -> Vec<u8> {
    a.value.clone()
}

#[test]
fn listeners_survive_100_000_mutations() {
    let corpus = vec![
        any(&listener(manager(None))).value,
        any(&listener(manager(Some(rich_route_config())))).value,
        bytes(&listener_rds("l", "r")),
    ];
    sweep_type(ResourceType::Listener, 0x1d5, corpus);
}

#[test]
fn route_configurations_survive_100_000_mutations() {
    let corpus = vec![
        rich_route_config().encode_to_vec(),
        bytes(&route_config(
            "r",
            vec![route_weighted(&[("a", 1), ("b", 2)])],
        )),
    ];
    sweep_type(ResourceType::RouteConfig, 0x2d5, corpus);
}

#[test]
fn clusters_survive_100_000_mutations() {
    use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
    let corpus = vec![
        rich_cluster().encode_to_vec(),
        aggregate_cluster("agg", &["a", "b"]).encode_to_vec(),
        policy_cluster(vec![
            wrr_locality(any(&lbp::least_request::v3::LeastRequest::default())),
            any(&lbp::ring_hash::v3::RingHash::default()),
        ])
        .encode_to_vec(),
    ];
    sweep_type(ResourceType::Cluster, 0x3d5, corpus);
}

#[test]
fn endpoints_survive_100_000_mutations() {
    sweep_type(
        ResourceType::Endpoints,
        0x4d5,
        vec![rich_endpoints().encode_to_vec()],
    );
}

#[test]
fn bootstraps_survive_100_000_mutations() {
    const CORPUS: &[&str] = &[
        r#"{"xds_servers": [{"server_uri": "127.0.0.1:18000", "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
            "server_features": ["xds_v3", "ignore_resource_deletion"]}],
           "node": {"id": "n", "cluster": "c", "locality": {"region": "r", "zone": "z", "sub_zone": "s"}, "metadata": {"a": [1, {"b": null}]}},
           "client_default_listener_resource_name_template": "%s"}"#,
        r#"{"xds_servers": [{"server_uri": "dns:///xds.example:443", "channel_creds": [{"type": "tls", "config":
            {"ca_certificate_file": "/ca.pem", "certificate_file": "/c.pem", "private_key_file": "/k.pem", "refresh_interval": "60s"}}]}],
           "authorities": {}}"#,
    ];
    let mut inputs = Mutator::new(0xb007, CORPUS).with_tokens(&[
        "xds_servers",
        "server_uri",
        "channel_creds",
        "server_features",
        "node",
        "locality",
        "authorities",
        "insecure",
        "tls",
    ]);
    let report = sweep(
        "bootstrap",
        CASES,
        || inputs.next_input(),
        |bytes| {
            let json = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            Bootstrap::parse(json).map_err(|e| e.to_string())
        },
        |_, e| {
            if e.is_empty() {
                Err("an empty error".into())
            } else {
                Ok(())
            }
        },
    );
    assert!(report.accepted > 0 && report.rejected > 0, "{report}");
}
