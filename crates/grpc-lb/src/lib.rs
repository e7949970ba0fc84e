//! Client-side load balancing and service discovery for gRPC in Rust: the facade that
//! re-exports the `grpc-lb` crates, so an application depends on one crate and picks
//! backends with features.
//!
//! | path | crate | feature |
//! |---|---|---|
//! | `grpc_lb::*` | `lb-core`: the model (resolvers, balancers, subconns, pickers, service config) | always |
//! | [`grpc_lb::policies`](policies) | `lb-policies`: `pick_first`, `round_robin`, `weighted_round_robin` (ORCA), `least_request`, `peak_ewma`, `ring_hash`, `outlier_detection` | always |
//! | [`grpc_lb::resolvers`](resolvers) | `lb-resolvers`: DNS, etcd, ZooKeeper | `dns`, `etcd`, `zookeeper` |
//! | `grpc_lb::tonic` | `lb-tonic`: the load-balancing channel | `tonic` (default); `tls` adds rustls |
//! | `grpc_lb::orca` | `lb-orca` with its server side: load reports for `weighted_round_robin` | `orca-server` |
//!
//! ```
//! use grpc_lb::{ServiceConfig, policies};
//!
//! let registry = policies::registry();
//! let config = ServiceConfig::parse(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#, &registry)?;
//! assert_eq!(config.lb_policy().map(|p| p.name.as_str()), Some("round_robin"));
//! # Ok::<(), grpc_lb::Error>(())
//! ```

pub use lb_core::*;
#[cfg(feature = "orca-server")]
pub use lb_orca as orca;
pub use lb_policies as policies;
pub use lb_resolvers as resolvers;
#[cfg(feature = "tonic")]
pub use lb_tonic as tonic;
