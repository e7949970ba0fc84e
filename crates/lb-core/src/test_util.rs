//! Test support for policy authors (feature `test-util`): a recording [`ClientConn`]
//! and a [`Harness`] that drives a balancer the way a channel would.
//!
//! Tests read as "send this update, expect these events":
//!
//! ```
//! use lb_core::test_util::{Event, Harness, Outcome};
//! # use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
//! # use lb_core::{ConnectivityState, Pick, PickInfo, PickResult, Picker, SubConn, LbConfig};
//! # use std::sync::Arc;
//! # #[derive(Clone)] struct First; struct P(SubConn);
//! # impl Picker for P { fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> { PickResult::Pick(Pick::new(&self.0)) } }
//! # impl PickerBuilder for First { fn build(&mut self, r: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> { Arc::new(P(r[0].subconn.clone())) } }
//! let mut h = Harness::new(BaseBuilder::new("first", First));
//! h.update_addresses(&["10.0.0.1:80"]).unwrap();
//! assert_eq!(h.state(), ConnectivityState::Connecting);
//! h.set_state("10.0.0.1:80", ConnectivityState::Connecting);
//! h.set_state("10.0.0.1:80", ConnectivityState::Ready);
//! assert_eq!(h.pick(), Outcome::Picked("10.0.0.1:80".into()));
//! assert!(h.take_events().contains(&Event::Connect("10.0.0.1:80".into())));
//! ```
//!
//! [`sweep`] feeds a parser of outside input (a policy's config, a registry entry)
//! many random and mutated inputs.
//!
//! The harness enforces the subconn state machine: moving a subconn through an
//! illegal transition, or touching one that was shut down, panics with the reason,
//! so a test cannot feed a policy states a real transport would never produce.

pub mod sweep;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::{
    Address, Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Callbacks, ClientConn,
    ClientConnState, ConnectivityState, DoneInfo, Error, LoadReport, LoadReportListener,
    LoadReportWatch, PickInfo, PickResult, Picker, QueuePicker, ReportSource, SharedError,
    StateTracker, Status, SubConn, SubConnHandle, SubConnId, SubConnOptions, SubConnState, Target,
    TimerHandle, TimerId,
};

/// One thing a balancer did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `new_subconn` for this address.
    NewSubConn(String),
    /// `SubConn::connect` on the subconn for this address.
    Connect(String),
    /// `SubConn::shutdown` on the subconn for this address.
    Shutdown(String),
    /// `update_state` with this state (the picker is kept by the recorder).
    UpdateState(ConnectivityState),
    /// `resolve_now`.
    ResolveNow,
    /// `schedule`: a timer for the balancer after this long.
    Schedule(Duration, TimerId),
    /// `SubConn::watch_load_reports` on the subconn for this address: the source
    /// asked for, or `None` to stop.
    WatchLoadReports(String, Option<ReportSource>),
}

#[derive(Default)]
struct Recorded {
    events: Vec<Event>,
    shut_down: HashSet<SubConnId>,
}

type Log = Arc<Mutex<Recorded>>;

fn push(log: &Log, event: Event, id: Option<SubConnId>) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if let (Event::Shutdown(_), Some(id)) = (&event, id) {
        log.shut_down.insert(id);
    }
    log.events.push(event);
}

struct RecordingHandle {
    log: Log,
    addr: String,
    id: Mutex<Option<SubConnId>>,
    /// The load-report watch the balancer set, if any.
    watch: Mutex<Option<LoadReportWatch>>,
}

