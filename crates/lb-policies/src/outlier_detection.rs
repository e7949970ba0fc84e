//! `outlier_detection` (gRFC A50): ejects backends whose RPCs fail, from any child
//! policy.
//!
//! ```json
//! {"outlier_detection": {
//!    "interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s",
//!    "maxEjectionPercent": 10,
//!    "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100,
//!                            "minimumHosts": 5, "requestVolume": 100},
//!    "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 100,
//!                                  "minimumHosts": 5, "requestVolume": 50},
//!    "childPolicy": [{"round_robin": {}}]}}
//! ```
//!
//! * The child policy (any registered one) sees every address and balances as usual;
//!   this policy wraps the child's subconns and counts each RPC's outcome per address
//!   through the pick's completion callback (no lock, no allocation per pick).
//! * Every `interval` it runs the configured algorithms over the counts of the last
//!   interval: **success rate** ejects addresses whose success rate is below
//!   `mean - stdev × stdevFactor / 1000` among addresses with `requestVolume` RPCs
//!   (when at least `minimumHosts` have that many); **failure percentage** ejects
//!   addresses whose failures exceed `threshold` percent (with `requestVolume` RPCs,
//!   among at least `minimumHosts` addresses). Each ejection happens with
//!   `enforcementPercentage` chance, and never beyond `maxEjectionPercent` of the
//!   addresses (one may always go; grpc-go may end one over the maximum, this
//!   policy never does).
//! * An ejected address's subconns look `TRANSIENT_FAILURE` to the child, which then
//!   routes around them; their state changes are held back until the address
//!   returns, when the child sees their real state (so a lazy child such as
//!   `ring_hash` does not connect an ejected idle subconn). It returns after `baseEjectionTime × (times ejected)`, at
//!   most `max(baseEjectionTime, maxEjectionTime)`; each interval it is not ejected
//!   takes one off its count.
//! * With neither algorithm configured, it only forwards to its child.
//!
//! Config errors name the JSON path; durations follow protobuf JSON and percentages
//! are at most 100 (gRFC A50's validation).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_core::child::{ChildPolicy, GracefulSwitch, parse_child_policy};
use lb_core::{
    Address, Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn,
    ClientConnState, Code, ConnectivityState, DoneInfo, Error, LbConfig, OnDone, PickInfo,
    PickResult, Picker, SharedError, SubConn, SubConnHandle, SubConnId, SubConnOptions,
    SubConnState, Target, TimerHandle, TimerId,
};
use serde_json::Value;

use crate::config::Fields;

/// The policy's name in service configs.
pub const NAME: &str = "outlier_detection";

/// The `outlier_detection` balancer builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutlierDetection;

/// `successRateEjection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateEjection {
    /// `stdevFactor` / 1000 (default 1.9).
    pub stdev_factor: f64,
    /// Percent chance an outlier is actually ejected (default 100).
    pub enforcement_percentage: u32,
    /// Addresses with enough volume needed to run (default 5).
    pub minimum_hosts: u32,
    /// RPCs in an interval for an address to count (default 100).
    pub request_volume: u32,
}

/// `failurePercentageEjection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentageEjection {
    /// Failure percentage above which an address is ejected (default 85).
    pub threshold: u32,
    /// Percent chance an outlier is actually ejected (default 100).
    pub enforcement_percentage: u32,
    /// Addresses needed to run (default 5).
    pub minimum_hosts: u32,
    /// RPCs in an interval for an address to count (default 50).
    pub request_volume: u32,
}

/// `outlier_detection`'s parsed config.
#[derive(Debug, Clone)]
pub struct OutlierDetectionConfig {
    /// Time between ejection sweeps (default 10 s).
    pub interval: Duration,
    /// Ejection time per time ejected (default 30 s).
    pub base_ejection_time: Duration,
    /// The longest ejection (default 300 s; `baseEjectionTime` if larger).
    pub max_ejection_time: Duration,
    /// The most addresses ejected at once, in percent (default 10; one always may).
    pub max_ejection_percent: u32,
    /// The success-rate algorithm, if configured.
    pub success_rate: Option<SuccessRateEjection>,
    /// The failure-percentage algorithm, if configured.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// The child policy.
    pub child: ChildPolicy,
}

impl OutlierDetectionConfig {
    fn counting(&self) -> bool {
        self.success_rate.is_some() || self.failure_percentage.is_some()
    }
}

