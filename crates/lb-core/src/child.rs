//! Building blocks for parent policies: policies made of other policies.
//!
//! A parent owns children ([`Child`]), each a balancer of any registered policy that
//! talks to the channel through a wrapped [`ClientConn`]: the subconns it creates are
//! recorded as its own, the state and picker it publishes are kept for the parent
//! (which builds its own picker from them), and its timers are tagged so the parent
//! can route them back. The children never know they have a parent.
//!
//! * [`parse_child_policy`]: a `childPolicy` list (`[{"round_robin": {}}]`), the first
//!   registered entry wins, as in `loadBalancingConfig`.
//! * [`Child`]: one child balancer.
//! * [`GracefulSwitch`]: a child whose policy can change: the new one takes over once
//!   it leaves `CONNECTING` (or at once if the old one is not `READY`), as grpc-go's
//!   graceful switch does. The channel itself uses it.
//! * [`ChildManager`]: children keyed by identity (a locality, an endpoint, a
//!   priority), each behind a graceful switch.
//! * [`aggregate`]: the state of a group of children.
//!
//! Timers find their way at any depth: each wrapped [`ClientConn`] adds its child's
//! hop to a timer going up ([`TimerId::via`]), and [`GracefulSwitch::timer`] and
//! [`ChildManager::timer`] take it off on the way down. A parent's own timers arrive
//! with no hop left ([`TimerId::own_id`]).
//!
//! A parent that only filters or counts (outlier detection) keeps one
//! [`GracefulSwitch`] and wraps its picker; see `lb_policies::outlier_detection`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{
    Address, Balancer, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, LbConfig, Picker, QueuePicker, SharedError, SubConn, SubConnId,
    SubConnOptions, SubConnState, Target, TimerHandle, TimerId,
};

/// A child's policy: its registered name and its parsed config.
#[derive(Clone, Debug)]
pub struct ChildPolicy {
    /// The registered policy name.
    pub name: String,
    /// Its config, parsed by its builder.
    pub config: LbConfig,
}

/// Parses a `childPolicy` list for the parent policy `parent`: the first entry whose
/// policy is registered wins (its config parsed by its builder, which may itself be a
/// parent). Errors name `path` and the entry.
///
/// ```
/// use lb_core::child::parse_child_policy;
/// use lb_core::BalancerRegistry;
///
/// let registry = BalancerRegistry::new(); // nothing registered
/// let err = parse_child_policy(&serde_json::json!([{"nope": {}}]), "childPolicy", "parent", &registry)
///     .unwrap_err();
/// assert!(err.to_string().contains("childPolicy"), "{err}");
/// ```
pub fn parse_child_policy(
    value: &Value,
    path: &str,
    parent: &str,
    registry: &BalancerRegistry,
) -> Result<ChildPolicy, Error> {
    let list = value
        .as_array()
        .ok_or_else(|| Error::lb_config(parent, path, "expected an array of policies"))?;
    if list.is_empty() {
        return Err(Error::lb_config(
            parent,
            path,
            "must name at least one policy",
        ));
    }
    let mut names = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let epath = format!("{path}[{i}]");
        let (name, config) = match entry.as_object() {
            Some(obj) if obj.len() == 1 => match obj.iter().next() {
                Some(pair) => pair,
                None => continue,
            },
            _ => {
                return Err(Error::lb_config(
                    parent,
                    epath,
                    "expected an object with exactly one policy name",
                ));
            }
        };
        if let Some(builder) = registry.get(name) {
            let config = builder.parse_config_in(config, registry)?;
            return Ok(ChildPolicy {
                name: name.clone(),
                config,
            });
        }
        names.push(name.clone());
    }
    let none = Error::NoSupportedPolicy {
        names,
        registered: registry.names().into_iter().map(str::to_owned).collect(),
    };
    Err(Error::lb_config(parent, path, none.to_string()))
}

