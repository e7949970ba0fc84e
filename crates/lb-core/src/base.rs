//! The connection bookkeeping for simple policies, as grpc-go's `balancer/base`.
//!
//! A policy that only decides *which ready subconn* serves an RPC implements
//! [`PickerBuilder`] and wraps it in a [`BaseBuilder`]. The resulting balancer keeps one
//! subconn per address, keeps every subconn connected (an `Idle` one reconnects at
//! once), asks the resolver to re-resolve whenever a connection is lost or an attempt
//! fails, aggregates their states, and calls the picker builder with the ready set
//! whenever that set (or a ready address's attributes) changes.
//!
//! ```
//! use std::sync::Arc;
//! use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
//! use lb_core::{Pick, PickInfo, PickResult, Picker, SubConn};
//!
//! /// Sends every RPC to the first ready address.
//! #[derive(Clone)]
//! struct First;
//! struct FirstPicker(SubConn);
//!
//! impl Picker for FirstPicker {
//!     fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
//!         PickResult::Pick(Pick::new(&self.0))
//!     }
//! }
//! impl PickerBuilder for First {
//!     fn build(&mut self, ready: &[ReadySubConn], _: Option<&lb_core::LbConfig>) -> Arc<dyn Picker> {
//!         Arc::new(FirstPicker(ready[0].subconn.clone()))
//!     }
//! }
//!
//! let builder = BaseBuilder::new("first_ready", First);
//! # let _ = builder;
//! ```

use crate::failure_message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Address, Balancer, BalancerBuilder, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, LbConfig, Picker, QueuePicker, SharedError, Status,
    SubConn, SubConnOptions, SubConnState, TimerId,
};

/// Turns the set of ready subconns into a picker. The one thing a simple policy writes.
///
/// Each channel gets its own clone of the builder given to [`BaseBuilder::new`], so
/// state kept in it (per-subconn load counters, say) belongs to one channel; the
/// methods take `&mut self` and run on that channel's control task.
pub trait PickerBuilder: Clone + Send + Sync + 'static {
    /// A picker over `ready`, which is never empty and follows the resolver's address
    /// order. Called whenever the set changes (and every
    /// [`PickerBuilder::refresh_period`]); should be O(`ready.len()`).
    ///
    /// `config` is the policy's config from the latest resolver state, if any.
    fn build(&mut self, ready: &[ReadySubConn], config: Option<&LbConfig>) -> Arc<dyn Picker>;

    /// Called once on each channel's clone before anything else, with the
    /// channel's build options: for state that depends on the channel (metrics
    /// labelled with its target, say). The default does nothing.
    fn started(&mut self, options: &BuildOptions) {
        let _ = options;
    }

    /// `subconn` was shut down (its address left the resolver's list, or the policy
    /// closed): forget what was kept for it.
    fn subconn_removed(&mut self, subconn: &SubConn) {
        let _ = subconn;
    }

    /// `subconn` reported `state` (before any picker for it is built): for state
    /// kept per connection, such as load reports that must start over on a new
    /// connection.
    fn subconn_state_changed(&mut self, subconn: &SubConn, state: &SubConnState) {
        let _ = (subconn, state);
    }

    /// Rebuild the picker this often while any subconn is ready, for pickers whose
    /// input changes without a state change (weights from load reports). `None`, the
    /// default: only on changes.
    fn refresh_period(&self, config: Option<&LbConfig>) -> Option<Duration> {
        let _ = config;
        None
    }

    /// Parses the policy's config; see [`BalancerBuilder::parse_config`]. The default
    /// accepts any object.
    fn parse_config(&self, policy: &str, config: &serde_json::Value) -> Result<LbConfig, Error> {
        if config.is_object() {
            Ok(LbConfig::new(()))
        } else {
            Err(Error::lb_config(policy, "$", "expected a JSON object"))
        }
    }
}

/// A ready subconn and the address it serves, with the address's latest attributes.
#[derive(Clone, Debug)]
pub struct ReadySubConn {
    /// The subconn.
    pub subconn: SubConn,
    /// The address as the resolver last sent it (its weight and metadata are current
    /// even when the subconn was created for an earlier version of it).
    pub address: Address,
}

