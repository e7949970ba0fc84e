//! `ChildManager` on its own: children added without starting, started, stopped and
//! brought back without reconnecting, per-child calls, which children published, and
//! ten thousand children.

#![cfg(feature = "test-util")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::child::{ChildManager, ChildPolicy, ChildUpdate};
use lb_core::test_util::{Event, RecordingClientConn};
use lb_core::{
    Address, BalancerRegistry, BuildOptions, ClientConnState, ConnectivityState::*, LbConfig, Pick,
    PickInfo, PickResult, Picker, SubConnState, Target,
};

#[derive(Clone)]
struct First;
struct FirstPicker(lb_core::SubConn);

impl Picker for FirstPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::new(&self.0))
    }
}

impl PickerBuilder for First {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        Arc::new(FirstPicker(ready[0].subconn.clone()))
    }
}

fn setup() -> (ChildManager<String>, RecordingClientConn) {
    let mut registry = BalancerRegistry::new();
    registry.register(BaseBuilder::new("first", First));
    let target = Target::parse("test:///x").unwrap();
    let cc = RecordingClientConn::new(target.clone());
    let manager = ChildManager::new(BuildOptions::new(target).with_registry(registry));
    (manager, cc)
}

fn policy() -> ChildPolicy {
    ChildPolicy {
        name: "first".into(),
        config: LbConfig::new(()),
    }
}

fn state(addrs: &[&str]) -> ClientConnState {
    ClientConnState::new(addrs.iter().map(|a| Address::new(*a)).collect())
}

/// Moves every subconn `cc` created for `addr` to READY, through the manager.
fn ready(manager: &mut ChildManager<String>, cc: &mut RecordingClientConn, addr: &str) {
    let subconns: Vec<_> = cc
        .created()
        .iter()
        .filter(|s| s.address().addr() == addr && !cc.is_shut_down(s))
        .cloned()
        .collect();
    for sc in subconns {
        for s in [Connecting, Ready] {
            assert!(manager.update_subconn_state(&sc, &SubConnState::new(s), cc));
        }
    }
}

#[test]
fn a_child_set_but_not_started_makes_no_connection_until_started() {
    let (mut m, mut cc) = setup();
    m.set("p1".into(), policy(), state(&["10.0.0.1:1"]), &mut cc)
        .unwrap();
    assert!(cc.take_events().is_empty(), "nothing built yet");
    assert!(!m.is_started(&"p1".into()));
    assert!(m.child(&"p1".into()).is_none());
    // A new state while waiting is the one it starts with.
    m.set("p1".into(), policy(), state(&["10.0.0.2:1"]), &mut cc)
        .unwrap();
    m.start(&"p1".into(), &mut cc).unwrap();
    let events = cc.take_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::NewSubConn(_)))
            .collect::<Vec<_>>(),
        [&Event::NewSubConn("10.0.0.2:1".into())]
    );
    assert!(m.is_started(&"p1".into()));
    assert_eq!(m.take_published_keys(), ["p1".to_owned()]);
}

#[test]
fn a_stopped_child_comes_back_as_it_was_without_reconnecting() {
    let (mut m, mut cc) = setup();
    m.set("p0".into(), policy(), state(&["10.0.0.1:1"]), &mut cc)
        .unwrap();
    m.start(&"p0".into(), &mut cc).unwrap();
    ready(&mut m, &mut cc, "10.0.0.1:1");
    assert_eq!(m.child(&"p0".into()).unwrap().0, Ready);
    cc.take_events();

    m.stop(&"p0".into(), &mut cc);
    assert!(!m.is_started(&"p0".into()));
    assert_eq!(m.len(), 0);
    let events = cc.take_events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Shutdown(_))),
        "{events:?}"
    );

    m.start(&"p0".into(), &mut cc).unwrap();
    let (state, picker) = m.child(&"p0".into()).unwrap();
    assert_eq!(state, Ready, "back READY at once");
    assert!(matches!(
        picker.pick(&PickInfo::new("/a.B/C")),
        PickResult::Pick(_)
    ));
    let events = cc.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::NewSubConn(_) | Event::Shutdown(_))),
        "{events:?}"
    );
    // The retention timer set at the stop was cancelled: firing what is pending
    // closes nothing.
    for (_, timer) in cc.take_timers() {
        m.timer(timer, &mut cc);
    }
    assert!(m.is_started(&"p0".into()));
    assert!(
        !cc.take_events()
            .iter()
            .any(|e| matches!(e, Event::Shutdown(_)))
    );
}

#[test]
fn a_stopped_child_is_closed_when_its_retention_ends_and_rebuilt_when_started() {
    let (mut m, mut cc) = setup();
    m.set("p0".into(), policy(), state(&["10.0.0.1:1"]), &mut cc)
        .unwrap();
    m.start(&"p0".into(), &mut cc).unwrap();
    m.stop(&"p0".into(), &mut cc);
    let timers = cc.take_timers();
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].0, lb_core::child::DEFAULT_RETENTION);
    m.timer(timers[0].1.clone(), &mut cc);
    assert!(
        cc.take_events()
            .contains(&Event::Shutdown("10.0.0.1:1".into()))
    );
    // Its config stays: started again, it is built anew.
    m.start(&"p0".into(), &mut cc).unwrap();
    assert!(
        cc.take_events()
            .contains(&Event::NewSubConn("10.0.0.1:1".into()))
    );
}

