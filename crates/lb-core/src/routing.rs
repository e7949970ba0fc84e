//! Per-RPC routing (gRFC A31's config selector): a resolver may publish, with its
//! state, a [`ConfigSelector`] that the channel asks on every RPC which method
//! config applies and which attributes the RPC's picks see (the cluster an xDS route
//! chose, a request hash). Without one, the service config's method configs apply
//! as usual and picks see no attributes.
//!
//! ```
//! use std::sync::Arc;
//! use lb_core::routing::{ConfigSelector, RequestHash, RpcConfig, RpcInfo};
//! use lb_core::{Attributes, Status};
//!
//! /// Sends `/admin.*` nowhere, everything else with a hash of the `user` header.
//! struct ByUser;
//!
//! impl ConfigSelector for ByUser {
//!     fn select(&self, rpc: &RpcInfo<'_>) -> Result<RpcConfig, Status> {
//!         if rpc.method.starts_with("/admin.") {
//!             return Err(Status::unavailable(format!("no route for {}", rpc.method)));
//!         }
//!         let user = rpc.headers.get("user").map_or(&b""[..], |v| v.as_bytes());
//!         let hash = user.iter().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
//!         Ok(RpcConfig::default().with_attributes(Attributes::new().with(RequestHash(hash))))
//!     }
//! }
//!
//! let selector: Arc<dyn ConfigSelector> = Arc::new(ByUser);
//! let headers = http::HeaderMap::new();
//! assert!(selector.select(&RpcInfo::new("/admin.A/B", &headers)).is_err());
//! ```

use std::fmt;
use std::sync::Arc;

use crate::service_config::MethodConfig;
use crate::{Attributes, Status};

/// What a [`ConfigSelector`] is asked about: one RPC.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RpcInfo<'a> {
    /// The full method path, `/package.Service/Method`.
    pub method: &'a str,
    /// The request headers (gRPC metadata).
    pub headers: &'a http::HeaderMap,
}

impl<'a> RpcInfo<'a> {
    /// Info for an RPC on `method` with `headers`.
    pub fn new(method: &'a str, headers: &'a http::HeaderMap) -> Self {
        Self { method, headers }
    }
}

/// What applies to one RPC.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RpcConfig {
    /// The method config (timeout, wait-for-ready, retry or hedging policy) instead
    /// of the service config's for this method; `None`: none applies.
    pub method_config: Option<Arc<MethodConfig>>,
    /// What the RPC's picks see ([`crate::PickInfo::attribute`]): the cluster a
    /// route chose, a request hash.
    pub attributes: Attributes,
}

impl RpcConfig {
    /// This config with `method_config`.
    #[must_use]
    pub fn with_method_config(mut self, method_config: Arc<MethodConfig>) -> Self {
        self.method_config = Some(method_config);
        self
    }

    /// This config with `attributes` for the RPC's picks.
    #[must_use]
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }
}

/// Chooses, for each RPC, the method config that applies and the attributes its
/// picks see, as gRPC's config selector does for xDS routes.
///
/// # Contract
///
/// * Called by the channel on every RPC, before its first pick, on the caller's
///   task, from any thread: it must be fast and must not block.
/// * An `Err` fails the RPC with that status, wait-for-ready or not; for an RPC no
///   route matches, `UNAVAILABLE` saying so.
/// * Published by a resolver with its state
///   ([`crate::ResolverState::with_config_selector`]); the channel uses the newest
///   one from the state it accepted, and none when it ignores resolver configs.
pub trait ConfigSelector: Send + Sync + 'static {
    /// What applies to the RPC `rpc`.
    fn select(&self, rpc: &RpcInfo<'_>) -> Result<RpcConfig, Status>;
}

impl fmt::Debug for dyn ConfigSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigSelector")
    }
}

/// A pick attribute: the RPC's hash, which `ring_hash` uses instead of hashing a
/// header (gRFC A42: xDS routes compute it from their hash policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHash(pub u64);