/// Reads the config's JSON fields; each error names its path.
impl BalancerBuilder for OutlierDetection {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(OdBalancer {
            switch: GracefulSwitch::new(options.clone()),
            config: None,
            addresses: HashMap::new(),
            wrappers: HashMap::new(),
            timer_started: None,
            sweep_timer: None,
            created: Vec::new(),
        })
    }

    fn parse_config(&self, config: &Value) -> Result<LbConfig, Error> {
        self.parse_config_in(config, &BalancerRegistry::new())
    }

    fn parse_config_in(
        &self,
        config: &Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let f = Fields::of(NAME, config)?;
        let interval = f.duration("interval", Duration::from_secs(10))?;
        if interval.is_zero() {
            return Err(Error::lb_config(
                NAME,
                "interval",
                "must be greater than zero",
            ));
        }
        let base_ejection_time = f.duration("baseEjectionTime", Duration::from_secs(30))?;
        let max_ejection_time = f.duration("maxEjectionTime", Duration::from_secs(300))?;
        let max_ejection_percent = f.number("maxEjectionPercent", 10, Some(100))?;
        let success_rate = f
            .object("successRateEjection")?
            .map(|s| {
                Ok::<_, Error>(SuccessRateEjection {
                    stdev_factor: f64::from(s.number("stdevFactor", 1900, None)?) / 1000.0,
                    enforcement_percentage: s.number("enforcementPercentage", 100, Some(100))?,
                    minimum_hosts: s.number("minimumHosts", 5, None)?,
                    request_volume: s.number("requestVolume", 100, None)?,
                })
            })
            .transpose()?;
        let failure_percentage = f
            .object("failurePercentageEjection")?
            .map(|s| {
                Ok::<_, Error>(FailurePercentageEjection {
                    threshold: s.number("threshold", 85, Some(100))?,
                    enforcement_percentage: s.number("enforcementPercentage", 100, Some(100))?,
                    minimum_hosts: s.number("minimumHosts", 5, None)?,
                    request_volume: s.number("requestVolume", 50, None)?,
                })
            })
            .transpose()?;
        let child = f
            .get("childPolicy")
            .ok_or_else(|| Error::lb_config(NAME, "childPolicy", "is required"))
            .and_then(|c| parse_child_policy(c, "childPolicy", NAME, registry))?;
        Ok(LbConfig::new(OutlierDetectionConfig {
            interval,
            base_ejection_time,
            max_ejection_time,
            max_ejection_percent,
            success_rate,
            failure_percentage,
            child,
        }))
    }
}

/// Successes and failures of one address in the current interval: what each pick's
/// completion callback adds to.
#[derive(Debug, Default)]
struct CallCounter {
    successes: AtomicU32,
    failures: AtomicU32,
}

impl OnDone for CallCounter {
    fn done(&self, info: &DoneInfo<'_>) {
        if info.status.code() == Code::Ok {
            self.successes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CallCounter {
    /// The counts since the last call, starting a new interval.
    fn take(&self) -> (u32, u32) {
        (
            self.successes.swap(0, Ordering::Relaxed),
            self.failures.swap(0, Ordering::Relaxed),
        )
    }
}

/// What the policy knows of one address.
struct AddressState {
    counter: Arc<CallCounter>,
    /// When it was ejected, if it is.
    ejected_at: Option<Instant>,
    /// Times ejected, less one per interval not ejected.
    multiplier: u32,
    /// Last interval's counts.
    last: (u32, u32),
}

/// The handle of a subconn wrapper: the child's view of a real subconn.
struct OdHandle {
    inner: SubConn,
    counter: Option<Arc<CallCounter>>,
}

impl SubConnHandle for OdHandle {
    fn connect(&self) {
        self.inner.connect();
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn inner(&self) -> Option<&SubConn> {
        Some(&self.inner)
    }
}

/// A wrapped subconn: the wrapper the child holds, and the states.
struct Wrapper {
    wrapper: SubConn,
    /// The real subconn's last state.
    real: SubConnState,
    /// The state the child last saw.
    shown: ConnectivityState,
}

struct OdBalancer {
    switch: GracefulSwitch,
    config: Option<Arc<OutlierDetectionConfig>>,
    addresses: HashMap<Arc<str>, AddressState>,
    /// Real subconn id -> its wrapper.
    wrappers: HashMap<SubConnId, Wrapper>,
    /// When the sweep timer last started.
    timer_started: Option<Instant>,
    /// The pending sweep timer, cancelled when it is replaced.
    sweep_timer: Option<TimerHandle>,
    /// Subconns the child created in the current call (see `eject_new_subconns`).
    created: Vec<SubConnId>,
}

/// The sweep timer's value.
const SWEEP: TimerId = TimerId::new(1);

/// The [`ClientConn`] the child gets: subconns come back wrapped.
struct OdCc<'a> {
    inner: &'a mut dyn ClientConn,
    wrappers: &'a mut HashMap<SubConnId, Wrapper>,
    addresses: &'a HashMap<Arc<str>, AddressState>,
    /// Subconns created during this call, to check against ejections after it.
    created: &'a mut Vec<SubConnId>,
}

impl ClientConn for OdCc<'_> {
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error> {
        let real = self.inner.new_subconn_with(address.clone(), options)?;
        let counter = self
            .addresses
            .get(address.addr())
            .map(|a| a.counter.clone());
        let wrapper = SubConn::new(
            address,
            Arc::new(OdHandle {
                inner: real.clone(),
                counter,
            }),
        );
        self.created.push(real.id());
        self.wrappers.insert(
            real.id(),
            Wrapper {
                wrapper: wrapper.clone(),
                real: SubConnState::new(ConnectivityState::Idle),
                shown: ConnectivityState::Idle,
            },
        );
        Ok(wrapper)
    }

    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.inner.update_state(state, picker);
    }

    fn resolve_now(&mut self) {
        self.inner.resolve_now();
    }

    fn target(&self) -> &Target {
        self.inner.target()
    }

    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        self.inner.schedule(after, timer)
    }
}

