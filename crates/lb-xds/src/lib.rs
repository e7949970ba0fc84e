//! xDS for grpc-lb: `xds:///name` targets whose listeners, routes, clusters and
//! endpoints come from a service-mesh control plane over ADS, as in grpc-go and
//! gRPC C-core.
//!
//! * [`Bootstrap`]: which management server, with which credentials, as whom
//!   (`GRPC_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP_CONFIG`, or built directly).
//! * [`XdsClient`]: one ADS stream per bootstrap, shared by every channel of the
//!   process, with ACK/NACK, a cache, does-not-exist timers and reconnects.
//! * [`resource`]: the four resource types, decoded and validated as gRPC validates
//!   them.
//! * [`XdsResolverBuilder`]: the `xds` scheme, which turns the resources into the
//!   channel's policy tree ([`tree`]) and per-RPC routes.
//! * [`cluster_impl`]: the `xds_cluster_impl_experimental` policy (drops, circuit
//!   breaking), which the tree uses; [`register_policies`] adds it to a registry.
//!
//! This crate carries no transport: an [`AdsTransport`] makes the gRPC channel to
//! the management server. `lb-tonic`'s `xds` feature provides one over its own
//! `LbChannel` and registers the scheme in every channel's default registries.
//!
//! ```
//! use lb_xds::resource::{self, ResourceType};
//! use envoy_types::pb::google::protobuf::Any;
//!
//! // A listener without an HttpConnectionManager is not a client listener.
//! let any = Any { type_url: ResourceType::Listener.type_url().into(), value: vec![10, 1, b'l'] };
//! let decoded = resource::decode(ResourceType::Listener, &any);
//! assert_eq!(decoded.name.as_deref(), Some("l"));
//! assert_eq!(decoded.result.unwrap_err().field, "api_listener");
//! ```

pub mod bootstrap;
pub mod client;
pub mod cluster_impl;
mod json;
pub mod resolver;
pub mod resource;
mod selector;
pub mod tree;

use lb_core::BalancerRegistry;

pub use bootstrap::{Bootstrap, BootstrapError, ChannelCreds, Locality, Node, TlsCreds, XdsServer};
pub use client::{AdsTransport, GrpcChannel, XdsClient, XdsClientOptions};
pub use resolver::XdsResolverBuilder;
pub use tree::XdsEndpoint;

/// Adds the policies an xDS tree needs beyond `lb_policies::registry()`'s
/// (`xds_cluster_impl_experimental`).
pub fn register_policies(registry: &mut BalancerRegistry) {
    registry.register(cluster_impl::ClusterImpl);
}
