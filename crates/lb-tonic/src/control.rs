//! The channel's control task: the one place that calls the balancer.
//!
//! Resolver results, subconn state changes and exit-idle requests arrive as [`Msg`]s
//! and are handled one at a time, as grpc-go's serializer does, so balancers are plain
//! `&mut self` state. Published pickers go to [`Core`], where RPCs read them without a
//! lock.
//!
//! Policies and resolvers are user code, so this task is also where their panics
//! stop: a panicking balancer is dropped (its subconns shut down), RPCs fail with
//! `INTERNAL` naming the policy, and a fresh balancer is built, after a growing delay
//! or at the next resolver update, and given the last resolver state. However the
//! task ends, even by a panic of its own or the runtime shutting down, RPCs waiting on
//! it fail at once and every subconn is shut down.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use lb_core::{
    Address, Balancer, BalancerRegistry, BuildOptions, ClientConn, ClientConnState, Code,
    ConnectivityState, Error, FailPicker, PickInfo, PickResult, Picker, QueuePicker, Resolver,
    ResolverBuilder, ResolverState, ServiceConfig, SharedError, Status, SubConn, SubConnId,
    SubConnState, Target,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::idle::Activity;
use crate::replay::{Budget, BufferLimits};
use crate::retry::Throttle;
use crate::subconn::{TransportOptions, new_transport};

/// A message to the control task.
pub(crate) enum Msg {
    /// From the resolver of this generation (resolvers of earlier generations, closed
    /// by idleness, may still have sent something).
    Resolver(u64, ResolverState),
    ResolverError(u64, SharedError),
    SubConnState {
        id: SubConnId,
        state: SubConnState,
    },
    ExitIdle,
    Close,
}

/// The current picker with the state it was published with.
pub(crate) struct Published {
    pub(crate) state: ConnectivityState,
    pub(crate) picker: Arc<dyn Picker>,
    /// The policy that published it, for messages.
    pub(crate) policy: Arc<str>,
}

/// What RPCs share with the control task.
pub(crate) struct Core {
    pub(crate) published: ArcSwap<Published>,
    /// Bumped on every publication: queued RPCs wait on it.
    pub(crate) picker_version: watch::Sender<u64>,
    pub(crate) state: watch::Sender<ConnectivityState>,
    pub(crate) service_config: ArcSwap<ServiceConfig>,
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
    exit_idle_requested: AtomicBool,
    pub(crate) wait_for_ready: bool,
    pub(crate) activity: Activity,
    pub(crate) transport: Arc<TransportOptions>,
    /// The service config's `retryThrottling` bucket, if it has one.
    pub(crate) throttle: ArcSwapOption<Throttle>,
    /// The channel's retry buffer.
    pub(crate) budget: Arc<Budget>,
    /// Whether retry and hedging policies run (transparent retries always do).
    pub(crate) retries: bool,
}

impl Core {
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Msg>,
        config: Arc<ServiceConfig>,
        wait_for_ready: bool,
        policy: &str,
        transport: Arc<TransportOptions>,
        retry: RetrySettings,
    ) -> Self {
        let throttle = config
            .retry_throttling()
            .map(|t| Arc::new(Throttle::new(t)));
        Self {
            published: ArcSwap::from_pointee(Published {
                state: ConnectivityState::Connecting,
                picker: Arc::new(QueuePicker),
                policy: policy.into(),
            }),
            picker_version: watch::Sender::new(0),
            state: watch::Sender::new(ConnectivityState::Connecting),
            service_config: ArcSwap::new(config),
            tx,
            exit_idle_requested: AtomicBool::new(false),
            wait_for_ready,
            activity: Activity::new(),
            transport,
            throttle: ArcSwapOption::new(throttle),
            budget: Arc::new(Budget::new(retry.buffer)),
            retries: retry.enabled,
        }
    }

    /// Follows the service config's `retryThrottling`: a new bucket when its
    /// parameters change, the same bucket (and its tokens) otherwise.
    fn set_throttling(&self, config: &ServiceConfig) {
        let wanted = config.retry_throttling();
        let current = self.throttle.load().as_ref().map(|t| t.config());
        if wanted != current {
            self.throttle
                .store(wanted.map(|t| Arc::new(Throttle::new(t))));
        }
    }

    /// Asks the control task to take the channel (or its balancer) out of idle;
    /// coalesced.
    pub(crate) fn request_exit_idle(&self) {
        if !self.exit_idle_requested.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::ExitIdle);
        }
    }

    fn publish(&self, state: ConnectivityState, picker: Arc<dyn Picker>, policy: Arc<str>) {
        self.published.store(Arc::new(Published {
            state,
            picker,
            policy,
        }));
        self.picker_version.send_modify(|v| *v += 1);
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}