/// Counts each RPC of the child's picks on the picked address.
struct OdPicker {
    child: Arc<dyn Picker>,
}

impl Picker for OdPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        match self.child.pick(info) {
            PickResult::Pick(pick) => {
                let counter = pick
                    .subconn
                    .handle::<OdHandle>()
                    .and_then(|h| h.counter.clone());
                match counter {
                    Some(counter) => PickResult::Pick(pick.with_on_done(counter)),
                    None => PickResult::Pick(pick),
                }
            }
            other => other,
        }
    }
}

/// What the child is shown of a subconn of an ejected address: `TRANSIENT_FAILURE`,
/// whatever the real subconn does, until the address returns (gRFC A50); only its
/// shutdown goes through.
fn ejected_view(real: &SubConnState, address: &str) -> SubConnState {
    match real.state {
        ConnectivityState::Shutdown => real.clone(),
        _ => SubConnState::failure(Arc::new(Ejected(address.to_owned()))),
    }
}

impl OdBalancer {
    /// Calls the child through the wrapping handle, and publishes what it published.
    fn with_child(
        &mut self,
        cc: &mut dyn ClientConn,
        f: impl FnOnce(&mut GracefulSwitch, &mut dyn ClientConn),
    ) {
        let mut od_cc = OdCc {
            inner: cc,
            wrappers: &mut self.wrappers,
            addresses: &self.addresses,
            created: &mut self.created,
        };
        f(&mut self.switch, &mut od_cc);
        if self.switch.take_published() {
            let counting = self.config.as_ref().is_some_and(|c| c.counting());
            let picker: Arc<dyn Picker> = if counting {
                Arc::new(OdPicker {
                    child: self.switch.picker(),
                })
            } else {
                self.switch.picker()
            };
            cc.update_state(self.switch.state(), picker);
        }
        self.eject_new_subconns(cc);
    }

    /// Shows `TRANSIENT_FAILURE` for the subconns the child just created for an
    /// ejected address (grpc-go ejects them in `NewSubConn`): otherwise the child
    /// would see them `IDLE` until the address returns.
    fn eject_new_subconns(&mut self, cc: &mut dyn ClientConn) {
        if self.created.is_empty() {
            return;
        }
        let fresh: Vec<(SubConnId, SubConnState)> = std::mem::take(&mut self.created)
            .into_iter()
            .filter_map(|id| {
                let w = self.wrappers.get(&id)?;
                let address = w.wrapper.address().addr();
                self.is_ejected(address)
                    .then(|| (id, ejected_view(&w.real, address)))
            })
            .collect();
        for (id, state) in fresh {
            self.show(id, state, cc);
        }
    }

    /// Shows the child `wrapper` in `state`, through legal transitions.
    fn show(&mut self, real_id: SubConnId, state: SubConnState, cc: &mut dyn ClientConn) {
        let Some(w) = self.wrappers.get_mut(&real_id) else {
            return;
        };
        if w.shown == state.state {
            return;
        }
        let mut steps = Vec::with_capacity(2);
        if !w.shown.can_transition_to(state.state) {
            // Idle -> Ready/TransientFailure goes through Connecting; Connecting ->
            // Idle through TransientFailure.
            let via = if w.shown == ConnectivityState::Idle {
                ConnectivityState::Connecting
            } else {
                ConnectivityState::TransientFailure
            };
            if w.shown.can_transition_to(via) && via.can_transition_to(state.state) {
                steps.push(SubConnState::new(via));
            } else {
                return;
            }
        }
        w.shown = state.state;
        steps.push(state);
        let wrapper = w.wrapper.clone();
        for step in steps {
            self.with_child(cc, |s, cc| s.update_subconn_state(&wrapper, &step, cc));
        }
    }

