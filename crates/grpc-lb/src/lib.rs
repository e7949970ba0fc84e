//! Client-side load balancing and service discovery for gRPC in Rust, built on
//! tonic: the crate an application depends on. It re-exports the `grpc-lb` crates,
//! and features choose the resolvers and the server side.
//!
//! | path | what | feature |
//! |---|---|---|
//! | `grpc_lb::*` | the model (`lb-core`): resolvers, balancers, subconns, pickers, service config, errors | always |
//! | [`grpc_lb::channel`](channel), [`grpc_lb::LbChannel`](LbChannel) | the load-balancing channel (`lb-tonic`), a `tower::Service` that any tonic-generated client takes | `channel` (default); `tls` adds rustls |
//! | [`grpc_lb::policies`](policies) | `pick_first`, `round_robin`, `weighted_round_robin` (ORCA), `least_request`, `peak_ewma`, `ring_hash`, `outlier_detection`, and the tree policies `priority`, `weighted_target`, `xds_cluster_manager` | always |
//! | [`grpc_lb::resolvers`](resolvers) | `static`, `passthrough`, `unix` always; DNS, etcd, ZooKeeper resolvers and registrars | `dns`, `etcd`, `zookeeper` |
//! | `grpc_lb::server` | the zero-downtime stop of a self-registering tonic server (`lb-server`), with the registrars of the registry features | `server` |
//! | `grpc_lb::xds` | xDS: `xds:///name` targets from a control plane over ADS (`lb-xds`); the scheme is in every channel's registry | `xds` |
//! | `grpc_lb::orca` | ORCA load reports on the server side, for `weighted_round_robin` clients (`lb-orca`) | `orca-server` |
//!
//! The names of the channel's module do not shadow the `tonic` crate: after
//! `use grpc_lb::*;`, `tonic::transport::Server` is still tonic's.
//!
//! ```no_run
//! # #[cfg(feature = "channel")] mod demo {
//! use grpc_lb::LbChannel;
//! use tonic_health::pb::HealthCheckRequest;
//! use tonic_health::pb::health_client::HealthClient;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Round robin over a fixed list; any tonic-generated client takes the channel.
//! let channel = LbChannel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
//!     .policy("round_robin")
//!     .build()?;
//! let mut client = HealthClient::new(channel);
//! let reply = client.check(HealthCheckRequest::default()).await?;
//! println!("{:?}", reply.into_inner().status());
//! # Ok(()) } }
//! ```
//!
//! The README (a `[dependencies]` block, a client and a server) and the guides under
//! `docs/` are written against these paths, and their Rust snippets are compiled as
//! this crate's doc tests.

pub use lb_core::*;
pub use lb_policies as policies;
pub use lb_resolvers as resolvers;

/// The load-balancing channel (`lb-tonic`): [`LbChannel`] and its
/// [`channel::Builder`], per-call extensions, TLS, snapshots.
#[cfg(feature = "channel")]
pub mod channel {
    pub use lb_tonic::*;
}

#[cfg(feature = "channel")]
pub use lb_tonic::LbChannel;

/// The server side (`lb-server`): [`server::Shutdown`], the zero-downtime
/// stop of a self-registering tonic server, and the registrars of the registry
/// features it deregisters.
#[cfg(feature = "server")]
pub mod server {
    pub use lb_server::*;

    #[cfg(feature = "etcd")]
    pub use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
    #[cfg(feature = "zookeeper")]
    pub use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
}

/// xDS (`lb-xds`): the bootstrap, the shared client, the resources and the `xds`
/// resolver; with this feature every channel resolves `xds:///` targets.
#[cfg(feature = "xds")]
pub use lb_xds as xds;

/// ORCA load reports (`lb-orca`) with their server side: a recorder, a tower layer
/// for per-call reports, and the out-of-band service.
#[cfg(feature = "orca-server")]
pub use lb_orca as orca;

// The README and the guides: their Rust snippets compile (and run, where they do
// not need a network) as doc tests of this crate, with the features they use
// (`cargo xtask test` turns every feature on).
#[cfg(all(doctest, feature = "channel", feature = "server", feature = "etcd"))]
#[doc = include_str!("../../../README.md")]
struct Readme;

#[cfg(all(doctest, feature = "tls"))]
#[doc = include_str!("../../../docs/channel.md")]
struct ChannelGuide;

#[cfg(all(doctest, feature = "orca-server", feature = "test-util"))]
#[doc = include_str!("../../../docs/policies.md")]
struct PoliciesGuide;

#[cfg(all(doctest, feature = "channel", feature = "etcd", feature = "zookeeper"))]
#[doc = include_str!("../../../docs/resolvers.md")]
struct ResolversGuide;