/// The state of a group: `READY` if any member is, else `CONNECTING` if any is, else
/// `IDLE` if any is, else `TRANSIENT_FAILURE` (also for no member), as grpc-go's
/// balancer group aggregates.
pub fn aggregate(states: impl IntoIterator<Item = ConnectivityState>) -> ConnectivityState {
    let (mut connecting, mut idle) = (false, false);
    for s in states {
        match s {
            ConnectivityState::Ready => return ConnectivityState::Ready,
            ConnectivityState::Connecting => connecting = true,
            ConnectivityState::Idle => idle = true,
            _ => {}
        }
    }
    if connecting {
        ConnectivityState::Connecting
    } else if idle {
        ConnectivityState::Idle
    } else {
        ConnectivityState::TransientFailure
    }
}

/// The state a group member counts as in [`aggregate`], given what it counted as
/// before and what it reports now, as grpc-go's aggregators count it: a member that
/// goes from `TRANSIENT_FAILURE` to `CONNECTING` (retrying) still counts as failing,
/// so that a group whose members all keep retrying does not look `CONNECTING` for
/// ever.
pub fn counted_state(before: ConnectivityState, now: ConnectivityState) -> ConnectivityState {
    if before == ConnectivityState::TransientFailure && now == ConnectivityState::Connecting {
        before
    } else {
        now
    }
}

/// What a child published and owns.
struct ChildState {
    state: ConnectivityState,
    picker: Arc<dyn Picker>,
    published: bool,
    subconns: HashMap<SubConnId, SubConn>,
}

/// The [`ClientConn`] a child is given: the parent's, recording what the child does.
struct ChildCc<'a> {
    parent: &'a mut dyn ClientConn,
    child: &'a mut ChildState,
    index: u64,
}

impl ClientConn for ChildCc<'_> {
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error> {
        let subconn = self.parent.new_subconn_with(address, options)?;
        self.child.subconns.insert(subconn.id(), subconn.clone());
        Ok(subconn)
    }

    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.child.state = state;
        self.child.picker = picker;
        self.child.published = true;
    }

    fn resolve_now(&mut self) {
        self.parent.resolve_now();
    }

    fn target(&self) -> &Target {
        self.parent.target()
    }

    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        self.parent.schedule(after, timer.via(self.index))
    }
}

/// One child balancer of a parent policy.
pub struct Child {
    name: String,
    index: u64,
    balancer: Box<dyn Balancer>,
    state: ChildState,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("policy", &self.name)
            .field("state", &self.state.state)
            .field("subconns", &self.state.subconns.len())
            .finish()
    }
}

impl Child {
    /// Builds a child of policy `name` from `options.registry`. `index` is the hop
    /// its timers carry ([`TimerId::via`]); it must be unique among the parent's
    /// children, and is best never reused, so that a late timer of a removed child
    /// cannot reach a new one.
    pub fn build(name: &str, options: &BuildOptions, index: u64) -> Result<Self, Error> {
        let builder = options.registry.require(name)?;
        Ok(Self {
            name: name.to_owned(),
            index,
            balancer: builder.build(options),
            state: ChildState {
                state: ConnectivityState::Connecting,
                picker: Arc::new(QueuePicker),
                published: false,
                subconns: HashMap::new(),
            },
        })
    }

    /// The child's policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state it last published (`CONNECTING` before it published any).
    pub fn state(&self) -> ConnectivityState {
        self.state.state
    }

    /// The picker it last published.
    pub fn picker(&self) -> &Arc<dyn Picker> {
        &self.state.picker
    }