    fn is_ejected(&self, address: &str) -> bool {
        self.addresses
            .get(address)
            .is_some_and(|a| a.ejected_at.is_some())
    }

    fn eject(&mut self, address: &Arc<str>, now: Instant, cc: &mut dyn ClientConn) {
        let Some(a) = self.addresses.get_mut(address) else {
            return;
        };
        a.ejected_at = Some(now);
        a.multiplier = a.multiplier.saturating_add(1);
        tracing::info!(%address, times = a.multiplier, "outlier detection ejected an address");
        let affected: Vec<(SubConnId, SubConnState)> = self
            .wrappers
            .iter()
            .filter(|(_, w)| w.wrapper.address().addr() == &**address)
            .map(|(id, w)| (*id, ejected_view(&w.real, address)))
            .collect();
        for (id, state) in affected {
            self.show(id, state, cc);
        }
    }

    fn uneject(&mut self, address: &Arc<str>, cc: &mut dyn ClientConn) {
        let Some(a) = self.addresses.get_mut(address) else {
            return;
        };
        a.ejected_at = None;
        tracing::info!(%address, "outlier detection returned an address");
        let affected: Vec<(SubConnId, SubConnState)> = self
            .wrappers
            .iter()
            .filter(|(_, w)| w.wrapper.address().addr() == &**address)
            .map(|(id, w)| (*id, w.real.clone()))
            .collect();
        for (id, real) in affected {
            self.show(id, real, cc);
        }
    }

    /// Whether one more ejection stays within `maxEjectionPercent`. One address may
    /// always be ejected (gRFC A50); beyond it, the percentage *after* the ejection
    /// must not pass the maximum. (grpc-go checks the percentage before, so it can
    /// end one address over the maximum.)
    fn may_eject(&self, max_percent: u32) -> bool {
        let ejected = self
            .addresses
            .values()
            .filter(|a| a.ejected_at.is_some())
            .count();
        ejected == 0 || 100 * (ejected + 1) <= max_percent as usize * self.addresses.len()
    }

    /// One interval's sweep (gRFC A50's timer).
    fn sweep(&mut self, cc: &mut dyn ClientConn) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let now = Instant::now();
        for a in self.addresses.values_mut() {
            a.last = a.counter.take();
        }
        if let Some(sr) = config.success_rate {
            let rates: Vec<(Arc<str>, f64)> = self
                .addresses
                .iter()
                .filter(|(_, a)| a.last.0 + a.last.1 >= sr.request_volume.max(1))
                .map(|(k, a)| {
                    (
                        k.clone(),
                        f64::from(a.last.0) / f64::from(a.last.0 + a.last.1),
                    )
                })
                .collect();
            if rates.len() >= sr.minimum_hosts as usize && !rates.is_empty() {
                let n = rates.len() as f64;
                let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
                let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let threshold = mean - variance.sqrt() * sr.stdev_factor;
                for (address, rate) in rates {
                    if !self.may_eject(config.max_ejection_percent) {
                        break;
                    }
                    if rate < threshold
                        && !self.is_ejected(&address)
                        && fastrand::u32(0..100) < sr.enforcement_percentage
                    {
                        self.eject(&address, now, cc);
                    }
                }
            }
        }
        if let Some(fp) = config.failure_percentage
            && self.addresses.len() >= fp.minimum_hosts as usize
        {
            let mut order: Vec<Arc<str>> = self.addresses.keys().cloned().collect();
            order.sort(); // a stable order, so the cap ejects the same ones each time
            for address in order {
                if !self.may_eject(config.max_ejection_percent) {
                    break;
                }
                let Some(a) = self.addresses.get(&address) else {
                    continue;
                };
                let total = a.last.0 + a.last.1;
                if total < fp.request_volume.max(1) || a.ejected_at.is_some() {
                    continue;
                }
                let failure_percent = 100.0 * f64::from(a.last.1) / f64::from(total);
                if failure_percent > f64::from(fp.threshold)
                    && fastrand::u32(0..100) < fp.enforcement_percentage
                {
                    self.eject(&address, now, cc);
                }
            }
        }
        let cap = config.base_ejection_time.max(config.max_ejection_time);
        let mut returning = Vec::new();
        for (address, a) in &mut self.addresses {
            match a.ejected_at {
                None => a.multiplier = a.multiplier.saturating_sub(1),
                Some(at) => {
                    let time = config
                        .base_ejection_time
                        .saturating_mul(a.multiplier)
                        .min(cap);
                    // Strictly after: one ejected in this sweep stays out until the
                    // next, even with a `baseEjectionTime` of 0.
                    if now > at + time {
                        returning.push(address.clone());
                    }
                }
            }
        }
        for address in returning {
            self.uneject(&address, cc);
        }
        self.start_timer(config.interval, cc);
    }

    fn start_timer(&mut self, after: Duration, cc: &mut dyn ClientConn) {
        self.timer_started = Some(Instant::now());
        self.set_sweep(after, cc);
    }

    /// Sets the sweep timer, replacing the pending one.
    fn set_sweep(&mut self, after: Duration, cc: &mut dyn ClientConn) {
        self.stop_sweep();
        self.sweep_timer = Some(cc.schedule(after, SWEEP));
    }

    fn stop_sweep(&mut self) {
        if let Some(timer) = self.sweep_timer.take() {
            timer.cancel();
        }
    }
}

