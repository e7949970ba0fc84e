//! The channel's control task: the one place that calls the balancer.
//!
//! Resolver results, subconn state changes and exit-idle requests arrive as [`Msg`]s
//! and are handled one at a time, as grpc-go's serializer does, so balancers are plain
//! `&mut self` state. Published pickers go to [`Core`], where RPCs read them without a
//! lock.
//!
//! The policy lives in an `lb_core::child::GracefulSwitch`: a service config that
//! names another policy starts a graceful switch. Timers a policy sets wait in this
//! task's queue (`timers.rs`) and are delivered here too.
//!
//! Policies and resolvers are user code, so this task is also where their panics
//! stop: a panicking policy is dropped (its subconns shut down), RPCs fail with
//! `INTERNAL` naming it, and a fresh one is built, after a growing delay or at the
//! next resolver update, and given the last resolver state. However the task ends,
//! even by a panic of its own or the runtime shutting down, RPCs waiting on it fail
//! at once and every subconn is shut down.
//!
//! * `mod.rs`: the task, the `ClientConn` it hands the policy, and [`Core`], the
//!   state it publishes for the call path.
//! * `timers.rs`: the policy's timers; `idle.rs`: the channel's RPC activity, for
//!   idleness.
//!
//! The control task uses the transport (it creates subconns, which report their
//! states through `crate::transport::SubConnEvents`); it never uses the call path.

mod idle;
mod timers;

