//! `xds_cluster_manager_experimental`: one child per cluster, each RPC sent to the
//! cluster its route chose, as grpc-go's `clustermanager`.
//!
//! ```json
//! {"xds_cluster_manager_experimental": {"children": {
//!    "cluster_a": {"childPolicy": [{"round_robin": {}}]},
//!    "cluster_b": {"childPolicy": [{"ring_hash": {}}]}}}}
//! ```
//!
//! * The route is chosen per RPC by the resolver's config selector
//!   ([`lb_core::routing::ConfigSelector`]), which sets the [`PickedCluster`] pick
//!   attribute; a pick asks that cluster's child. An RPC whose cluster is not a
//!   child (or that names none) fails with `UNAVAILABLE`, wait-for-ready or not.
//! * Each child gets the addresses whose hierarchy path starts with its name
//!   ([`lb_core::hierarchy`]).
//! * The state aggregates as grpc-go's (`READY` if any cluster is, else
//!   `CONNECTING`, else `IDLE`, else `TRANSIENT_FAILURE`, a retrying cluster still
//!   counting as failing); the picker always holds every child's picker, so an RPC
//!   to a cluster that is failing fails while others succeed.
//! * A removed cluster is kept 15 minutes in case it comes back (as gRPC C-core;
//!   grpc-go closes it at once).

use std::collections::HashMap;
use std::sync::Arc;

use lb_core::child::{ChildManager, ChildPolicy, counted_state, parse_child_policy};
use lb_core::hierarchy;
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, LbConfig, PickInfo, PickResult, Picker, Status,
};
use serde_json::Value;

use crate::config::Fields;
use crate::parent::{Parent, ParentBalancer};

/// The policy's name in service configs (grpc-go's).
pub const NAME: &str = "xds_cluster_manager_experimental";

/// The pick attribute naming the cluster an RPC goes to, set by the resolver's
/// config selector (an xDS route's cluster).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PickedCluster(pub Arc<str>);

/// The `xds_cluster_manager_experimental` builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterManager;

/// `xds_cluster_manager_experimental`'s parsed config: each cluster's child policy.
#[derive(Debug, Clone, Default)]
pub struct ClusterManagerConfig {
    /// Child policies by cluster name.
    pub children: HashMap<String, ChildPolicy>,
}

impl BalancerBuilder for ClusterManager {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ParentBalancer(ClusterManagerBalancer {
            children: ChildManager::new(options.clone()),
            counted: HashMap::new(),
        }))
    }

    fn parse_config(&self, config: &Value) -> Result<LbConfig, Error> {
        self.parse_config_in(config, &BalancerRegistry::new())
    }

    fn parse_config_in(
        &self,
        config: &Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let f = Fields::of(NAME, config)?;
        let mut children = HashMap::new();
        for (name, child) in f.named_objects("children")? {
            let policy = child
                .get("childPolicy")
                .ok_or_else(|| child.error("childPolicy", "is required"))
                .and_then(|c| parse_child_policy(c, &child.path("childPolicy"), NAME, registry))?;
            children.insert(name.to_owned(), policy);
        }
        Ok(LbConfig::new(ClusterManagerConfig { children }))
    }
}

struct ClusterManagerBalancer {
    children: ChildManager<String>,
    /// Each cluster's state as the aggregate counts it ([`counted_state`]).
    counted: HashMap<String, ConnectivityState>,
}

impl ClusterManagerBalancer {
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        self.publish_if(false, cc);
    }

    /// Publishes if a child published, or if `forced`.
    fn publish_if(&mut self, forced: bool, cc: &mut dyn ClientConn) {
        if !self.children.take_published() && !forced {
            return;
        }
        for key in self.children.take_published_keys() {
            if let Some((state, _)) = self.children.child(&key) {
                let before = self
                    .counted
                    .get(&key)
                    .copied()
                    .unwrap_or(ConnectivityState::Connecting);
                self.counted.insert(key, counted_state(before, state));
            }
        }
        let children = &self.children;
        self.counted.retain(|k, _| children.is_started(k));
        let pickers: Vec<Named> = self
            .children
            .children()
            .map(|(k, _, picker)| (Arc::from(k.as_str()), picker))
            .collect();
        let state = lb_core::child::aggregate(self.counted.values().copied());
        cc.update_state(state, Arc::new(ClusterPicker::new(pickers)));
    }
}

/// Clusters up to which a pick scans a list rather than hashing the name.
const SCAN: usize = 16;

/// A cluster's name and picker.
type Named = (Arc<str>, Arc<dyn Picker>);

/// Sends each RPC to the picker of the cluster its route chose.
pub struct ClusterPicker {
    /// Few clusters: scanned (a name that is the same `Arc` as the key matches
    /// without comparing bytes).
    few: Box<[Named]>,
    /// Many: by name.
    many: HashMap<Arc<str>, Arc<dyn Picker>>,
}

impl ClusterPicker {
    fn new(pickers: Vec<Named>) -> Self {
        if pickers.len() <= SCAN {
            Self {
                few: pickers.into_boxed_slice(),
                many: HashMap::new(),
            }
        } else {
            Self {
                few: Box::new([]),
                many: pickers.into_iter().collect(),
            }
        }
    }

    #[inline]
    fn find(&self, cluster: &Arc<str>) -> Option<&Arc<dyn Picker>> {
        if self.many.is_empty() {
            self.few
                .iter()
                .find(|(name, _)| Arc::ptr_eq(name, cluster) || **name == **cluster)
                .map(|(_, picker)| picker)
        } else {
            self.many.get(cluster)
        }
    }
}

impl Picker for ClusterPicker {
    #[inline]
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let cluster = info.attribute::<PickedCluster>();
        match cluster.and_then(|c| self.find(&c.0)) {
            Some(picker) => picker.pick(info),
            // A status error: the RPC ends, wait-for-ready or not (as grpc-go).
            None => PickResult::Drop(Status::unavailable(format!(
                "unknown cluster selected for RPC: {:?}",
                cluster.map_or("", |c| &c.0)
            ))),
        }
    }
}

impl Parent for ClusterManagerBalancer {
    fn children(&mut self) -> &mut ChildManager<String> {
        &mut self.children
    }

    fn update(&mut self, state: ClientConnState, cc: &mut dyn ClientConn) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<ClusterManagerConfig>())
            .cloned()
            .ok_or_else(|| Error::lb_config(NAME, "$", "a config with children is required"))?;
        let mut split = hierarchy::group(state.addresses);
        let gone: Vec<String> = self
            .counted
            .keys()
            .filter(|k| !config.children.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.children.remove(&key, cc);
        }
        let mut first_error = None;
        for (name, policy) in config.children {
            let addresses = split.remove(&name).unwrap_or_default();
            let child_state =
                ClientConnState::new(addresses).with_attributes(state.attributes.clone());
            self.counted
                .entry(name.clone())
                .or_insert(ConnectivityState::Connecting);
            let result = self
                .children
                .set(name.clone(), policy, child_state, cc)
                .and_then(|()| self.children.start(&name, cc));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        // With no cluster left, nothing publishes: fail RPCs at once.
        let forced = self.counted.is_empty();
        self.publish_if(forced, cc);
        first_error.map_or(Ok(()), Err)
    }

    fn settle(&mut self, cc: &mut dyn ClientConn) {
        self.publish(cc);
    }
}