/// How a channel runs retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetrySettings {
    pub(crate) enabled: bool,
    pub(crate) buffer: BufferLimits,
}

/// The resolver's side of the channel, for one resolver generation.
pub(crate) struct ResolverSink {
    tx: mpsc::UnboundedSender<Msg>,
    generation: u64,
}

impl lb_core::resolver::ClientConn for ResolverSink {
    fn update_state(&self, state: ResolverState) {
        let _ = self.tx.send(Msg::Resolver(self.generation, state));
    }

    fn report_error(&self, error: SharedError) {
        let _ = self.tx.send(Msg::ResolverError(self.generation, error));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Pending,
}

/// The balancer handle: `lb_core::ClientConn` for whichever balancer is being called.
pub(crate) struct ChannelCc {
    core: Arc<Core>,
    target: Target,
    transport: Arc<TransportOptions>,
    subconns: HashMap<SubConnId, (SubConn, Role)>,
    caller: Role,
    resolver: Option<Box<dyn Resolver>>,
    current_state: ConnectivityState,
    current_policy: Arc<str>,
    /// What the pending balancer (during a policy switch) last published.
    pending_publication: Option<(ConnectivityState, Arc<dyn Picker>)>,
    closing: bool,
}

impl ChannelCc {
    fn publish_current(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.current_state = state;
        tracing::debug!(target = %self.target, %state, "picker updated");
        self.core
            .publish(state, picker, self.current_policy.clone());
    }
}

impl ClientConn for ChannelCc {
    fn new_subconn(&mut self, address: Address) -> Result<SubConn, Error> {
        if self.closing {
            return Err(Error::Shutdown);
        }
        let (transport, unstarted) = new_transport();
        let subconn = SubConn::new(address.clone(), Arc::new(transport));
        unstarted.spawn(
            subconn.id(),
            address,
            self.core.tx.clone(),
            self.transport.clone(),
        );
        self.subconns
            .insert(subconn.id(), (subconn.clone(), self.caller));
        tracing::debug!(target = %self.target, subconn = %subconn.id(), addr = %subconn.address(), "subconn created");
        Ok(subconn)
    }

    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        match self.caller {
            Role::Current => self.publish_current(state, picker),
            Role::Pending => self.pending_publication = Some((state, picker)),
        }
    }

    fn resolve_now(&mut self) {
        if let Some(r) = &self.resolver {
            // A third-party resolver must not take the channel down.
            if catch_unwind(AssertUnwindSafe(|| r.resolve_now())).is_err() {
                tracing::error!(target = %self.target, "the resolver's resolve_now panicked");
            }
        }
    }

    fn target(&self) -> &Target {
        &self.target
    }
}

struct Slot {
    name: String,
    /// `None` after the balancer panicked, until it is rebuilt.
    balancer: Option<Box<dyn Balancer>>,
}

/// Fails every RPC, wait-for-ready included: the channel is gone.
struct ShutdownPicker(Status);

impl Picker for ShutdownPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Drop(self.0.clone())
    }
}

pub(crate) struct ControlParts {
    pub(crate) core: Arc<Core>,
    pub(crate) rx: mpsc::UnboundedReceiver<Msg>,
    pub(crate) target: Target,
    pub(crate) resolver_builder: Arc<dyn ResolverBuilder>,
    pub(crate) balancers: BalancerRegistry,
    pub(crate) default_config: Arc<ServiceConfig>,
    pub(crate) use_resolver_config: bool,
    pub(crate) idle_timeout: Option<Duration>,
}

