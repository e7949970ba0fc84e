//! The parent-policy building blocks (`lb_core::child`) driven through the harness:
//! a test parent that splits its addresses between two keyed children.

#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::child::{ChildManager, ChildPolicy, ChildUpdate};
use lb_core::test_util::{Event, Harness, Outcome};
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState::*, Error, LbConfig, Pick, PickInfo, PickResult, Picker, SharedError,
    SubConn, SubConnState, TimerId,
};

/// A child policy: the first ready subconn; it asks for a refresh every second (a
/// timer the parent must route back).
#[derive(Clone)]
struct First;
struct FirstPicker(SubConn);

impl Picker for FirstPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::new(&self.0))
    }
}

impl PickerBuilder for First {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        Arc::new(FirstPicker(ready[0].subconn.clone()))
    }

    fn refresh_period(&self, _: Option<&LbConfig>) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

/// The parent: addresses ending in `:1` go to child "one", the rest to "two"; it
/// publishes child one's picker while ready, else two's. It also keeps a timer of
/// its own.
struct Split;

/// The parent's own timer.
const OWN: TimerId = TimerId::new(7);

struct SplitBalancer {
    children: ChildManager<&'static str>,
    own_timers: u32,
}

impl BalancerBuilder for Split {
    fn name(&self) -> &str {
        "split"
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(SplitBalancer {
            children: ChildManager::new(options.clone()),
            own_timers: 0,
        })
    }

    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let child =
            lb_core::child::parse_child_policy(&config["child"], "child", "split", registry)?;
        Ok(LbConfig::new(child))
    }
}

impl SplitBalancer {
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        if !self.children.take_published() {
            return;
        }
        let one = self.children.child(&"one");
        let two = self.children.child(&"two");
        let chosen = match (one, two) {
            (Some(one), _) if one.0 == Ready => Some(one),
            (_, Some(two)) if two.0 == Ready => Some(two),
            (one, two) => one.or(two),
        };
        if let Some((_, picker)) = chosen {
            cc.update_state(self.children.aggregate(), picker);
        }
    }
}

impl Balancer for SplitBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let policy = state
            .config
            .as_ref()
            .and_then(|c| c.get::<ChildPolicy>())
            .cloned()
            .unwrap();
        let (one, two): (Vec<_>, Vec<_>) = state
            .addresses
            .into_iter()
            .partition(|a| a.addr().ends_with(":1"));
        let updates = [("one", one), ("two", two)]
            .into_iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(key, a)| ChildUpdate {
                key,
                policy: policy.clone(),
                state: ClientConnState::new(a),
            })
            .collect();
        let result = self.children.update(updates, cc);
        cc.schedule(Duration::from_secs(5), OWN);
        self.publish(cc);
        result
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.children.resolver_error(&error, cc);
        self.publish(cc);
    }

    fn update_subconn_state(
        &mut self,
        sc: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        assert!(
            self.children.update_subconn_state(sc, state, cc),
            "every subconn is a child's"
        );
        self.publish(cc);
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.children.exit_idle(cc);
        self.publish(cc);
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        match timer.own_id() {
            Some(7) => self.own_timers += 1,
            Some(other) => panic!("unknown own timer {other}"),
            None => self.children.timer(timer, cc),
        }
        self.publish(cc);
    }

    fn close(&mut self, cc: &mut dyn ClientConn) {
        self.children.close(cc);
    }
}

fn registry() -> BalancerRegistry {
    let mut r = BalancerRegistry::new();
    r.register(BaseBuilder::new("first", First));
    r.register(BaseBuilder::new("other_first", First));
    r
}

