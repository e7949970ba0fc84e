//! Name resolvers for `grpc-lb`, written against `lb-core`'s [`ResolverBuilder`] and
//! [`Resolver`] traits.
//!
//! | scheme | builder | feature |
//! |---|---|---|
//! | `static:///a:1,b:2` | [`StaticResolverBuilder`] | always |
//! | `passthrough:///host:port` | [`PassthroughResolverBuilder`] | always |
//! | `unix:///abs/path`, `unix:rel/path`, `unix-abstract:name` | [`UnixResolverBuilder`] | always |
//! | `dns:///host:port`, `dns://server-ip:port/host:port` | `dns::DnsResolverBuilder` | `dns` |
//! | `etcd:///service`, `etcd://host:port/service` | `etcd::EtcdResolverBuilder` (and `etcd::EtcdRegistrar`) | `etcd` |
//! | `zk:///service`, `zk://host:port,host:port/service` | `zookeeper::ZkResolverBuilder` (and `zookeeper::ZkRegistrar`) | `zookeeper` |
//!
//! DNS, etcd and ZooKeeper resolvers (and the server-side registrars) sit behind the
//! features `dns`, `etcd` and `zookeeper`.
//!
//! ```
//! use lb_core::ResolverRegistry;
//!
//! let registry = lb_resolvers::registry();
//! let (target, builder) = registry.resolve("static:///127.0.0.1:50051,127.0.0.1:50052")?;
//! assert_eq!(builder.scheme(), "static");
//! assert_eq!(target.endpoint(), "127.0.0.1:50051,127.0.0.1:50052");
//! # Ok::<(), lb_core::Error>(())
//! ```
//!
//! [`ResolverBuilder`]: lb_core::ResolverBuilder
//! [`Resolver`]: lb_core::Resolver

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
mod backoff;
#[cfg(feature = "dns")]
pub mod dns;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod static_list;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

use lb_core::ResolverRegistry;

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub use error::EntryError;
pub use error::Error;

/// Registry metadata of an address (etcd's `Metadata`, Curator's `payload`), as an
/// address attribute.
#[derive(Debug, Clone, PartialEq)]
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub struct Metadata(pub serde_json::Value);

#[cfg(any(feature = "etcd", feature = "zookeeper"))]
mod watching;
pub use static_list::{
    FixedResolver, PassthroughResolverBuilder, StaticResolverBuilder, UnixResolverBuilder,
};

/// A registry with every resolver this build of the crate has. Its default scheme,
/// for targets without one, is `dns` when the `dns` feature is on (as in gRPC), else
/// `passthrough`: either way `localhost:50051` dials that host and port.
pub fn registry() -> ResolverRegistry {
    let mut registry = ResolverRegistry::new();
    registry
        .register(StaticResolverBuilder)
        .register(PassthroughResolverBuilder)
        .register(UnixResolverBuilder::default())
        .register(UnixResolverBuilder::abstract_namespace())
        .set_default_scheme("passthrough");
    #[cfg(feature = "dns")]
    registry
        .register(dns::DnsResolverBuilder::default())
        .set_default_scheme("dns");
    #[cfg(feature = "etcd")]
    registry.register(etcd::EtcdResolverBuilder::default());
    #[cfg(feature = "zookeeper")]
    registry.register(zookeeper::ZkResolverBuilder::default());
    // Schemes left out of this build say what would add them.
    for (scheme, feature) in FEATURES {
        if registry.get(scheme).is_none() {
            registry.note_missing(
                *scheme,
                format!("the `{feature}` feature of grpc-lb (or lb-resolvers)"),
            );
        }
    }
    // The xds resolver lives in lb-xds, which carries its ADS stream over lb-tonic's
    // channel; lb-tonic's `xds` feature registers it in every channel's registry.
    registry.note_missing("xds", "the `xds` feature of grpc-lb (or lb-tonic)");
    registry
}

/// The schemes behind cargo features, and their features.
const FEATURES: &[(&str, &str)] = &[("dns", "dns"), ("etcd", "etcd"), ("zk", "zookeeper")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_left_out_by_its_feature_names_the_feature() {
        let registry = registry();
        for (scheme, feature) in FEATURES {
            let target = format!("{scheme}:///svc");
            match registry.resolve(&target) {
                // Built in: the scheme is registered.
                Ok((t, _)) => assert_eq!(t.scheme(), *scheme),
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message.contains(&format!("the `{feature}` feature")),
                        "{message}"
                    );
                }
            }
        }
        let message = registry.resolve("xds:///svc").err().unwrap().to_string();
        assert!(message.contains("the `xds` feature"), "{message}");
    }
}
