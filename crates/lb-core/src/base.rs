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
//! struct First;
//! struct FirstPicker(SubConn);
//!
//! impl Picker for FirstPicker {
//!     fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
//!         PickResult::Pick(Pick::new(&self.0))
//!     }
//! }
//! impl PickerBuilder for First {
//!     fn build(&self, ready: &[ReadySubConn], _: Option<&lb_core::LbConfig>) -> Arc<dyn Picker> {
//!         Arc::new(FirstPicker(ready[0].subconn.clone()))
//!     }
//! }
//!
//! let builder = BaseBuilder::new("first_ready", First);
//! # let _ = builder;
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::{
    Address, Balancer, BalancerBuilder, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, LbConfig, Picker, QueuePicker, SharedError, Status,
    SubConn, SubConnState,
};

/// Turns the set of ready subconns into a picker. The one thing a simple policy writes.
pub trait PickerBuilder: Send + Sync + 'static {
    /// A picker over `ready`, which is never empty and follows the resolver's address
    /// order. Called on the channel's control task whenever the set changes; should
    /// be O(`ready.len()`).
    ///
    /// `config` is the policy's config from the latest resolver state, if any.
    fn build(&self, ready: &[ReadySubConn], config: Option<&LbConfig>) -> Arc<dyn Picker>;

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
/// bookkeeping. Cloning shares the picker builder.
pub struct BaseBuilder<P> {
    name: String,
    picker_builder: Arc<P>,
}

impl<P> Clone for BaseBuilder<P> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            picker_builder: self.picker_builder.clone(),
        }
    }
}

impl<P: PickerBuilder> BaseBuilder<P> {
    /// A builder registered as `name` whose pickers come from `picker_builder`.
    pub fn new(name: impl Into<String>, picker_builder: P) -> Self {
        Self {
            name: name.into(),
            picker_builder: Arc::new(picker_builder),
        }
    }
}

impl<P: PickerBuilder> BalancerBuilder for BaseBuilder<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(BaseBalancer {
            picker_builder: self.picker_builder.clone(),
            entries: Vec::new(),
            index: HashMap::new(),
            config: None,
            state: ConnectivityState::Connecting,
            last_connection_error: None,
            resolver_error: None,
        })
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        self.picker_builder.parse_config(&self.name, config)
    }
}

struct Entry {
    subconn: SubConn,
    address: Address,
    /// The state used for aggregation: once `TransientFailure`, it stays so through
    /// the following `Idle` and `Connecting` until the subconn is `Ready` again, so a
    /// set of dead backends reads as failing rather than forever connecting.
    state: ConnectivityState,
}

/// The balancer behind [`BaseBuilder`].
struct BaseBalancer<P> {
    picker_builder: Arc<P>,
    /// In the resolver's address order.
    entries: Vec<Entry>,
    /// Address string -> position in `entries`.
    index: HashMap<Arc<str>, usize>,
    config: Option<LbConfig>,
    state: ConnectivityState,
    last_connection_error: Option<SharedError>,
    resolver_error: Option<SharedError>,
}

impl<P: PickerBuilder> BaseBalancer<P> {
    fn aggregate(&self) -> ConnectivityState {
        let mut connecting = false;
        for e in &self.entries {
            match e.state {
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

    fn failure_status(&self) -> Status {
        let message = match (&self.last_connection_error, &self.resolver_error) {
            (Some(conn), Some(res)) => {
                format!("last connection error: {conn}; last resolver error: {res}")
            }
            (Some(conn), None) => format!("last connection error: {conn}"),
            (None, Some(res)) => format!("last resolver error: {res}"),
            (None, None) => "no subconn is ready".to_owned(),
        };
        Status::unavailable(message)
    }

    /// Recomputes the aggregate state and publishes it with a fresh picker.
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        self.state = if self.entries.is_empty() {
            ConnectivityState::TransientFailure
        } else {
            self.aggregate()
        };
        let picker: Arc<dyn Picker> = match self.state {
            ConnectivityState::Ready => {
                let ready: Vec<ReadySubConn> = self
                    .entries
                    .iter()
                    .filter(|e| e.state == ConnectivityState::Ready)
                    .map(|e| ReadySubConn {
                        subconn: e.subconn.clone(),
                        address: e.address.clone(),
                    })
                    .collect();
                self.picker_builder.build(&ready, self.config.as_ref())
            }
            ConnectivityState::TransientFailure => Arc::new(FailPicker(self.failure_status())),
            _ => Arc::new(QueuePicker),
        };
        cc.update_state(self.state, picker);
    }

    fn shutdown_all(&mut self) {
        for e in self.entries.drain(..) {
            e.subconn.shutdown();
        }
        self.index.clear();
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
            self.shutdown_all();
            self.resolver_error = Some(Arc::new(Error::NoAddresses));
            self.publish(cc);
            return Err(Error::NoAddresses);
        }
        self.resolver_error = None;

        let mut old: HashMap<Arc<str>, Entry> = self
            .entries
            .drain(..)
            .map(|e| (Arc::from(e.address.addr()), e))
            .collect();
        self.index.clear();
        for address in state.addresses {
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
                    let subconn = cc.new_subconn(address.clone())?;
                    subconn.connect();
                    Entry {
                        subconn,
                        address,
                        state: ConnectivityState::Idle,
                    }
                }
            };
            self.index.insert(key, self.entries.len());
            self.entries.push(entry);
        }
        for (_, removed) in old {
            removed.subconn.shutdown();
        }
        self.publish(cc);
        Ok(())
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.resolver_error = Some(error);
        // Keep serving the last good addresses; only a balancer that has nothing
        // working turns the error into failing RPCs.
        if self.entries.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.publish(cc);
        }
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        let Some(&i) = self.index.get(subconn.address().addr()) else {
            return; // removed already
        };
        let entry = &mut self.entries[i];
        if entry.subconn != *subconn {
            return; // an older subconn for the same address
        }
        let previous = entry.state;
        // A lost connection or a failed attempt may mean the backend moved: ask the
        // resolver for news (it rate-limits), as grpc-go does.
        if state.state == ConnectivityState::TransientFailure
            || (state.state == ConnectivityState::Idle && previous == ConnectivityState::Ready)
        {
            cc.resolve_now();
        }
        match state.state {
            ConnectivityState::Shutdown => return,
            ConnectivityState::Idle => {
                subconn.connect();
                if previous == ConnectivityState::TransientFailure {
                    return; // sticky: see `Entry::state`
                }
            }
            ConnectivityState::Connecting if previous == ConnectivityState::TransientFailure => {
                return;
            }
            ConnectivityState::TransientFailure => {
                if let Some(error) = &state.error {
                    self.last_connection_error = Some(error.clone());
                }
            }
            _ => {}
        }
        entry.state = state.state;
        let ready_changed =
            (previous == ConnectivityState::Ready) != (state.state == ConnectivityState::Ready);
        let aggregate = self.aggregate();
        if ready_changed
            || aggregate != self.state
            || aggregate == ConnectivityState::TransientFailure
        {
            // In TransientFailure, republish so the picker names the newest error.
            self.publish(cc);
        }
    }

    fn exit_idle(&mut self, _: &mut dyn ClientConn) {
        for e in &self.entries {
            if e.state == ConnectivityState::Idle {
                e.subconn.connect();
            }
        }
    }

    fn close(&mut self, _: &mut dyn ClientConn) {
        self.shutdown_all();
    }
}
