//! Timers in a tree of policies: every balancer's timer reaches that balancer, at any
//! depth, and a cancelled one reaches nobody.

#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::child::{ChildManager, ChildPolicy, ChildUpdate, GracefulSwitch};
use lb_core::test_util::Harness;
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState, Error,
    LbConfig, SharedError, SubConn, SubConnState, Target, TimerId,
};

/// What the tree's balancers saw: the path of the balancer that got a timer, and the
/// timer's value.
type Log = Arc<Mutex<Vec<(String, u64)>>>;

/// `nest`: a balancer at `level` (its config) with, below level 0, children of its
/// own policy one level down: two keyed children (a `ChildManager`) at every third
/// level, one child behind a `GracefulSwitch` at the others. Each balancer sets a
/// timer whose value is its level, and one it cancels at once.
struct Nest {
    log: Log,
}

/// `nest`'s config: the level, and where the balancer sits.
#[derive(Clone)]
struct NestConfig {
    level: u64,
    path: String,
}

/// The timer each balancer cancels.
const CANCELLED: u64 = 1_000;

enum Children {
    None,
    One(Box<GracefulSwitch>),
    Keyed(Box<ChildManager<&'static str>>),
}

struct NestBalancer {
    log: Log,
    path: String,
    children: Children,
    options: BuildOptions,
}

impl BalancerBuilder for Nest {
    fn name(&self) -> &str {
        "nest"
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(NestBalancer {
            log: self.log.clone(),
            path: String::new(),
            children: Children::None,
            options: options.clone(),
        })
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        Ok(LbConfig::new(NestConfig {
            level: config["level"].as_u64().unwrap(),
            path: config["path"].as_str().unwrap_or("root").to_owned(),
        }))
    }
}

fn child_state(level: u64, path: String) -> ClientConnState {
    ClientConnState::new(Vec::new()).with_config(LbConfig::new(NestConfig { level, path }))
}

fn nest_policy(level: u64, path: &str) -> ChildPolicy {
    ChildPolicy {
        name: "nest".into(),
        config: LbConfig::new(NestConfig {
            level,
            path: path.to_owned(),
        }),
    }
}

impl Balancer for NestBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<NestConfig>())
            .cloned()
            .unwrap();
        self.path = config.path.clone();
        cc.schedule(Duration::from_secs(1), TimerId::new(config.level));
        cc.schedule(Duration::from_secs(1), TimerId::new(CANCELLED))
            .cancel();
        if config.level == 0 {
            return Ok(());
        }
        let below = config.level - 1;
        if config.level.is_multiple_of(3) {
            let mut manager = ChildManager::new(self.options.clone());
            let updates = ["a", "b"]
                .into_iter()
                .map(|key| {
                    let path = format!("{}/{key}", config.path);
                    ChildUpdate {
                        key,
                        policy: nest_policy(below, &path),
                        state: child_state(below, path),
                    }
                })
                .collect();
            manager.update(updates, cc)?;
            self.children = Children::Keyed(Box::new(manager));
        } else {
            let mut switch = GracefulSwitch::new(self.options.clone());
            switch.switch_to("nest", cc)?;
            switch
                .update_client_conn_state(child_state(below, format!("{}/0", config.path)), cc)?;
            self.children = Children::One(Box::new(switch));
        }
        Ok(())
    }

    fn resolver_error(&mut self, _: SharedError, _: &mut dyn ClientConn) {}

    fn update_subconn_state(&mut self, _: &SubConn, _: &SubConnState, _: &mut dyn ClientConn) {}

    fn exit_idle(&mut self, _: &mut dyn ClientConn) {}

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        if let Some(id) = timer.own_id() {
            self.log.lock().unwrap().push((self.path.clone(), id));
            return;
        }
        match &mut self.children {
            Children::None => panic!("{}: a child's timer reached a leaf: {timer:?}", self.path),
            Children::One(switch) => switch.timer(timer, cc),
            Children::Keyed(manager) => manager.timer(timer, cc),
        }
    }
}

/// The level of every balancer of a tree whose root is at `level`, by path.
fn tree(level: u64, path: String, into: &mut BTreeMap<String, u64>) {
    into.insert(path.clone(), level);
    if level == 0 {
        return;
    }
    if level.is_multiple_of(3) {
        for key in ["a", "b"] {
            tree(level - 1, format!("{path}/{key}"), into);
        }
    } else {
        tree(level - 1, format!("{path}/0"), into);
    }
}

#[test]
fn every_balancer_of_a_ten_level_tree_gets_its_own_timers_and_no_cancelled_one() {
    let log = Log::default();
    let mut registry = BalancerRegistry::new();
    registry.register(Nest { log: log.clone() });
    let mut h = Harness::with_registry(Nest { log: log.clone() }, registry);
    h.update_with_config(Vec::new(), r#"{"level": 10}"#)
        .unwrap();

    let mut expected = BTreeMap::new();
    tree(10, "root".into(), &mut expected);
    assert_eq!(
        expected.values().filter(|l| **l == 0).count(),
        8,
        "three keyed levels: 2^3 leaves"
    );
    let deepest = h.timers().iter().map(TimerId::depth).max().unwrap();
    assert!(
        deepest >= 10,
        "a leaf's timer passes every parent: {deepest}"
    );

    let fired = h.fire_timers();
    assert_eq!(fired, expected.len(), "one live timer per balancer");
    let got: BTreeMap<String, u64> = log.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        log.lock().unwrap().len(),
        expected.len(),
        "each balancer got exactly one timer"
    );
    assert_eq!(got, expected, "each balancer got the timer it set");
    assert_eq!(h.fire_timers(), 0, "timers fire once");
}

