//! `ClusterLoadAssignment` (EDS), as gRPC reads it (A27, A61): localities with
//! weights in priorities, endpoints with weights and health, drop categories.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3 as pb;

use super::{Decoded, Resource, ResourceError, decoded, per_million};
use crate::bootstrap::Locality;

/// A validated `ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct EndpointsUpdate {
    /// Localities by priority, priority 0 first; every priority has at least one.
    pub priorities: Vec<Vec<LocalityEndpoints>>,
    /// `policy.drop_overloads`: categories of RPCs dropped on purpose.
    pub drops: Vec<DropCategory>,
}

/// One locality of a priority.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LocalityEndpoints {
    /// Where it is.
    pub locality: Locality,
    /// `load_balancing_weight`, at least 1.
    pub weight: u32,
    /// Its endpoints, whatever their health.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// `host:port` (`[v6]:port`).
    pub address: String,
    /// `load_balancing_weight`, at least 1 (1 when unset).
    pub weight: u32,
    /// `health_status`, as Envoy names it (`HEALTHY`, `UNKNOWN`, `DRAINING`, ...).
    pub health: &'static str,
}

impl Endpoint {
    /// Whether gRPC sends RPCs to it: `HEALTHY` or `UNKNOWN` (A27).
    pub fn usable(&self) -> bool {
        matches!(self.health, "HEALTHY" | "UNKNOWN")
    }
}

/// A drop category: that share of RPCs fails at once, counted as dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCategory {
    /// `category`.
    pub category: String,
    /// `drop_percentage` in parts per million.
    pub per_million: u32,
}

/// `host:port`, bracketing an IPv6 host.
pub(crate) fn host_port(host: &str, port: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn decode(bytes: &[u8]) -> Decoded {
    decoded(
        bytes,
        "ClusterLoadAssignment",
        |c: &pb::ClusterLoadAssignment| &c.cluster_name,
        |c| validate(c).map(|e| Resource::Endpoints(Arc::new(e))),
    )
}

fn validate(c: pb::ClusterLoadAssignment) -> Result<EndpointsUpdate, ResourceError> {
    let mut priorities: Vec<Vec<LocalityEndpoints>> = Vec::new();
    let mut addresses = HashSet::new();
    for (i, l) in c.endpoints.into_iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let locality = l
            .locality
            .ok_or_else(|| ResourceError::new(format!("{field}.locality"), "is required"))?;
        let locality = Locality {
            region: locality.region,
            zone: locality.zone,
            sub_zone: locality.sub_zone,
        };
        let weight = l.load_balancing_weight.map_or(0, |w| w.value);
        // A locality without weight gets no traffic (A27): left out unread.
        if weight == 0 {
            continue;
        }
        let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
        let mut total: u64 = 0;
        for (j, e) in l.lb_endpoints.into_iter().enumerate() {
            let field = format!("{field}.lb_endpoints[{j}]");
            let endpoint = endpoint(e).map_err(|e| e.within(&field))?;
            if !addresses.insert(endpoint.address.clone()) {
                return Err(ResourceError::new(
                    format!("{field}.endpoint.address"),
                    format!("{} appears twice", endpoint.address),
                ));
            }
            total += u64::from(endpoint.weight);
            endpoints.push(endpoint);
        }
        if total > u64::from(u32::MAX) {
            return Err(ResourceError::new(
                format!("{field}.lb_endpoints"),
                format!("weights sum to {total}, more than {}", u32::MAX),
            ));
        }
        let priority = usize::try_from(l.priority).unwrap_or(usize::MAX);
        if priority > 1 << 16 {
            return Err(ResourceError::new(
                format!("{field}.priority"),
                format!("{} is implausibly large", l.priority),
            ));
        }
        if priorities.len() <= priority {
            priorities.resize_with(priority + 1, Vec::new);
        }
        let same = &mut priorities[priority];
        let sum: u64 = same.iter().map(|l| u64::from(l.weight)).sum::<u64>() + u64::from(weight);
        if sum > u64::from(u32::MAX) {
            return Err(ResourceError::new(
                format!("{field}.load_balancing_weight"),
                format!(
                    "the weights of priority {priority} sum to {sum}, more than {}",
                    u32::MAX
                ),
            ));
        }
        if same.iter().any(|other| other.locality == locality) {
            return Err(ResourceError::new(
                format!("{field}.locality"),
                format!("{locality} appears twice in priority {priority}"),
            ));
        }
        same.push(LocalityEndpoints {
            locality,
            weight,
            endpoints,
        });
    }
    if let Some(gap) = priorities.iter().position(Vec::is_empty) {
        return Err(ResourceError::new(
            "endpoints",
            format!(
                "priority {gap} has no locality with weight, but priority {} has",
                priorities.len() - 1
            ),
        ));
    }
    let mut drops = Vec::new();
    if let Some(policy) = c.policy {
        for (i, d) in policy.drop_overloads.into_iter().enumerate() {
            let per_million = d
                .drop_percentage
                .as_ref()
                .map_or(Ok(0), per_million)
                .map_err(|e| e.within(&format!("policy.drop_overloads[{i}].drop_percentage")))?;
            drops.push(DropCategory {
                category: d.category,
                per_million,
            });
        }
    }
    Ok(EndpointsUpdate { priorities, drops })
}

fn endpoint(e: pb::LbEndpoint) -> Result<Endpoint, ResourceError> {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    use pb::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(endpoint)) = e.host_identifier else {
        return Err(ResourceError::new("endpoint", "is required"));
    };
    let Some(AddressKind::SocketAddress(socket)) = endpoint.address.and_then(|a| a.address) else {
        return Err(ResourceError::new(
            "endpoint.address.socket_address",
            "is required",
        ));
    };
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return Err(ResourceError::new(
            "endpoint.address.socket_address.port_value",
            "is required",
        ));
    };
    if port > 65535 {
        return Err(ResourceError::new(
            "endpoint.address.socket_address.port_value",
            format!("{port} is not a port"),
        ));
    }
    if socket.address.is_empty() {
        return Err(ResourceError::new(
            "endpoint.address.socket_address.address",
            "must not be empty",
        ));
    }
    let weight = match e.load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(ResourceError::new(
                "load_balancing_weight",
                "must be greater than 0",
            ));
        }
        Some(w) => w.value,
    };
    let health =
        HealthStatus::try_from(e.health_status).map_or("UNRECOGNIZED", |h| h.as_str_name());
    Ok(Endpoint {
        address: host_port(&socket.address, port),
        weight,
        health,
    })
}
