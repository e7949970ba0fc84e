//! `priority_experimental` (gRFC A56): children in priority order, failing over to
//! the next one and back, as grpc-go's `priority` policy.
//!
//! ```json
//! {"priority_experimental": {
//!    "children": {
//!      "p0": {"config": [{"round_robin": {}}]},
//!      "p1": {"config": [{"round_robin": {}}], "ignoreReresolutionRequests": true}},
//!    "priorities": ["p0", "p1"]}}
//! ```
//!
//! * Only the highest priority is started at first. The next one starts when the
//!   one in use reports `TRANSIENT_FAILURE`, or has not become `READY` (or `IDLE`)
//!   within the failover timeout (10 s, [`FAILOVER_TIMEOUT`]); lower priorities are
//!   not started before they are needed.
//! * The channel uses the highest priority that is `READY` or `IDLE`, or that was
//!   just started and is still within its timeout; when none is, the lowest
//!   started one (its state, `TRANSIENT_FAILURE` usually, is the channel's). As soon
//!   as a higher priority is `READY` again, it takes over and the lower ones stop;
//!   a stopped child keeps its connections 15 minutes
//!   ([`lb_core::child::ChildManager`]), so a flapping priority does not reconnect.
//! * A child that was `READY` and goes `CONNECTING` gets the timeout again; one
//!   that failed and is retrying does not (its failover stands).
//! * Each child gets the addresses whose hierarchy path starts with its name
//!   ([`lb_core::hierarchy`]). With `ignoreReresolutionRequests` a child's requests
//!   to re-resolve are dropped.
//! * Config errors name the JSON path: every name in `priorities` must be a child,
//!   every child must be in `priorities`, once; each child needs a `config`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lb_core::child::{ChildManager, ChildPolicy, parse_child_policy};
use lb_core::hierarchy;
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, LbConfig, Picker, QueuePicker, Status, TimerHandle,
    TimerId,
};
use serde_json::Value;

use crate::config::Fields;
use crate::parent::{Parent, ParentBalancer};

/// The policy's name in service configs (grpc-go's).
pub const NAME: &str = "priority_experimental";

/// How long a newly started priority (or one that was `READY` and is connecting
/// again) has to become `READY` before the next one starts (gRFC A56).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `priority_experimental` builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Priority;

/// One child of the config.
#[derive(Debug, Clone)]
pub struct PriorityChild {
    /// Its policy.
    pub policy: ChildPolicy,
    /// Drop its requests to re-resolve.
    pub ignore_reresolution_requests: bool,
}

/// `priority_experimental`'s parsed config.
#[derive(Debug, Clone, Default)]
pub struct PriorityConfig {
    /// The children by name.
    pub children: HashMap<String, PriorityChild>,
    /// Their names, highest priority first.
    pub priorities: Vec<String>,
}