#[test]
fn routes_survive_any_depth() {
    let mut timer = TimerId::new(42);
    for hop in 0..1_000u64 {
        timer = timer.via(hop * 7_919);
    }
    assert_eq!(timer.depth(), 1_000);
    for hop in (0..1_000u64).rev() {
        let (child, inner) = timer.into_child().unwrap();
        assert_eq!(child, hop * 7_919);
        timer = inner;
    }
    assert_eq!(timer.own_id(), Some(42));
    assert_eq!(timer, TimerId::new(42));
    assert!(timer.into_child().is_none());
}

/// `probe`: records its `exit_idle` calls and timers by its registered name, and
/// publishes READY on an update when its config says so.
struct Probe {
    name: &'static str,
    log: Log,
}

struct ProbeBalancer {
    name: &'static str,
    log: Log,
    /// The key its config gave it.
    key: u64,
}

impl BalancerBuilder for Probe {
    fn name(&self) -> &str {
        self.name
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ProbeBalancer {
            name: self.name,
            log: self.log.clone(),
            key: 0,
        })
    }
}

impl Balancer for ProbeBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let key = state
            .config
            .as_ref()
            .and_then(|c| c.get::<u64>())
            .copied()
            .unwrap_or(0);
        self.key = key;
        cc.schedule(Duration::from_secs(1), TimerId::new(key));
        if self.name == "ready" {
            cc.update_state(
                lb_core::ConnectivityState::Ready,
                Arc::new(lb_core::QueuePicker),
            );
        }
        Ok(())
    }

    fn resolver_error(&mut self, _: SharedError, _: &mut dyn ClientConn) {}

    fn update_subconn_state(&mut self, _: &SubConn, _: &SubConnState, _: &mut dyn ClientConn) {}

    fn exit_idle(&mut self, _: &mut dyn ClientConn) {
        self.log
            .lock()
            .unwrap()
            .push((format!("exit_idle {}", self.name), 0));
    }

    fn timer(&mut self, timer: TimerId, _: &mut dyn ClientConn) {
        let id = timer.own_id().expect("a leaf's timers are its own");
        let me = format!("{}/{}", self.name, self.key);
        self.log.lock().unwrap().push((me, id));
    }
}

fn probes(log: &Log) -> BalancerRegistry {
    let mut registry = BalancerRegistry::new();
    registry.register(Probe {
        name: "ready",
        log: log.clone(),
    });
    registry.register(Probe {
        name: "quiet",
        log: log.clone(),
    });
    registry
}

#[test]
fn exit_idle_goes_to_the_pending_child_during_a_switch() {
    let log = Log::default();
    let target = Target::parse("test:///x").unwrap();
    let mut cc = lb_core::test_util::RecordingClientConn::new(target.clone());
    let options = BuildOptions::new(target).with_registry(probes(&log));
    let mut switch = GracefulSwitch::new(options);
    switch.switch_to("ready", &mut cc).unwrap();
    switch
        .update_client_conn_state(ClientConnState::new(Vec::new()), &mut cc)
        .unwrap();
    // A switch to a policy that stays CONNECTING: the current one keeps serving.
    switch.switch_to("quiet", &mut cc).unwrap();
    switch
        .update_client_conn_state(ClientConnState::new(Vec::new()), &mut cc)
        .unwrap();
    assert_eq!(switch.current_name(), Some("ready"));
    assert_eq!(switch.pending_name(), Some("quiet"));
    switch.exit_idle(&mut cc);
    // As grpc-go's graceful switch: the newest child is the one to wake.
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [("exit_idle quiet".to_owned(), 0)]
    );
}

#[test]
fn a_child_manager_never_gives_a_new_child_the_slot_of_a_live_one() {
    // One child stays while 70,000 others come and go: with 16-bit slots, the
    // 65,535th newcomer took the slot of the one that stayed, and its timers went
    // to the wrong child.
    let log = Log::default();
    let target = Target::parse("test:///x").unwrap();
    let mut cc = lb_core::test_util::RecordingClientConn::new(target.clone());
    let options = BuildOptions::new(target).with_registry(probes(&log));
    let mut manager: ChildManager<u64> = ChildManager::new(options);
    let update = |key: u64| ChildUpdate {
        key,
        policy: ChildPolicy {
            name: "quiet".into(),
            config: LbConfig::new(key),
        },
        state: ClientConnState::new(Vec::new()),
    };
    for key in 1..=70_000u64 {
        manager
            .update(vec![update(0), update(key)], &mut cc)
            .unwrap();
        // Only the last timers of each child matter; fire as a channel would.
        for (_, timer) in cc.take_timers() {
            manager.timer(timer, &mut cc);
        }
        let fired = std::mem::take(&mut *log.lock().unwrap());
        // Each child got the timer it set, and no other.
        let expected = vec![("quiet/0".to_owned(), 0), (format!("quiet/{key}"), key)];
        assert_eq!(fired, expected, "after {key} children");
    }
}
