//! `pick_first`: one connection, to the first address that works (gRFC A61/A62).
//!
//! * Tries the addresses in order, one at a time, until one connects; every RPC then
//!   goes there and the other subconns are shut down.
//! * When every address has failed once, reports `TransientFailure` and stays there
//!   ("sticky") while it keeps retrying: from then on each subconn that comes back
//!   from its backoff (`Idle`) is asked to connect again, until one is `Ready`.
//! * Every failed attempt and every lost connection asks the resolver to re-resolve
//!   (the resolver rate-limits): the backend may have moved.
//! * When the connection drops, goes `Idle`; the next RPC (the channel calls
//!   [`Balancer::exit_idle`]) starts again from the first address.
//! * A new address list that still contains the connected address keeps that
//!   connection.
//! * Config: `{"shuffleAddressList": bool}` shuffles every new address list before
//!   use, so that clients of one resolver spread over its addresses.

use std::collections::HashMap;
use std::sync::Arc;

use lb_core::{
    Address, Balancer, BalancerBuilder, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, IdlePicker, LbConfig, Pick, PickInfo, PickResult, Picker,
    QueuePicker, SharedError, Status, SubConn, SubConnState,
};

/// The policy's name in service configs.
pub const NAME: &str = "pick_first";

/// `pick_first`'s config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickFirstConfig {
    /// Shuffle each new address list before use.
    pub shuffle_address_list: bool,
}

/// The `pick_first` balancer builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickFirst;

impl BalancerBuilder for PickFirst {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(PickFirstBalancer::default())
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        let obj = config
            .as_object()
            .ok_or_else(|| Error::lb_config(NAME, "$", "expected a JSON object"))?;
        let shuffle_address_list = match obj.get("shuffleAddressList") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::lb_config(NAME, "shuffleAddressList", "expected a boolean")
            })?,
        };
        Ok(LbConfig::new(PickFirstConfig {
            shuffle_address_list,
        }))
    }
}

/// Sends every RPC to the one connected subconn.
pub struct PickFirstPicker(SubConn);

impl PickFirstPicker {
    /// A picker that always picks `subconn`.
    pub fn new(subconn: SubConn) -> Self {
        Self(subconn)
    }
}

impl Picker for PickFirstPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::new(&self.0))
    }
}

#[derive(Default)]
struct PickFirstBalancer {
    /// The addresses in the order they are tried.
    addresses: Vec<Address>,
    /// Live subconns by address string.
    subconns: HashMap<Arc<str>, Tracked>,
    /// The address whose subconn is `Ready` and serving.
    selected: Option<Arc<str>>,
    /// The position in `addresses` of the current attempt during the first pass.
    attempt: usize,
    /// The first pass over the addresses has ended with every one failing.
    first_pass_done: bool,
    state: Option<ConnectivityState>,
    last_error: Option<SharedError>,
    resolver_error: Option<SharedError>,
}

struct Tracked {
    subconn: SubConn,
    state: ConnectivityState,
}

impl PickFirstBalancer {
    fn publish(
        &mut self,
        state: ConnectivityState,
        picker: Arc<dyn Picker>,
        cc: &mut dyn ClientConn,
    ) {
        self.state = Some(state);
        cc.update_state(state, picker);
    }

    fn publish_failure(&mut self, cc: &mut dyn ClientConn) {
        let message = match (&self.last_error, &self.resolver_error) {
            (_, Some(res)) if self.addresses.is_empty() => format!("last resolver error: {res}"),
            (Some(conn), _) => lb_core::failure_message(&**conn),
            (None, Some(res)) => format!("last resolver error: {res}"),
            (None, None) => "every address failed".to_owned(),
        };
        self.publish(
            ConnectivityState::TransientFailure,
            Arc::new(FailPicker(Status::unavailable(message))),
            cc,
        );
    }

    /// The subconn for `addresses[i]`, created if needed.
    fn subconn_at(&mut self, i: usize, cc: &mut dyn ClientConn) -> Option<SubConn> {
        let address = self.addresses.get(i)?.clone();
        let key: Arc<str> = Arc::from(address.addr());
        if let Some(t) = self.subconns.get(&key) {
            return Some(t.subconn.clone());
        }
        let subconn = cc.new_subconn(address).ok()?;
        self.subconns.insert(
            key,
            Tracked {
                subconn: subconn.clone(),
                state: ConnectivityState::Idle,
            },
        );
        Some(subconn)
    }

    /// Starts a pass over the addresses from the first one. A `TRANSIENT_FAILURE`
    /// that connections failed into stays (sticky, gRFC A62); any other state, and
    /// one that an empty address list or a resolver error caused (`sticky` false),
    /// becomes `CONNECTING`.
    fn start_pass(&mut self, sticky: bool, cc: &mut dyn ClientConn) {
        self.selected = None;
        self.first_pass_done = false;
        self.attempt = 0;
        if !(sticky && self.state == Some(ConnectivityState::TransientFailure)) {
            self.publish(ConnectivityState::Connecting, Arc::new(QueuePicker), cc);
        }
        self.try_from(0, cc);
    }