impl RecordingHandle {
    fn id(&self) -> Option<SubConnId> {
        *self.id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SubConnHandle for RecordingHandle {
    fn connect(&self) {
        push(&self.log, Event::Connect(self.addr.clone()), self.id());
    }

    fn shutdown(&self) {
        push(&self.log, Event::Shutdown(self.addr.clone()), self.id());
    }

    fn watch_load_reports(&self, watch: Option<LoadReportWatch>) -> bool {
        push(
            &self.log,
            Event::WatchLoadReports(self.addr.clone(), watch.as_ref().map(|w| w.source)),
            self.id(),
        );
        *self.watch.lock().unwrap_or_else(PoisonError::into_inner) = watch;
        true
    }
}

/// A [`ClientConn`] that records every call and keeps the latest published picker.
pub struct RecordingClientConn {
    target: Target,
    log: Log,
    created: Vec<SubConn>,
    options: HashMap<SubConnId, SubConnOptions>,
    handles: HashMap<SubConnId, Arc<RecordingHandle>>,
    current: (ConnectivityState, Arc<dyn Picker>),
    timers: Vec<(Duration, TimerId, TimerHandle)>,
}

impl RecordingClientConn {
    /// A recorder for a channel dialing `target`.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            log: Arc::default(),
            created: Vec::new(),
            options: HashMap::new(),
            handles: HashMap::new(),
            current: (ConnectivityState::Connecting, Arc::new(QueuePicker)),
            timers: Vec::new(),
        }
    }

    /// The options `subconn` was created with.
    pub fn options(&self, subconn: &SubConn) -> Option<&SubConnOptions> {
        self.options.get(&subconn.id())
    }

    /// Timers set and not yet taken nor cancelled, in the order they were set.
    pub fn timers(&self) -> Vec<(Duration, TimerId)> {
        self.timers
            .iter()
            .filter(|(_, _, h)| !h.is_cancelled())
            .map(|(d, t, _)| (*d, t.clone()))
            .collect()
    }

    /// Takes the pending timers out, leaving out cancelled ones (a harness fires
    /// them).
    pub fn take_timers(&mut self) -> Vec<(Duration, TimerId)> {
        std::mem::take(&mut self.timers)
            .into_iter()
            .filter(|(_, _, h)| !h.is_cancelled())
            .map(|(d, t, _)| (d, t))
            .collect()
    }

    /// The events so far, removing them from the log.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(
            &mut self
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .events,
        )
    }

    /// Every subconn created so far, in order.
    pub fn created(&self) -> &[SubConn] {
        &self.created
    }

    /// The load-report watch the balancer set on `subconn`
    /// ([`crate::SubConn::watch_load_reports`]), if any.
    pub fn load_report_watch(&self, subconn: &SubConn) -> Option<LoadReportWatch> {
        self.handles.get(&subconn.id()).and_then(|h| {
            h.watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Delivers `report` to the out-of-band load-report listener the balancer set on
    /// `subconn`, as a transport would with a report from the stream. Returns whether
    /// there was one.
    pub fn report_load(&self, subconn: &SubConn, report: &LoadReport) -> bool {
        match self.load_report_watch(subconn) {
            Some(w) if matches!(w.source, ReportSource::OutOfBand(_)) => {
                w.listener.on_load_report(report);
                true
            }
            _ => false,
        }
    }

    /// Whether `subconn` has been shut down.
    pub fn is_shut_down(&self, subconn: &SubConn) -> bool {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shut_down
            .contains(&subconn.id())
    }

    /// The latest published state (`Connecting` before the first publication).
    pub fn state(&self) -> ConnectivityState {
        self.current.0
    }

    /// The latest published picker (a queueing one before the first publication).
    pub fn picker(&self) -> Arc<dyn Picker> {
        self.current.1.clone()
    }
}

impl ClientConn for RecordingClientConn {
    fn new_subconn_with(
        &mut self,
        address: Address,
        options: SubConnOptions,
    ) -> Result<SubConn, Error> {
        let handle = Arc::new(RecordingHandle {
            log: self.log.clone(),
            addr: address.addr().to_owned(),
            id: Mutex::new(None),
            watch: Mutex::new(None),
        });
        let subconn = SubConn::new(address, handle.clone());
        *handle.id.lock().unwrap_or_else(PoisonError::into_inner) = Some(subconn.id());
        push(
            &self.log,
            Event::NewSubConn(subconn.address().addr().to_owned()),
            Some(subconn.id()),
        );
        self.options.insert(subconn.id(), options);
        self.handles.insert(subconn.id(), handle);
        self.created.push(subconn.clone());
        Ok(subconn)
    }

    fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        push(&self.log, Event::Schedule(after, timer.clone()), None);
        let handle = TimerHandle::new();
        self.timers.push((after, timer, handle.clone()));
        handle
    }

    fn update_state(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        push(&self.log, Event::UpdateState(state), None);
        self.current = (state, picker);
    }

    fn resolve_now(&mut self) {
        push(&self.log, Event::ResolveNow, None);
    }

    fn target(&self) -> &Target {
        &self.target
    }
}

/// A pick's outcome, owned so that tests can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// [`PickResult::Pick`] of the subconn for this address.
    Picked(String),
    /// [`PickResult::Queue`].
    Queued,
    /// [`PickResult::Idle`].
    Idle,
    /// [`PickResult::Fail`].
    Failed(Status),
    /// [`PickResult::Drop`].
    Dropped(Status),
}