pub(crate) use idle::Activity;

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use lb_core::child::GracefulSwitch;
use lb_core::routing::ConfigSelector;
use lb_core::{
    Address, BalancerRegistry, BuildOptions, ClientConn, ClientConnState, Code, ConnectivityState,
    Error, FailPicker, IdlePicker, PickInfo, PickResult, Picker, QueuePicker, Resolver,
    ResolverBuilder, ResolverState, ServiceConfig, SharedError, Status, SubConn, SubConnId,
    SubConnOptions, SubConnState, Target, TimerHandle, TimerId,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use timers::Timers;

use crate::buffer::{Budget, BufferLimits};
use crate::introspect::Stats;
use crate::throttle::Throttle;
use crate::transport::{SubConnEvents, TransportOptions, new_transport};

/// The resolver has reported an error, and no state yet.
const REPORTED: u8 = 1;
/// The resolver has sent a state (or the channel closed).
const CONFIGURED: u8 = 2;

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

/// The configuration RPCs follow: the service config in force, and the resolver's
/// per-RPC config selector with it (gRFC A31), swapped together in one load.
pub(crate) struct ChannelConfig {
    pub(crate) service: Arc<ServiceConfig>,
    pub(crate) selector: Option<Arc<dyn ConfigSelector>>,
}

/// What RPCs share with the control task.
pub(crate) struct Core {
    pub(crate) published: ArcSwap<Published>,
    /// Bumped on every publication: queued RPCs wait on it.
    pub(crate) picker_version: watch::Sender<u64>,
    pub(crate) state: watch::Sender<ConnectivityState>,
    /// How far the resolver has come: 0 nothing yet, [`REPORTED`] an error only,
    /// [`CONFIGURED`] a state (or the channel closed). RPCs wait for a report before
    /// choosing their config, as grpc-go's do, so that the resolver's service config
    /// and config selector apply from the first RPC; wait-for-ready RPCs wait for a
    /// state, so that a resolver that failed first (an unreachable xDS server) does
    /// not leave them without the selector that routes them.
    resolved: AtomicU8,
    resolved_watch: watch::Sender<u8>,
    /// The service config in force, with the resolver's config selector if any.
    pub(crate) config: ArcSwap<ChannelConfig>,
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
    /// Counters for snapshots and metrics.
    pub(crate) stats: Arc<Stats>,
    /// The channel in channelz, unless the builder turned channelz off.
    pub(crate) channelz: Option<lb_core::channelz::Registration>,
}

impl lb_core::channelz::ChannelSource for Core {
    fn channel_data(&self) -> lb_core::channelz::ChannelData {
        self.stats.channel_data(self.published.load().state)
    }
}

impl Core {
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Msg>,
        config: Arc<ServiceConfig>,
        wait_for_ready: bool,
        policy: &str,
        transport: Arc<TransportOptions>,
        retry: RetrySettings,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        let throttle = config
            .retry_throttling()
            .map(|t| Arc::new(Throttle::new(t)));
        stats.trace.log(
            lb_core::channelz::Severity::Info,
            format!("channel created with policy {policy}"),
        );
        Arc::new_cyclic(|me: &std::sync::Weak<Self>| Self {
            channelz: stats
                .channelz
                .then(|| lb_core::channelz::registry().register_channel(me.clone())),
            published: ArcSwap::from_pointee(Published {
                state: ConnectivityState::Connecting,
                picker: Arc::new(QueuePicker),
                policy: policy.into(),
            }),
            picker_version: watch::Sender::new(0),
            state: watch::Sender::new(ConnectivityState::Connecting),
            resolved: AtomicU8::new(0),
            resolved_watch: watch::Sender::new(0),
            config: ArcSwap::from_pointee(ChannelConfig {
                service: config,
                selector: None,
            }),
            tx,
            exit_idle_requested: AtomicBool::new(false),
            wait_for_ready,
            activity: Activity::new(),
            transport,
            throttle: ArcSwapOption::new(throttle),
            budget: Arc::new(Budget::new(retry.buffer)),
            retries: retry.enabled,
            stats,
        })
    }

    /// Follows the service config's `healthCheckConfig`: the service the subconns'
    /// health checks ask about (read when a connection is established).
    fn set_health(&self, config: &ServiceConfig) {
        self.transport.health_service.store(
            config
                .health_check()
                .map(|h| Arc::new(h.service_name.clone())),
        );
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

    /// Whether the resolver has reported once.
    #[inline]
    pub(crate) fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Acquire) >= REPORTED
    }

    /// Whether the resolver has sent a state (or the channel closed).
    #[inline]
    pub(crate) fn is_configured(&self) -> bool {
        self.resolved.load(Ordering::Acquire) >= CONFIGURED
    }

    /// Waits until the resolver has reported once.
    pub(crate) async fn resolved(&self) {
        self.reached(REPORTED).await;
    }

    /// Waits until the resolver has sent a state (or the channel closed).
    pub(crate) async fn configured(&self) {
        self.reached(CONFIGURED).await;
    }

    async fn reached(&self, level: u8) {
        if self.resolved.load(Ordering::Acquire) >= level {
            return;
        }
        let mut rx = self.resolved_watch.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|reached| *reached >= level).await;
    }

    /// The resolver reported an error: RPCs go on (and wait-for-ready ones wait
    /// for a state).
    fn mark_resolved(&self) {
        self.raise(REPORTED);
    }

    /// The resolver sent a state, or the channel closed: every RPC goes on.
    fn mark_configured(&self) {
        self.raise(CONFIGURED);
    }

    fn raise(&self, level: u8) {
        if self.resolved.fetch_max(level, Ordering::AcqRel) < level {
            self.resolved_watch.send_replace(level);
        }
    }

    /// The channel went idle: RPCs wait for the next resolver's first report.
    fn unmark_resolved(&self) {
        if self.resolved.swap(0, Ordering::AcqRel) != 0 {
            self.resolved_watch.send_replace(0);
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
        let changed = self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if changed {
            self.stats.trace.log(
                lb_core::channelz::Severity::Info,
                format!("channel state: {}", state.as_str()),
            );
        }
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
    /// Whether the channel reads the resolver's service configs.
    use_config: bool,
}

impl lb_core::resolver::ClientConn for ResolverSink {
    fn update_state(&self, state: ResolverState) {
        let _ = self.tx.send(Msg::Resolver(self.generation, state));
    }

    fn report_error(&self, error: SharedError) {
        let _ = self.tx.send(Msg::ResolverError(self.generation, error));
    }

    fn wants_service_config(&self) -> bool {
        self.use_config
    }
}

/// What subconn tasks report with: a message to this task, in the one queue that
/// keeps resolver updates and subconn states in order.
struct SubConnSink(mpsc::UnboundedSender<Msg>);

impl SubConnEvents for SubConnSink {
    fn subconn_state(&self, id: SubConnId, state: SubConnState) {
        let _ = self.0.send(Msg::SubConnState { id, state });
    }
}

/// The balancer handle: `lb_core::ClientConn` for the policy (through its graceful
/// switch).
pub(crate) struct ChannelCc {
    core: Arc<Core>,
    target: Target,
    transport: Arc<TransportOptions>,
    /// Where the subconns' tasks report their states (this task's queue).
    events: Arc<dyn SubConnEvents>,
    subconns: HashMap<SubConnId, SubConn>,
    resolver: Option<Box<dyn Resolver>>,
    /// The policy instance's pending timers.
    timers: Timers,
    closing: bool,
}

impl ClientConn for ChannelCc {
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error> {
        if self.closing {
            return Err(Error::Shutdown);
        }
        let (transport, unstarted) = new_transport(options.health_check);
        let subconn = SubConn::new(address.clone(), Arc::new(transport));
        let stats = self.core.stats.subconn(subconn.id(), address.clone());
        unstarted.spawn(
            subconn.id(),
            address,
            self.events.clone(),
            self.transport.clone(),
            stats,
        );
        self.subconns.insert(subconn.id(), subconn.clone());
        tracing::debug!(target = %self.target, subconn = %subconn.id(), addr = %subconn.address(), "subconn created");
        Ok(subconn)
    }

    /// The graceful switch keeps its children's publications; the control task
    /// publishes the switch's state after each call. A balancer given this handle
    /// directly would publish here.
    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.core.publish(state, picker, "".into());
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

    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        if self.closing {
            let handle = TimerHandle::new();
            handle.cancel(); // none fires after close
            return handle;
        }
        self.timers.schedule(after, timer)
    }
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
    options: BuildOptions,
    resolver_builder: Arc<dyn ResolverBuilder>,
    resolver_generation: u64,
    default_config: Arc<ServiceConfig>,
    use_resolver_config: bool,
    /// The policy; `None` after it panicked, until it is rebuilt.
    switch: Option<GracefulSwitch>,
    /// The policy the service config asks for.
    wanted: String,
    cc: ChannelCc,
    /// The last resolver state the policy was given: what a rebuilt one gets.
    last_state: Option<ResolverState>,
    /// Whether any resolver state has been accepted (gRFC A21: an invalid config in
    /// the first one fails the channel instead of falling back to the default).
    accepted_resolver_state: bool,
    /// When to rebuild a policy that panicked.
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
            options: BuildOptions::new(parts.target.clone()).with_registry(parts.balancers),
            resolver_builder: parts.resolver_builder,
            resolver_generation: 0,
            default_config: parts.default_config,
            use_resolver_config: parts.use_resolver_config,
            switch: None,
            wanted: name,
            cc: ChannelCc {
                transport: parts.core.transport.clone(),
                events: Arc::new(SubConnSink(parts.core.tx.clone())),
                core: parts.core,
                target: parts.target,
                subconns: HashMap::new(),
                resolver: None,
                timers: Timers::default(),
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

    /// Builds the policy and starts the resolver. Fails if the resolver refuses the
    /// target.
    pub(crate) fn start(&mut self) -> Result<(), lb_core::resolver::BuildError> {
        self.build_switch();
        let resolver = self.build_resolver()?;
        self.cc.resolver = Some(resolver);
        Ok(())
    }

    fn build_resolver(&mut self) -> Result<Box<dyn Resolver>, lb_core::resolver::BuildError> {
        self.resolver_generation += 1;
        let sink = Arc::new(ResolverSink {
            tx: self.cc.core.tx.clone(),
            generation: self.resolver_generation,
            use_config: self.use_resolver_config,
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

    /// A new policy instance (a graceful switch holding the wanted policy); on a
    /// panicking builder, schedules another try.
    fn build_switch(&mut self) {
        self.cc.timers.clear();
        let mut switch = GracefulSwitch::new(self.options.clone());
        let wanted = self.wanted.clone();
        let cc = &mut self.cc;
        match catch_unwind(AssertUnwindSafe(|| switch.switch_to(&wanted, cc))) {
            Ok(Ok(())) => self.switch = Some(switch),
            Ok(Err(error)) => {
                // Only registered policies are ever wanted; keep the last one.
                tracing::error!(target = %self.cc.target, %error, "cannot build the load-balancing policy");
            }
            Err(payload) => {
                tracing::error!(target = %self.cc.target, policy = %wanted, panic = %panic_message(payload.as_ref()), "building the load-balancing policy panicked");
                self.panics = self.panics.saturating_add(1);
                self.schedule_rebuild();
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
                    let config = self.cc.core.config.load().service.clone();
                    self.rebuild(&config);
                }
                () = sleep_until(self.cc.timers.next_deadline()) => self.fire_timers(),
                () = sleep_until(idle_check) => {
                    if let Some(timeout) = self.idle_timeout
                        && self.cc.core.activity.idle_check(timeout).is_none()
                    {
                        self.enter_idle(timeout);
                    }
                }
            }
        }
        self.shutdown();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Resolver(generation, state) if generation == self.resolver_generation => {
                self.cc.core.stats.resolver_update(&state.addresses);
                self.on_resolver_state(state);
            }
            Msg::ResolverError(generation, error) if generation == self.resolver_generation => {
                self.cc.core.mark_resolved();
                tracing::warn!(target = %self.cc.target, %error, "resolver error");
                self.cc
                    .core
                    .stats
                    .resolver_error(lb_core::error_chain(error.as_ref()));
                self.call(|s, cc| s.resolver_error(error, cc));
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
                    self.call(|s, cc| s.exit_idle(cc));
                }
            }
            Msg::Close => {}
        }
    }

    /// Delivers every timer that is due (each call may set or cancel others).
    fn fire_timers(&mut self) {
        let now = Instant::now();
        // Timers set by these deliveries wait for the next turn of the loop.
        let last_set = self.cc.timers.last_set();
        while let Some(timer) = self.cc.timers.pop_due(now, last_set) {
            self.call(|s, cc| s.timer(timer, cc));
        }
    }

    /// Calls the policy, catching its panic, and publishes what it published.
    fn call(&mut self, f: impl FnOnce(&mut GracefulSwitch, &mut ChannelCc)) {
        let Some(switch) = self.switch.as_mut() else {
            return; // panicked earlier; waiting to be rebuilt
        };
        let cc = &mut self.cc;
        match catch_unwind(AssertUnwindSafe(|| f(switch, cc))) {
            Ok(()) => {
                if switch.take_published() {
                    let state = switch.state();
                    let picker = switch.picker();
                    let policy: Arc<str> = switch.current_name().unwrap_or(&self.wanted).into();
                    tracing::debug!(target = %self.cc.target, %state, %policy, "picker updated");
                    self.cc.core.publish(state, picker, policy);
                    if state == ConnectivityState::Ready {
                        self.panics = 0;
                    }
                }
            }
            Err(payload) => self.on_panic(&panic_message(payload.as_ref())),
        }
    }

    /// The policy panicked: drop it and its subconns, fail RPCs with `INTERNAL`
    /// naming it, and rebuild it later.
    fn on_panic(&mut self, message: &str) {
        let switch = self.switch.take();
        let name = match switch
            .as_ref()
            .map(|s| (s.current_name(), s.pending_name()))
        {
            Some((Some(current), Some(pending))) => format!("{current}` (switching to `{pending}"),
            Some((Some(current), None)) => current.to_owned(),
            _ => self.wanted.clone(),
        };
        drop_quietly(switch);
        self.cc.timers.clear(); // its timers are void
        for (_, sc) in self.cc.subconns.drain() {
            sc.shutdown();
        }
        tracing::error!(target = %self.cc.target, policy = %name, panic = %message, "the load-balancing policy panicked; it is dropped with its subconns");
        if self.cc.closing {
            return;
        }
        let status = Status::new(
            Code::Internal,
            format!("load-balancing policy `{name}` panicked: {message}"),
        );
        self.cc.core.publish(
            ConnectivityState::TransientFailure,
            Arc::new(FailPicker(status)),
            name.as_str().into(),
        );
        self.panics = self.panics.saturating_add(1);
        self.schedule_rebuild();
    }

    fn schedule_rebuild(&mut self) {
        // 100 ms, doubling with each panic since the policy was last ready, up to 30 s.
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.panics.min(9))
            .min(Duration::from_secs(30));
        self.rebuild_at = Some(Instant::now() + delay);
    }

    /// Builds the policy again after a panic and gives it the last state with
    /// `config`.
    fn rebuild(&mut self, config: &ServiceConfig) {
        if self.switch.is_some() || self.cc.closing || self.idle {
            return;
        }
        self.build_switch();
        if self.switch.is_none() {
            return;
        }
        tracing::info!(target = %self.cc.target, policy = %self.wanted, "rebuilt the load-balancing policy");
        if let Some(state) = self.last_state.clone() {
            self.feed(state, config);
        }
    }

    fn on_resolver_state(&mut self, state: ResolverState) {
        let parsed: Option<Result<ServiceConfig, SharedError>> = if !self.use_resolver_config {
            None
        } else if let Some(error) = &state.service_config_error {
            Some(Err(error.clone()))
        } else {
            state.service_config.as_ref().map(|json| {
                ServiceConfig::parse(json, &self.options.registry)
                    .map_err(|e| Arc::new(e) as SharedError)
            })
        };
        // The resolver's per-RPC selector goes with its service config: none when
        // the channel ignores resolver configs or the resolver sent no config (as
        // grpc-go); an invalid config keeps the previous pair.
        let (config, selector) = match parsed {
            Some(Ok(config)) => (Arc::new(config), state.config_selector.clone()),
            Some(Err(error)) if !self.accepted_resolver_state => {
                // gRFC A21: with no good state before it, an invalid config is an
                // error the channel reports, not a cue to use the default.
                tracing::warn!(target = %self.cc.target, %error, "the resolver's first service config is invalid; failing RPCs until a valid one arrives");
                self.call(|s, cc| s.resolver_error(error, cc));
                self.cc.core.mark_resolved();
                return;
            }
            Some(Err(error)) => {
                tracing::warn!(target = %self.cc.target, %error, "resolver sent an invalid service config; keeping the previous one");
                let kept = self.cc.core.config.load();
                (kept.service.clone(), kept.selector.clone())
            }
            None => (self.default_config.clone(), None),
        };
        self.accepted_resolver_state = true;
        self.cc.core.set_throttling(&config);
        self.cc.core.set_health(&config);
        self.wanted = policy_name(&config);
        self.last_state = Some(state.clone());
        if self.switch.is_none() {
            // Broken by a panic: rebuild now rather than at the timer.
            self.rebuild_at = None;
            self.rebuild(&config);
        } else {
            tracing::debug!(target = %self.cc.target, addresses = state.addresses.len(), "resolver update");
            self.feed(state, &config);
        }
        // The policy has its new state (and a cluster a new route names, its
        // picker) before RPCs see the config and selector that go with it.
        self.cc.core.config.store(Arc::new(ChannelConfig {
            service: config,
            selector,
        }));
        // Only now: an RPC that waited must find this config.
        self.cc.core.mark_configured();
    }

    /// Gives the policy a resolver state with the current config (switching policy
    /// first if the config names another); a state it rejects asks the resolver to
    /// re-resolve.
    fn feed(&mut self, state: ResolverState, config: &ServiceConfig) {
        let mut ccs = ClientConnState::new(state.addresses).with_attributes(state.attributes);
        if let Some(lb) = config.lb_policy() {
            ccs = ccs.with_config(lb.config.clone());
        }
        let wanted = self.wanted.clone();
        let target = self.cc.target.clone();
        let stats = self.cc.core.stats.clone();
        self.call(|s, cc| {
            if s.current_name() != Some(wanted.as_str()) || s.pending_name().is_some() {
                tracing::info!(target = %target, from = ?s.current_name(), to = %wanted, "switching load-balancing policy");
                stats.trace.log(
                    lb_core::channelz::Severity::Info,
                    format!(
                        "switching load-balancing policy from {} to {wanted}",
                        s.current_name().unwrap_or("none")
                    ),
                );
            }
            if let Err(error) = s.switch_to(&wanted, cc) {
                tracing::error!(target = %target, %error, "cannot switch load-balancing policy");
            }
            if let Err(error) = s.update_client_conn_state(ccs, cc) {
                tracing::warn!(target = %target, %error, "the policy rejected the resolver state; asking to re-resolve");
                cc.resolve_now();
            }
        });
    }

    fn on_subconn_state(&mut self, id: SubConnId, state: SubConnState) {
        let Some(subconn) = self.cc.subconns.get(&id).cloned() else {
            return; // shut down and forgotten
        };
        if state.state == ConnectivityState::Shutdown {
            self.cc.subconns.remove(&id);
        }
        self.call(|s, cc| s.update_subconn_state(&subconn, &state, cc));
    }

    /// No RPC for the idle timeout: close the policy, its connections and the
    /// resolver; the next RPC brings them back.
    fn enter_idle(&mut self, timeout: Duration) {
        tracing::info!(target = %self.cc.target, ?timeout, "channel idle; closing its connections and resolver");
        self.close_policy();
        drop_quietly(self.cc.resolver.take());
        self.last_state = None;
        self.accepted_resolver_state = false;
        self.rebuild_at = None;
        self.idle = true;
        // As grpc-go: RPCs that bring the channel back wait for the new resolver's
        // first report, so that its config (and selector) applies to them.
        self.cc.core.unmark_resolved();
        self.cc.core.publish(
            ConnectivityState::Idle,
            Arc::new(IdlePicker),
            self.wanted.as_str().into(),
        );
    }

    fn exit_channel_idle(&mut self) {
        tracing::info!(target = %self.cc.target, "channel leaving idle");
        self.idle = false;
        self.cc.core.activity.touch();
        self.build_switch();
        self.cc.core.publish(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
            self.wanted.as_str().into(),
        );
        match self.build_resolver() {
            Ok(resolver) => self.cc.resolver = Some(resolver),
            Err(error) => {
                let error: SharedError = Arc::from(error);
                tracing::warn!(target = %self.cc.target, %error, "the resolver could not be restarted");
                self.call(|s, cc| s.resolver_error(error, cc));
            }
        }
    }

    /// Closes the policy and shuts every subconn down.
    fn close_policy(&mut self) {
        if let Some(mut switch) = self.switch.take() {
            let cc = &mut self.cc;
            if catch_unwind(AssertUnwindSafe(|| switch.close(cc))).is_err() {
                tracing::error!(target = %self.cc.target, "closing the load-balancing policy panicked");
            }
            drop_quietly(Some(switch));
        }
        self.cc.timers.clear();
        for (_, sc) in self.cc.subconns.drain() {
            sc.shutdown();
        }
    }

    /// Closes everything and fails every RPC from now on. Runs once, when the task
    /// ends or its state is dropped (a panic, the runtime shutting down).
    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.shut_down, true) {
            return;
        }
        self.cc.closing = true;
        self.close_policy();
        drop_quietly(self.cc.resolver.take());
        self.cc.core.publish(
            ConnectivityState::Shutdown,
            Arc::new(ShutdownPicker(Status::new(
                Code::Cancelled,
                "the channel is closing",
            ))),
            self.wanted.as_str().into(),
        );
        // RPCs waiting for a first resolution go on, to the closing picker.
        self.cc.core.mark_configured();
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

/// Drops user code (a policy, a resolver) whose `Drop` might panic.
fn drop_quietly<T>(value: Option<T>) {
    if let Some(value) = value
        && catch_unwind(AssertUnwindSafe(move || drop(value))).is_err()
    {
        tracing::error!("dropping a policy or resolver panicked");
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
