//! `weighted_target_experimental`: targets (localities, in xDS) each balanced by a
//! child policy of their own, picked in proportion to their weights, as grpc-go's
//! `weightedtarget`.
//!
//! ```json
//! {"weighted_target_experimental": {"targets": {
//!    "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
//!    "zone-b": {"weight": 1, "childPolicy": [{"least_request": {}}]}}}}
//! ```
//!
//! * Each target's child gets the addresses whose hierarchy path
//!   ([`lb_core::hierarchy`]) starts with the target's name, the rest of the path
//!   with them; other addresses go nowhere.
//! * Picks go to the `READY` targets in proportion to their weights (a smooth
//!   weighted schedule, as `weighted_round_robin`'s; grpc-go draws at random), then
//!   to the target's picker: no lock, no allocation. Targets that are not `READY` get
//!   no picks.
//! * The state aggregates as grpc-go's: `READY` if any target is, else
//!   `CONNECTING`, else `IDLE`, else `TRANSIENT_FAILURE`; a target retrying after a
//!   failure still counts as failing. While `CONNECTING` RPCs queue; in
//!   `TRANSIENT_FAILURE` they fail as the targets' pickers say.
//! * A removed target is kept 15 minutes (its connections with it) in case it comes
//!   back ([`lb_core::child::ChildManager`]), as gRPC C-core; grpc-go closes it at
//!   once.
//! * A target's error (a child that rejects its addresses) is its own: it publishes
//!   its failure, and the update stands for the others (as grpc-go).
//!
//! Config errors name the JSON path: `targets.<name>.weight` must be an integer
//! (0 to 2^32 - 1; a target of weight 0 gets no picks), `childPolicy` is required.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lb_core::child::{ChildManager, ChildPolicy, counted_state, parse_child_policy};
use lb_core::hierarchy;
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, LbConfig, PickInfo, PickResult, Picker, QueuePicker,
    Status,
};
use serde_json::Value;

use crate::config::Fields;
use crate::cursor::Cursor;
use crate::parent::{Parent, ParentBalancer};

/// The policy's name in service configs (grpc-go's).
pub const NAME: &str = "weighted_target_experimental";

/// The `weighted_target_experimental` builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedTarget;

/// One target of the config.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its weight among the targets.
    pub weight: u32,
    /// Its child policy.
    pub child: ChildPolicy,
}

/// `weighted_target_experimental`'s parsed config: targets by name.
#[derive(Debug, Clone, Default)]
pub struct WeightedTargetConfig {
    /// The targets.
    pub targets: HashMap<String, Target>,
}

impl BalancerBuilder for WeightedTarget {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ParentBalancer(WeightedTargetBalancer {
            children: ChildManager::new(options.clone()),
            weights: HashMap::new(),
            counted: BTreeMap::new(),
            last: None,
            dirty: false,
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
        let mut targets = HashMap::new();
        for (name, target) in f.named_objects("targets")? {
            let weight = target.number("weight", 0, None)?;
            let child = target
                .get("childPolicy")
                .ok_or_else(|| target.error("childPolicy", "is required"))
                .and_then(|c| parse_child_policy(c, &target.path("childPolicy"), NAME, registry))?;
            targets.insert(name.to_owned(), Target { weight, child });
        }
        Ok(LbConfig::new(WeightedTargetConfig { targets }))
    }
}

struct WeightedTargetBalancer {
    children: ChildManager<String>,
    weights: HashMap<String, u32>,
    /// Each target's state as the aggregate counts it ([`counted_state`]), in name
    /// order (the picker's order, the same every time).
    counted: BTreeMap<String, ConnectivityState>,
    /// The state last published, and whether the picker published with it is the
    /// one over READY targets (so a failing target's news cannot change it).
    last: Option<ConnectivityState>,
    /// Targets changed (added, removed, reweighted) since the last publication.
    dirty: bool,
}

impl WeightedTargetBalancer {
    /// Follows the children's publications and publishes the aggregate.
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        self.publish_if(false, cc);
    }