/// Why an ejected subconn shows as failing.
#[derive(Debug)]
struct Ejected(String);

impl std::fmt::Display for Ejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is ejected by outlier detection", self.0)
    }
}

impl std::error::Error for Ejected {}

impl Balancer for OdBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<OutlierDetectionConfig>())
            .cloned()
            .ok_or_else(|| {
                Error::lb_config(NAME, "$", "a config with a childPolicy is required")
            })?;
        let config = Arc::new(config);
        // One entry per address: new ones start clean, gone ones are forgotten.
        self.addresses
            .retain(|k, _| state.addresses.iter().any(|a| a.addr() == &**k));
        for a in &state.addresses {
            self.addresses
                .entry(Arc::from(a.addr()))
                .or_insert_with(|| AddressState {
                    counter: Arc::default(),
                    ejected_at: None,
                    multiplier: 0,
                    last: (0, 0),
                });
        }
        // The sweep timer, as gRFC A50 starts and restarts it.
        if config.counting() {
            match self.timer_started {
                None => {
                    for a in self.addresses.values() {
                        a.counter.take();
                    }
                    self.start_timer(config.interval, cc);
                }
                Some(started) => {
                    let left = config.interval.saturating_sub(started.elapsed());
                    if self
                        .config
                        .as_ref()
                        .is_none_or(|c| c.interval != config.interval)
                    {
                        self.set_sweep(left, cc);
                    }
                }
            }
        } else {
            self.timer_started = None;
            self.stop_sweep();
            // No algorithm: nobody stays ejected, and past ejections are forgotten
            // (as grpc-go).
            let ejected: Vec<Arc<str>> = self
                .addresses
                .iter()
                .filter(|(_, a)| a.ejected_at.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            for address in ejected {
                self.uneject(&address, cc);
            }
            for a in self.addresses.values_mut() {
                a.multiplier = 0;
            }
        }
        self.config = Some(config.clone());
        let child = config.child.clone();
        let mut result = Ok(());
        self.with_child(cc, |s, cc| {
            result = s
                .switch_to(&child.name, cc)
                .and_then(|()| s.update_client_conn_state(state.with_config(child.config), cc));
        });
        result
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.with_child(cc, |s, cc| s.resolver_error(error, cc));
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        let Some(w) = self.wrappers.get_mut(&subconn.id()) else {
            return;
        };
        w.real = state.clone();
        let address = w.wrapper.address().addr().to_owned();
        if state.state == ConnectivityState::Shutdown {
            if let Some(w) = self.wrappers.remove(&subconn.id()) {
                let wrapper = w.wrapper;
                self.with_child(cc, |s, cc| s.update_subconn_state(&wrapper, state, cc));
            }
            return;
        }
        if self.is_ejected(&address) {
            // The child keeps seeing TRANSIENT_FAILURE (shown once); it learns the
            // real state when the address returns.
            let shown = ejected_view(state, &address);
            self.show(subconn.id(), shown, cc);
            return;
        }
        self.show(subconn.id(), state.clone(), cc);
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.with_child(cc, |s, cc| s.exit_idle(cc));
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        if timer == SWEEP {
            self.sweep_timer = None;
            self.sweep(cc);
        } else {
            self.with_child(cc, |s, cc| s.timer(timer, cc));
        }
    }

    fn close(&mut self, cc: &mut dyn ClientConn) {
        self.stop_sweep();
        let mut od_cc = OdCc {
            inner: cc,
            wrappers: &mut self.wrappers,
            addresses: &self.addresses,
            created: &mut self.created,
        };
        self.switch.close(&mut od_cc);
        self.wrappers.clear();
    }
}
