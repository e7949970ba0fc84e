//! Load-balancing policies for `grpc-lb`, written against `lb-core`:
//!
//! | policy | module | what it does |
//! |---|---|---|
//! | `pick_first` (the default) | [`pick_first`] | one connection, to the first address that works |
//! | `round_robin` | [`round_robin`] | all addresses connected, RPCs spread evenly |
//! | `weighted_round_robin` | [`weighted_round_robin`] | round robin in proportion to weights: the backends' load reports (ORCA, gRFC A58), else the resolver's |
//! | `least_request` | [`least_request`] | the fewest RPCs in flight of a few random backends (gRFC A48) |
//! | `peak_ewma` | [`peak_ewma`] | the lower latency × load of two random backends (linkerd, Finagle) |
//! | `ring_hash` | [`ring_hash`] | a consistent-hash ring keyed by a request header: affinity (gRFC A42, A76) |
//! | `outlier_detection` | [`outlier_detection`] | a parent of any policy: ejects backends whose RPCs fail (gRFC A50) |
//! | `priority_experimental` | [`priority`] | a parent: children in priority order, failing over and back (gRFC A56) |
//! | `weighted_target_experimental` | [`weighted_target`] | a parent: targets picked in proportion to their weights |
//! | `xds_cluster_manager_experimental` | [`cluster_manager`] | a parent: each RPC to the cluster its route chose |
//!
//! Every pick is lock-free and allocation-free. [`registry`] returns a registry with
//! all of them, for a channel (`lb-tonic`) or a service config to choose from:
//!
//! ```
//! use lb_core::{BalancerRegistry, ServiceConfig};
//!
//! let registry: BalancerRegistry = lb_policies::registry();
//! let config = ServiceConfig::parse(
//!     r#"{"loadBalancingConfig": [{"weighted_round_robin": {}}, {"round_robin": {}}]}"#,
//!     &registry,
//! )?;
//! assert_eq!(config.lb_policy().unwrap().name, "weighted_round_robin");
//! # Ok::<(), lb_core::Error>(())
//! ```
//!
//! To write your own policy, see `lb_core::base` (a picker over the ready set) or
//! implement `lb_core::Balancer` directly, as [`pick_first`] does.

mod choice;
pub mod cluster_manager;
mod config;
mod cursor;
pub mod least_request;
pub mod outlier_detection;
mod parent;
pub mod peak_ewma;
pub mod pick_first;
pub mod priority;
pub mod ring_hash;
pub mod round_robin;
pub mod weighted_round_robin;
pub mod weighted_target;

use lb_core::BalancerRegistry;

pub use cluster_manager::ClusterManager;
pub use least_request::LeastRequest;
pub use outlier_detection::OutlierDetection;
pub use peak_ewma::PeakEwma;
pub use pick_first::PickFirst;
pub use priority::Priority;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;
pub use weighted_target::WeightedTarget;

/// The policy a channel uses when its service config names none, as in gRPC.
pub const DEFAULT_POLICY: &str = pick_first::NAME;

/// A registry with every policy of this crate.
pub fn registry() -> BalancerRegistry {
    let mut registry = BalancerRegistry::new();
    registry
        .register(PickFirst)
        .register(round_robin::builder())
        .register(weighted_round_robin::builder())
        .register(least_request::builder())
        .register(least_request::grpc_go_builder())
        .register(peak_ewma::builder())
        .register(RingHash::new())
        .register(OutlierDetection)
        .register(Priority)
        .register(WeightedTarget)
        .register(ClusterManager);
    registry
}
