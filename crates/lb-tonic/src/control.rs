//! The channel's control task: the one place that calls the balancer.
//!
//! Resolver results, subconn state changes and exit-idle requests arrive as [`Msg`]s
//! and are handled one at a time, as grpc-go's serializer does, so balancers are plain
//! `&mut self` state. Published pickers go to [`Core`], where RPCs read them without a
//! lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use lb_core::{
    Address, Balancer, BalancerRegistry, BuildOptions, ClientConn, ClientConnState, Code,
    ConnectivityState, Error, PickInfo, PickResult, Picker, QueuePicker, Resolver, ResolverState,
    ServiceConfig, SharedError, Status, SubConn, SubConnId, SubConnState, Target,
};
use tokio::sync::{mpsc, watch};

use crate::subconn::{TransportOptions, new_transport};

/// A message to the control task.
pub(crate) enum Msg {
    Resolver(ResolverState),
    ResolverError(SharedError),
    SubConnState { id: SubConnId, state: SubConnState },
    ExitIdle,
    Close,
}

/// The current picker with the state it was published with.
pub(crate) struct Published {
    pub(crate) state: ConnectivityState,
    pub(crate) picker: Arc<dyn Picker>,
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
}

impl Core {
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Msg>,
        config: Arc<ServiceConfig>,
        wait_for_ready: bool,
    ) -> Self {
        Self {
            published: ArcSwap::from_pointee(Published {
                state: ConnectivityState::Connecting,
                picker: Arc::new(QueuePicker),
            }),
            picker_version: watch::Sender::new(0),
            state: watch::Sender::new(ConnectivityState::Connecting),
            service_config: ArcSwap::new(config),
            tx,
            exit_idle_requested: AtomicBool::new(false),
            wait_for_ready,
        }
    }

    /// Asks the control task to take the balancer out of idle; coalesced.
    pub(crate) fn request_exit_idle(&self) {
        if !self.exit_idle_requested.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::ExitIdle);
        }
    }

    fn publish(&self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.published.store(Arc::new(Published { state, picker }));
        self.picker_version.send_modify(|v| *v += 1);
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}

/// The resolver's side of the channel.
pub(crate) struct ResolverSink(pub(crate) mpsc::UnboundedSender<Msg>);

impl lb_core::resolver::ClientConn for ResolverSink {
    fn update_state(&self, state: ResolverState) {
        let _ = self.0.send(Msg::Resolver(state));
    }

    fn report_error(&self, error: SharedError) {
        let _ = self.0.send(Msg::ResolverError(error));
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
    /// What the pending balancer (during a policy switch) last published.
    pending_publication: Option<(ConnectivityState, Arc<dyn Picker>)>,
    closing: bool,
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
            Role::Current => {
                self.current_state = state;
                tracing::debug!(target = %self.target, %state, "picker updated");
                self.core.publish(state, picker);
            }
            Role::Pending => self.pending_publication = Some((state, picker)),
        }
    }

    fn resolve_now(&mut self) {
        if let Some(r) = &self.resolver {
            r.resolve_now();
        }
    }

    fn target(&self) -> &Target {
        &self.target
    }
}

struct Slot {
    name: String,
    balancer: Box<dyn Balancer>,
}

/// The control task's state.
pub(crate) struct Control {
    rx: mpsc::UnboundedReceiver<Msg>,
    balancers: BalancerRegistry,
    default_config: Arc<ServiceConfig>,
    use_resolver_config: bool,
    current: Slot,
    pending: Option<Slot>,
    cc: ChannelCc,
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
    pub(crate) balancers: BalancerRegistry,
    pub(crate) default_config: Arc<ServiceConfig>,
    pub(crate) use_resolver_config: bool,
    pub(crate) transport: Arc<TransportOptions>,
}

impl Control {
    pub(crate) fn new(parts: ControlParts) -> Result<Self, Error> {
        let name = policy_name(&parts.default_config);
        let builder = parts.balancers.require(&name)?;
        let balancer = builder.build(&BuildOptions::new(parts.target.clone()));
        Ok(Self {
            rx: parts.rx,
            balancers: parts.balancers,
            default_config: parts.default_config,
            use_resolver_config: parts.use_resolver_config,
            current: Slot { name, balancer },
            pending: None,
            cc: ChannelCc {
                core: parts.core,
                target: parts.target,
                transport: parts.transport,
                subconns: HashMap::new(),
                caller: Role::Current,
                resolver: None,
                current_state: ConnectivityState::Connecting,
                pending_publication: None,
                closing: false,
            },
        })
    }

    pub(crate) fn set_resolver(&mut self, resolver: Box<dyn Resolver>) {
        self.cc.resolver = Some(resolver);
    }

