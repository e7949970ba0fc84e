//! The `xds` resolver: `xds:///name` → the listener `name` (LDS) → its route
//! configuration (inline or RDS) → the virtual host for the channel's authority →
//! the clusters its routes name (CDS, aggregate clusters walked depth first) → their
//! endpoints (EDS, or DNS for `LOGICAL_DNS`) → one resolver state: the policy tree
//! ([`crate::tree`]), every endpoint with its hierarchy path, and the routes as a
//! config selector.
//!
//! As in gRPC since gRFC A74, the resolver watches every resource itself and
//! publishes only complete trees; the policies below it only balance. A resource
//! that is rejected keeps its last good version; one that does not exist fails the
//! RPCs that need it with `UNAVAILABLE` saying which.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lb_core::resolver::{BuildError, ClientConn, Resolver, ResolverBuilder, ResolverState};
use lb_core::routing::{ConfigSelector, RpcConfig, RpcInfo};
use lb_core::{Status, Target};
use tokio::sync::mpsc;

use crate::bootstrap::Bootstrap;
use crate::client::{AdsTransport, Event, WatchEvent, WatchHandle, XdsClient, XdsClientOptions};
use crate::resource::{
    ClusterKind, ClusterUpdate, Endpoint, EndpointsUpdate, ListenerUpdate, LocalityEndpoints,
    Resource, ResourceType, RouteAction, RouteConfigUpdate, RouteSource, VirtualHost,
};
use crate::selector::XdsSelector;
use crate::tree::{self, Resources};

/// How often a `LOGICAL_DNS` cluster's name is resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);

/// Builds `xds` resolvers.
#[derive(Clone)]
pub struct XdsResolverBuilder {
    transport: Arc<dyn AdsTransport>,
    bootstrap: Option<Bootstrap>,
    options: XdsClientOptions,
}

impl std::fmt::Debug for XdsResolverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsResolverBuilder")
            .field("bootstrap", &self.bootstrap)
            .field("options", &self.options)
            .finish()
    }
}

impl XdsResolverBuilder {
    /// Resolvers whose xDS client reaches management servers through `transport`,
    /// with the process's bootstrap ([`Bootstrap::from_env`], read at each build).
    pub fn new(transport: Arc<dyn AdsTransport>) -> Self {
        Self {
            transport,
            bootstrap: None,
            options: XdsClientOptions::default(),
        }
    }

    /// Uses `bootstrap` instead of the environment's.
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: Bootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// The xDS client's options (timers, backoff).
    #[must_use]
    pub fn with_options(mut self, options: XdsClientOptions) -> Self {
        self.options = options;
        self
    }
}

impl ResolverBuilder for XdsResolverBuilder {
    fn scheme(&self) -> &str {
        "xds"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        if !target.authority().is_empty() {
            return Err(format!(
                "xds target `{target}` names the authority {:?}: xDS federation is not supported",
                target.authority()
            )
            .into());
        }
        let name = target.endpoint().trim_start_matches('/');
        if name.is_empty() {
            return Err(format!("xds target `{target}` names no listener").into());
        }
        let bootstrap = match &self.bootstrap {
            Some(b) => b.clone(),
            None => Bootstrap::from_env()?,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| format!("the xds resolver for `{target}` needs a tokio runtime"))?;
        let client = XdsClient::get(&bootstrap, self.transport.clone(), self.options)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let listener_name = bootstrap.listener_name(name);
        let listener_watch = client.watch(ResourceType::Listener, &listener_name, tx.clone());
        let task = Task {
            client,
            cc,
            authority: name.to_owned(),
            listener_name,
            tx,
            _listener_watch: listener_watch,
            listener: Slot::default(),
            rds: None,
            route: Slot::default(),
            clusters: HashMap::new(),
            eds: HashMap::new(),
            dns: HashMap::new(),
            channel_hash: fastrand::u64(..),
        };
        let handle = runtime.spawn(task.run(rx));
        Ok(Box::new(XdsResolver { task: handle }))
    }

    fn authority(&self, target: &Target) -> Option<String> {
        Some(target.endpoint().trim_start_matches('/').to_owned())
    }
}

struct XdsResolver {
    task: tokio::task::JoinHandle<()>,
}

impl Resolver for XdsResolver {
    fn resolve_now(&self) {
        // Watches are always current; LOGICAL_DNS names refresh on their own.
    }
}

impl Drop for XdsResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What is known of one watched resource.
struct Slot<T> {
    value: Option<Arc<T>>,
    missing: bool,
    error: Option<Arc<str>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: None,
            missing: false,
            error: None,
        }
    }
}