/// The control task's state.
pub(crate) struct Control {
    rx: mpsc::UnboundedReceiver<Msg>,
    balancers: BalancerRegistry,
    resolver_builder: Arc<dyn ResolverBuilder>,
    resolver_generation: u64,
    default_config: Arc<ServiceConfig>,
    use_resolver_config: bool,
    current: Slot,
    pending: Option<Slot>,
    cc: ChannelCc,
    /// The last resolver state the balancer was given: what a rebuilt balancer gets.
    last_state: Option<ResolverState>,
    /// Whether any resolver state has been accepted (gRFC A21: an invalid config in
    /// the first one fails the channel instead of falling back to the default).
    accepted_resolver_state: bool,
    /// When to rebuild a balancer that panicked.
    rebuild_at: Option<Instant>,
    /// Panics since the policy was last `READY`: the rebuild delay doubles with each.
    panics: u32,
    idle_timeout: Option<Duration>,
    idle: bool,
    shut_down: bool,
}

impl Control {
    pub(crate) fn new(parts: ControlParts) -> Result<Self, Error> {
        let name = policy_name(&parts.default_config);
        parts.balancers.require(&name)?;
        Ok(Self {
            rx: parts.rx,
            balancers: parts.balancers,
            resolver_builder: parts.resolver_builder,
            resolver_generation: 0,
            default_config: parts.default_config,
            use_resolver_config: parts.use_resolver_config,
            current: Slot {
                name: name.clone(),
                balancer: None,
            },
            pending: None,
            cc: ChannelCc {
                transport: parts.core.transport.clone(),
                core: parts.core,
                target: parts.target,
                subconns: HashMap::new(),
                caller: Role::Current,
                resolver: None,
                current_state: ConnectivityState::Connecting,
                current_policy: name.as_str().into(),
                pending_publication: None,
                closing: false,
            },
            last_state: None,
            accepted_resolver_state: false,
            rebuild_at: None,
            panics: 0,
            idle_timeout: parts.idle_timeout,
            idle: false,
            shut_down: false,
        })
    }

    /// Builds the first balancer and starts the resolver. Fails if the resolver
    /// refuses the target.
    pub(crate) fn start(&mut self) -> Result<(), lb_core::resolver::BuildError> {
        self.current.balancer = self.build_balancer(&self.current.name.clone());
        if self.current.balancer.is_none() {
            self.schedule_rebuild();
        }
        let resolver = self.build_resolver()?;
        self.cc.resolver = Some(resolver);
        Ok(())
    }

    fn build_resolver(&mut self) -> Result<Box<dyn Resolver>, lb_core::resolver::BuildError> {
        self.resolver_generation += 1;
        let sink = Arc::new(ResolverSink {
            tx: self.cc.core.tx.clone(),
            generation: self.resolver_generation,
        });
        let builder = self.resolver_builder.clone();
        let target = self.cc.target.clone();
        match catch_unwind(AssertUnwindSafe(|| builder.build(&target, sink))) {
            Ok(built) => built,
            Err(payload) => Err(format!(
                "the resolver for scheme `{}` panicked while starting: {}",
                builder.scheme(),
                panic_message(payload.as_ref())
            )
            .into()),
        }
    }

    /// A new balancer of policy `name`, or `None` if its builder panicked.
    fn build_balancer(&self, name: &str) -> Option<Box<dyn Balancer>> {
        let builder = self.balancers.get(name)?.clone();
        let options = BuildOptions::new(self.cc.target.clone());
        match catch_unwind(AssertUnwindSafe(|| builder.build(&options))) {
            Ok(balancer) => Some(balancer),
            Err(payload) => {
                tracing::error!(target = %self.cc.target, policy = %name, panic = %panic_message(payload.as_ref()), "building the load-balancing policy panicked");
                None
            }
        }
    }