    /// Whether it published since the last call to this method.
    pub fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.state.published)
    }

    /// Whether `subconn` is one the child created.
    pub fn owns(&self, subconn: &SubConn) -> bool {
        self.state.subconns.contains_key(&subconn.id())
    }

    /// The subconns the child created and has not seen shut down.
    pub fn subconns(&self) -> impl Iterator<Item = &SubConn> {
        self.state.subconns.values()
    }

    fn with_cc<R>(
        &mut self,
        cc: &mut dyn ClientConn,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn ClientConn) -> R,
    ) -> R {
        let mut child_cc = ChildCc {
            parent: cc,
            child: &mut self.state,
            index: self.index,
        };
        f(self.balancer.as_mut(), &mut child_cc)
    }

    /// Forwards a resolver state.
    pub fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        self.with_cc(cc, |b, cc| b.update_client_conn_state(state, cc))
    }

    /// Forwards a subconn's state (the parent may alter it first: outlier detection
    /// shows an ejected subconn as `TRANSIENT_FAILURE`).
    pub fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        if state.state == ConnectivityState::Shutdown {
            self.state.subconns.remove(&subconn.id());
        }
        self.with_cc(cc, |b, cc| b.update_subconn_state(subconn, state, cc));
    }

    /// Forwards a resolver error.
    pub fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.with_cc(cc, |b, cc| b.resolver_error(error, cc));
    }

    /// Forwards an exit-idle request.
    pub fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.with_cc(cc, |b, cc| b.exit_idle(cc));
    }

    /// The hop its timers carry.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Forwards a timer of this child's (its hop already taken off).
    pub fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        self.with_cc(cc, |b, cc| b.timer(timer, cc));
    }

    /// Closes the child and shuts down every subconn it left open.
    pub fn close(&mut self, cc: &mut dyn ClientConn) {
        self.with_cc(cc, |b, cc| b.close(cc));
        for (_, sc) in self.state.subconns.drain() {
            sc.shutdown();
        }
    }
}

/// A child whose policy can change without a gap: the new policy gets every update
/// while the old one keeps serving, and takes over as soon as it leaves
/// `CONNECTING`, or at once when the old one is not `READY` (grpc-go's graceful
/// switch). The state and picker it exposes are the current child's.
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use lb_core::child::GracefulSwitch;
/// use lb_core::test_util::RecordingClientConn;
/// use lb_core::{BuildOptions, ConnectivityState, Target};
/// # use lb_core::{BalancerRegistry, BalancerBuilder, Balancer, ClientConn, ClientConnState, Error, SharedError, SubConn, SubConnState};
/// # struct Nop; impl Balancer for Nop {
/// #   fn update_client_conn_state(&mut self, _: ClientConnState, _: &mut dyn ClientConn) -> Result<(), Error> { Ok(()) }
/// #   fn resolver_error(&mut self, _: SharedError, _: &mut dyn ClientConn) {}
/// #   fn update_subconn_state(&mut self, _: &SubConn, _: &SubConnState, _: &mut dyn ClientConn) {}
/// #   fn exit_idle(&mut self, _: &mut dyn ClientConn) {} }
/// # struct B; impl BalancerBuilder for B { fn name(&self) -> &str { "nop" } fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> { Box::new(Nop) } }
/// # let mut registry = BalancerRegistry::new(); registry.register(B);
/// let target = Target::parse("test:///x").unwrap();
/// let mut cc = RecordingClientConn::new(target.clone());
/// let mut switch = GracefulSwitch::new(BuildOptions::new(target).with_registry(registry));
/// switch.switch_to("nop", &mut cc).unwrap();
/// assert_eq!(switch.current_name(), Some("nop"));
/// assert_eq!(switch.state(), ConnectivityState::Connecting);
/// # }
/// ```
pub struct GracefulSwitch {
    options: BuildOptions,
    current: Option<Child>,
    pending: Option<Child>,
    next_index: u64,
    published: bool,
}

impl std::fmt::Debug for GracefulSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulSwitch")
            .field("current", &self.current)
            .field("pending", &self.pending)
            .finish()
    }
}

impl GracefulSwitch {
    /// An empty switch; children are built from `options.registry`.
    pub fn new(options: BuildOptions) -> Self {
        Self {
            options,
            current: None,
            pending: None,
            next_index: 0,
            published: false,
        }
    }

    /// The current child's policy.
    pub fn current_name(&self) -> Option<&str> {
        self.current.as_ref().map(Child::name)
    }

    /// The policy being switched to, if a switch is under way.
    pub fn pending_name(&self) -> Option<&str> {
        self.pending.as_ref().map(Child::name)
    }

    /// The current child's state (`CONNECTING` before any).
    pub fn state(&self) -> ConnectivityState {
        self.current
            .as_ref()
            .map_or(ConnectivityState::Connecting, Child::state)
    }

    /// The current child's picker (queueing before any).
    pub fn picker(&self) -> Arc<dyn Picker> {
        self.current.as_ref().map_or_else(
            || Arc::new(QueuePicker) as Arc<dyn Picker>,
            |c| c.picker().clone(),
        )
    }

