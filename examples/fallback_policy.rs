//! A parent policy in one page: `primary_fallback` sends every RPC to the primary
//! backends while any of them is ready, and to the fallback backends otherwise. Each
//! group is balanced by a child policy of any registered kind, built by name from the
//! service config, with `lb_core::child::ChildManager` doing the bookkeeping.
//!
//! Run: `cargo run -p examples --example fallback_policy`
//!
//! The program drives the policy with `lb-core`'s test harness (the same calls a
//! channel makes): the primaries fail, traffic moves to the fallbacks, and back.

use lb_core::child::{ChildManager, ChildPolicy, ChildUpdate, parse_child_policy};
use lb_core::test_util::Harness;
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
    /// Publishes the primary group's picker while it is ready, else the fallback's.
    fn publish(&mut self, cc: &mut dyn ClientConn) {
        if !self.children.take_published() {
            return;
        }
        let children: Vec<_> = self.children.children().collect();
        let pick = |group| children.iter().find(|(g, _, _)| **g == group);
        let chosen = match (pick(Group::Primary), pick(Group::Fallback)) {
            (Some(p), _) if p.1 == ConnectivityState::Ready => p,
            (_, Some(f)) if f.1 == ConnectivityState::Ready => f,
            (Some(p), _) => p,
            (None, Some(f)) => f,
            (None, None) => return,
        };
        let state = if chosen.1 == ConnectivityState::Ready {
            ConnectivityState::Ready
        } else {
            self.children.aggregate()
        };
        cc.update_state(state, chosen.2.clone());
    }
}

impl Balancer for Balancing {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let child = state
            .config
            .as_ref()
            .and_then(|c| c.get::<ChildPolicy>())
            .cloned()
            .ok_or_else(|| Error::lb_config(NAME, "$", "a childPolicy is required"))?;
        let (fallback, primary): (Vec<Address>, Vec<Address>) = state
            .addresses
            .into_iter()
            .partition(|a| a.attributes().get::<Fallback>().is_some());
        let updates = [(Group::Primary, primary), (Group::Fallback, fallback)]
            .into_iter()
            .filter(|(_, addrs)| !addrs.is_empty())
            .map(|(key, addrs)| ChildUpdate {
                key,
                policy: child.clone(),
                state: ClientConnState::new(addrs),
            })
            .collect();
        let result = self.children.update(updates, cc);
        self.publish(cc);
        result
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.children.resolver_error(&error, cc);
        self.publish(cc);
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        self.children.update_subconn_state(subconn, state, cc);
        self.publish(cc);
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.children.exit_idle(cc);
        self.publish(cc);
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        self.children.timer(timer, cc);
        self.publish(cc);
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
    for a in ["10.0.0.1:50051", "10.0.0.2:50051", "10.9.0.1:50051"] {
        h.set_state(a, ConnectivityState::Connecting);
        h.set_state(a, ConnectivityState::Ready);
    }
    println!("primaries up:   {:?}", h.pick_addrs(4));

    for a in ["10.0.0.1:50051", "10.0.0.2:50051"] {
        h.set_state(a, ConnectivityState::Idle); // their connections closed
        h.set_state(a, ConnectivityState::Connecting);
        h.fail(a, "connection refused");
    }
    println!("primaries down: {:?} ({})", h.pick_addrs(4), h.state());

    h.set_state("10.0.0.1:50051", ConnectivityState::Idle);
    h.set_state("10.0.0.1:50051", ConnectivityState::Connecting);
    h.set_state("10.0.0.1:50051", ConnectivityState::Ready);
    println!("one is back:    {:?}", h.pick_addrs(4));
    Ok(())
}