impl From<PickResult<'_>> for Outcome {
    fn from(result: PickResult<'_>) -> Self {
        match result {
            PickResult::Pick(p) => Outcome::Picked(p.subconn.address().addr().to_owned()),
            PickResult::Queue => Outcome::Queued,
            PickResult::Idle => Outcome::Idle,
            PickResult::Fail(s) => Outcome::Failed(s),
            PickResult::Drop(s) => Outcome::Dropped(s),
        }
    }
}

#[derive(Debug)]
struct TestError(String);

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestError {}

/// An error with `message`, for feeding failures to a balancer.
pub fn error(message: &str) -> SharedError {
    Arc::new(TestError(message.to_owned()))
}

/// Drives one balancer through a [`RecordingClientConn`], as the channel's control
/// task would. Methods panic on misuse (an unknown address, an illegal transition):
/// they are test helpers.
pub struct Harness {
    builder: Arc<dyn BalancerBuilder>,
    registry: BalancerRegistry,
    balancer: Box<dyn Balancer>,
    cc: RecordingClientConn,
    states: HashMap<SubConnId, StateTracker>,
}

impl Harness {
    /// A balancer built by `builder` for the target `test:///harness`.
    pub fn new(builder: impl BalancerBuilder) -> Self {
        Self::with_registry(builder, BalancerRegistry::new())
    }

    /// A balancer built by `builder` with `registry` as the channel's policies: for
    /// a parent policy whose children come from the registry (its config is parsed
    /// with [`BalancerBuilder::parse_config_in`]).
    pub fn with_registry(builder: impl BalancerBuilder, registry: BalancerRegistry) -> Self {
        let target = Target::parse("test:///harness").unwrap_or_else(|e| panic!("{e}"));
        let options = BuildOptions::new(target.clone()).with_registry(registry.clone());
        Self {
            balancer: builder.build(&options),
            builder: Arc::new(builder),
            registry,
            cc: RecordingClientConn::new(target),
            states: HashMap::new(),
        }
    }

    /// Sends addresses (with no config) to the balancer.
    pub fn update_addresses(&mut self, addrs: &[&str]) -> Result<(), Error> {
        self.update(ClientConnState::new(
            addrs.iter().map(|a| Address::new(*a)).collect(),
        ))
    }

