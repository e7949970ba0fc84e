//! From a complete set of xDS resources to the channel's state: the policy tree as a
//! service config, the endpoints with their hierarchy paths, and the routes.
//!
//! ```text
//! xds_cluster_manager_experimental          one child per cluster a route names
//! └─ priority_experimental                  the cluster's priorities (aggregate:
//!    │                                      its leaf clusters' priorities in order)
//!    └─ xds_cluster_impl_experimental       drops, max_requests (per leaf cluster)
//!       └─ outlier_detection                if the leaf cluster configures it (A50)
//!          └─ weighted_target_experimental  localities by weight (xds_wrr_locality)
//!             └─ round_robin / least_request / ...   the endpoint policy
//! ```
//!
//! With an endpoint policy that is not locality-weighted (ring_hash, pick_first,
//! weighted_round_robin from `load_balancing_policy`), the endpoint policy sees every
//! endpoint of the priority, weighted by locality weight × endpoint weight.

use std::fmt;
use std::sync::Arc;

use lb_core::hierarchy::with_path;
use lb_core::{Address, Weight};
use serde_json::{Map, Value, json};

use crate::bootstrap::Locality;
use crate::cluster_impl;
use crate::resource::{ClusterKind, ClusterUpdate, EndpointsUpdate, MAX_AGGREGATE_DEPTH};
use crate::selector::child_name;

/// Where an endpoint sits in the tree: an address attribute, so that the channel's
/// snapshot names each subconn's cluster, priority and locality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XdsEndpoint {
    /// The cluster a route names.
    pub cluster: Arc<str>,
    /// The priority's child name (`<leaf cluster>/p<n>`).
    pub priority: Arc<str>,
    /// The locality.
    pub locality: Locality,
}

impl fmt::Display for XdsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {} priority {} locality {}",
            self.cluster, self.priority, self.locality
        )
    }
}

/// What the tree needs to know about clusters and endpoints.
pub(crate) trait Resources {
    /// A cluster: `None` while it has not arrived; `Err` when it cannot be used.
    fn cluster(&self, name: &str) -> Option<Result<&Arc<ClusterUpdate>, String>>;
    /// A leaf cluster's endpoints.
    fn endpoints(&self, leaf: &ClusterUpdate) -> Option<Result<Arc<EndpointsUpdate>, String>>;
}

/// The leaf clusters of `name`, depth first (A37), or why there are none yet.
pub(crate) fn leaves<'a>(
    resources: &'a dyn Resources,
    name: &str,
) -> Option<Result<Vec<&'a Arc<ClusterUpdate>>, String>> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    match walk(resources, name, &mut path, &mut out) {
        Walk::Ok => Some(Ok(out)),
        Walk::Waiting => None,
        Walk::Failed(e) => Some(Err(e)),
    }
}

enum Walk {
    Ok,
    Waiting,
    Failed(String),
}

fn walk<'a>(
    resources: &'a dyn Resources,
    name: &str,
    path: &mut Vec<String>,
    out: &mut Vec<&'a Arc<ClusterUpdate>>,
) -> Walk {
    if path.iter().any(|p| p == name) {
        return Walk::Failed(format!(
            "aggregate cluster loop: {} -> {name}",
            path.join(" -> ")
        ));
    }
    if path.len() >= MAX_AGGREGATE_DEPTH {
        return Walk::Failed(format!(
            "aggregate clusters nested more than {MAX_AGGREGATE_DEPTH} deep under {}",
            path[0]
        ));
    }
    let cluster = match resources.cluster(name) {
        None => return Walk::Waiting,
        Some(Err(e)) => return Walk::Failed(e),
        Some(Ok(c)) => c,
    };
    match &cluster.kind {
        ClusterKind::Aggregate { clusters } => {
            path.push(name.to_owned());
            let mut waiting = false;
            for child in clusters {
                match walk(resources, child, path, out) {
                    Walk::Ok => {}
                    Walk::Waiting => waiting = true,
                    failed @ Walk::Failed(_) => {
                        path.pop();
                        return failed;
                    }
                }
            }
            path.pop();
            if waiting {
                return Walk::Waiting;
            }
        }
        _ => {
            // A leaf reached twice (a diamond) counts once, where first seen.
            if !out.iter().any(|c| c.name == cluster.name) {
                out.push(cluster);
            }
        }
    }
    Walk::Ok
}

/// The built state.
pub(crate) struct Built {
    pub(crate) service_config: String,
    pub(crate) addresses: Vec<Address>,
    /// Clusters that could not be built, and why: their RPCs fail.
    pub(crate) failed: Vec<(String, String)>,
}