    /// Whether what [`GracefulSwitch::state`] and [`GracefulSwitch::picker`] return
    /// changed since the last call: the parent should publish.
    pub fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    /// Every live child: the current one, and the pending one.
    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.current.iter().chain(self.pending.iter())
    }

    /// Whether `subconn` belongs to one of the children.
    pub fn owns(&self, subconn: &SubConn) -> bool {
        self.children().any(|c| c.owns(subconn))
    }

    /// Makes `name` the policy that resolver updates go to: the current one if there
    /// is none, else a pending one (unless it is already current or pending).
    pub fn switch_to(&mut self, name: &str, cc: &mut dyn ClientConn) -> Result<(), Error> {
        if self.pending_name() == Some(name) {
            return Ok(());
        }
        if let Some(mut old) = self.pending.take() {
            old.close(cc); // switching on before the last switch finished
        }
        if self.current_name() == Some(name) {
            return Ok(());
        }
        let child = Child::build(name, &self.options, self.next_index)?;
        self.next_index += 1;
        if self.current.is_none() {
            self.current = Some(child);
        } else {
            self.pending = Some(child);
        }
        Ok(())
    }

    /// The child resolver input goes to: the pending one during a switch.
    fn target_child(&mut self) -> Option<&mut Child> {
        self.pending.as_mut().or(self.current.as_mut())
    }

    /// Forwards a resolver state to the newest child.
    pub fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let result = match self.target_child() {
            Some(child) => child.update_client_conn_state(state, cc),
            None => Ok(()),
        };
        self.settle(cc);
        result
    }

    /// Forwards a subconn's state to the child that owns it.
    pub fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        let owner = [self.current.as_mut(), self.pending.as_mut()]
            .into_iter()
            .flatten()
            .find(|c| c.owns(subconn));
        if let Some(child) = owner {
            child.update_subconn_state(subconn, state, cc);
        }
        self.settle(cc);
    }

    /// Forwards a resolver error to the newest child.
    pub fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        if let Some(child) = self.target_child() {
            child.resolver_error(error, cc);
        }
        self.settle(cc);
    }

    /// Forwards an exit-idle request to the newest child: the pending one during a
    /// switch (as grpc-go's graceful switch), else the current one.
    pub fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        if let Some(child) = self.target_child() {
            child.exit_idle(cc);
        }
        self.settle(cc);
    }

    /// Routes a timer to the child that set it (timers of a replaced child, and
    /// timers that name no child, are dropped).
    pub fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        if let Some((index, inner)) = timer.into_child() {
            let owner = [self.current.as_mut(), self.pending.as_mut()]
                .into_iter()
                .flatten()
                .find(|c| c.index == index);
            if let Some(child) = owner {
                child.timer(inner, cc);
            }
        }
        self.settle(cc);
    }

    /// Closes both children.
    pub fn close(&mut self, cc: &mut dyn ClientConn) {
        for mut child in self.current.take().into_iter().chain(self.pending.take()) {
            child.close(cc);
        }
    }

    /// Takes over with the pending child when it may, and notes publications.
    fn settle(&mut self, cc: &mut dyn ClientConn) {
        let current_published = self.current.as_mut().is_some_and(Child::take_published);
        if current_published {
            self.published = true;
        }
        let current_ready = self.state() == ConnectivityState::Ready;
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let pending_published = pending.take_published();
        // The pending child takes over once it has left CONNECTING, or as soon as the
        // current one is not READY (there is nothing to keep serving from).
        let swap = (pending_published
            && (pending.state() != ConnectivityState::Connecting || !current_ready))
            || (current_published && !current_ready);
        if swap {
            if let Some(mut old) = self.current.take() {
                old.close(cc);
            }
            self.current = self.pending.take();
            self.published = true;
        }
    }
}

/// What one child of a [`ChildManager`] gets on an update.
#[derive(Debug)]
pub struct ChildUpdate<K> {
    /// The child's identity.
    pub key: K,
    /// Its policy (a change of policy is a graceful switch).
    pub policy: ChildPolicy,
    /// Its share of the resolver state.
    pub state: ClientConnState,
}