    /// Sends addresses with a config given as JSON, parsed by the builder.
    pub fn update_with_config(&mut self, addresses: Vec<Address>, json: &str) -> Result<(), Error> {
        let value: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("bad test JSON {json}: {e}"));
        let config = self.builder.parse_config_in(&value, &self.registry)?;
        self.update(ClientConnState::new(addresses).with_config(config))
    }

    /// Sends a complete state to the balancer. As the channel does, a state the
    /// balancer rejects (an error) is followed by a request to re-resolve.
    pub fn update(&mut self, state: ClientConnState) -> Result<(), Error> {
        let result = self.balancer.update_client_conn_state(state, &mut self.cc);
        if result.is_err() {
            self.cc.resolve_now();
        }
        result
    }

    /// Reports a resolver error.
    pub fn resolver_error(&mut self, message: &str) {
        self.balancer.resolver_error(error(message), &mut self.cc);
    }

    /// The newest subconn created for `addr` that is not shut down.
    pub fn subconn(&self, addr: &str) -> SubConn {
        self.cc
            .created()
            .iter()
            .rev()
            .find(|sc| sc.address().addr() == addr && !self.cc.is_shut_down(sc))
            .cloned()
            .unwrap_or_else(|| panic!("{}: no live subconn for {addr}", self.builder.name()))
    }

    /// Every subconn that was created and not shut down, in creation order.
    pub fn live_subconns(&self) -> Vec<SubConn> {
        self.cc
            .created()
            .iter()
            .filter(|sc| !self.cc.is_shut_down(sc))
            .cloned()
            .collect()
    }

    /// Moves the live subconn for `addr` to `state` and tells the balancer.
    pub fn set_state(&mut self, addr: &str, state: ConnectivityState) {
        let sc = self.subconn(addr);
        self.set_subconn_state(&sc, SubConnState::new(state));
    }

    /// Connects every live subconn that is `Idle`: `Connecting`, then `Ready`.
    pub fn ready_all(&mut self) {
        for sc in self.live_subconns() {
            if self
                .states
                .get(&sc.id())
                .is_none_or(|t| t.get() == ConnectivityState::Idle)
            {
                self.set_subconn_state(&sc, SubConnState::new(ConnectivityState::Connecting));
                self.set_subconn_state(&sc, SubConnState::new(ConnectivityState::Ready));
            }
        }
    }

    /// Moves the live subconn for `addr` to `TransientFailure` with `message`.
    pub fn fail(&mut self, addr: &str, message: &str) {
        let sc = self.subconn(addr);
        self.set_subconn_state(&sc, SubConnState::failure(error(message)));
    }

    /// Moves `subconn` to `state`, checking the transition, and tells the balancer.
    pub fn set_subconn_state(&mut self, subconn: &SubConn, state: SubConnState) {
        if self.cc.is_shut_down(subconn) && state.state != ConnectivityState::Shutdown {
            panic!("{subconn:?} was shut down; it can't become {}", state.state);
        }
        let tracker = self.states.entry(subconn.id()).or_default();
        if let Err(e) = tracker.transition(state.state) {
            panic!("{subconn:?}: {e}");
        }
        self.balancer
            .update_subconn_state(subconn, &state, &mut self.cc);
    }

    /// The current state of `addr`'s live subconn as the harness tracks it.
    pub fn subconn_state(&self, addr: &str) -> ConnectivityState {
        let sc = self.subconn(addr);
        self.states
            .get(&sc.id())
            .map_or(ConnectivityState::Idle, StateTracker::get)
    }

    /// Timers the balancer has set and not yet had fired nor cancelled, in order.
    pub fn timers(&self) -> Vec<TimerId> {
        self.cc.timers().into_iter().map(|(_, t)| t).collect()
    }

    /// Fires every pending timer that was not cancelled (as if their time had come),
    /// in the order they were set; timers set meanwhile wait for the next call.
    /// Returns how many fired.
    pub fn fire_timers(&mut self) -> usize {
        let due = std::mem::take(&mut self.cc.timers);
        let mut fired = 0;
        for (_, timer, handle) in due {
            // One fired earlier in this batch may have cancelled it.
            if !handle.is_cancelled() {
                fired += 1;
                self.balancer.timer(timer, &mut self.cc);
            }
        }
        fired
    }

    /// The options the live subconn for `addr` was created with.
    pub fn subconn_options(&self, addr: &str) -> SubConnOptions {
        let sc = self.subconn(addr);
        self.cc.options(&sc).cloned().unwrap_or_default()
    }

    /// Calls `exit_idle`.
    pub fn exit_idle(&mut self) {
        self.balancer.exit_idle(&mut self.cc);
    }

    /// Calls `close`.
    pub fn close(&mut self) {
        self.balancer.close(&mut self.cc);
    }

    /// The events so far, removing them from the log.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.cc.take_events()
    }

    /// The latest published aggregate state.
    pub fn state(&self) -> ConnectivityState {
        self.cc.state()
    }

    /// The latest published picker.
    pub fn picker(&self) -> Arc<dyn Picker> {
        self.cc.picker()
    }

    /// One pick from the latest picker, for the method `/test.Service/Method`.
    pub fn pick(&self) -> Outcome {
        self.cc
            .picker()
            .pick(&PickInfo::new("/test.Service/Method"))
            .into()
    }

    /// One pick from the latest picker with `info` (headers, say).
    pub fn pick_with(&self, info: &PickInfo<'_>) -> Outcome {
        self.cc.picker().pick(info).into()
    }

    /// One pick that picks a subconn (panics otherwise), as an RPC that has
    /// started: the returned [`Started`] calls the pick's completion callbacks when
    /// [`Started::finish`]ed (or with `CANCELLED` when dropped), as the channel
    /// would at the RPC's end.
    pub fn start_rpc(&self) -> Started {
        self.start_rpc_with(&PickInfo::new("/test.Service/Method"))
    }

    /// [`Harness::start_rpc`] with `info`.
    pub fn start_rpc_with(&self, info: &PickInfo<'_>) -> Started {
        let picker = self.cc.picker();
        match picker.pick(info) {
            PickResult::Pick(pick) => Started {
                addr: pick.subconn.address().addr().to_owned(),
                per_call: self
                    .cc
                    .load_report_watch(pick.subconn)
                    .filter(|w| w.source == ReportSource::PerCall)
                    .map(|w| w.listener),
                subconn: pick.subconn.clone(),
                on_done: Some(pick.on_done),
            },
            other => panic!("expected a pick, got {:?}", Outcome::from(other)),
        }
    }

    /// Delivers an out-of-band load report from `addr`'s live subconn to the
    /// listener the balancer set for them ([`RecordingClientConn::report_load`]);
    /// returns whether there was one.
    pub fn report_load(&self, addr: &str, report: &LoadReport) -> bool {
        let sc = self.subconn(addr);
        self.cc.report_load(&sc, report)
    }

    /// `n` picks; panics unless every one picks a subconn. Returns their addresses.
    pub fn pick_addrs(&self, n: usize) -> Vec<String> {
        let picker = self.cc.picker();
        let info = PickInfo::new("/test.Service/Method");
        (0..n)
            .map(|i| match Outcome::from(picker.pick(&info)) {
                Outcome::Picked(addr) => addr,
                other => panic!("pick {i}: expected a subconn, got {other:?}"),
            })
            .collect()
    }

    /// The recording channel handle.
    pub fn client_conn(&mut self) -> &mut RecordingClientConn {
        &mut self.cc
    }
}

