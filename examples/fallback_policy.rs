//! A parent policy in one page, written only against the public API:
//! `primary_fallback` sends every RPC to the primary backends, starts the fallback
//! backends' child only when the primaries fail, and stops it (keeping its
//! connections for a while) as soon as a primary is ready again: a small `priority`.
//! Each group is balanced by a child policy of any registered kind, built by name
//! from the service config, with `lb_core::child::ChildManager` doing the
//! bookkeeping.
//!
//! Run: `cargo run -p examples --example fallback_policy`
//!
//! The program drives the policy with `lb-core`'s test harness (the same calls a
//! channel makes): the primaries fail, traffic moves to the fallbacks, and back.

use lb_core::child::{ChildManager, ChildPolicy, parse_child_policy};
use lb_core::test_util::{Event, Harness};
use lb_core::{
    Address, Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn,
    ClientConnState, ConnectivityState, Error, LbConfig, SharedError, SubConn, SubConnState,
    TimerId,
};

/// Address attribute a resolver sets on fallback backends (from registry metadata).
#[derive(Debug, PartialEq)]
struct Fallback;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Group {
    Primary,
    Fallback,
}

const NAME: &str = "primary_fallback";

/// The builder: parses `{"childPolicy": [...]}` with the channel's registry.
struct PrimaryFallback;

impl BalancerBuilder for PrimaryFallback {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(Balancing {
            children: ChildManager::new(options.clone()),
        })
    }

    fn parse_config_in(
        &self,
        config: &serde_json::Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let child = config
            .get("childPolicy")
            .ok_or_else(|| Error::lb_config(NAME, "childPolicy", "is required"))?;
        Ok(LbConfig::new(parse_child_policy(
            child,
            "childPolicy",
            NAME,
            registry,
        )?))
    }
}

struct Balancing {
    children: ChildManager<Group>,
}

impl Balancing {
    /// After any call into the children: start the fallback while the primaries
    /// fail, stop it once they are ready, and publish the group in use.
    fn sync(&mut self, cc: &mut dyn ClientConn) {
        if !self.children.take_published() {
            return;
        }
        let primary = self.children.child(&Group::Primary);
        let failing = primary
            .as_ref()
            .is_none_or(|(s, _)| *s == ConnectivityState::TransientFailure);
        if failing && !self.children.is_started(&Group::Fallback) {
            let _ = self.children.start(&Group::Fallback, cc); // kept connections come back
        } else if !failing && self.children.is_started(&Group::Fallback) {
            self.children.stop(&Group::Fallback, cc); // kept 15 minutes
        }
        let group = if failing {
            Group::Fallback
        } else {
            Group::Primary
        };
        if let Some((state, picker)) = self.children.child(&group).or(primary) {
            cc.update_state(state, picker);
        }
        self.children.take_published(); // what starting and stopping just published
    }
}

impl Balancer for Balancing {
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
            .ok_or_else(|| Error::lb_config(NAME, "$", "a childPolicy is required"))?;
        let (fallback, primary): (Vec<Address>, Vec<Address>) = state
            .addresses
            .into_iter()
            .partition(|a| a.attributes().get::<Fallback>().is_some());
        // Both children get their addresses; only the primary starts now.
        let fallback_state = ClientConnState::new(fallback);
        self.children
            .set(Group::Fallback, policy.clone(), fallback_state, cc)?;
        let primary_state = ClientConnState::new(primary);
        self.children
            .set(Group::Primary, policy, primary_state, cc)?;
        self.children.start(&Group::Primary, cc)?;
        self.sync(cc);
        Ok(())
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.children.resolver_error(&error, cc);
        self.sync(cc);
    }

    fn update_subconn_state(
        &mut self,
        sc: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        self.children.update_subconn_state(sc, state, cc);
        self.sync(cc);
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.children.exit_idle(cc);
        self.sync(cc);
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        self.children.timer(timer, cc); // the children's timers, and retention ends
        self.sync(cc);
    }

    fn close(&mut self, cc: &mut dyn ClientConn) {
        self.children.close(cc);
    }
}

fn main() -> Result<(), Error> {
    let mut registry = lb_policies::registry();
    registry.register(PrimaryFallback);
    let mut h = Harness::with_registry(PrimaryFallback, registry);
    let addresses = vec![
        Address::new("10.0.0.1:50051"),
        Address::new("10.0.0.2:50051"),
        Address::new("10.9.0.1:50051").with_attribute(Fallback),
    ];
    h.update_with_config(addresses, r#"{"childPolicy": [{"round_robin": {}}]}"#)?;
    let connecting = |h: &mut Harness| {
        h.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::NewSubConn(a) => Some(a),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    println!("connecting:      {:?}", connecting(&mut h));
    for a in ["10.0.0.1:50051", "10.0.0.2:50051"] {
        h.set_state(a, ConnectivityState::Connecting);
        h.set_state(a, ConnectivityState::Ready);
    }
    println!("primaries up:    {:?}", h.pick_addrs(4));

    for a in ["10.0.0.1:50051", "10.0.0.2:50051"] {
        h.set_state(a, ConnectivityState::Idle); // their connections closed
        h.set_state(a, ConnectivityState::Connecting);
        h.fail(a, "connection refused");
    }
    println!("fallback starts: {:?}", connecting(&mut h));
    h.set_state("10.9.0.1:50051", ConnectivityState::Connecting);
    h.set_state("10.9.0.1:50051", ConnectivityState::Ready);
    println!("primaries down:  {:?} ({})", h.pick_addrs(4), h.state());

    h.set_state("10.0.0.1:50051", ConnectivityState::Idle);
    h.set_state("10.0.0.1:50051", ConnectivityState::Connecting);
    h.set_state("10.0.0.1:50051", ConnectivityState::Ready);
    println!("one is back:     {:?}", h.pick_addrs(4));
    Ok(())
}