/// How long a [`ChildManager`] keeps a removed (or stopped) child, with its
/// connections, before it closes it: 15 minutes, as gRPC C-core's `priority`,
/// `weighted_target` and `xds_cluster_manager` keep theirs, so that a key that
/// leaves and comes back does not reconnect. (grpc-go keeps only the priorities it
/// fails back from; it closes removed children at once, as
/// `with_retention(Duration::ZERO)` does.)
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(15 * 60);

/// The hop of a [`ChildManager`]'s own timers (its retention timers), which no
/// child's id reaches.
const RETENTION_HOP: u64 = u64::MAX;

/// One child of a [`ChildManager`].
struct Slot {
    /// The hop its timers carry; never reused.
    id: u64,
    policy: ChildPolicy,
    /// The latest state it was given (what it gets when started).
    state: ClientConnState,
    /// Its balancer, once started.
    switch: Option<GracefulSwitch>,
    /// Stopped or removed, kept until this timer fires (or it is started again).
    retained: Option<TimerHandle>,
    /// Whether the parent still lists it (a removed child lives only until its
    /// retention ends).
    wanted: bool,
    /// It published since the parent last looked.
    published: bool,
    /// Its `resolve_now` calls are dropped.
    ignore_resolve_now: bool,
}

impl Slot {
    /// Started, and not stopped.
    fn active(&self) -> bool {
        self.switch.is_some() && self.retained.is_none()
    }
}

/// Children keyed by identity (a priority, a locality, a cluster, an endpoint),
/// each behind a [`GracefulSwitch`]: what a parent policy is built on, as grpc-go's
/// balancer group.
///
/// * A child is added with its policy and its share of the resolver state
///   ([`ChildManager::set`]), and built and given that state when started
///   ([`ChildManager::start`]); [`ChildManager::update`] does both for a whole set.
/// * A child that is stopped ([`ChildManager::stop`]) or removed
///   ([`ChildManager::remove`]) keeps its balancer and connections for the
///   retention period ([`DEFAULT_RETENTION`], 15 minutes, as C-core), and comes back
///   as it was when started (or added) again within it; then it is closed. A kept
///   child still follows its connections, but its requests to re-resolve are
///   dropped.
/// * Subconn states, timers, resolver errors and exit-idle requests reach the right
///   child in O(1); [`ChildManager::take_published_keys`] says which children
///   published since the last look.
///
/// Iteration order over children is unspecified: a parent that ranks its children
/// (priorities) keeps its own order.
pub struct ChildManager<K> {
    options: BuildOptions,
    children: HashMap<K, Slot>,
    /// Child id → key, for timers.
    keys: HashMap<u64, K>,
    /// Subconn → the id of the child that created it.
    owners: HashMap<SubConnId, u64>,
    next_id: u64,
    retention: Duration,
    published: bool,
    /// Children whose `published` mark was set, in order.
    marked: Vec<K>,
}

impl<K: std::fmt::Debug> std::fmt::Debug for ChildManager<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.children.iter().map(|(k, s)| (k, &s.switch)))
            .finish()
    }
}

/// The [`ClientConn`] a manager's child is given: the parent's, recording the
/// subconns the child creates and adding its hop to its timers.
struct SlotCc<'a> {
    parent: &'a mut dyn ClientConn,
    id: u64,
    owners: &'a mut HashMap<SubConnId, u64>,
    ignore_resolve_now: bool,
}

impl ClientConn for SlotCc<'_> {
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error> {
        let subconn = self.parent.new_subconn_with(address, options)?;
        self.owners.insert(subconn.id(), self.id);
        Ok(subconn)
    }

    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.parent.update_state(state, picker);
    }

    fn resolve_now(&mut self) {
        if !self.ignore_resolve_now {
            self.parent.resolve_now();
        }
    }

    fn target(&self) -> &Target {
        self.parent.target()
    }

    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        self.parent.schedule(after, timer.via(self.id))
    }
}

