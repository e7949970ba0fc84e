//! Resources for the decoder tests: rich valid ones that use every field the
//! decoders read, to start tables and sweeps from.

#![allow(dead_code, clippy::unwrap_used)]

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value, UInt64Value};
use lb_testkit::xds::{TestLocality, any, eds_cluster, endpoints_message, router_filter};
use lb_xds::resource::{self, Decoded, ResourceType};

pub fn decode<M: prost::Message + prost::Name>(ty: ResourceType, m: &M) -> Decoded {
    resource::decode(ty, &any(m))
}

pub fn secs(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

/// A route with every matcher and action field the decoder reads.
pub fn rich_route() -> route::Route {
    use route::header_matcher::HeaderMatchSpecifier as H;
    let header = |name: &str, spec| route::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    };
    route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(
                matcher::RegexMatcher {
                    regex: "/echo\\.Echo/.*".into(),
                    engine_type: None,
                },
            )),
            case_sensitive: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            headers: vec![
                header(
                    "x-a",
                    H::StringMatch(matcher::StringMatcher {
                        ignore_case: true,
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                            "v".into(),
                        )),
                    }),
                ),
                header(
                    "x-b",
                    H::RangeMatch(envoy_types::pb::envoy::r#type::v3::Int64Range {
                        start: 1,
                        end: 9,
                    }),
                ),
                header("x-c", H::PresentMatch(true)),
            ],
            runtime_fraction: Some(core::RuntimeFractionalPercent {
                default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                    numerator: 50,
                    denominator: 0,
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::WeightedClusters(
                route::WeightedCluster {
                    clusters: vec![
                        route::weighted_cluster::ClusterWeight {
                            name: "a".into(),
                            weight: Some(UInt32Value { value: 3 }),
                            ..Default::default()
                        },
                        route::weighted_cluster::ClusterWeight {
                            name: "b".into(),
                            weight: Some(UInt32Value { value: 1 }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            )),
            max_stream_duration: Some(route::route_action::MaxStreamDuration {
                grpc_timeout_header_max: secs(5),
                ..Default::default()
            }),
            retry_policy: Some(route::RetryPolicy {
                retry_on: "unavailable,cancelled,5xx".into(),
                num_retries: Some(UInt32Value { value: 3 }),
                retry_back_off: Some(route::retry_policy::RetryBackOff {
                    base_interval: Some(Duration {
                        seconds: 0,
                        nanos: 100_000_000,
                    }),
                    max_interval: secs(2),
                }),
                ..Default::default()
            }),
            hash_policy: vec![route::route_action::HashPolicy {
                policy_specifier: Some(route::route_action::hash_policy::PolicySpecifier::Header(
                    route::route_action::hash_policy::Header {
                        header_name: "x-user".into(),
                        regex_rewrite: None,
                    },
                )),
                terminal: true,
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn rich_route_config() -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "vh".into(),
            domains: vec!["echo".into(), "*.example.com".into()],
            routes: vec![rich_route(), lb_testkit_route("c")],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn lb_testkit_route(cluster: &str) -> route::Route {
    lb_testkit::xds::route_to(cluster)
}

pub fn manager(route_config: Option<route::RouteConfiguration>) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        route_specifier: Some(match route_config {
            Some(r) => hcm::http_connection_manager::RouteSpecifier::RouteConfig(r),
            None => hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource::default(),
                    )),
                    ..Default::default()
                }),
                route_config_name: "r".into(),
            }),
        }),
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            max_stream_duration: secs(30),
            ..Default::default()
        }),
        http_filters: vec![router_filter()],
        ..Default::default()
    }
}

pub fn listener(
    manager: hcm::HttpConnectionManager,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    envoy_types::pb::envoy::config::listener::v3::Listener {
        name: "echo".into(),
        api_listener: Some(envoy_types::pb::envoy::config::listener::v3::ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Default::default()
    }
}

/// A cluster with ring hash, circuit breaking and outlier detection.
pub fn rich_cluster() -> cluster::Cluster {
    let mut c = eds_cluster("c");
    c.lb_policy = cluster::cluster::LbPolicy::RingHash as i32;
    c.lb_config = Some(cluster::cluster::LbConfig::RingHashLbConfig(
        cluster::cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 512 }),
            maximum_ring_size: Some(UInt64Value { value: 8192 }),
            hash_function: 0,
        },
    ));
    c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_requests: Some(UInt32Value { value: 77 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c.outlier_detection = Some(cluster::OutlierDetection {
        interval: secs(2),
        max_ejection_percent: Some(UInt32Value { value: 50 }),
        enforcing_failure_percentage: Some(UInt32Value { value: 100 }),
        ..Default::default()
    });
    c
}

/// A cluster whose policy comes from `load_balancing_policy`.
pub fn policy_cluster(policies: Vec<Any>) -> cluster::Cluster {
    let mut c = eds_cluster("c");
    c.load_balancing_policy = Some(cluster::LoadBalancingPolicy {
        policies: policies
            .into_iter()
            .map(|a| cluster::load_balancing_policy::Policy {
                typed_extension_config: Some(core::TypedExtensionConfig {
                    name: "p".into(),
                    typed_config: Some(a),
                }),
            })
            .collect(),
    });
    c
}

pub fn wrr_locality(inner: Any) -> Any {
    any(&lbp::wrr_locality::v3::WrrLocality {
        endpoint_picking_policy: Some(cluster::LoadBalancingPolicy {
            policies: vec![cluster::load_balancing_policy::Policy {
                typed_extension_config: Some(core::TypedExtensionConfig {
                    name: "inner".into(),
                    typed_config: Some(inner),
                }),
            }],
        }),
    })
}

pub fn rich_endpoints() -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    let a = |p| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    endpoints_message(
        "c",
        &[
            TestLocality::new("z1", 0, &[a(1), a(2)]).weight(3),
            TestLocality::new("z2", 0, &[a(3)]),
            TestLocality::new("z3", 1, &[a(4)]),
        ],
    )
}