    /// Runs until the channel is closed.
    pub(crate) async fn run(mut self) {
        loop {
            let idle_check = match self.idle_timeout {
                Some(timeout) if !self.idle => Some(
                    self.cc
                        .core
                        .activity
                        .idle_check(timeout)
                        .map_or_else(Instant::now, Instant::from_std),
                ),
                _ => None,
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(Msg::Close) | None => break,
                    Some(msg) => self.handle(msg),
                },
                () = sleep_until(self.rebuild_at) => {
                    self.rebuild_at = None;
                    self.rebuild_current();
                }
                () = sleep_until(idle_check) => {
                    if let Some(timeout) = self.idle_timeout
                        && self.cc.core.activity.idle_check(timeout).is_none()
                    {
                        self.enter_idle(timeout);
                    }
                }
            }
            self.maybe_swap();
        }
        self.shutdown();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Resolver(generation, state) if generation == self.resolver_generation => {
                self.on_resolver_state(state);
            }
            Msg::ResolverError(generation, error) if generation == self.resolver_generation => {
                tracing::warn!(target = %self.cc.target, %error, "resolver error");
                self.with_target_balancer(|b, cc| b.resolver_error(error, cc));
            }
            Msg::Resolver(..) | Msg::ResolverError(..) => {} // from a closed resolver
            Msg::SubConnState { id, state } => self.on_subconn_state(id, state),
            Msg::ExitIdle => {
                self.cc
                    .core
                    .exit_idle_requested
                    .store(false, Ordering::Release);
                if self.idle {
                    self.exit_channel_idle();
                } else {
                    self.call(Role::Current, |b, cc| b.exit_idle(cc));
                }
            }
            Msg::Close => {}
        }
    }

    /// Calls a balancer, catching its panic.
    fn call(&mut self, role: Role, f: impl FnOnce(&mut dyn Balancer, &mut ChannelCc)) {
        let slot = match role {
            Role::Current => &mut self.current,
            Role::Pending => match &mut self.pending {
                Some(p) => p,
                None => return,
            },
        };
        let Some(balancer) = slot.balancer.as_mut() else {
            return; // panicked earlier; waiting to be rebuilt
        };
        let cc = &mut self.cc;
        cc.caller = role;
        let called = catch_unwind(AssertUnwindSafe(|| f(balancer.as_mut(), cc)));
        cc.caller = Role::Current;
        if let Err(payload) = called {
            self.on_panic(role, &panic_message(payload.as_ref()));
        }
    }

    /// A balancer panicked: drop it and its subconns, fail RPCs with `INTERNAL`
    /// naming it, and rebuild it later.
    fn on_panic(&mut self, role: Role, message: &str) {
        let slot = match role {
            Role::Current => &mut self.current,
            Role::Pending => match &mut self.pending {
                Some(p) => p,
                None => return,
            },
        };
        let name = slot.name.clone();
        drop_quietly(slot.balancer.take());
        self.shutdown_subconns(role);
        tracing::error!(target = %self.cc.target, policy = %name, panic = %message, "the load-balancing policy panicked; it is dropped with its subconns");
        match role {
            Role::Pending => {
                // Abandon the switch; the current policy keeps serving.
                self.pending = None;
                self.cc.pending_publication = None;
            }
            Role::Current if !self.cc.closing => {
                let status = Status::new(
                    Code::Internal,
                    format!("load-balancing policy `{name}` panicked: {message}"),
                );
                self.cc.publish_current(
                    ConnectivityState::TransientFailure,
                    Arc::new(FailPicker(status)),
                );
                self.panics = self.panics.saturating_add(1);
                self.schedule_rebuild();
            }
            Role::Current => {}
        }
    }

    fn schedule_rebuild(&mut self) {
        // 100 ms, doubling with each panic since the policy was last ready, up to 30 s.
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.panics.min(9))
            .min(Duration::from_secs(30));
        self.rebuild_at = Some(Instant::now() + delay);
    }

    /// Builds the current policy again after a panic and gives it the last state.
    fn rebuild_current(&mut self) {
        if self.current.balancer.is_some() || self.cc.closing || self.idle {
            return;
        }
        let name = self.current.name.clone();
        self.current.balancer = self.build_balancer(&name);
        if self.current.balancer.is_none() {
            self.panics = self.panics.saturating_add(1);
            self.schedule_rebuild();
            return;
        }
        tracing::info!(target = %self.cc.target, policy = %name, "rebuilt the load-balancing policy");
        if let Some(state) = self.last_state.clone() {
            self.feed(Role::Current, state);
        }
    }

    /// Calls the balancer that receives resolver input: the pending one during a switch.
    fn with_target_balancer(&mut self, f: impl FnOnce(&mut dyn Balancer, &mut ChannelCc)) {
        let role = if self.pending.is_some() {
            Role::Pending
        } else {
            Role::Current
        };
        self.call(role, f);
    }

    fn on_resolver_state(&mut self, state: ResolverState) {
        let config = match (&state.service_config, self.use_resolver_config) {
            (Some(json), true) => match ServiceConfig::parse(json, &self.balancers) {
                Ok(config) => Arc::new(config),
                Err(error) if !self.accepted_resolver_state => {
                    // gRFC A21: with no good state before it, an invalid config is an
                    // error the channel reports, not a cue to use the default.
                    tracing::warn!(target = %self.cc.target, %error, "the resolver's first service config is invalid; failing RPCs until a valid one arrives");
                    let error: SharedError = Arc::new(error);
                    self.with_target_balancer(|b, cc| b.resolver_error(error, cc));
                    return;
                }
                Err(error) => {
                    tracing::warn!(target = %self.cc.target, %error, "resolver sent an invalid service config; keeping the previous one");
                    self.cc.core.service_config.load_full()
                }
            },
            _ => self.default_config.clone(),
        };
        self.accepted_resolver_state = true;
        self.cc.core.set_throttling(&config);
        self.cc.core.service_config.store(config.clone());
        let name = policy_name(&config);
        let wanted = self
            .pending
            .as_ref()
            .map_or(&self.current.name, |p| &p.name);
        if *wanted != name {
            self.switch_to(name);
        }
        if self.pending.is_none() && self.current.balancer.is_none() {
            // Broken by a panic: rebuild now rather than at the timer.
            self.rebuild_at = None;
            self.last_state = Some(state);
            self.rebuild_current();
            return;
        }
        tracing::debug!(target = %self.cc.target, addresses = state.addresses.len(), "resolver update");
        self.last_state = Some(state.clone());
        let role = if self.pending.is_some() {
            Role::Pending
        } else {
            Role::Current
        };
        self.feed(role, state);
    }

    /// Gives a balancer a resolver state with the current config; a state it rejects
    /// asks the resolver to re-resolve.
    fn feed(&mut self, role: Role, state: ResolverState) {
        let config = self.cc.core.service_config.load_full();
        let mut ccs = ClientConnState::new(state.addresses).with_attributes(state.attributes);
        if let Some(lb) = config.lb_policy() {
            ccs = ccs.with_config(lb.config.clone());
        }
        self.call(role, |b, cc| {
            if let Err(error) = b.update_client_conn_state(ccs, cc) {
                tracing::warn!(target = %cc.target, %error, "balancer rejected the resolver state; asking to re-resolve");
                cc.resolve_now();
            }
        });
    }

    /// Starts a graceful switch: the new balancer gets every resolver update from now
    /// on and takes over once it leaves `CONNECTING` (or at once if the current one is
    /// not `READY`), as grpc-go's graceful switch does.
    fn switch_to(&mut self, name: String) {
        if self.balancers.get(&name).is_none() {
            return; // ServiceConfig::parse only selects registered policies
        }
        if let Some(mut old) = self.pending.take() {
            self.cc.caller = Role::Pending;
            if let Some(balancer) = old.balancer.as_mut() {
                let cc = &mut self.cc;
                let _ = catch_unwind(AssertUnwindSafe(|| balancer.close(cc)));
            }
            self.cc.caller = Role::Current;
            drop_quietly(old.balancer.take());
            self.shutdown_subconns(Role::Pending);
        }
        tracing::info!(target = %self.cc.target, from = %self.current.name, to = %name, "switching load-balancing policy");
        if name == self.current.name {
            return; // back to the current policy: nothing pending
        }
        self.cc.pending_publication = None;
        let balancer = self.build_balancer(&name);
        if balancer.is_none() {
            return; // its builder panicked: stay with the current policy
        }
        self.pending = Some(Slot { balancer, name });
    }

    fn maybe_swap(&mut self) {
        let Some((state, _)) = &self.cc.pending_publication else {
            return;
        };
        if *state == ConnectivityState::Connecting
            && self.cc.current_state == ConnectivityState::Ready
        {
            return; // keep the ready current policy serving while the new one connects
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        let mut old = std::mem::replace(&mut self.current, pending);
        self.cc.caller = Role::Current;
        if let Some(balancer) = old.balancer.as_mut() {
            let cc = &mut self.cc;
            let _ = catch_unwind(AssertUnwindSafe(|| balancer.close(cc)));
        }
        drop_quietly(old.balancer.take());
        self.shutdown_subconns(Role::Current);
        for (_, role) in self.cc.subconns.values_mut() {
            *role = Role::Current;
        }
        self.cc.current_policy = self.current.name.as_str().into();
        if let Some((state, picker)) = self.cc.pending_publication.take() {
            self.cc.publish_current(state, picker);
        }
        tracing::info!(target = %self.cc.target, policy = %self.current.name, "policy switch complete");
    }

    fn on_subconn_state(&mut self, id: SubConnId, state: SubConnState) {
        let Some((subconn, role)) = self.cc.subconns.get(&id).cloned() else {
            return; // shut down and forgotten
        };
        if state.state == ConnectivityState::Shutdown {
            self.cc.subconns.remove(&id);
        }
        self.call(role, |b, cc| b.update_subconn_state(&subconn, &state, cc));
        if role == Role::Current && self.cc.current_state == ConnectivityState::Ready {
            self.panics = 0;
        }
    }

    fn shutdown_subconns(&mut self, role: Role) {
        self.cc.subconns.retain(|_, (sc, r)| {
            if *r == role {
                sc.shutdown();
                false
            } else {
                true
            }
        });
    }

    /// No RPC for the idle timeout: close the balancer, its connections and the
    /// resolver; the next RPC brings them back.
    fn enter_idle(&mut self, timeout: Duration) {
        tracing::info!(target = %self.cc.target, ?timeout, "channel idle; closing its connections and resolver");
        self.close_balancers();
        drop_quietly(self.cc.resolver.take());
        self.last_state = None;
        self.accepted_resolver_state = false;
        self.rebuild_at = None;
        self.idle = true;
        self.cc
            .publish_current(ConnectivityState::Idle, Arc::new(QueuePicker));
    }

    fn exit_channel_idle(&mut self) {
        tracing::info!(target = %self.cc.target, "channel leaving idle");
        self.idle = false;
        self.cc.core.activity.touch();
        let name = self.current.name.clone();
        self.current.balancer = self.build_balancer(&name);
        self.cc
            .publish_current(ConnectivityState::Connecting, Arc::new(QueuePicker));
        if self.current.balancer.is_none() {
            self.schedule_rebuild();
        }
        match self.build_resolver() {
            Ok(resolver) => self.cc.resolver = Some(resolver),
            Err(error) => {
                let error: SharedError = Arc::from(error);
                tracing::warn!(target = %self.cc.target, %error, "the resolver could not be restarted");
                self.call(Role::Current, |b, cc| b.resolver_error(error, cc));
            }
        }
    }

    /// Closes both balancers and shuts every subconn down.
    fn close_balancers(&mut self) {
        self.call(Role::Current, |b, cc| b.close(cc));
        self.call(Role::Pending, |b, cc| b.close(cc));
        drop_quietly(self.current.balancer.take());
        if let Some(mut pending) = self.pending.take() {
            drop_quietly(pending.balancer.take());
        }
        self.cc.pending_publication = None;
        for (sc, _) in self.cc.subconns.values() {
            sc.shutdown();
        }
        self.cc.subconns.clear();
    }

    /// Closes everything and fails every RPC from now on. Runs once, when the task
    /// ends or its state is dropped (a panic, the runtime shutting down).
    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.shut_down, true) {
            return;
        }
        self.cc.closing = true;
        self.close_balancers();
        drop_quietly(self.cc.resolver.take());
        self.cc.core.publish(
            ConnectivityState::Shutdown,
            Arc::new(ShutdownPicker(Status::new(
                Code::Cancelled,
                "the channel is closing",
            ))),
            self.cc.current_policy.clone(),
        );
        tracing::debug!(target = %self.cc.target, "channel closed");
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drops user code (a balancer, a resolver) whose `Drop` might panic.
fn drop_quietly<T>(value: Option<T>) {
    if let Some(value) = value
        && catch_unwind(AssertUnwindSafe(move || drop(value))).is_err()
    {
        tracing::error!("dropping a balancer or resolver panicked");
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_owned()
    }
}

pub(crate) fn policy_name(config: &ServiceConfig) -> String {
    config.lb_policy().map_or_else(
        || lb_policies::DEFAULT_POLICY.to_owned(),
        |p| p.name.clone(),
    )
}
