//! The per-RPC routing of an xDS channel (gRFC A28, A31): the virtual host's routes,
//! matched in order; the chosen route's cluster (by weight), timeout, retry policy
//! and request hash.

use std::sync::Arc;
use std::time::Duration;

use lb_core::routing::{ConfigSelector, RequestHash, RpcConfig, RpcInfo};
use lb_core::service_config::MethodConfig;
use lb_core::{Attributes, Status};
use lb_policies::cluster_manager::PickedCluster;

use crate::resource::{HashPolicy, Route, RouteAction, route::header_value};

/// The cluster-manager child name of a cluster a route names (grpc-go's prefix).
pub(crate) fn child_name(cluster: &str) -> String {
    format!("cluster:{cluster}")
}

struct CompiledRoute {
    route: Route,
    /// Per cluster: the attributes its RPCs carry (its child name, made once: an
    /// RPC clones a reference), and the cumulative weight up to it.
    clusters: Vec<(Attributes, u64)>,
    total: u64,
    method_config: Arc<MethodConfig>,
}

/// Routes RPCs by the routes of one virtual host.
pub(crate) struct XdsSelector {
    routes: Vec<CompiledRoute>,
    /// A hash of this channel, for `io.grpc.channel_id` hash policies.
    channel_hash: u64,
}

impl XdsSelector {
    pub(crate) fn new(
        routes: &[Route],
        listener_timeout: Option<Duration>,
        channel_hash: u64,
    ) -> Self {
        let routes = routes
            .iter()
            .map(|route| {
                let mut method_config = MethodConfig::default();
                let mut clusters = Vec::new();
                let mut total = 0;
                if let RouteAction::Forward {
                    clusters: weighted,
                    timeout,
                    retry,
                    ..
                } = &route.action
                {
                    method_config.timeout = timeout.or(listener_timeout).filter(|t| !t.is_zero());
                    method_config.retry_policy = retry.clone();
                    for c in weighted {
                        total += u64::from(c.weight);
                        let picked = PickedCluster(Arc::from(child_name(&c.name)));
                        clusters.push((Attributes::new().with(picked), total));
                    }
                }
                CompiledRoute {
                    route: route.clone(),
                    clusters,
                    total,
                    method_config: Arc::new(method_config),
                }
            })
            .collect();
        Self {
            routes,
            channel_hash,
        }
    }

    fn hash(&self, policies: &[HashPolicy], headers: &http::HeaderMap) -> Option<u64> {
        let mut hash: Option<u64> = None;
        for policy in policies {
            let (value, terminal) = match policy {
                HashPolicy::Header {
                    name,
                    rewrite,
                    terminal,
                } => {
                    let value = header_value(headers, name).map(|v| match rewrite {
                        Some((re, with)) => {
                            std::borrow::Cow::Owned(re.replace_all(&v, with.as_str()).into_owned())
                        }
                        None => v,
                    });
                    (
                        value.map(|v| xxhash_rust::xxh64::xxh64(v.as_bytes(), 0)),
                        *terminal,
                    )
                }
                HashPolicy::ChannelId { terminal } => (Some(self.channel_hash), *terminal),
            };
            if let Some(value) = value {
                // Envoy's combination of several policies' hashes.
                hash = Some(hash.map_or(value, |h| h.rotate_left(1) ^ value));
            }
            // A terminal policy ends the walk once any hash is made (grpc-go, Envoy).
            if terminal && hash.is_some() {
                break;
            }
        }
        hash
    }
}

impl ConfigSelector for XdsSelector {
    fn select(&self, rpc: &RpcInfo<'_>) -> Result<RpcConfig, Status> {
        let draw = fastrand::u32(0..1_000_000);
        let Some(compiled) = self
            .routes
            .iter()
            .find(|r| r.route.matcher.matches(rpc.method, rpc.headers, draw))
        else {
            return Err(Status::unavailable(format!(
                "no xDS route matches {}",
                rpc.method
            )));
        };
        let hash_policies = match &compiled.route.action {
            RouteAction::Fail(reason) => return Err(Status::unavailable(reason.clone())),
            RouteAction::Forward { hash_policies, .. } => hash_policies,
        };
        let chosen = match &compiled.clusters[..] {
            [only] => Some(only),
            several => {
                let at = fastrand::u64(0..compiled.total.max(1));
                several
                    .iter()
                    .find(|(_, upto)| at < *upto)
                    .or(several.last())
            }
        };
        let mut attributes = chosen
            .map(|(attributes, _)| attributes.clone())
            .ok_or_else(|| Status::unavailable("the xDS route has no cluster"))?;
        if let Some(hash) = self.hash(hash_policies, rpc.headers) {
            attributes = attributes.with(RequestHash(hash));
        }
        Ok(RpcConfig::default()
            .with_method_config(compiled.method_config.clone())
            .with_attributes(attributes))
    }
}
