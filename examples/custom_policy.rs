//! A custom load-balancing policy in one page: "power of two choices" over the number
//! of RPCs in flight, using `lb_core::base` for the connection bookkeeping and the
//! pick's completion callback to count finished RPCs.
//!
//! Run: `cargo run -p examples --example custom_policy`
//!
//! The program drives the policy with `lb-core`'s test harness (the same calls a
//! channel makes) and simulates one slow backend: the policy steers RPCs away from it.
//! `lb_policies::least_request` is the production version of this idea.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::test_util::Harness;
use lb_core::{
    Code, ConnectivityState, DoneInfo, LbConfig, OnDone, Pick, PickInfo, PickResult, Picker,
    Status, SubConn, SubConnId,
};

/// The policy. Each channel gets its own clone (`BaseBuilder` clones it per
/// channel), so the counters below belong to one channel's subconns.
#[derive(Clone, Default)]
struct LeastRequest {
    /// In-flight counters survive picker rebuilds: they belong to the subconn, and
    /// are dropped when the subconn is (`subconn_removed`).
    counters: HashMap<SubConnId, Arc<InFlight>>,
}

/// RPCs in flight on one subconn; decremented by the completion callback.
#[derive(Default)]
struct InFlight(AtomicUsize);

impl OnDone for InFlight {
    fn done(&self, _: &DoneInfo<'_>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct LeastRequestPicker {
    ready: Vec<(SubConn, Arc<InFlight>)>,
}

impl Picker for LeastRequestPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        // Two random candidates; the less loaded one wins. No lock, no allocation
        // (cloning the callback's Arc is a reference count).
        let a = &self.ready[fastrand::usize(..self.ready.len())];
        let b = &self.ready[fastrand::usize(..self.ready.len())];
        let (subconn, in_flight) = if b.1.0.load(Ordering::Relaxed) < a.1.0.load(Ordering::Relaxed)
        {
            b
        } else {
            a
        };
        in_flight.0.fetch_add(1, Ordering::Relaxed);
        PickResult::Pick(Pick::new(subconn).with_on_done(in_flight.clone()))
    }
}

impl PickerBuilder for LeastRequest {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        Arc::new(LeastRequestPicker {
            ready: ready
                .iter()
                .map(|r| {
                    let c = self.counters.entry(r.subconn.id()).or_default().clone();
                    (r.subconn.clone(), c)
                })
                .collect(),
        })
    }

    fn subconn_removed(&mut self, subconn: &SubConn) {
        self.counters.remove(&subconn.id());
    }
}

fn main() {
    let backends = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"];
    let mut h = Harness::new(BaseBuilder::new("least_request", LeastRequest::default()));
    h.update_addresses(&backends)
        .unwrap_or_else(|e| panic!("{e}"));
    for b in backends {
        h.set_state(b, ConnectivityState::Connecting);
        h.set_state(b, ConnectivityState::Ready);
    }
    println!("policy state: {}", h.state());

    // Simulate 3,000 RPCs: backends 1 and 2 answer after 2 ticks, backend 3 after 20.
    let picker = h.picker();
    let ok = Status::new(Code::Ok, "");
    let mut in_flight: VecDeque<(u64, lb_core::Callbacks)> = VecDeque::new();
    let mut served: HashMap<String, usize> = HashMap::new();
    for tick in 0..3_000u64 {
        while in_flight.front().is_some_and(|(due, _)| *due <= tick) {
            if let Some((_, done)) = in_flight.pop_front() {
                done.done(&DoneInfo::new(&ok, None));
            }
        }
        if let PickResult::Pick(p) = picker.pick(&PickInfo::new("/demo.Echo/Say")) {
            let addr = p.subconn.address().addr().to_owned();
            let latency = if addr == backends[2] { 20 } else { 2 };
            *served.entry(addr).or_default() += 1;
            in_flight.push_back((tick + latency, p.on_done));
            in_flight.make_contiguous().sort_by_key(|(due, _)| *due);
        }
    }
    for b in backends {
        println!("{b} served {:>5} RPCs", served.get(b).copied().unwrap_or(0));
    }
    println!("the slow backend ({}) got the fewest", backends[2]);

    // A backend that leaves the resolver's list takes its counter with it.
    h.update_addresses(&backends[..2])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("after removing {}: still {}", backends[2], h.state());
}