/// A [`BalancerBuilder`] for a policy made of a [`PickerBuilder`] and the base
/// bookkeeping.
#[derive(Clone)]
pub struct BaseBuilder<P> {
    name: String,
    picker_builder: P,
}

impl<P: PickerBuilder> BaseBuilder<P> {
    /// A builder registered as `name`; each channel's balancer gets a clone of
    /// `picker_builder`.
    pub fn new(name: impl Into<String>, picker_builder: P) -> Self {
        Self {
            name: name.into(),
            picker_builder,
        }
    }
}

impl<P: PickerBuilder> BalancerBuilder for BaseBuilder<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        let mut picker_builder = self.picker_builder.clone();
        picker_builder.started(options);
        Box::new(BaseBalancer {
            picker_builder,
            // Spreading policies want health-checked subconns (gRFC A17).
            subconns: SubConnList::new(SubConnOptions::health_checked()),
            config: None,
            state: ConnectivityState::Connecting,
            errors: LastErrors::default(),
            refreshing: false,
        })
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        self.picker_builder.parse_config(&self.name, config)
    }
}

/// One subconn of a [`SubConnList`].
#[derive(Clone, Debug)]
pub struct SubConnEntry {
    /// The subconn.
    pub subconn: SubConn,
    /// Its address as the resolver last sent it.
    pub address: Address,
    /// The state it last reported.
    pub state: ConnectivityState,
    /// The state used for aggregation: once `TransientFailure`, it stays so through
    /// the following `Idle` and `Connecting` until the subconn is `Ready` again, so a
    /// set of dead backends reads as failing rather than forever connecting.
    pub effective: ConnectivityState,
}

/// One subconn per address, in the resolver's order, with the state each reported:
/// the bookkeeping of [`BaseBuilder`], for policies that write their own balancer
/// (a consistent-hash ring that connects on demand, a parent policy).
///
/// ```
/// # #[cfg(feature = "test-util")] {
/// use lb_core::base::SubConnList;
/// use lb_core::test_util::RecordingClientConn;
/// use lb_core::{Address, ConnectivityState, SubConnOptions, SubConnState, Target};
///
/// let mut cc = RecordingClientConn::new(Target::parse("test:///x").unwrap());
/// let mut list = SubConnList::new(SubConnOptions::default());
/// let changes = list.update(vec![Address::new("10.0.0.1:1")], &mut cc).unwrap();
/// assert_eq!(changes.created.len(), 1);
/// let sc = changes.created[0].clone();
/// list.record(&sc, &SubConnState::new(ConnectivityState::Connecting));
/// list.record(&sc, &SubConnState::new(ConnectivityState::Ready));
/// assert_eq!(list.aggregate(), ConnectivityState::Ready);
/// # }
/// ```
#[derive(Debug, Default)]
pub struct SubConnList {
    entries: Vec<SubConnEntry>,
    /// Address string -> position in `entries`.
    index: HashMap<Arc<str>, usize>,
    options: SubConnOptions,
}

/// What [`SubConnList::update`] changed.
#[derive(Debug, Default)]
pub struct ListChanges {
    /// Subconns created for new addresses (`Idle`, not connected yet).
    pub created: Vec<SubConn>,
    /// Subconns of addresses that left the list; they have been shut down.
    pub removed: Vec<SubConn>,
}

