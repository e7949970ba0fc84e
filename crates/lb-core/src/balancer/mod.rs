//! The balancer side: turning addresses into subconns and subconn states into pickers.

mod registry;
pub use registry::BalancerRegistry;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    Address, Attributes, ConnectivityState, Error, Picker, SharedError, SubConn, SubConnState,
    Target,
};

/// Builds balancers of one policy, and parses that policy's config.
///
/// Registered in a [`crate::BalancerRegistry`] under [`BalancerBuilder::name`], the
/// policy's gRPC name (`pick_first`, `round_robin`, ...). Called from the channel's
/// control task; must not block.
pub trait BalancerBuilder: Send + Sync + 'static {
    /// The policy name, as it appears in a service config's `loadBalancingConfig`.
    fn name(&self) -> &str;

    /// A new balancer for one channel.
    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer>;

    /// Parses this policy's entry of `loadBalancingConfig` (the value under the policy's
    /// name; usually an object). The result reaches the balancer in
    /// [`ClientConnState::config`].
    ///
    /// Errors name the JSON path inside the config ([`Error::lb_config`]). The default
    /// accepts any object and yields an empty config.
    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        if config.is_object() {
            Ok(LbConfig::new(()))
        } else {
            Err(Error::lb_config(self.name(), "$", "expected a JSON object"))
        }
    }

    /// Parses this policy's config with access to every registered policy: what a
    /// parent policy implements to parse its `childPolicy` list
    /// ([`crate::child::parse_child_policy`]). The service config calls this one; the
    /// default calls [`BalancerBuilder::parse_config`].
    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let _ = registry;
        self.parse_config(config)
    }
}

/// What a balancer is built with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    /// The channel's target.
    pub target: Target,
    /// Every policy the channel knows: a parent policy builds its children from it.
    pub registry: BalancerRegistry,
}

impl BuildOptions {
    /// Options for a channel dialing `target`, with an empty registry.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            registry: BalancerRegistry::new(),
        }
    }

    /// These options with the channel's policy registry.
    #[must_use]
    pub fn with_registry(mut self, registry: BalancerRegistry) -> Self {
        self.registry = registry;
        self
    }
}

/// A balancer's timer, set with [`ClientConn::schedule`] and delivered to
/// [`Balancer::timer`].
///
/// The balancer chooses the value ([`TimerId::new`]); any `u64` will do. On its way
/// up a tree of policies each parent's wrapped [`ClientConn`] adds a hop naming the
/// child it came from ([`TimerId::via`]), and on the way back down each parent takes
/// its hop off ([`TimerId::into_child`]) to find the child to hand it to, so a timer
/// reaches the exact balancer that set it at any depth. A timer a balancer receives
/// is its own when no hop is left ([`TimerId::own_id`]); comparing with the value it
/// set (`timer == TimerId::new(1)`) says the same.
///
/// ```
/// use lb_core::TimerId;
///
/// const SWEEP: TimerId = TimerId::new(1);
/// // A child's timer, as two levels of parents see it on its way up...
/// let routed = SWEEP.via(7).via(3);
/// assert_eq!(routed.own_id(), None);
/// // ...and as each level routes it back down.
/// let (child, rest) = routed.into_child().unwrap();
/// assert_eq!(child, 3);
/// let (grandchild, own) = rest.into_child().unwrap();
/// assert_eq!((grandchild, own.own_id()), (7, Some(1)));
/// assert_eq!(own, SWEEP);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimerId {
    id: u64,
    /// The children it passed through on its way up, innermost first: the last one
    /// is the receiving parent's child.
    route: Vec<u64>,
}

impl TimerId {
    /// The timer `id`, as the balancer that sets it names it.
    pub const fn new(id: u64) -> Self {
        Self {
            id,
            route: Vec::new(),
        }
    }

    /// The value the receiving balancer set, if the timer is its own; `None` for a
    /// timer of one of its children (route it with [`TimerId::into_child`], or with
    /// the helpers of [`crate::child`]).
    pub fn own_id(&self) -> Option<u64> {
        self.route.is_empty().then_some(self.id)
    }

    /// This timer as a parent passes it up: set by (a descendant of) its child
    /// `child`. Called by a parent's wrapped [`ClientConn::schedule`].
    #[must_use]
    pub fn via(mut self, child: u64) -> Self {
        self.route.push(child);
        self
    }

    /// The child of the receiving parent this timer came from, without taking it.
    pub fn next_hop(&self) -> Option<u64> {
        self.route.last().copied()
    }

    /// Splits off the receiving parent's hop: the child the timer goes to, and the
    /// timer as that child receives it. `None` for the parent's own timer.
    pub fn into_child(mut self) -> Option<(u64, TimerId)> {
        let child = self.route.pop()?;
        Some((child, self))
    }

    /// How many parents the timer still has to pass on its way down.
    pub fn depth(&self) -> usize {
        self.route.len()
    }
}

/// A timer that was set ([`ClientConn::schedule`]): cancelling it means it is never
/// delivered, even if its time has come and its delivery is already queued. Clones
/// share the timer. Dropping the handle does not cancel it.
#[derive(Debug, Clone, Default)]
pub struct TimerHandle(Arc<AtomicBool>);

