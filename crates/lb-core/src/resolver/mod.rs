//! The resolver side: turning a target into addresses and pushing them to the channel.

mod registry;
pub use registry::ResolverRegistry;

use std::fmt;
use std::sync::Arc;

use crate::routing::ConfigSelector;
use crate::{Address, Attributes, SharedError, Target};

/// The error type a [`ResolverBuilder`] returns when it cannot build a resolver.
pub type BuildError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Builds resolvers for one target scheme (`dns`, `etcd`, `zk`, `static`, ...).
///
/// Registered in a [`crate::ResolverRegistry`] under [`ResolverBuilder::scheme`]. Called
/// by the channel once per channel, when it is created; must not block.
pub trait ResolverBuilder: Send + Sync + 'static {
    /// The scheme this builder serves, lower-case.
    fn scheme(&self) -> &str;

    /// Starts resolving `target` and returns the running resolver.
    ///
    /// The resolver pushes every result to `cc`, from any thread and at any time, until
    /// it is dropped. An error here (say, an endpoint this resolver cannot read) fails
    /// channel creation; errors while running go to [`ClientConn::report_error`].
    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError>;

    /// The default `:authority` (and TLS server name) of a channel to `target`, when
    /// the target names one host: `svc.example.com:443` for
    /// `dns:///svc.example.com:443`, as grpc-go uses the target's endpoint.
    ///
    /// `None` (the default) means the target has no single host (a static list, a
    /// registry's service name): each connection then uses its own address. A
    /// channel's explicit authority and an address's [`crate::Authority`] attribute
    /// take precedence over this.
    fn authority(&self, target: &Target) -> Option<String> {
        let _ = target;
        None
    }
}

/// A running resolver. Dropping it stops it: its background work ends and it sends
/// nothing more to its [`ClientConn`].
pub trait Resolver: Send + 'static {
    /// A hint to re-resolve now (the balancer saw a failure). Non-blocking; a resolver
    /// may rate-limit it or ignore it (watch-based resolvers are always current).
    fn resolve_now(&self);
}

/// What the channel offers a resolver: where results go.
///
/// Implemented by the channel; both methods may be called from any thread, never
/// block, and only enqueue the update for the channel's control task.
pub trait ClientConn: Send + Sync + 'static {
    /// A new complete state: it replaces the previous one (states are not deltas).
    fn update_state(&self, state: ResolverState);

    /// Resolution failed. The channel keeps the last good state and tells the balancer,
    /// which decides whether RPCs fail; the resolver keeps trying by itself.
    fn report_error(&self, error: SharedError);

    /// Whether the channel reads service configs from this resolver (it does not
    /// when built with `disable_resolver_service_config`). A resolver that must ask
    /// for a config separately (DNS TXT records) can skip asking. Default: yes.
    fn wants_service_config(&self) -> bool {
        true
    }
}

/// One complete resolution result.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ResolverState {
    /// Every address of the target, in the resolver's order.
    pub addresses: Vec<Address>,
    /// A service config in gRPC's JSON form, if the naming system carries one. The
    /// channel parses it; if it is invalid the channel keeps the previous config.
    pub service_config: Option<String>,
    /// The naming system carried a service config the resolver could not read (a
    /// malformed DNS `grpc_config` record, say): the channel treats it as an invalid
    /// service config (gRFC A21), keeping the previous one. Wins over
    /// `service_config`.
    pub service_config_error: Option<SharedError>,
    /// A per-RPC config selector (gRFC A31): which method config applies to each
    /// RPC and what its picks see. Used with the state's service config.
    pub config_selector: Option<Arc<dyn ConfigSelector>>,
    /// Attributes for the whole state, passed through to the balancer.
    pub attributes: Attributes,
}

impl PartialEq for ResolverState {
    /// Errors compare by their messages.
    fn eq(&self, other: &Self) -> bool {
        self.addresses == other.addresses
            && self.service_config == other.service_config
            && self.service_config_error.as_ref().map(ToString::to_string)
                == other.service_config_error.as_ref().map(ToString::to_string)
            && match (&self.config_selector, &other.config_selector) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.attributes == other.attributes
    }
}

impl ResolverState {
    /// A state with these addresses, no service config and no attributes.
    pub fn new(addresses: Vec<Address>) -> Self {
        Self {
            addresses,
            ..Self::default()
        }
    }

    /// This state with a service config (JSON).
    #[must_use]
    pub fn with_service_config(mut self, json: impl Into<String>) -> Self {
        self.service_config = Some(json.into());
        self
    }

    /// This state with a service config the resolver found but could not read.
    #[must_use]
    pub fn with_service_config_error(mut self, error: SharedError) -> Self {
        self.service_config_error = Some(error);
        self
    }

    /// This state with a per-RPC config selector.
    #[must_use]
    pub fn with_config_selector(mut self, selector: Arc<dyn ConfigSelector>) -> Self {
        self.config_selector = Some(selector);
        self
    }

    /// This state with attributes.
    #[must_use]
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// This state with a note on how it was resolved ([`crate::ResolutionNote`]): what a
    /// policy's error says when the list is empty. Kept among the attributes.
    #[must_use]
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.attributes = self.attributes.with(crate::ResolutionNote(note.into()));
        self
    }
}

impl fmt::Debug for ResolverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverState")
            .field("addresses", &self.addresses)
            .field("service_config", &self.service_config.is_some())
            .field(
                "service_config_error",
                &self.service_config_error.as_ref().map(ToString::to_string),
            )
            .field("config_selector", &self.config_selector.is_some())
            .field("attributes", &self.attributes)
            .finish()
    }
}