fn harness() -> Harness {
    let mut h = Harness::with_registry(Split, registry());
    let addrs = ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2"]
        .map(lb_core::Address::new)
        .to_vec();
    h.update_with_config(addrs, r#"{"child": [{"nope": {}}, {"first": {}}]}"#)
        .unwrap();
    h
}

#[test]
fn children_get_their_share_of_addresses_and_their_subconns_states() {
    let mut h = harness();
    let events = h.take_events();
    for a in ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2"] {
        assert!(events.contains(&Event::NewSubConn(a.into())), "{events:?}");
        assert!(
            h.subconn_options(a).health_check,
            "base asks for health checks"
        );
    }
    h.set_state("10.0.0.2:2", Connecting);
    h.set_state("10.0.0.2:2", Ready);
    assert_eq!(h.state(), Ready);
    assert_eq!(
        h.pick(),
        Outcome::Picked("10.0.0.2:2".into()),
        "child two serves"
    );
    h.set_state("10.0.0.1:1", Connecting);
    h.set_state("10.0.0.1:1", Ready);
    assert_eq!(
        h.pick(),
        Outcome::Picked("10.0.0.1:1".into()),
        "child one is back"
    );

    // A child that disappears is kept, with its connections, for the retention
    // period (grpc-go's balancer group keeps removed children 15 minutes)...
    let one = || vec![lb_core::Address::new("10.0.0.1:1")];
    let all = || {
        ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2"]
            .map(lb_core::Address::new)
            .to_vec()
    };
    let config = r#"{"child": [{"first": {}}]}"#;
    h.update_with_config(one(), config).unwrap();
    let events = h.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Shutdown(_))),
        "{events:?}"
    );
    assert_eq!(h.pick(), Outcome::Picked("10.0.0.1:1".into()));
    // ...and a key that comes back within it makes no new connection.
    h.update_with_config(all(), config).unwrap();
    let events = h.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::NewSubConn(_) | Event::Shutdown(_))),
        "{events:?}"
    );
    assert_eq!(h.live_subconns().len(), 3);

    // When the retention ends, a child still gone takes its subconns with it.
    h.update_with_config(one(), config).unwrap();
    h.take_events();
    h.fire_timers();
    let events = h.take_events();
    assert!(
        events.contains(&Event::Shutdown("10.0.0.2:2".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Shutdown("10.0.0.3:2".into())),
        "{events:?}"
    );
    assert_eq!(h.live_subconns().len(), 1);
    // Back after that: a new child, new connections.
    h.update_with_config(all(), config).unwrap();
    let events = h.take_events();
    assert!(
        events.contains(&Event::NewSubConn("10.0.0.2:2".into())),
        "{events:?}"
    );
}

#[test]
fn timers_reach_the_child_that_set_them_and_the_parent_keeps_its_own() {
    let mut h = harness();
    h.set_state("10.0.0.1:1", Connecting);
    h.set_state("10.0.0.1:1", Ready);
    let timers = h.timers();
    assert!(timers.contains(&OWN), "{timers:?}");
    assert!(
        timers.len() >= 2,
        "the ready child set its refresh timer: {timers:?}"
    );
    h.take_events();
    h.fire_timers();
    let events = h.take_events();
    // The child's refresh republished through the parent; the parent's own timer
    // was delivered to it (and nothing panicked on an unknown timer).
    assert!(events.contains(&Event::UpdateState(Ready)), "{events:?}");
    assert!(
        h.timers().iter().any(|t| t.own_id().is_none()),
        "the child set its next refresh"
    );
}

#[test]
fn a_childs_policy_change_is_a_graceful_switch() {
    let mut h = harness();
    for a in ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2"] {
        h.set_state(a, Connecting);
        h.set_state(a, Ready);
    }
    h.take_events();
    let addrs = ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:2"]
        .map(lb_core::Address::new)
        .to_vec();
    h.update_with_config(addrs, r#"{"child": [{"other_first": {}}]}"#)
        .unwrap();
    // The new children connect while the old ones keep serving.
    let events = h.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Shutdown(_))),
        "the old children serve until the new ones leave CONNECTING: {events:?}"
    );
    assert_eq!(h.state(), Ready);
    assert_eq!(h.live_subconns().len(), 6);
    // One new subconn ready: its child takes over, the old one closes.
    let newest = h.subconn("10.0.0.1:1");
    h.set_subconn_state(&newest, SubConnState::new(Connecting));
    h.set_subconn_state(&newest, SubConnState::new(Ready));
    let events = h.take_events();
    assert!(
        events.contains(&Event::Shutdown("10.0.0.1:1".into())),
        "{events:?}"
    );
}