impl<K: Eq + Hash + Clone> ChildManager<K> {
    /// No children yet; they are built from `options.registry`, and kept
    /// [`DEFAULT_RETENTION`] after they are removed.
    pub fn new(options: BuildOptions) -> Self {
        Self {
            options,
            children: HashMap::new(),
            keys: HashMap::new(),
            owners: HashMap::new(),
            next_id: 0,
            retention: DEFAULT_RETENTION,
            published: false,
            marked: Vec::new(),
        }
    }

    /// This manager with removed children kept `retention` (zero: closed at once).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Calls `f` on child `key`'s balancer (if it has one) with its wrapped
    /// `ClientConn`, and notes whether it published.
    fn with_child<R>(
        &mut self,
        key: &K,
        cc: &mut dyn ClientConn,
        f: impl FnOnce(&mut GracefulSwitch, &mut dyn ClientConn) -> R,
    ) -> Option<R> {
        let slot = self.children.get_mut(key)?;
        let switch = slot.switch.as_mut()?;
        let mut slot_cc = SlotCc {
            parent: cc,
            id: slot.id,
            owners: &mut self.owners,
            // A kept child is not serving: its re-resolution requests are noise.
            ignore_resolve_now: slot.ignore_resolve_now || slot.retained.is_some(),
        };
        let result = f(switch, &mut slot_cc);
        if switch.take_published() {
            if !std::mem::replace(&mut slot.published, true) {
                self.marked.push(key.clone());
            }
            self.published = true;
        }
        Some(result)
    }

