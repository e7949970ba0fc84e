//! `Cluster` (CDS), as gRPC reads it: EDS, `LOGICAL_DNS` and aggregate clusters
//! (A27, A37), their load-balancing policy (`lb_policy`, or `load_balancing_policy`
//! as A52 converts it: ring_hash A42, least_request A48, client-side weighted round
//! robin A58, pick_first A62, wrr_locality, custom policies in a `TypedStruct`),
//! circuit breaking and outlier detection (A50).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::google::protobuf::{Any, Struct};
use lb_core::BalancerRegistry;
use prost::Message;
use serde_json::{Map, Value, json};

use super::{Decoded, Resource, ResourceError, ads_or_self, decoded, duration, unpack};

/// The largest ring `ring_hash` accepts (A42).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// The deepest `load_balancing_policy` nesting accepted (as grpc-go).
const MAX_POLICY_DEPTH: usize = 16;
/// `max_requests` when a cluster sets none (Envoy's and gRPC's default).
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;

/// A validated cluster.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClusterUpdate {
    /// Its name.
    pub name: String,
    /// What kind of cluster it is.
    pub kind: ClusterKind,
    /// The endpoint-picking policy, as a gRPC `loadBalancingConfig` list with one
    /// entry (`[{"round_robin": {}}]`).
    pub endpoint_policy: Value,
    /// Whether localities are picked by weight first (`xds_wrr_locality`, what
    /// `ROUND_ROBIN` and `LEAST_REQUEST` mean), or the endpoint policy sees every
    /// endpoint of a priority (ring_hash, pick_first).
    pub locality_weighted: bool,
    /// `circuit_breakers`' `max_requests` for the default priority: the most RPCs in
    /// flight to the cluster, across every channel of the process.
    pub max_requests: u32,
    /// Outlier detection (A50), if configured.
    pub outlier_detection: Option<OutlierDetectionConfig>,
}

/// What kind of cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKind {
    /// Endpoints from EDS, under this resource name.
    Eds {
        /// `eds_cluster_config.service_name`, else the cluster's name.
        service_name: String,
    },
    /// One DNS name, resolved by the client.
    LogicalDns {
        /// `host:port`.
        target: String,
    },
    /// The endpoints of other clusters, in priority order (A37).
    Aggregate {
        /// The clusters, highest priority first.
        clusters: Vec<String>,
    },
}

/// An `outlier_detection` config, in the JSON form the `outlier_detection` policy
/// reads (without its child).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetectionConfig(pub Map<String, Value>);

const AGGREGATE: &str = "envoy.clusters.aggregate";
const AGGREGATE_CONFIG: &str =
    "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig";

pub(super) fn decode(bytes: &[u8]) -> Decoded {
    decoded(
        bytes,
        "Cluster",
        |c: &pb::Cluster| &c.name,
        |c| validate(c).map(|c| Resource::Cluster(Arc::new(c))),
    )
}

fn validate(c: pb::Cluster) -> Result<ClusterUpdate, ResourceError> {
    use pb::cluster::{ClusterDiscoveryType, DiscoveryType};
    let kind = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {
            let eds = c.eds_cluster_config.as_ref();
            ads_or_self(
                eds.and_then(|e| e.eds_config.as_ref()),
                "eds_cluster_config.eds_config",
            )?;
            let service_name = eds.map(|e| e.service_name.clone()).unwrap_or_default();
            ClusterKind::Eds {
                service_name: if service_name.is_empty() {
                    c.name.clone()
                } else {
                    service_name
                },
            }
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::LogicalDns as i32 => {
            ClusterKind::LogicalDns {
                target: logical_dns_target(&c)?,
            }
        }
        Some(ClusterDiscoveryType::Type(t)) => {
            return Err(ResourceError::new(
                "type",
                format!(
                    "{} is not supported (EDS, LOGICAL_DNS and aggregate clusters are)",
                    DiscoveryType::try_from(*t)
                        .map_or_else(|_| t.to_string(), |d| d.as_str_name().to_owned())
                ),
            ));
        }
        Some(ClusterDiscoveryType::ClusterType(custom)) if custom.name == AGGREGATE => {
            let any = custom
                .typed_config
                .as_ref()
                .ok_or_else(|| ResourceError::new("cluster_type.typed_config", "is required"))?;
            let config: envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig =
                unpack(any, AGGREGATE_CONFIG, "cluster_type.typed_config")?;
            if config.clusters.is_empty() {
                return Err(ResourceError::new(
                    "cluster_type.typed_config.clusters",
                    "must not be empty",
                ));
            }
            ClusterKind::Aggregate {
                clusters: config.clusters,
            }
        }
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(ResourceError::new(
                "cluster_type.name",
                format!("{:?} is not supported", custom.name),
            ));
        }
        None => return Err(ResourceError::new("type", "is required")),
    };
    let (endpoint_policy, locality_weighted) = match &c.load_balancing_policy {
        Some(policy) => {
            let (p, weighted) =
                policy_list(policy, 0).map_err(|e| e.within("load_balancing_policy"))?;
            (p, weighted)
        }
        None => legacy_policy(&c)?,
    };
    if let Some(lrs) = &c.lrs_server {
        use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
        if !matches!(
            lrs.config_source_specifier,
            Some(ConfigSourceSpecifier::Self_(_))
        ) {
            return Err(ResourceError::new("lrs_server", "must be self"));
        }
    }
    let max_requests = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0))
        .and_then(|t| t.max_requests)
        .map_or(DEFAULT_MAX_REQUESTS, |m| m.value);
    let outlier_detection = match &c.outlier_detection {
        Some(od) => Some(outlier_detection(od).map_err(|e| e.within("outlier_detection"))?),
        None => None,
    };
    Ok(ClusterUpdate {
        name: c.name,
        kind,
        endpoint_policy,
        locality_weighted,
        max_requests,
        outlier_detection,
    })
}