#[test]
fn with_no_retention_a_removed_child_closes_at_once() {
    let (m, mut cc) = setup();
    let mut m = m.with_retention(Duration::ZERO);
    let update = |key: &str, addr: &str| ChildUpdate {
        key: key.to_owned(),
        policy: policy(),
        state: state(&[addr]),
    };
    m.update(
        vec![update("a", "10.0.0.1:1"), update("b", "10.0.0.2:1")],
        &mut cc,
    )
    .unwrap();
    cc.take_events();
    m.update(vec![update("a", "10.0.0.1:1")], &mut cc).unwrap();
    assert!(
        cc.take_events()
            .contains(&Event::Shutdown("10.0.0.2:1".into()))
    );
    assert!(cc.take_timers().is_empty());
}

#[test]
fn with_no_retention_a_stopped_child_closes_and_is_rebuilt_when_started() {
    let (m, mut cc) = setup();
    let mut m = m.with_retention(Duration::ZERO);
    m.set("p1".into(), policy(), state(&["10.0.0.1:1"]), &mut cc)
        .unwrap();
    m.start(&"p1".into(), &mut cc).unwrap();
    ready(&mut m, &mut cc, "10.0.0.1:1");
    cc.take_events();
    m.stop(&"p1".into(), &mut cc);
    assert!(
        cc.take_events()
            .contains(&Event::Shutdown("10.0.0.1:1".into()))
    );
    assert!(cc.take_timers().is_empty());
    // Stopped is not removed: its config stays, and starting builds it anew.
    m.start(&"p1".into(), &mut cc).unwrap();
    assert!(m.is_started(&"p1".into()));
    assert!(
        cc.take_events()
            .contains(&Event::NewSubConn("10.0.0.1:1".into()))
    );
    assert_eq!(m.take_published_keys(), ["p1".to_owned()]);
}

#[test]
fn a_kept_child_asks_for_no_reresolution() {
    let (mut m, mut cc) = setup();
    m.set("p1".into(), policy(), state(&["10.0.0.1:1"]), &mut cc)
        .unwrap();
    m.start(&"p1".into(), &mut cc).unwrap();
    ready(&mut m, &mut cc, "10.0.0.1:1");
    let subconn = cc.created()[0].clone();
    m.stop(&"p1".into(), &mut cc);
    cc.take_events();
    // Its connection fails while it is kept: the resolver is not bothered.
    m.update_subconn_state(&subconn, &SubConnState::new(TransientFailure), &mut cc);
    let events = cc.take_events();
    assert!(!events.contains(&Event::ResolveNow), "{events:?}");
    // Started again, it asks as usual.
    m.start(&"p1".into(), &mut cc).unwrap();
    m.update_subconn_state(&subconn, &SubConnState::new(Idle), &mut cc);
    m.update_subconn_state(&subconn, &SubConnState::new(TransientFailure), &mut cc);
    let events = cc.take_events();
    assert!(events.contains(&Event::ResolveNow), "{events:?}");
}

#[test]
fn exit_idle_and_resolver_errors_reach_one_child_at_a_time() {
    let (mut m, mut cc) = setup();
    for (key, addr) in [("a", "10.0.0.1:1"), ("b", "10.0.0.2:1")] {
        m.set(key.into(), policy(), state(&[addr]), &mut cc)
            .unwrap();
        m.start(&key.into(), &mut cc).unwrap();
    }
    // Both connect, then lose their connections (IDLE).
    for addr in ["10.0.0.1:1", "10.0.0.2:1"] {
        ready(&mut m, &mut cc, addr);
    }
    let subconns: Vec<_> = cc.created().to_vec();
    for sc in &subconns {
        m.update_subconn_state(sc, &SubConnState::new(Idle), &mut cc);
    }
    cc.take_events();
    m.exit_idle_child(&"a".into(), &mut cc);
    let events = cc.take_events();
    assert!(
        events.contains(&Event::Connect("10.0.0.1:1".into())),
        "{events:?}"
    );
    assert!(
        !events.contains(&Event::Connect("10.0.0.2:1".into())),
        "{events:?}"
    );

    m.take_published_keys();
    m.resolver_error_child(&"b".into(), &lb_core::test_util::error("dns down"), &mut cc);
    m.resolver_error_child(
        &"nobody".into(),
        &lb_core::test_util::error("dns down"),
        &mut cc,
    );
    let published = m.take_published_keys();
    assert!(published.iter().all(|k| k == "b"), "{published:?}");
}

#[test]
fn ten_thousand_children_each_get_their_subconns_states() {
    let (m, mut cc) = setup();
    let mut m = m.with_retention(Duration::ZERO);
    let n = 10_000;
    let updates = (0..n)
        .map(|i| ChildUpdate {
            key: format!("endpoint-{i}"),
            policy: policy(),
            state: state(&[&format!(
                "10.{}.{}.{}:1",
                i / 65536,
                (i / 256) % 256,
                i % 256
            )]),
        })
        .collect();
    m.update(updates, &mut cc).unwrap();
    assert_eq!(m.len(), n);
    let subconns: Vec<_> = cc.created().to_vec();
    assert_eq!(subconns.len(), n);
    for sc in &subconns {
        assert!(m.update_subconn_state(sc, &SubConnState::new(Connecting), &mut cc));
        assert!(m.update_subconn_state(sc, &SubConnState::new(Ready), &mut cc));
    }
    assert_eq!(m.children().filter(|(_, s, _)| *s == Ready).count(), n);
    assert_eq!(m.take_published_keys().len(), n);
    assert!(m.take_published_keys().is_empty(), "marks are cleared");
}
