//! What `grpc-lb resolve xds:///name` prints beyond the addresses: the xDS
//! resources the channel was built from, from the process's xDS client cache.

use std::sync::Arc;

use lb_xds::client::CachedResource;
use lb_xds::resource::{ClusterKind, PathMatch, Resource, RouteAction, RouteSource};
use lb_xds::{Bootstrap, XdsClient, XdsClientOptions};
use serde_json::{Value, json};

/// The cached resources of this process's xDS client (the one the resolver uses).
pub(crate) fn resources() -> Vec<CachedResource> {
    let Ok(bootstrap) = Bootstrap::from_env() else {
        return Vec::new();
    };
    XdsClient::get(
        &bootstrap,
        Arc::new(lb_tonic::xds::LbChannelTransport),
        XdsClientOptions::default(),
    )
    .map(|c| c.dump())
    .unwrap_or_default()
}

fn status(r: &CachedResource) -> &'static str {
    match (&r.value, r.does_not_exist, &r.error) {
        (_, true, _) => "does not exist",
        (Some(_), _, Some(_)) => "NACKed (last good version in use)",
        (Some(_), _, None) => "ACKed",
        (None, _, Some(_)) => "NACKed",
        (None, _, None) => "requested",
    }
}

/// The resources as text lines.
pub(crate) fn lines(all: &[CachedResource]) -> Vec<String> {
    let mut out = Vec::new();
    for r in all {
        out.push(format!("{} {:?}: {}", r.ty, r.name, status(r)));
        if let Some(e) = &r.error {
            out.push(format!("    error: {e}"));
        }
        match &r.value {
            Some(Resource::Listener(l)) => {
                match &l.route {
                    RouteSource::Rds(name) => out.push(format!("    routes from RDS {name:?}")),
                    RouteSource::Inline(r) => {
                        out.push(format!("    inline route configuration {:?}", r.name))
                    }
                }
                if let Some(d) = l.max_stream_duration {
                    out.push(format!("    max_stream_duration {d:?}"));
                }
            }
            Some(Resource::RouteConfig(rc)) => {
                for vh in &rc.virtual_hosts {
                    out.push(format!("    virtual host {:?} {:?}", vh.name, vh.domains));
                    for route in &vh.routes {
                        let path = match &route.matcher.path {
                            PathMatch::Prefix(p) => format!("prefix {p:?}"),
                            PathMatch::Path(p) => format!("path {p:?}"),
                            PathMatch::Regex(re) => format!("regex {:?}", re.as_str()),
                        };
                        let action = match &route.action {
                            RouteAction::Forward { clusters, .. } => clusters
                                .iter()
                                .map(|c| format!("{} (weight {})", c.name, c.weight))
                                .collect::<Vec<_>>()
                                .join(", "),
                            RouteAction::Fail(why) => format!("fails: {why}"),
                        };
                        out.push(format!("      {path} -> {action}"));
                    }
                }
            }
            Some(Resource::Cluster(c)) => {
                let kind = match &c.kind {
                    ClusterKind::Eds { service_name } => format!("EDS {service_name:?}"),
                    ClusterKind::LogicalDns { target } => format!("LOGICAL_DNS {target}"),
                    ClusterKind::Aggregate { clusters } => format!("aggregate of {clusters:?}"),
                };
                out.push(format!(
                    "    {kind}, policy {}{}, max_requests {}",
                    c.endpoint_policy,
                    if c.locality_weighted {
                        " per locality"
                    } else {
                        ""
                    },
                    c.max_requests
                ));
            }
            Some(Resource::Endpoints(e)) => {
                for (p, localities) in e.priorities.iter().enumerate() {
                    out.push(format!("    priority {p}"));
                    for l in localities {
                        out.push(format!("      locality {} weight {}", l.locality, l.weight));
                        for ep in &l.endpoints {
                            out.push(format!(
                                "        {:<24} weight {} {}",
                                ep.address, ep.weight, ep.health
                            ));
                        }
                    }
                }
                for d in &e.drops {
                    out.push(format!(
                        "    drops {} per million: {}",
                        d.per_million, d.category
                    ));
                }
            }
            None => {}
        }
    }
    out
}

/// The resources as JSON.
pub(crate) fn json(all: &[CachedResource]) -> Value {
    Value::Array(
        all.iter()
            .map(|r| {
                let value = match &r.value {
                    Some(Resource::Listener(l)) => json!({
                        "rds": match &l.route { RouteSource::Rds(n) => Some(n.clone()), RouteSource::Inline(_) => None },
                        "inline_route_config": match &l.route { RouteSource::Inline(r) => Some(r.name.clone()), RouteSource::Rds(_) => None },
                        "http_filters": l.http_filters,
                    }),
                    Some(Resource::RouteConfig(rc)) => json!({
                        "virtual_hosts": rc.virtual_hosts.iter().map(|vh| json!({
                            "name": vh.name,
                            "domains": vh.domains,
                            "routes": vh.routes.iter().map(|r| match &r.action {
                                RouteAction::Forward { clusters, .. } => json!({"clusters": clusters.iter().map(|c| json!({"name": c.name, "weight": c.weight})).collect::<Vec<_>>()}),
                                RouteAction::Fail(why) => json!({"fails": why}),
                            }).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    }),
                    Some(Resource::Cluster(c)) => json!({
                        "kind": match &c.kind {
                            ClusterKind::Eds { service_name } => json!({"eds": service_name}),
                            ClusterKind::LogicalDns { target } => json!({"logical_dns": target}),
                            ClusterKind::Aggregate { clusters } => json!({"aggregate": clusters}),
                        },
                        "endpoint_policy": c.endpoint_policy,
                        "locality_weighted": c.locality_weighted,
                        "max_requests": c.max_requests,
                    }),
                    Some(Resource::Endpoints(e)) => json!({
                        "priorities": e.priorities.iter().map(|ls| ls.iter().map(|l| json!({
                            "locality": {"region": l.locality.region, "zone": l.locality.zone, "sub_zone": l.locality.sub_zone},
                            "weight": l.weight,
                            "endpoints": l.endpoints.iter().map(|e| json!({"address": e.address, "weight": e.weight, "health": e.health})).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>()).collect::<Vec<_>>(),
                        "drops": e.drops.iter().map(|d| json!({"category": d.category, "per_million": d.per_million})).collect::<Vec<_>>(),
                    }),
                    None => Value::Null,
                };
                json!({"type": r.ty.short_name(), "name": r.name, "status": status(r), "error": r.error, "value": value})
            })
            .collect(),
    )
}