/// An RPC the harness picked a subconn for and has not finished
/// ([`Harness::start_rpc`]).
pub struct Started {
    /// The picked address.
    pub addr: String,
    /// The picked subconn.
    pub subconn: SubConn,
    on_done: Option<Callbacks>,
    /// The subconn's per-call load-report listener, when the balancer set one.
    per_call: Option<Arc<dyn LoadReportListener>>,
}

impl Started {
    /// Ends the RPC, as the channel would: the backend's per-call load report, if
    /// any, goes to the subconn's per-call listener; the pick's callbacks get
    /// `status`, the time it took and the report.
    pub fn finish(mut self, status: &Status, elapsed: Duration, report: Option<&LoadReport>) {
        if let (Some(listener), Some(report)) = (&self.per_call, report) {
            listener.on_load_report(report);
        }
        if let Some(on_done) = self.on_done.take() {
            on_done.done(
                &DoneInfo::new(status, None)
                    .with_elapsed(elapsed)
                    .with_load_report(report),
            );
        }
    }

    /// Ends the RPC with `OK` after `elapsed`.
    pub fn ok(self, elapsed: Duration) {
        self.finish(&Status::new(crate::Code::Ok, ""), elapsed, None);
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("addr", &self.addr).finish()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(on_done) = self.on_done.take() {
            on_done.done(&DoneInfo::new(
                &Status::new(crate::Code::Cancelled, "the test dropped the RPC"),
                None,
            ));
        }
    }
}