impl<T> Slot<T> {
    fn apply(&mut self, what: WatchEvent, value: impl FnOnce(Resource) -> Option<Arc<T>>) {
        match what {
            WatchEvent::Changed(r) => {
                if let Some(v) = value(r) {
                    self.value = Some(v);
                    self.missing = false;
                    self.error = None;
                }
            }
            WatchEvent::DoesNotExist => {
                self.value = None;
                self.missing = true;
            }
            WatchEvent::Error(e) => self.error = Some(e),
        }
    }

    /// The value; `None` while waiting; `Err` when it does not exist or failed
    /// before any value came.
    fn get(&self, what: &str) -> Option<Result<&Arc<T>, String>> {
        match self.state(what) {
            Needed::Value(v) => Some(Ok(v)),
            Needed::Waiting => None,
            Needed::Missing(e) | Needed::Failing(e) => Some(Err(e)),
        }
    }

    fn state(&self, what: &str) -> Needed<'_, T> {
        match (&self.value, self.missing, &self.error) {
            (Some(v), _, _) => Needed::Value(v),
            (None, true, _) => Needed::Missing(format!("{what} does not exist")),
            (None, false, Some(e)) => Needed::Failing(format!("{what}: {e}")),
            (None, false, None) => Needed::Waiting,
        }
    }
}

/// Where a resource the channel needs stands.
enum Needed<'a, T> {
    Value(&'a Arc<T>),
    Waiting,
    /// It does not exist: the RPCs that need it fail, wait-for-ready or not.
    Missing(String),
    /// None has come, and the server cannot be reached or sent an invalid one:
    /// a transient error, as gRPC reports it (wait-for-ready RPCs wait).
    Failing(String),
}

struct Watched<T> {
    _watch: WatchHandle,
    slot: Slot<T>,
}

/// A `LOGICAL_DNS` name being resolved.
struct Dns {
    slot: Slot<EndpointsUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Task {
    client: XdsClient,
    cc: Arc<dyn ClientConn>,
    authority: String,
    listener_name: String,
    tx: mpsc::UnboundedSender<Event>,
    _listener_watch: WatchHandle,
    listener: Slot<ListenerUpdate>,
    rds: Option<(String, WatchHandle)>,
    route: Slot<RouteConfigUpdate>,
    clusters: HashMap<String, Watched<ClusterUpdate>>,
    eds: HashMap<String, Watched<EndpointsUpdate>>,
    dns: HashMap<String, Dns>,
    channel_hash: u64,
}

/// A DNS answer for a `LOGICAL_DNS` target travels as an endpoints event under the
/// target's name, with this type marker in the name.
const DNS_MARK: &str = "dns:";

impl Resources for Task {
    fn cluster(&self, name: &str) -> Option<Result<&Arc<ClusterUpdate>, String>> {
        self.clusters
            .get(name)?
            .slot
            .get(&format!("cluster {name:?}"))
    }

    fn endpoints(&self, leaf: &ClusterUpdate) -> Option<Result<Arc<EndpointsUpdate>, String>> {
        let slot = match &leaf.kind {
            ClusterKind::Eds { service_name } => &self.eds.get(service_name)?.slot,
            ClusterKind::LogicalDns { target } => &self.dns.get(target)?.slot,
            ClusterKind::Aggregate { .. } => return None,
        };
        slot.get(&format!("endpoints of cluster {:?}", leaf.name))
            .map(|r| r.cloned())
    }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = rx.recv().await {
            self.apply(event);
            // Take every event already queued before rebuilding once.
            while let Ok(event) = rx.try_recv() {
                self.apply(event);
            }
            self.reconcile();
        }
    }

    fn apply(&mut self, event: Event) {
        let Event { ty, name, what } = event;
        match ty {
            ResourceType::Listener if *name == *self.listener_name => {
                self.listener.apply(what, |r| match r {
                    Resource::Listener(l) => Some(l),
                    _ => None,
                });
            }
            ResourceType::RouteConfig if self.rds.as_ref().is_some_and(|(n, _)| **n == *name) => {
                self.route.apply(what, |r| match r {
                    Resource::RouteConfig(r) => Some(r),
                    _ => None,
                });
            }
            ResourceType::Cluster => {
                if let Some(w) = self.clusters.get_mut(&*name) {
                    w.slot.apply(what, |r| match r {
                        Resource::Cluster(c) => Some(c),
                        _ => None,
                    });
                }
            }
            ResourceType::Endpoints => {
                let endpoints = |r| match r {
                    Resource::Endpoints(e) => Some(e),
                    _ => None,
                };
                if let Some(target) = name.strip_prefix(DNS_MARK) {
                    if let Some(d) = self.dns.get_mut(target) {
                        d.slot.apply(what, endpoints);
                    }
                } else if let Some(w) = self.eds.get_mut(&*name) {
                    w.slot.apply(what, endpoints);
                }
            }
            _ => {}
        }
    }