fn logical_dns_target(c: &pb::Cluster) -> Result<String, ResourceError> {
    let field = "load_assignment";
    let la = c
        .load_assignment
        .as_ref()
        .ok_or_else(|| ResourceError::new(field, "is required for a LOGICAL_DNS cluster"))?;
    let [locality] = &la.endpoints[..] else {
        return Err(ResourceError::new(
            format!("{field}.endpoints"),
            "a LOGICAL_DNS cluster has exactly one locality",
        ));
    };
    let [lb_endpoint] = &locality.lb_endpoints[..] else {
        return Err(ResourceError::new(
            format!("{field}.endpoints[0].lb_endpoints"),
            "a LOGICAL_DNS cluster has exactly one endpoint",
        ));
    };
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let socket = match &lb_endpoint.host_identifier {
        Some(HostIdentifier::Endpoint(e)) => {
            match e.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(AddressKind::SocketAddress(s)) => s,
                _ => {
                    return Err(ResourceError::new(
                        format!(
                            "{field}.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"
                        ),
                        "is required",
                    ));
                }
            }
        }
        _ => {
            return Err(ResourceError::new(
                format!("{field}.endpoints[0].lb_endpoints[0].endpoint"),
                "is required",
            ));
        }
    };
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return Err(ResourceError::new(
            format!(
                "{field}.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"
            ),
            "is required",
        ));
    };
    let at = format!("{field}.endpoints[0].lb_endpoints[0].endpoint.address.socket_address");
    if socket.address.is_empty() {
        return Err(ResourceError::new(
            format!("{at}.address"),
            "must not be empty",
        ));
    }
    if port == 0 || port > 65535 {
        return Err(ResourceError::new(
            format!("{at}.port_value"),
            format!("{port} is not a port"),
        ));
    }
    if !socket.resolver_name.is_empty() {
        return Err(ResourceError::new(
            format!("{at}.resolver_name"),
            "custom resolvers are not supported",
        ));
    }
    Ok(super::endpoint::host_port(&socket.address, port))
}

fn ring_size(
    min: Option<u64>,
    max: Option<u64>,
    field: &str,
) -> Result<Map<String, Value>, ResourceError> {
    // Zero means the default, as grpc-go's ring_hash config reads it.
    let min = min.filter(|&m| m > 0).unwrap_or(1024);
    let max = max.filter(|&m| m > 0).unwrap_or(MAX_RING_SIZE);
    if max > MAX_RING_SIZE {
        return Err(ResourceError::new(
            format!("{field}.maximum_ring_size"),
            format!("{max} is more than {MAX_RING_SIZE}"),
        ));
    }
    if min > max {
        return Err(ResourceError::new(
            format!("{field}.minimum_ring_size"),
            format!("{min} is not in 1..=maximum_ring_size ({max})"),
        ));
    }
    let mut config = Map::new();
    config.insert("minRingSize".into(), json!(min));
    config.insert("maxRingSize".into(), json!(max));
    Ok(config)
}