/// Builds the tree for `clusters` (the clusters the routes name). Returns `None`
/// while a resource it needs has not arrived.
pub(crate) fn build(resources: &dyn Resources, clusters: &[String]) -> Option<Built> {
    let mut children = Map::new();
    let mut addresses = Vec::new();
    let mut failed = Vec::new();
    for top in clusters {
        let child = child_name(top);
        let result = match leaves(resources, top)? {
            Ok(leaves) => {
                let top_cluster = match resources.cluster(top) {
                    Some(Ok(c)) => c,
                    _ => continue,
                };
                cluster_tree(resources, top, top_cluster, &leaves, &mut addresses)?
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(config) => {
                children.insert(child, json!({"childPolicy": [config]}));
            }
            Err(reason) => {
                // Its RPCs fail with the reason: a child that has no addresses and
                // says why (cluster_impl with an error).
                children.insert(
                    child,
                    json!({"childPolicy": [{cluster_impl::NAME: {
                        "cluster": top, "error": reason.clone(),
                        "childPolicy": [{"round_robin": {}}]}}]}),
                );
                failed.push((top.clone(), reason));
            }
        }
    }
    let config = json!({"loadBalancingConfig": [
        {lb_policies::cluster_manager::NAME: {"children": children}}
    ]});
    Some(Built {
        service_config: config.to_string(),
        addresses,
        failed,
    })
}

/// One route cluster's subtree: a priority over its leaves' priorities.
fn cluster_tree(
    resources: &dyn Resources,
    top: &str,
    top_cluster: &ClusterUpdate,
    leaves: &[&Arc<ClusterUpdate>],
    addresses: &mut Vec<Address>,
) -> Option<Result<Value, String>> {
    let top_child: Arc<str> = child_name(top).into();
    let mut children = Map::new();
    let mut priorities = Vec::new();
    for leaf in leaves {
        let endpoints = match &leaf.kind {
            ClusterKind::Eds { .. } | ClusterKind::LogicalDns { .. } => {
                match resources.endpoints(leaf)? {
                    Ok(e) => e,
                    // A leaf without endpoints (deleted, unresolvable): its priority
                    // is skipped, as grpc-go skips it.
                    Err(_) => continue,
                }
            }
            ClusterKind::Aggregate { .. } => continue,
        };
        // A LOGICAL_DNS cluster is one endpoint with every address the name
        // resolves to (A61): pick_first over them, whatever the cluster's policy.
        let dns = matches!(leaf.kind, ClusterKind::LogicalDns { .. });
        let per_locality = top_cluster.locality_weighted && !dns;
        for (p, localities) in endpoints.priorities.iter().enumerate() {
            let name: Arc<str> = format!("{}/p{p}", leaf.name).into();
            let mut targets = Map::new();
            for l in localities {
                let key = l.locality.to_string();
                let info = XdsEndpoint {
                    cluster: top.into(),
                    priority: name.clone(),
                    locality: l.locality.clone(),
                };
                for e in l.endpoints.iter().filter(|e| e.usable()) {
                    let weight = if per_locality {
                        e.weight
                    } else {
                        e.weight.saturating_mul(l.weight)
                    };
                    let address = Address::new(e.address.clone())
                        .with_attribute(Weight::new(weight).unwrap_or(Weight::DEFAULT))
                        .with_attribute(info.clone());
                    let mut path = vec![top_child.to_string(), name.to_string()];
                    if per_locality {
                        path.push(key.clone());
                    }
                    addresses.push(with_path(address, path));
                }
                targets.insert(
                    key,
                    json!({"weight": l.weight, "childPolicy": top_cluster.endpoint_policy}),
                );
            }
            let mut child = if dns {
                json!({lb_policies::pick_first::NAME: {}})
            } else if per_locality {
                json!({lb_policies::weighted_target::NAME: {"targets": targets}})
            } else {
                top_cluster
                    .endpoint_policy
                    .get(0)
                    .cloned()
                    .unwrap_or(json!({"round_robin": {}}))
            };
            if let Some(od) = &leaf.outlier_detection {
                let mut config = od.0.clone();
                config.insert("childPolicy".into(), json!([child]));
                child = json!({lb_policies::outlier_detection::NAME: config});
            }
            let drops: Vec<Value> = endpoints
                .drops
                .iter()
                .map(|d| json!({"category": d.category, "requestsPerMillion": d.per_million}))
                .collect();
            let service = match &leaf.kind {
                ClusterKind::Eds { service_name } => service_name.clone(),
                _ => String::new(),
            };
            let child = json!({cluster_impl::NAME: {
                "cluster": leaf.name,
                "edsServiceName": service,
                "maxConcurrentRequests": leaf.max_requests,
                "dropCategories": drops,
                "childPolicy": [child],
            }});
            children.insert(
                name.to_string(),
                json!({"config": [child], "ignoreReresolutionRequests": matches!(leaf.kind, ClusterKind::Eds { .. })}),
            );
            priorities.push(Value::String(name.to_string()));
        }
    }
    if priorities.is_empty() {
        return Some(Err(format!("cluster {top:?} has no endpoints")));
    }
    Some(Ok(json!({lb_policies::priority::NAME: {
        "children": children, "priorities": priorities}})))
}