    /// Follows the resources to what they now need, and publishes the state when
    /// everything needed is there.
    fn reconcile(&mut self) {
        let listener = match self
            .listener
            .state(&format!("listener {:?}", self.listener_name))
        {
            Needed::Waiting => return,
            Needed::Missing(e) => return self.fail(e),
            Needed::Failing(e) => return self.transient(e),
            Needed::Value(l) => l.clone(),
        };
        let route = match &listener.route {
            RouteSource::Inline(route) => {
                self.rds = None;
                self.route = Slot::default();
                route.clone()
            }
            RouteSource::Rds(name) => {
                if self.rds.as_ref().is_none_or(|(n, _)| n != name) {
                    self.route = Slot::default();
                    let watch = self
                        .client
                        .watch(ResourceType::RouteConfig, name, self.tx.clone());
                    self.rds = Some((name.clone(), watch));
                }
                match self.route.state(&format!("route configuration {name:?}")) {
                    Needed::Waiting => return,
                    Needed::Missing(e) => return self.fail(e),
                    Needed::Failing(e) => return self.transient(e),
                    Needed::Value(r) => r.clone(),
                }
            }
        };
        let Some(vhost) = pick_virtual_host(&route.virtual_hosts, &self.authority) else {
            return self.fail(format!(
                "route configuration {:?} has no virtual host for {:?}",
                route.name, self.authority
            ));
        };
        let mut tops: Vec<String> = Vec::new();
        for r in &vhost.routes {
            if let RouteAction::Forward { clusters, .. } = &r.action {
                for c in clusters {
                    if !tops.contains(&c.name) {
                        tops.push(c.name.clone());
                    }
                }
            }
        }
        self.follow_clusters(&tops);
        let Some(built) = tree::build(&*self, &tops) else {
            return;
        };
        for (cluster, reason) in &built.failed {
            tracing::debug!(%cluster, %reason, "xds: cluster cannot be used");
        }
        let selector = XdsSelector::new(
            &vhost.routes,
            listener.max_stream_duration,
            self.channel_hash,
        );
        let state = ResolverState::new(built.addresses)
            .with_service_config(built.service_config)
            .with_config_selector(Arc::new(selector))
            .with_note(format!("xDS listener {:?}", self.listener_name));
        self.cc.update_state(state);
    }

    /// Watches every cluster reachable from `tops` and every endpoint resource of
    /// their leaves; drops the watches no longer needed.
    fn follow_clusters(&mut self, tops: &[String]) {
        let mut reachable: HashSet<String> = HashSet::new();
        let mut queue: Vec<String> = tops.to_vec();
        while let Some(name) = queue.pop() {
            if !reachable.insert(name.clone()) {
                continue;
            }
            if !self.clusters.contains_key(&name) {
                let watch = self
                    .client
                    .watch(ResourceType::Cluster, &name, self.tx.clone());
                self.clusters.insert(
                    name.clone(),
                    Watched {
                        _watch: watch,
                        slot: Slot::default(),
                    },
                );
            }
            if let Some(Ok(c)) = self.clusters[&name].slot.get("")
                && let ClusterKind::Aggregate { clusters } = &c.kind
            {
                queue.extend(clusters.iter().cloned());
            }
        }
        self.clusters.retain(|name, _| reachable.contains(name));
        let mut eds: HashSet<String> = HashSet::new();
        let mut dns: HashSet<String> = HashSet::new();
        for w in self.clusters.values() {
            match w.slot.value.as_ref().map(|c| &c.kind) {
                Some(ClusterKind::Eds { service_name }) => {
                    eds.insert(service_name.clone());
                }
                Some(ClusterKind::LogicalDns { target }) => {
                    dns.insert(target.clone());
                }
                _ => {}
            }
        }
        for name in &eds {
            if !self.eds.contains_key(name) {
                let watch = self
                    .client
                    .watch(ResourceType::Endpoints, name, self.tx.clone());
                self.eds.insert(
                    name.clone(),
                    Watched {
                        _watch: watch,
                        slot: Slot::default(),
                    },
                );
            }
        }
        self.eds.retain(|name, _| eds.contains(name));
        for target in &dns {
            if !self.dns.contains_key(target) {
                let task = tokio::spawn(resolve_dns(target.clone(), self.tx.clone()));
                self.dns.insert(
                    target.clone(),
                    Dns {
                        slot: Slot::default(),
                        task,
                    },
                );
            }
        }
        self.dns.retain(|target, _| dns.contains(target));
    }