impl SubConnList {
    /// An empty list whose subconns are created with `options`.
    pub fn new(options: SubConnOptions) -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            options,
        }
    }

    /// Follows `addresses`: subconns of addresses still listed are kept (with the
    /// address's new attributes), new addresses get a subconn, and the subconns of
    /// addresses no longer listed are shut down. Duplicates count once (the first).
    pub fn update(
        &mut self,
        addresses: Vec<Address>,
        cc: &mut dyn ClientConn,
    ) -> Result<ListChanges, Error> {
        let mut changes = ListChanges::default();
        let mut old: HashMap<Arc<str>, SubConnEntry> = self
            .entries
            .drain(..)
            .map(|e| (Arc::from(e.address.addr()), e))
            .collect();
        self.index.clear();
        for address in addresses {
            if self.index.contains_key(address.addr()) {
                continue; // duplicates: the first occurrence wins
            }
            let key: Arc<str> = Arc::from(address.addr());
            let entry = match old.remove(&key) {
                // Keep the connection; take the address's new attributes.
                Some(mut e) => {
                    e.address = address;
                    e
                }
                None => {
                    let subconn = cc.new_subconn_with(address.clone(), self.options.clone())?;
                    changes.created.push(subconn.clone());
                    SubConnEntry {
                        subconn,
                        address,
                        state: ConnectivityState::Idle,
                        effective: ConnectivityState::Idle,
                    }
                }
            };
            self.index.insert(key, self.entries.len());
            self.entries.push(entry);
        }
        for (_, removed) in old {
            removed.subconn.shutdown();
            changes.removed.push(removed.subconn);
        }
        Ok(changes)
    }

    /// Records `subconn`'s new state. Returns its position and its previous
    /// *effective* state, or `None` if it is not (or no longer) in the list.
    pub fn record(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
    ) -> Option<(usize, ConnectivityState)> {
        let &i = self.index.get(subconn.address().addr())?;
        let entry = &mut self.entries[i];
        if entry.subconn != *subconn {
            return None; // an older subconn for the same address
        }
        let previous = entry.effective;
        entry.state = state.state;
        entry.effective = match state.state {
            ConnectivityState::Idle | ConnectivityState::Connecting
                if previous == ConnectivityState::TransientFailure =>
            {
                previous // sticky: see `SubConnEntry::effective`
            }
            s => s,
        };
        Some((i, previous))
    }

    /// The entry of `subconn`, if it is in the list.
    pub fn get(&self, subconn: &SubConn) -> Option<&SubConnEntry> {
        let &i = self.index.get(subconn.address().addr())?;
        self.entries.get(i).filter(|e| e.subconn == *subconn)
    }

    /// Every entry, in the resolver's order.
    pub fn entries(&self) -> &[SubConnEntry] {
        &self.entries
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ready subconns, in order.
    pub fn ready(&self) -> Vec<ReadySubConn> {
        self.entries
            .iter()
            .filter(|e| e.effective == ConnectivityState::Ready)
            .map(|e| ReadySubConn {
                subconn: e.subconn.clone(),
                address: e.address.clone(),
            })
            .collect()
    }

    /// `Ready` if any subconn is, else `Connecting` if any is connecting or idle,
    /// else `TransientFailure` (also when empty), from the effective states.
    pub fn aggregate(&self) -> ConnectivityState {
        let mut connecting = false;
        for e in &self.entries {
            match e.effective {
                ConnectivityState::Ready => return ConnectivityState::Ready,
                ConnectivityState::Connecting | ConnectivityState::Idle => connecting = true,
                _ => {}
            }
        }
        if connecting {
            ConnectivityState::Connecting
        } else {
            ConnectivityState::TransientFailure
        }
    }

    /// Shuts every subconn down and empties the list; returns them.
    pub fn shutdown_all(&mut self) -> Vec<SubConn> {
        self.index.clear();
        self.entries
            .drain(..)
            .map(|e| {
                e.subconn.shutdown();
                e.subconn
            })
            .collect()
    }
}

/// A policy's last connection and resolver errors: what its picker fails RPCs with
/// while nothing is ready, so that the status says why.
#[derive(Debug, Default, Clone)]
pub struct LastErrors {
    /// The error of the last failed connection attempt.
    pub connection: Option<SharedError>,
    /// The resolver's last error, until it sends a good state again.
    pub resolver: Option<SharedError>,
}

impl LastErrors {
    /// `UNAVAILABLE` naming both errors, or `when_none` without any.
    pub fn status(&self, when_none: &str) -> Status {
        let message = match (&self.connection, &self.resolver) {
            (Some(conn), Some(res)) => {
                format!("{}; last resolver error: {res}", failure_message(&**conn))
            }
            (Some(conn), None) => failure_message(&**conn),
            (None, Some(res)) => format!("last resolver error: {res}"),
            (None, None) => when_none.to_owned(),
        };
        Status::unavailable(message)
    }
}

/// The timer of a picker refresh ([`PickerBuilder::refresh_period`]).
const REFRESH: TimerId = TimerId::new(1);