    /// Publishes if a child published, or if `forced`.
    fn publish_if(&mut self, forced: bool, cc: &mut dyn ClientConn) {
        if !self.children.take_published() && !forced {
            return;
        }
        let published = self.children.take_published_keys();
        // A new target counts as CONNECTING until it says otherwise.
        for key in self.weights.keys() {
            if !self.counted.contains_key(key) {
                self.counted
                    .insert(key.clone(), ConnectivityState::Connecting);
            }
        }
        // Whether the READY set's pickers may differ from those last published: a
        // target that is READY now published a new picker, or one's counted state
        // changed.
        let mut ready_pickers_changed = std::mem::take(&mut self.dirty) || forced;
        for key in &published {
            if let Some((state, _)) = self.children.child(key) {
                let before = self
                    .counted
                    .get(key)
                    .copied()
                    .unwrap_or(ConnectivityState::Connecting);
                let now = counted_state(before, state);
                ready_pickers_changed |= now != before || now == ConnectivityState::Ready;
                self.counted.insert(key.clone(), now);
            }
        }
        self.counted.retain(|k, _| self.weights.contains_key(k));
        if self.weights.is_empty() {
            cc.update_state(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(Status::unavailable(
                    "weighted_target: no targets to pick from",
                ))),
            );
            return;
        }
        let state = lb_core::child::aggregate(self.counted.values().copied());
        // A failing target's retries (thousands of dead endpoints each cycling
        // through backoff) change nothing a READY or IDLE picker holds: skip them
        // instead of republishing up the tree on every one.
        if !ready_pickers_changed
            && self.last == Some(state)
            && matches!(state, ConnectivityState::Ready | ConnectivityState::Idle)
        {
            return;
        }
        self.last = Some(state);
        let picker: Arc<dyn Picker> = match state {
            ConnectivityState::Connecting => Arc::new(QueuePicker),
            ConnectivityState::TransientFailure => {
                // Every target failing: their pickers say why, in proportion.
                self.weighted(|_| true)
            }
            _ => self.weighted(|s| s == ConnectivityState::Ready),
        };
        cc.update_state(state, picker);
    }

    /// A picker over the targets whose counted state passes `keep`.
    fn weighted(&self, keep: impl Fn(ConnectivityState) -> bool) -> Arc<dyn Picker> {
        let mut pickers: Vec<Arc<dyn Picker>> = Vec::new();
        let mut weights: Vec<u32> = Vec::new();
        for (name, &counted) in &self.counted {
            let weight = self.weights.get(name).copied().unwrap_or(0);
            if !keep(counted) || weight == 0 {
                continue;
            }
            if let Some((_, picker)) = self.children.child(name) {
                pickers.push(picker);
                weights.push(weight);
            }
        }
        match pickers.len() {
            0 => Arc::new(QueuePicker),
            // One target: its picker as is.
            1 => pickers.swap_remove(0),
            _ => Arc::new(WeightedPicker::new(pickers, &weights)),
        }
    }
}

/// Picks targets in proportion to their weights, then asks the target's picker: a
/// smooth weighted schedule (weighted_round_robin's, each target's turns spread
/// over the period) walked by per-thread cursors, so picks on different cores write
/// different memory and each core's picks follow the weights.
pub struct WeightedPicker {
    pickers: Box<[Arc<dyn Picker>]>,
    /// One period of target indices.
    schedule: Box<[u32]>,
    cursor: Cursor,
}

impl WeightedPicker {
    /// A picker over `pickers` with these `weights` (same length, none zero).
    pub fn new(pickers: Vec<Arc<dyn Picker>>, weights: &[u32]) -> Self {
        let schedule = crate::weighted_round_robin::schedule(weights);
        Self {
            cursor: Cursor::new(schedule.len()),
            pickers: pickers.into_boxed_slice(),
            schedule,
        }
    }
}

impl Picker for WeightedPicker {
    #[inline]
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let target = self.schedule.get(self.cursor.next()).copied().unwrap_or(0);
        match self.pickers.get(target as usize) {
            Some(picker) => picker.pick(info),
            None => PickResult::Queue,
        }
    }
}

impl Parent for WeightedTargetBalancer {
    fn children(&mut self) -> &mut ChildManager<String> {
        &mut self.children
    }

    fn update(&mut self, state: ClientConnState, cc: &mut dyn ClientConn) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<WeightedTargetConfig>())
            .cloned()
            .ok_or_else(|| Error::lb_config(NAME, "$", "a config with targets is required"))?;
        let mut split = hierarchy::group(state.addresses);
        let gone: Vec<String> = self
            .weights
            .keys()
            .filter(|k| !config.targets.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.children.remove(&key, cc);
            self.weights.remove(&key);
            self.dirty = true;
        }
        let mut reweighted = false;
        for (name, target) in config.targets {
            let addresses = split.remove(&name).unwrap_or_default();
            let child_state =
                ClientConnState::new(addresses).with_attributes(state.attributes.clone());
            reweighted |= self.weights.insert(name.clone(), target.weight) != Some(target.weight);
            let result = self
                .children
                .set(name.clone(), target.child, child_state, cc)
                .and_then(|()| self.children.start(&name, cc));
            // A target's error is its own (it publishes its failure); as grpc-go,
            // the others carry on and the update stands.
            if let Err(error) = result {
                tracing::debug!(target = %name, %error, "weighted_target: a target rejected its state");
            }
        }
        // New weights need a new picker even if no child published; with no targets
        // left, nothing publishes: say so at once.
        let forced = reweighted || self.weights.is_empty();
        self.publish_if(forced, cc);
        Ok(())
    }

    fn settle(&mut self, cc: &mut dyn ClientConn) {
        self.publish(cc);
    }
}