    /// Asks the subconns from position `i` on, in order, to connect, stopping at the
    /// first that is (or may become) connecting. Ends the first pass when none is left.
    fn try_from(&mut self, mut i: usize, cc: &mut dyn ClientConn) {
        while i < self.addresses.len() {
            self.attempt = i;
            let Some(subconn) = self.subconn_at(i, cc) else {
                return; // the channel is shutting down
            };
            let state = self.state_of(&subconn);
            match state {
                ConnectivityState::Ready => {
                    self.select(&subconn, cc);
                    return;
                }
                ConnectivityState::Idle => {
                    subconn.connect();
                    return;
                }
                ConnectivityState::Connecting => return,
                // Still backing off from an earlier failure: try the next one.
                _ => i += 1,
            }
        }
        self.first_pass_done = true;
        self.publish_failure(cc);
        // Retry whatever is already back from its backoff.
        for t in self.subconns.values() {
            if t.state == ConnectivityState::Idle {
                t.subconn.connect();
            }
        }
    }

    fn state_of(&self, subconn: &SubConn) -> ConnectivityState {
        self.subconns
            .get(subconn.address().addr())
            .map_or(ConnectivityState::Idle, |t| t.state)
    }

    fn select(&mut self, subconn: &SubConn, cc: &mut dyn ClientConn) {
        let key: Arc<str> = Arc::from(subconn.address().addr());
        self.subconns.retain(|k, t| {
            let keep = *k == key;
            if !keep {
                t.subconn.shutdown();
            }
            keep
        });
        self.selected = Some(key);
        self.first_pass_done = false;
        self.publish(
            ConnectivityState::Ready,
            Arc::new(PickFirstPicker::new(subconn.clone())),
            cc,
        );
    }

    fn shutdown_all(&mut self) {
        for (_, t) in self.subconns.drain() {
            t.subconn.shutdown();
        }
        self.selected = None;
    }
}

impl Balancer for PickFirstBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let shuffle = state
            .config
            .as_ref()
            .and_then(|c| c.get::<PickFirstConfig>())
            .is_some_and(|c| c.shuffle_address_list);
        let mut addresses = Vec::with_capacity(state.addresses.len());
        for a in state.addresses {
            if !addresses.iter().any(|b: &Address| b.addr() == a.addr()) {
                addresses.push(a);
            }
        }
        if shuffle {
            fastrand::shuffle(&mut addresses);
        }
        if addresses.is_empty() {
            self.addresses.clear();
            self.shutdown_all();
            self.resolver_error = Some(Arc::new(Error::no_addresses(&state.attributes)));
            self.publish_failure(cc);
            return Err(Error::no_addresses(&state.attributes));
        }
        self.resolver_error = None;
        // After no addresses, a failure is the resolver's, not the connections'.
        let had_addresses = !self.addresses.is_empty();
        self.addresses = addresses;

        // Drop subconns whose address is gone.
        let addresses = &self.addresses;
        self.subconns.retain(|k, t| {
            let keep = addresses.iter().any(|a| a.addr() == &**k);
            if !keep {
                t.subconn.shutdown();
            }
            keep
        });
        if let Some(selected) = &self.selected {
            if self.subconns.contains_key(selected) {
                return Ok(()); // still connected to an address in the new list
            }
            self.selected = None;
        }
        match self.state {
            // Idle stays idle until an RPC arrives.
            Some(ConnectivityState::Idle) => {}
            _ => self.start_pass(had_addresses, cc),
        }
        Ok(())
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.resolver_error = Some(error);
        if self.addresses.is_empty() || self.state == Some(ConnectivityState::TransientFailure) {
            self.publish_failure(cc);
        }
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        let key = subconn.address().addr();
        let previous = match self.subconns.get_mut(key) {
            Some(t) if t.subconn == *subconn => std::mem::replace(&mut t.state, state.state),
            _ => return, // shut down already, or an older subconn for the address
        };
        // A lost connection or a failed attempt (also while staying in
        // TransientFailure) may mean the backend moved: ask the resolver for news.
        if state.state == ConnectivityState::TransientFailure
            || (state.state == ConnectivityState::Idle && previous == ConnectivityState::Ready)
        {
            cc.resolve_now();
        }
        if self.selected.as_deref() == Some(key) {
            if state.state != ConnectivityState::Ready {
                // The connection dropped: go idle until the next RPC.
                self.selected = None;
                if let Some(e) = &state.error {
                    self.last_error = Some(e.clone());
                }
                self.publish(ConnectivityState::Idle, Arc::new(IdlePicker), cc);
            }
            return;
        }
        if self.state == Some(ConnectivityState::Idle) {
            return;
        }
        match state.state {
            ConnectivityState::Ready => self.select(subconn, cc),
            ConnectivityState::TransientFailure => {
                if let Some(e) = &state.error {
                    self.last_error = Some(e.clone());
                }
                if self.first_pass_done {
                    self.publish_failure(cc); // with the newest error
                } else if self.addresses.get(self.attempt).map(Address::addr) == Some(key) {
                    self.try_from(self.attempt + 1, cc);
                }
            }
            ConnectivityState::Idle if self.first_pass_done => subconn.connect(),
            _ => {}
        }
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        if self.state == Some(ConnectivityState::Idle) && !self.addresses.is_empty() {
            self.start_pass(true, cc);
        }
    }

    fn close(&mut self, _: &mut dyn ClientConn) {
        self.shutdown_all();
    }
}
