//! A third-party policy written only against `lb-core`'s public API: proof that
//! policies can live outside this workspace. It uses the `base` helper for the
//! connection bookkeeping and `test-util` to drive it.
//!
//! The policy, `first_ready`, sends every RPC to the ready subconn that comes first in
//! the resolver's order (a priority list), and reports each RPC's end to a counter via
//! the pick's completion callback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::test_util::{Harness, Outcome};
use lb_core::{
    BalancerRegistry, Code, ConnectivityState::*, DoneInfo, LbConfig, OnDone, Pick, PickInfo,
    PickResult, Picker, ServiceConfig, Status, SubConn,
};

#[derive(Clone, Default)]
struct FirstReady {
    finished: Arc<AtomicUsize>,
}

struct FirstReadyPicker {
    subconn: SubConn,
    on_done: Arc<dyn OnDone>,
}

impl Picker for FirstReadyPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::new(&self.subconn).with_on_done(self.on_done.clone()))
    }
}

impl PickerBuilder for FirstReady {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        let finished = self.finished.clone();
        Arc::new(FirstReadyPicker {
            subconn: ready[0].subconn.clone(),
            on_done: Arc::new(move |info: &DoneInfo<'_>| {
                if info.status.code() == Code::Ok {
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            }),
        })
    }
}

#[test]
fn a_custom_policy_registers_parses_config_and_balances() {
    let mut registry = BalancerRegistry::new();
    registry.register(BaseBuilder::new("first_ready", FirstReady::default()));
    let config = ServiceConfig::parse(
        r#"{"loadBalancingConfig": [{"unknown_policy": {}}, {"first_ready": {}}]}"#,
        &registry,
    )
    .unwrap();
    assert_eq!(config.lb_policy().unwrap().name, "first_ready");

    let finished = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new(BaseBuilder::new(
        "first_ready",
        FirstReady {
            finished: finished.clone(),
        },
    ));
    h.update_addresses(&["10.0.0.1:1", "10.0.0.2:1"]).unwrap();
    assert_eq!(h.pick(), Outcome::Queued);

    h.set_state("10.0.0.2:1", Connecting);
    h.set_state("10.0.0.2:1", Ready);
    assert_eq!(h.pick_addrs(2), ["10.0.0.2:1"; 2]);

    h.set_state("10.0.0.1:1", Connecting);
    h.set_state("10.0.0.1:1", Ready);
    assert_eq!(
        h.pick_addrs(2),
        ["10.0.0.1:1"; 2],
        "the higher-priority address takes over"
    );

    // The completion callback reaches the policy.
    let picker = h.picker();
    let PickResult::Pick(pick) = picker.pick(&PickInfo::new("/a.B/C")) else {
        panic!("expected a pick");
    };
    let ok = Status::new(Code::Ok, "");
    pick.on_done.done(&DoneInfo::new(&ok, None));
    assert_eq!(finished.load(Ordering::Relaxed), 1);

    h.set_state("10.0.0.1:1", Idle);
    assert_eq!(
        h.pick_addrs(1),
        ["10.0.0.2:1"],
        "falls back when the first drops"
    );
}