    /// Adds child `key` with `policy` and `state`, or gives an existing one its new
    /// policy (a graceful switch) and state. A started child gets them at once; any
    /// other keeps them for when it starts. Returns the error the child returned.
    pub fn set(
        &mut self,
        key: K,
        policy: ChildPolicy,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let slot = match self.children.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let id = self.next_id;
                self.next_id += 1;
                self.keys.insert(id, key.clone());
                e.insert(Slot {
                    id,
                    policy: policy.clone(),
                    state: state.clone(),
                    switch: None,
                    retained: None,
                    wanted: true,
                    published: false,
                    ignore_resolve_now: false,
                })
            }
        };
        slot.wanted = true;
        slot.policy = policy;
        slot.state = state;
        if self.children.get(&key).is_some_and(Slot::active) {
            self.deliver(&key, cc)
        } else {
            Ok(())
        }
    }

    /// Gives child `key` its policy and latest state.
    fn deliver(&mut self, key: &K, cc: &mut dyn ClientConn) -> Result<(), Error> {
        let Some(slot) = self.children.get(key) else {
            return Ok(());
        };
        let (policy, state) = (slot.policy.clone(), slot.state.clone());
        self.with_child(key, cc, |switch, cc| {
            switch.switch_to(&policy.name, cc)?;
            switch.update_client_conn_state(state.with_config(policy.config), cc)
        })
        .unwrap_or(Ok(()))
    }

    /// Starts child `key`: builds its balancer and gives it its latest state, or, if
    /// it is stopped and still kept, brings it back as it was (its connections with
    /// it) with its latest state. Does nothing to a started child or an unknown key.
    pub fn start(&mut self, key: &K, cc: &mut dyn ClientConn) -> Result<(), Error> {
        let Some(slot) = self.children.get_mut(key) else {
            return Ok(());
        };
        if slot.active() {
            return Ok(());
        }
        if let Some(timer) = slot.retained.take() {
            timer.cancel();
        }
        if slot.switch.is_none() {
            slot.switch = Some(GracefulSwitch::new(self.options.clone()));
        }
        // Back or new, its picker is the parent's to read again.
        if !std::mem::replace(&mut slot.published, true) {
            self.marked.push(key.clone());
        }
        self.published = true;
        self.deliver(key, cc)
    }

    /// Drops (or, `false`, passes on again) child `key`'s requests to re-resolve
    /// (`priority`'s `ignoreReresolutionRequests`).
    pub fn set_ignore_resolve_now(&mut self, key: &K, ignore: bool) {
        if let Some(slot) = self.children.get_mut(key) {
            slot.ignore_resolve_now = ignore;
        }
    }

    /// Whether child `key` is started (and not stopped).
    pub fn is_started(&self, key: &K) -> bool {
        self.children.get(key).is_some_and(Slot::active)
    }

    /// Stops child `key` but keeps it (its config, balancer and connections) for the
    /// retention period, so that starting it again within it costs nothing; after
    /// it, the balancer is closed (the config stays until the key is removed).
    pub fn stop(&mut self, key: &K, cc: &mut dyn ClientConn) {
        self.retain(key, true, cc);
    }

    /// Removes child `key`: it stops, is kept for the retention period (set and
    /// start it again within it and it comes back as it was), then closed and
    /// forgotten.
    pub fn remove(&mut self, key: &K, cc: &mut dyn ClientConn) {
        self.retain(key, false, cc);
    }

    fn retain(&mut self, key: &K, wanted: bool, cc: &mut dyn ClientConn) {
        let Some(slot) = self.children.get_mut(key) else {
            return;
        };
        slot.wanted = wanted;
        if !slot.active() {
            if !wanted && slot.switch.is_none() {
                self.forget(key);
            }
            return;
        }
        self.published = true;
        if self.retention.is_zero() {
            self.close_kept(key, cc);
            return;
        }
        let timer = TimerId::new(slot.id).via(RETENTION_HOP);
        slot.retained = Some(cc.schedule(self.retention, timer));
    }

    /// Closes stopped child `key`'s balancer (its subconns shut down); forgets the
    /// child if it was removed, else keeps its config for a later start.
    fn close_kept(&mut self, key: &K, cc: &mut dyn ClientConn) {
        let Some(slot) = self.children.get_mut(key) else {
            return;
        };
        Self::close_balancer(slot, &mut self.owners, cc);
        if !slot.wanted {
            self.forget(key);
        }
    }

    /// Closes child `key` at once (its subconns shut down) and forgets it.
    pub fn close_child(&mut self, key: &K, cc: &mut dyn ClientConn) {
        let Some(mut slot) = self.children.remove(key) else {
            return;
        };
        self.keys.remove(&slot.id);
        Self::close_balancer(&mut slot, &mut self.owners, cc);
        self.published = true;
    }

    /// Ends `slot`'s retention and closes its balancer, if it has them; its
    /// requests to re-resolve while closing are dropped.
    fn close_balancer(
        slot: &mut Slot,
        owners: &mut HashMap<SubConnId, u64>,
        cc: &mut dyn ClientConn,
    ) {
        if let Some(timer) = slot.retained.take() {
            timer.cancel();
        }
        if let Some(mut switch) = slot.switch.take() {
            switch.close(&mut SlotCc {
                parent: cc,
                id: slot.id,
                owners,
                ignore_resolve_now: true,
            });
        }
    }

    fn forget(&mut self, key: &K) {
        if let Some(slot) = self.children.remove(key) {
            self.keys.remove(&slot.id);
        }
    }

    /// Makes the started children exactly `updates`: each is set and started;
    /// children not named are removed (kept for the retention period). Returns the
    /// first error a child returned (every child is updated).
    pub fn update(
        &mut self,
        updates: Vec<ChildUpdate<K>>,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let named: std::collections::HashSet<&K> = updates.iter().map(|u| &u.key).collect();
        let gone: Vec<K> = self
            .children
            .iter()
            .filter(|(k, s)| s.wanted && !named.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.remove(&key, cc);
        }
        let mut first_error = None;
        for update in updates {
            let key = update.key;
            let started = self.is_started(&key);
            let mut result = self.set(key.clone(), update.policy, update.state, cc);
            if !started {
                result = self.start(&key, cc);
            }
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Routes a subconn's state to the child that created it (stopped children
    /// included: they keep following their subconns). Returns whether one did.
    pub fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) -> bool {
        let Some(&id) = self.owners.get(&subconn.id()) else {
            return false;
        };
        if state.state == ConnectivityState::Shutdown {
            self.owners.remove(&subconn.id());
        }
        let Some(key) = self.keys.get(&id).cloned() else {
            return false;
        };
        self.with_child(&key, cc, |s, cc| s.update_subconn_state(subconn, state, cc))
            .is_some()
    }

    /// The started children's keys.
    fn active_keys(&self) -> Vec<K> {
        self.children
            .iter()
            .filter(|(_, s)| s.active())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Tells every started child about a resolver error.
    pub fn resolver_error(&mut self, error: &SharedError, cc: &mut dyn ClientConn) {
        for key in self.active_keys() {
            self.resolver_error_child(&key, error, cc);
        }
    }

    /// Tells child `key` (if started) about a resolver error.
    pub fn resolver_error_child(&mut self, key: &K, error: &SharedError, cc: &mut dyn ClientConn) {
        if self.is_started(key) {
            self.with_child(key, cc, |s, cc| s.resolver_error(error.clone(), cc));
        }
    }

    /// Asks every started child to leave idle.
    pub fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        for key in self.active_keys() {
            self.exit_idle_child(&key, cc);
        }
    }

    /// Asks child `key` (if started) to leave idle.
    pub fn exit_idle_child(&mut self, key: &K, cc: &mut dyn ClientConn) {
        if self.is_started(key) {
            self.with_child(key, cc, |s, cc| s.exit_idle(cc));
        }
    }

    /// Routes a timer to the child that set it, or ends a retention. Timers of
    /// closed children, and timers that name no child, are dropped.
    pub fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        let Some((hop, inner)) = timer.into_child() else {
            return;
        };
        if hop == RETENTION_HOP {
            if let Some(id) = inner.own_id() {
                self.retention_ended(id, cc);
            }
            return;
        }
        if let Some(key) = self.keys.get(&hop).cloned() {
            self.with_child(&key, cc, |s, cc| s.timer(inner, cc));
        }
    }

    fn retention_ended(&mut self, id: u64, cc: &mut dyn ClientConn) {
        let Some(key) = self.keys.get(&id).cloned() else {
            return;
        };
        if self
            .children
            .get(&key)
            .is_some_and(|s| s.retained.is_some())
        {
            self.close_kept(&key, cc);
        } // else started again meanwhile
    }

    /// Closes every child, kept ones included.
    pub fn close(&mut self, cc: &mut dyn ClientConn) {
        let keys: Vec<K> = self.children.keys().cloned().collect();
        for key in keys {
            self.close_child(&key, cc);
        }
    }

    /// The started children: key, state, picker.
    pub fn children(&self) -> impl Iterator<Item = (&K, ConnectivityState, Arc<dyn Picker>)> {
        self.children
            .iter()
            .filter(|(_, s)| s.active())
            .filter_map(|(k, s)| s.switch.as_ref().map(|sw| (k, sw.state(), sw.picker())))
    }

    /// Child `key`'s state and picker, if it is started.
    pub fn child(&self, key: &K) -> Option<(ConnectivityState, Arc<dyn Picker>)> {
        let slot = self.children.get(key).filter(|s| s.active())?;
        slot.switch.as_ref().map(|sw| (sw.state(), sw.picker()))
    }

    /// How many children are started (and not stopped).
    pub fn len(&self) -> usize {
        self.children.values().filter(|s| s.active()).count()
    }

    /// Whether no child is started.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group's state ([`aggregate`]) over the started children.
    pub fn aggregate(&self) -> ConnectivityState {
        aggregate(self.children().map(|(_, s, _)| s))
    }

    /// Whether any child published, or was started, stopped or removed, since the
    /// last call: the parent should build and publish its picker.
    pub fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    /// The children that published (or were started) since the last call, and
    /// clears their marks; [`ChildManager::take_published`] keeps its own.
    /// Costs the number of children that published, not the number of children.
    pub fn take_published_keys(&mut self) -> Vec<K> {
        let mut marked = std::mem::take(&mut self.marked);
        // A key is listed once per mark; a child forgotten since is dropped.
        marked.retain(|k| {
            self.children
                .get_mut(k)
                .is_some_and(|s| std::mem::take(&mut s.published))
        });
        marked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_prefers_ready_then_connecting_then_idle() {
        use ConnectivityState::*;
        assert_eq!(aggregate([TransientFailure, Idle, Ready]), Ready);
        assert_eq!(aggregate([TransientFailure, Idle, Connecting]), Connecting);
        assert_eq!(aggregate([TransientFailure, Idle]), Idle);
        assert_eq!(aggregate([TransientFailure]), TransientFailure);
        assert_eq!(aggregate([]), TransientFailure);
    }
}