impl TimerHandle {
    /// A handle for a new timer, not cancelled. A [`ClientConn`] makes one per
    /// [`ClientConn::schedule`] and checks it before delivering the timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the timer. Idempotent; a timer already delivered is unaffected.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`TimerHandle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How a subconn is created ([`ClientConn::new_subconn_with`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubConnOptions {
    /// Health-check this subconn when the service config has a `healthCheckConfig`
    /// (gRFC A17): it then counts as `READY` only while the server's health service
    /// says `SERVING`. Policies that spread load (`round_robin`) set it; `pick_first`
    /// does not, as in grpc-go.
    pub health_check: bool,
}

impl SubConnOptions {
    /// Options with health checking asked for.
    #[must_use]
    pub fn health_checked() -> Self {
        Self { health_check: true }
    }
}

/// A load-balancing policy instance, owned by one channel.
///
/// # Contract
///
/// * Every method is called from the channel's one control task, one call at a time,
///   so a balancer is plain `&mut self` state and needs no locks.
/// * No method may block: start work (`SubConn::connect`) and react to its outcome
///   when it arrives as a state update.
/// * The channel handle `cc` is passed into each call rather than stored: use it to
///   create subconns and to publish `(state, picker)` pairs.
/// * Before the first [`ClientConn::update_state`] the channel treats the balancer as
///   `Connecting` and queues RPCs.
pub trait Balancer: Send + 'static {
    /// New addresses and config from the resolver (a complete state, not a delta).
    ///
    /// Returning an error (typically [`Error::NoAddresses`]) tells the channel the state
    /// was unusable; the channel asks the resolver to re-resolve.
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error>;

    /// The resolver failed. The previous addresses still stand; a balancer that has
    /// working subconns should keep using them, one that has none should fail RPCs
    /// with this error.
    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn);

    /// A subconn this balancer created changed state. Updates for a subconn arrive in
    /// the order they happened; after [`SubConn::shutdown`] there may be one final
    /// `Shutdown` update, which a balancer can ignore.
    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    );

    /// The channel left idle (an RPC arrived while the balancer reported `Idle`): start
    /// connecting again.
    fn exit_idle(&mut self, cc: &mut dyn ClientConn);

    /// A timer this balancer set with [`ClientConn::schedule`] went off. The default
    /// ignores it (a balancer that never schedules gets none).
    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        let _ = (timer, cc);
    }

    /// The channel is closing or switching policy. A balancer may shut its subconns
    /// down here; the channel shuts down any it leaves open. Called once, last.
    fn close(&mut self, cc: &mut dyn ClientConn) {
        let _ = cc;
    }
}

/// What the channel offers a balancer. Passed into each [`Balancer`] call.
pub trait ClientConn {
    /// Creates a subconn for `address`, in state `Idle`. It does not connect until
    /// [`SubConn::connect`] is called. Fails only when the channel is shutting down.
    fn new_subconn(&mut self, address: Address) -> Result<SubConn, Error> {
        self.new_subconn_with(address, SubConnOptions::default())
    }

    /// [`ClientConn::new_subconn`] with options (health checking).
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error>;

    /// Calls this balancer's [`Balancer::timer`] with `timer` once `after` has passed
    /// (on the control task, as every other call), unless the returned handle is
    /// cancelled first. None fires after [`Balancer::close`]. A parent's wrapped
    /// `ClientConn` passes the timer on with its child's hop added
    /// ([`TimerId::via`]) and returns its parent's handle.
    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle;

    /// Publishes the channel's aggregate state and the picker for all RPCs from now on.
    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>);

    /// Asks the resolver to re-resolve (the balancer saw failures).
    fn resolve_now(&mut self);

    /// The channel's target.
    fn target(&self) -> &Target;
}

/// A resolver state as the balancer receives it: the addresses plus the balancer's
/// parsed config.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ClientConnState {
    /// Every address, in the resolver's order.
    pub addresses: Vec<Address>,
    /// The resolver state's attributes.
    pub attributes: Attributes,
    /// This policy's config from the service config, parsed by
    /// [`BalancerBuilder::parse_config`]; `None` when the service config names none.
    pub config: Option<LbConfig>,
}

impl ClientConnState {
    /// A state with these addresses and no config.
    pub fn new(addresses: Vec<Address>) -> Self {
        Self {
            addresses,
            ..Self::default()
        }
    }

    /// This state with a policy config.
    #[must_use]
    pub fn with_config(mut self, config: LbConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// This state with attributes.
    #[must_use]
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }
}

/// A policy's parsed config: whatever type its builder's
/// [`BalancerBuilder::parse_config`] produced, read back with [`LbConfig::get`].
#[derive(Clone)]
pub struct LbConfig(Arc<dyn Any + Send + Sync>);

impl LbConfig {
    /// Wraps a parsed config.
    pub fn new<T: Any + Send + Sync>(config: T) -> Self {
        Self(Arc::new(config))
    }

    /// The config, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for LbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LbConfig(..)")
    }
}