/// `lb_policy` and its config, as A52 converts them.
fn legacy_policy(c: &pb::Cluster) -> Result<(Value, bool), ResourceError> {
    use pb::cluster::{LbConfig, LbPolicy};
    match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => Ok((json!([{"round_robin": {}}]), true)),
        Ok(LbPolicy::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => l.choice_count.map_or(2, |c| c.value),
                _ => 2,
            };
            if choice_count < 2 {
                return Err(ResourceError::new(
                    "least_request_lb_config.choice_count",
                    "must be at least 2",
                ));
            }
            Ok((
                json!([{"least_request_experimental": {"choiceCount": choice_count.min(10)}}]),
                false, // grpc-go: every endpoint of a priority, not per locality
            ))
        }
        Ok(LbPolicy::RingHash) => {
            let (min, max) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    if r.hash_function
                        != pb::cluster::ring_hash_lb_config::HashFunction::XxHash as i32
                    {
                        return Err(ResourceError::new(
                            "ring_hash_lb_config.hash_function",
                            "only XX_HASH is supported",
                        ));
                    }
                    (
                        r.minimum_ring_size.map(|v| v.value),
                        r.maximum_ring_size.map(|v| v.value),
                    )
                }
                _ => (None, None),
            };
            let config = ring_size(min, max, "ring_hash_lb_config")?;
            Ok((json!([{"ring_hash": config}]), false))
        }
        Ok(other) => Err(ResourceError::new(
            "lb_policy",
            format!("{} is not supported", other.as_str_name()),
        )),
        Err(_) => Err(ResourceError::new(
            "lb_policy",
            format!("unknown value {}", c.lb_policy),
        )),
    }
}

const PREFIX: &str = "type.googleapis.com/envoy.extensions.load_balancing_policies.";
const TYPED_STRUCTS: [&str; 2] = [
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
];

/// `xds.type.v3.TypedStruct` (and udpa's, the same on the wire): a custom policy's
/// name and JSON config.
#[derive(Clone, PartialEq, Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Struct>,
}

fn known_policies() -> &'static BalancerRegistry {
    static REGISTRY: OnceLock<BalancerRegistry> = OnceLock::new();
    REGISTRY.get_or_init(lb_policies::registry)
}

/// The first policy of `load_balancing_policy` this client supports (A52).
fn policy_list(
    list: &pb::LoadBalancingPolicy,
    depth: usize,
) -> Result<(Value, bool), ResourceError> {
    if depth >= MAX_POLICY_DEPTH {
        return Err(ResourceError::new(
            "policies",
            format!("nested more than {MAX_POLICY_DEPTH} deep"),
        ));
    }
    for (i, p) in list.policies.iter().enumerate() {
        let field = format!("policies[{i}].typed_extension_config.typed_config");
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            // Nothing to run: skipped, as grpc-go skips it.
            continue;
        };
        if let Some(found) = policy(any, depth).map_err(|e| e.within(&field))? {
            return Ok(found);
        }
    }
    Err(ResourceError::new(
        "policies",
        "no supported policy (round_robin, ring_hash, least_request, \
         client_side_weighted_round_robin, pick_first, wrr_locality or a registered custom one)",
    ))
}