impl BalancerBuilder for Priority {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ParentBalancer(PriorityBalancer {
            children: ChildManager::new(options.clone()),
            priorities: Vec::new(),
            info: HashMap::new(),
            in_use: None,
            next_timer: 0,
            failover: FAILOVER_TIMEOUT,
        }))
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
        let mut children = HashMap::new();
        for (name, child) in f.named_objects("children")? {
            let policy = child
                .get("config")
                .ok_or_else(|| child.error("config", "is required"))
                .and_then(|c| parse_child_policy(c, &child.path("config"), NAME, registry))?;
            let ignore_reresolution_requests =
                child.boolean("ignoreReresolutionRequests", false)?;
            children.insert(
                name.to_owned(),
                PriorityChild {
                    policy,
                    ignore_reresolution_requests,
                },
            );
        }
        let priorities: Vec<String> = match f.get("priorities") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        Error::lb_config(NAME, format!("priorities[{i}]"), "expected a child name")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(f.error("priorities", "expected a list of child names")),
        };
        for (i, name) in priorities.iter().enumerate() {
            if !children.contains_key(name) {
                return Err(Error::lb_config(
                    NAME,
                    format!("priorities[{i}]"),
                    format!("{name:?} is not in children"),
                ));
            }
            if priorities[..i].contains(name) {
                return Err(Error::lb_config(
                    NAME,
                    format!("priorities[{i}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        let mut unlisted: Vec<&String> = children
            .keys()
            .filter(|c| !priorities.contains(c))
            .collect();
        unlisted.sort();
        if let Some(name) = unlisted.first() {
            return Err(Error::lb_config(
                NAME,
                format!("children.{name}"),
                "is not in priorities",
            ));
        }
        Ok(LbConfig::new(PriorityConfig {
            children,
            priorities,
        }))
    }
}

/// What the policy follows of one child.
struct ChildInfo {
    /// The id of its failover timer.
    timer_id: u64,
    /// The state it last reported while started (`CONNECTING` before any).
    state: ConnectivityState,
    /// It reported `TRANSIENT_FAILURE` more recently than `READY` or `IDLE`.
    reported_failure: bool,
    /// Its failover timer, while it runs.
    failover: Option<TimerHandle>,
}

struct PriorityBalancer {
    children: ChildManager<String>,
    /// Child names, highest priority first.
    priorities: Vec<String>,
    info: HashMap<String, ChildInfo>,
    /// The child whose picker the channel uses.
    in_use: Option<String>,
    next_timer: u64,
    failover: Duration,
}

impl PriorityBalancer {
    /// Follows what the children published, then re-chooses the priority in use.
    fn sync(&mut self, cc: &mut dyn ClientConn) {
        // Starting or stopping a child makes it publish again: settle, boundedly.
        for _ in 0..=self.priorities.len() + 1 {
            let changed = self.children.take_published();
            let published = self.children.take_published_keys();
            let mut in_use_updated = false;
            for key in &published {
                let Some((state, _)) = self.children.child(key) else {
                    continue;
                };
                in_use_updated |= self.in_use.as_ref() == Some(key);
                self.child_state(key, state, cc);
            }
            if !changed && published.is_empty() {
                return;
            }
            self.choose(in_use_updated, cc);
        }
    }

    /// A started child reported `state` (grpc-go's `handleChildStateUpdate`).
    fn child_state(&mut self, key: &str, state: ConnectivityState, cc: &mut dyn ClientConn) {
        let failover = self.failover;
        let Some(info) = self.info.get_mut(key) else {
            return;
        };
        let before = std::mem::replace(&mut info.state, state);
        match state {
            ConnectivityState::Ready | ConnectivityState::Idle => {
                info.reported_failure = false;
                stop_timer(info);
            }
            ConnectivityState::TransientFailure => {
                info.reported_failure = true;
                stop_timer(info);
            }
            // A child that starts IDLE and then connects (ring_hash, A42) gets the
            // timeout; one retrying after a failure does not.
            ConnectivityState::Connecting
                if !info.reported_failure
                    && before != ConnectivityState::Connecting
                    && info.failover.is_none() =>
            {
                info.failover = Some(cc.schedule(failover, TimerId::new(info.timer_id)));
            }
            _ => {}
        }
    }

    /// Chooses the child in use (grpc-go's `syncPriority`) and publishes its state
    /// when it changed or (`updated`) published.
    fn choose(&mut self, updated: bool, cc: &mut dyn ClientConn) {
        if self.priorities.is_empty() {
            self.in_use = None;
            cc.update_state(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(Status::unavailable(
                    "priority: no priority is provided, all priorities are removed",
                ))),
            );
            return;
        }
        let last = self.priorities.len() - 1;
        let mut chosen = last;
        for (p, name) in self.priorities.iter().enumerate() {
            let started = self.children.is_started(name);
            let info = self.info.get(name);
            let state = info.map_or(ConnectivityState::Connecting, |i| i.state);
            let waiting = state == ConnectivityState::Connecting
                && info.is_some_and(|i| i.failover.is_some());
            if !started
                || matches!(state, ConnectivityState::Ready | ConnectivityState::Idle)
                || waiting
            {
                chosen = p;
                break;
            }
        }
        let name = self.priorities[chosen].clone();
        let switched = self.in_use.as_ref() != Some(&name);
        self.switch_to(chosen, cc);
        if switched || updated {
            let (state, picker) = self.children.child(&name).unwrap_or((
                ConnectivityState::Connecting,
                Arc::new(QueuePicker) as Arc<dyn Picker>,
            ));
            cc.update_state(state, picker);
        }
    }

    /// Uses priority `p`: stops the lower ones, starts it if need be.
    fn switch_to(&mut self, p: usize, cc: &mut dyn ClientConn) {
        for name in &self.priorities[p + 1..] {
            if self.children.is_started(name) {
                self.children.stop(name, cc);
            }
            if let Some(info) = self.info.get_mut(name) {
                stop_timer(info);
                info.state = ConnectivityState::Connecting;
                info.reported_failure = false;
            }
        }
        let name = self.priorities[p].clone();
        self.in_use = Some(name.clone());
        if self.children.is_started(&name) {
            return;
        }
        if let Some(info) = self.info.get_mut(&name) {
            info.state = ConnectivityState::Connecting;
            info.reported_failure = false;
            stop_timer(info);
            info.failover = Some(cc.schedule(self.failover, TimerId::new(info.timer_id)));
        }
        if let Err(error) = self.children.start(&name, cc) {
            tracing::warn!(child = %name, %error, "priority: the child rejected its state");
        }
    }
}

fn stop_timer(info: &mut ChildInfo) {
    if let Some(timer) = info.failover.take() {
        timer.cancel();
    }
}

impl Parent for PriorityBalancer {
    fn children(&mut self) -> &mut ChildManager<String> {
        &mut self.children
    }

    fn update(&mut self, state: ClientConnState, cc: &mut dyn ClientConn) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<PriorityConfig>())
            .cloned()
            .ok_or_else(|| Error::lb_config(NAME, "$", "a config with priorities is required"))?;
        let mut split = hierarchy::group(state.addresses);
        let gone: Vec<String> = self
            .info
            .keys()
            .filter(|k| !config.children.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.children.remove(&key, cc);
            if let Some(mut info) = self.info.remove(&key) {
                stop_timer(&mut info);
            }
        }
        for (name, child) in config.children {
            let addresses = split.remove(&name).unwrap_or_default();
            let child_state =
                ClientConnState::new(addresses).with_attributes(state.attributes.clone());
            if !self.info.contains_key(&name) {
                self.next_timer += 1;
                self.info.insert(
                    name.clone(),
                    ChildInfo {
                        timer_id: self.next_timer,
                        state: ConnectivityState::Connecting,
                        reported_failure: false,
                        failover: None,
                    },
                );
            }
            // A started child gets its new state at once; the others keep it. Its
            // `ignoreReresolutionRequests` applies from that update on (and, for a
            // new child, from its start).
            let ignore = child.ignore_reresolution_requests;
            self.children.set_ignore_resolve_now(&name, ignore);
            let result = self
                .children
                .set(name.clone(), child.policy, child_state, cc);
            self.children.set_ignore_resolve_now(&name, ignore);
            // A child's error is its own: it publishes its failure, which fails
            // over as any other (grpc-go turns it into TRANSIENT_FAILURE for that
            // child); the update stands.
            if let Err(error) = result {
                tracing::debug!(child = %name, %error, "priority: a child rejected its state");
            }
        }
        self.priorities = config.priorities;
        // Publications of the update are followed, then the priority in use is
        // chosen again (the children may have moved) and its picker published.
        self.sync(cc);
        self.choose(true, cc);
        self.sync(cc);
        Ok(())
    }

    fn settle(&mut self, cc: &mut dyn ClientConn) {
        self.sync(cc);
    }

    fn own_timer(&mut self, id: u64, cc: &mut dyn ClientConn) {
        // A failover timer went off: its child gets no more time.
        if let Some(info) = self.info.values_mut().find(|i| i.timer_id == id) {
            info.failover = None;
        }
        self.choose(false, cc);
    }

    fn closing(&mut self) {
        for info in self.info.values_mut() {
            stop_timer(info);
        }
    }
}