/// The balancer behind [`BaseBuilder`].
struct BaseBalancer<P> {
    picker_builder: P,
    subconns: SubConnList,
    config: Option<LbConfig>,
    state: ConnectivityState,
    errors: LastErrors,
    /// A refresh timer is set.
    refreshing: bool,
}

impl<P: PickerBuilder> BaseBalancer<P> {
    /// Recomputes the aggregate state and publishes it with a fresh picker.
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        self.state = self.subconns.aggregate();
        let picker: Arc<dyn Picker> = match self.state {
            ConnectivityState::Ready => {
                let ready = self.subconns.ready();
                self.schedule_refresh(cc);
                self.picker_builder.build(&ready, self.config.as_ref())
            }
            ConnectivityState::TransientFailure => {
                Arc::new(FailPicker(self.errors.status("no subconn is ready")))
            }
            _ => Arc::new(QueuePicker),
        };
        cc.update_state(self.state, picker);
    }

    fn schedule_refresh(&mut self, cc: &mut dyn ClientConn) {
        if self.refreshing {
            return;
        }
        if let Some(period) = self.picker_builder.refresh_period(self.config.as_ref()) {
            self.refreshing = true;
            cc.schedule(period, REFRESH);
        }
    }

    fn removed(&mut self, removed: &[SubConn]) {
        for sc in removed {
            self.picker_builder.subconn_removed(sc);
        }
    }
}

impl<P: PickerBuilder> Balancer for BaseBalancer<P> {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        self.config = state.config;
        if state.addresses.is_empty() {
            let removed = self.subconns.shutdown_all();
            self.removed(&removed);
            self.errors.resolver = Some(Arc::new(Error::no_addresses(&state.attributes)));
            self.publish(cc);
            return Err(Error::no_addresses(&state.attributes));
        }
        self.errors.resolver = None;
        let changes = self.subconns.update(state.addresses, cc)?;
        for sc in &changes.created {
            sc.connect();
        }
        self.removed(&changes.removed);
        self.publish(cc);
        Ok(())
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.errors.resolver = Some(error);
        // Keep serving the last good addresses; only a balancer that has nothing
        // working turns the error into failing RPCs.
        if self.subconns.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.publish(cc);
        }
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        if state.state == ConnectivityState::Shutdown {
            return;
        }
        let Some((_, previous)) = self.subconns.record(subconn, state) else {
            return; // removed already, or an older subconn for the address
        };
        self.picker_builder.subconn_state_changed(subconn, state);
        // A lost connection or a failed attempt may mean the backend moved: ask the
        // resolver for news (it rate-limits), as grpc-go does.
        if state.state == ConnectivityState::TransientFailure
            || (state.state == ConnectivityState::Idle && previous == ConnectivityState::Ready)
        {
            cc.resolve_now();
        }
        if state.state == ConnectivityState::Idle {
            subconn.connect();
        }
        if state.state == ConnectivityState::TransientFailure
            && let Some(error) = &state.error
        {
            self.errors.connection = Some(error.clone());
        }
        let now = self.subconns.get(subconn).map_or(previous, |e| e.effective);
        let ready_changed =
            (previous == ConnectivityState::Ready) != (now == ConnectivityState::Ready);
        let aggregate = self.subconns.aggregate();
        if ready_changed
            || aggregate != self.state
            || aggregate == ConnectivityState::TransientFailure
        {
            // In TransientFailure, republish so the picker names the newest error.
            self.publish(cc);
        }
    }

    fn exit_idle(&mut self, _: &mut dyn ClientConn) {
        for e in self.subconns.entries() {
            if e.state == ConnectivityState::Idle {
                e.subconn.connect();
            }
        }
    }

    fn timer(&mut self, timer: crate::TimerId, cc: &mut dyn ClientConn) {
        if timer == REFRESH {
            self.refreshing = false;
            if self.state == ConnectivityState::Ready {
                self.publish(cc); // a fresh picker with the latest weights
            }
        }
    }

    fn close(&mut self, _: &mut dyn ClientConn) {
        let removed = self.subconns.shutdown_all();
        self.removed(&removed);
    }
}