/// One policy, or `None` for one this client does not know.
fn policy(any: &Any, depth: usize) -> Result<Option<(Value, bool)>, ResourceError> {
    let url = any.type_url.as_str();
    let Some(name) = url.strip_prefix(PREFIX) else {
        if TYPED_STRUCTS.contains(&url) {
            let ts = TypedStruct::decode(&any.value[..])
                .map_err(|e| ResourceError::new("", format!("not a valid TypedStruct: {e}")))?;
            let name = ts
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let Some(builder) = known_policies().get(&name) else {
                return Ok(None);
            };
            let config = ts
                .value
                .map_or_else(|| json!({}), |s| crate::json::from_struct(&s));
            builder
                .parse_config_in(&config, known_policies())
                .map_err(|e| ResourceError::new("value", format!("{name}: {e}")))?;
            return Ok(Some((json!([{ name: config }]), false)));
        }
        return Ok(None);
    };
    let value = &any.value[..];
    let bad = |e: prost::DecodeError| ResourceError::new("", format!("not a valid {url}: {e}"));
    Ok(Some(match name {
        "round_robin.v3.RoundRobin" => (json!([{"round_robin": {}}]), false),
        "pick_first.v3.PickFirst" => {
            let p = lbp::pick_first::v3::PickFirst::decode(value).map_err(bad)?;
            (
                json!([{"pick_first": {"shuffleAddressList": p.shuffle_address_list}}]),
                false,
            )
        }
        "least_request.v3.LeastRequest" => {
            let l = lbp::least_request::v3::LeastRequest::decode(value).map_err(bad)?;
            let n = l.choice_count.map_or(2, |c| c.value);
            if n < 2 {
                return Err(ResourceError::new("choice_count", "must be at least 2"));
            }
            (
                json!([{"least_request_experimental": {"choiceCount": n.min(10)}}]),
                false,
            )
        }
        "ring_hash.v3.RingHash" => {
            let r = lbp::ring_hash::v3::RingHash::decode(value).map_err(bad)?;
            use lbp::ring_hash::v3::ring_hash::HashFunction;
            if r.hash_function != HashFunction::DefaultHash as i32
                && r.hash_function != HashFunction::XxHash as i32
            {
                return Err(ResourceError::new(
                    "hash_function",
                    "only XX_HASH is supported",
                ));
            }
            let config = ring_size(
                r.minimum_ring_size.map(|v| v.value),
                r.maximum_ring_size.map(|v| v.value),
                "",
            )
            .map_err(|mut e| {
                e.field = e.field.trim_start_matches('.').to_owned();
                e
            })?;
            (json!([{"ring_hash": config}]), false)
        }
        "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin" => {
            let w =
                lbp::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin::decode(
                    value,
                )
                .map_err(bad)?;
            let mut config = Map::new();
            if let Some(b) = w.enable_oob_load_report {
                config.insert("enableOobLoadReport".into(), json!(b.value));
            }
            for (key, d) in [
                ("oobReportingPeriod", &w.oob_reporting_period),
                ("blackoutPeriod", &w.blackout_period),
                ("weightExpirationPeriod", &w.weight_expiration_period),
                ("weightUpdatePeriod", &w.weight_update_period),
            ] {
                if let Some(d) = d {
                    let d = duration(d, key)?;
                    config.insert(key.into(), json!(format!("{}s", d.as_secs_f64())));
                }
            }
            if let Some(p) = w.error_utilization_penalty {
                if p.value < 0.0 || !p.value.is_finite() {
                    return Err(ResourceError::new(
                        "error_utilization_penalty",
                        "must be a non-negative number",
                    ));
                }
                config.insert("errorUtilizationPenalty".into(), json!(p.value));
            }
            (json!([{"weighted_round_robin": config}]), false)
        }
        "wrr_locality.v3.WrrLocality" => {
            let w = lbp::wrr_locality::v3::WrrLocality::decode(value).map_err(bad)?;
            let inner = w
                .endpoint_picking_policy
                .ok_or_else(|| ResourceError::new("endpoint_picking_policy", "is required"))?;
            let (child, _) =
                policy_list(&inner, depth + 1).map_err(|e| e.within("endpoint_picking_policy"))?;
            (child, true)
        }
        _ => return Ok(None),
    }))
}

fn json_duration(d: Duration) -> Value {
    json!(format!("{}s", d.as_secs_f64()))
}

/// A50's conversion of an `OutlierDetection` message.
fn outlier_detection(od: &pb::OutlierDetection) -> Result<OutlierDetectionConfig, ResourceError> {
    let mut config = Map::new();
    for (key, field, d) in [
        ("interval", "interval", &od.interval),
        (
            "baseEjectionTime",
            "base_ejection_time",
            &od.base_ejection_time,
        ),
        (
            "maxEjectionTime",
            "max_ejection_time",
            &od.max_ejection_time,
        ),
    ] {
        if let Some(d) = d {
            config.insert(key.into(), json_duration(duration(d, field)?));
        }
    }
    let percent = |field: &str, v: Option<u32>, default: u32| -> Result<u32, ResourceError> {
        let v = v.unwrap_or(default);
        if v > 100 {
            return Err(ResourceError::new(field, format!("{v} is more than 100")));
        }
        Ok(v)
    };
    config.insert(
        "maxEjectionPercent".into(),
        json!(percent(
            "max_ejection_percent",
            od.max_ejection_percent.map(|v| v.value),
            10
        )?),
    );
    let success = percent(
        "enforcing_success_rate",
        od.enforcing_success_rate.map(|v| v.value),
        100,
    )?;
    if success > 0 {
        config.insert(
            "successRateEjection".into(),
            json!({
                "stdevFactor": od.success_rate_stdev_factor.map_or(1900, |v| v.value),
                "enforcementPercentage": success,
                "minimumHosts": od.success_rate_minimum_hosts.map_or(5, |v| v.value),
                "requestVolume": od.success_rate_request_volume.map_or(100, |v| v.value),
            }),
        );
    }
    let failure = percent(
        "enforcing_failure_percentage",
        od.enforcing_failure_percentage.map(|v| v.value),
        0,
    )?;
    let threshold = percent(
        "failure_percentage_threshold",
        od.failure_percentage_threshold.map(|v| v.value),
        85,
    )?;
    if failure > 0 {
        config.insert(
            "failurePercentageEjection".into(),
            json!({
                "threshold": threshold,
                "enforcementPercentage": failure,
                "minimumHosts": od.failure_percentage_minimum_hosts.map_or(5, |v| v.value),
                "requestVolume": od.failure_percentage_request_volume.map_or(50, |v| v.value),
            }),
        );
    }
    Ok(OutlierDetectionConfig(config))
}