    /// Runs until the channel is dropped.
    pub(crate) async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                Msg::Resolver(state) => self.on_resolver_state(state),
                Msg::ResolverError(error) => {
                    tracing::warn!(target = %self.cc.target, %error, "resolver error");
                    self.with_target_balancer(|b, cc| b.resolver_error(error, cc));
                }
                Msg::SubConnState { id, state } => self.on_subconn_state(id, state),
                Msg::ExitIdle => {
                    self.cc
                        .core
                        .exit_idle_requested
                        .store(false, Ordering::Release);
                    self.call(Role::Current, |b, cc| b.exit_idle(cc));
                }
                Msg::Close => break,
            }
            self.maybe_swap();
        }
        self.shutdown();
    }

    fn call(&mut self, role: Role, f: impl FnOnce(&mut dyn Balancer, &mut ChannelCc)) {
        let slot = match role {
            Role::Current => &mut self.current,
            Role::Pending => match &mut self.pending {
                Some(p) => p,
                None => return,
            },
        };
        self.cc.caller = role;
        f(slot.balancer.as_mut(), &mut self.cc);
        self.cc.caller = Role::Current;
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
                Err(error) => {
                    // Keep what we had (the default config before any good one).
                    tracing::warn!(target = %self.cc.target, %error, "resolver sent an invalid service config; keeping the previous one");
                    self.cc.core.service_config.load_full()
                }
            },
            _ => self.default_config.clone(),
        };
        self.cc.core.service_config.store(config.clone());
        let name = policy_name(&config);
        let wanted = self
            .pending
            .as_ref()
            .map_or(&self.current.name, |p| &p.name);
        if *wanted != name {
            self.switch_to(name);
        }
        tracing::debug!(target = %self.cc.target, addresses = state.addresses.len(), "resolver update");
        let mut ccs = ClientConnState::new(state.addresses).with_attributes(state.attributes);
        if let Some(lb) = config.lb_policy() {
            ccs = ccs.with_config(lb.config.clone());
        }
        self.with_target_balancer(|b, cc| {
            if let Err(error) = b.update_client_conn_state(ccs, cc) {
                tracing::warn!(target = %cc.target, %error, "balancer rejected the resolver state");
            }
        });
    }

    /// Starts a graceful switch: the new balancer gets every resolver update from now
    /// on and takes over once it is ready (or once the current one is not).
    fn switch_to(&mut self, name: String) {
        let Some(builder) = self.balancers.get(&name).cloned() else {
            return; // ServiceConfig::parse only selects registered policies
        };
        if let Some(mut old) = self.pending.take() {
            self.cc.caller = Role::Pending;
            old.balancer.close(&mut self.cc);
            self.cc.caller = Role::Current;
            self.shutdown_subconns(Role::Pending);
        }
        tracing::info!(target = %self.cc.target, from = %self.current.name, to = %name, "switching load-balancing policy");
        if name == self.current.name {
            return; // back to the current policy: nothing pending
        }
        self.cc.pending_publication = None;
        self.pending = Some(Slot {
            balancer: builder.build(&BuildOptions::new(self.cc.target.clone())),
            name,
        });
    }

    fn maybe_swap(&mut self) {
        let Some((state, _)) = &self.cc.pending_publication else {
            return;
        };
        if *state != ConnectivityState::Ready && self.cc.current_state == ConnectivityState::Ready {
            return; // keep the ready current policy serving
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        let mut old = std::mem::replace(&mut self.current, pending);
        self.cc.caller = Role::Current;
        old.balancer.close(&mut self.cc);
        self.shutdown_subconns(Role::Current);
        for (_, role) in self.cc.subconns.values_mut() {
            *role = Role::Current;
        }
        if let Some((state, picker)) = self.cc.pending_publication.take() {
            self.cc.update_state(state, picker);
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

    fn shutdown(mut self) {
        self.cc.closing = true;
        self.call(Role::Current, |b, cc| b.close(cc));
        self.call(Role::Pending, |b, cc| b.close(cc));
        for (sc, _) in self.cc.subconns.values() {
            sc.shutdown();
        }
        self.cc.subconns.clear();
        self.cc.resolver = None;
        self.cc.core.publish(
            ConnectivityState::Shutdown,
            Arc::new(ShutdownPicker(Status::new(
                Code::Unavailable,
                "the channel was shut down",
            ))),
        );
        tracing::debug!(target = %self.cc.target, "channel closed");
    }
}

fn policy_name(config: &ServiceConfig) -> String {
    config.lb_policy().map_or_else(
        || lb_policies::DEFAULT_POLICY.to_owned(),
        |p| p.name.clone(),
    )
}