    /// The channel cannot route yet, for a reason that may pass (the management
    /// server is unreachable, or sent only invalid versions): reported as a resolver
    /// error, so the channel keeps any state it has, RPCs fail with `reason`, and
    /// wait-for-ready ones wait.
    fn transient(&mut self, reason: String) {
        tracing::debug!(%reason, "xds: waiting for resources");
        self.cc.report_error(Arc::new(XdsError(reason)));
    }

    /// Every RPC fails with `reason`, until the resources come back.
    fn fail(&mut self, reason: String) {
        tracing::debug!(%reason, "xds: channel cannot route");
        let config = serde_json::json!({"loadBalancingConfig": [
            {lb_policies::cluster_manager::NAME: {"children": {}}}
        ]});
        let state = ResolverState::new(vec![])
            .with_service_config(config.to_string())
            .with_config_selector(Arc::new(FailSelector(reason.clone())))
            .with_note(reason);
        self.cc.update_state(state);
    }
}

/// Why an xDS channel cannot route yet.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct XdsError(String);

/// Fails every RPC with why the channel cannot route.
struct FailSelector(String);

impl ConfigSelector for FailSelector {
    fn select(&self, _: &RpcInfo<'_>) -> Result<RpcConfig, Status> {
        Err(Status::unavailable(self.0.clone()))
    }
}

/// Resolves a `LOGICAL_DNS` cluster's `host:port` now and every [`DNS_REFRESH`],
/// reporting the addresses as one locality of priority 0.
async fn resolve_dns(target: String, tx: mpsc::UnboundedSender<Event>) {
    let name: Arc<str> = format!("{DNS_MARK}{target}").into();
    loop {
        let what = match tokio::net::lookup_host(target.as_str()).await {
            Ok(addresses) => {
                let endpoints: Vec<Endpoint> = addresses
                    .map(|a| Endpoint {
                        address: a.to_string(),
                        weight: 1,
                        health: "UNKNOWN",
                    })
                    .collect();
                WatchEvent::Changed(Resource::Endpoints(Arc::new(EndpointsUpdate {
                    priorities: vec![vec![LocalityEndpoints {
                        locality: crate::Locality::default(),
                        weight: 1,
                        endpoints,
                    }]],
                    drops: vec![],
                })))
            }
            Err(e) => WatchEvent::Error(format!("resolving {target}: {e}").into()),
        };
        let event = Event {
            ty: ResourceType::Endpoints,
            name: name.clone(),
            what,
        };
        if tx.send(event).is_err() {
            return;
        }
        tokio::time::sleep(DNS_REFRESH).await;
    }
}

/// The virtual host for `authority`, as A28 picks it: an exact domain, else the
/// longest `*.suffix`, else the longest `prefix.*`, else `*`.
pub(crate) fn pick_virtual_host<'a>(
    hosts: &'a [VirtualHost],
    authority: &str,
) -> Option<&'a VirtualHost> {
    let authority = authority.to_ascii_lowercase();
    let mut best: Option<(u8, usize, &VirtualHost)> = None;
    for vh in hosts {
        for domain in &vh.domains {
            let rank = if *domain == authority {
                Some((4, domain.len()))
            } else if domain == "*" {
                Some((1, 0))
            } else if let Some(suffix) = domain.strip_prefix('*') {
                authority.ends_with(suffix).then_some((3, domain.len()))
            } else if let Some(prefix) = domain.strip_suffix('*') {
                authority.starts_with(prefix).then_some((2, domain.len()))
            } else {
                None
            };
            if let Some((kind, len)) = rank
                && best.is_none_or(|(k, l, _)| (kind, len) > (k, l))
            {
                best = Some((kind, len, vh));
            }
        }
    }
    best.map(|(_, _, vh)| vh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: vec![],
        }
    }

    #[test]
    fn virtual_hosts_are_picked_by_specificity() {
        let hosts = [
            vh("any", &["*"]),
            vh("prefix", &["svc.*"]),
            vh("suffix", &["*.example.com", "*.com"]),
            vh("exact", &["svc.example.com"]),
        ];
        let pick = |a| pick_virtual_host(&hosts, a).map(|v| v.name.as_str());
        assert_eq!(pick("svc.example.com"), Some("exact"));
        assert_eq!(pick("SVC.other.example.com"), Some("suffix"));
        assert_eq!(pick("svc.internal"), Some("prefix"));
        assert_eq!(pick("other"), Some("any"));
        assert_eq!(pick_virtual_host(&hosts[1..], "x"), None);
    }
}
