//! `grpc-lb channelz` against a real tonic server serving `lb_server::admin`: the
//! tree it prints, paging through thousands of subchannels, and a server without
//! channelz.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{admin, run};
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, Error, FailPicker, SharedError, Status, SubConn, SubConnState,
};
use lb_testkit::Backend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::LbChannel;
use serde_json::Value;

/// A policy that holds a subconn per address and never connects: thousands of
/// subchannels that cost nothing.
struct Holding(HashMap<String, SubConn>);

impl Balancer for Holding {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        for address in state.addresses {
            if !self.0.contains_key(address.addr()) {
                let sc = cc.new_subconn(address.clone())?;
                self.0.insert(address.addr().to_owned(), sc);
            }
        }
        cc.update_state(
            ConnectivityState::TransientFailure,
            Arc::new(FailPicker(Status::unavailable("holding only"))),
        );
        Ok(())
    }
    fn resolver_error(&mut self, _: SharedError, _: &mut dyn ClientConn) {}
    fn update_subconn_state(&mut self, _: &SubConn, _: &SubConnState, _: &mut dyn ClientConn) {}
    fn exit_idle(&mut self, _: &mut dyn ClientConn) {}
}

struct HoldingBuilder;

impl BalancerBuilder for HoldingBuilder {
    fn name(&self) -> &str {
        "holding"
    }
    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(Holding(HashMap::new()))
    }
}

fn ids(values: &Value, key: &str) -> Vec<i64> {
    values[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channelz_pages_through_2500_subchannels_and_prints_each_once() {
    let mut registry = BalancerRegistry::new();
    registry.register(HoldingBuilder);
    let mut channels = Vec::new();
    let mut want = BTreeSet::new();
    for c in 0..5 {
        let addrs: Vec<String> = (0..500)
            .map(|i| format!("127.0.0.1:{}", 10_000 + c * 500 + i))
            .collect();
        let channel = LbChannel::builder(format!("static:///{}", addrs.join(",")))
            .balancers(registry.clone())
            .policy("holding")
            .build()
            .unwrap();
        // The first RPC starts the resolver and the policy; it fails at once.
        let _ = EchoClient::new(channel.clone())
            .unary_echo(EchoRequest::default())
            .await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while channel.snapshot().subconns.len() < 500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("500 subconns");
        want.extend(
            channel
                .snapshot()
                .subconns
                .iter()
                .filter_map(|s| s.channelz_id),
        );
        channels.push(channel);
    }
    assert_eq!(want.len(), 2_500);
    let server = admin().await;
    let out = run(&[
        "channelz",
        &server.addr.to_string(),
        "--json",
        "--page-size",
        "2",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen = Vec::new();
    let mut ours = 0;
    for channel in tree["channels"].as_array().unwrap() {
        if channel["target"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:10000,")
            || ids(channel, "subchannels").len() == 500
        {
            ours += 1;
            assert_eq!(channel["state"], "TRANSIENT_FAILURE");
            seen.extend(ids(channel, "subchannels"));
        }
    }
    assert_eq!(ours, 5, "every channel, over pages of two");
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "each subchannel once");
    assert_eq!(unique, want);
    for c in channels {
        c.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channelz_prints_a_channel_its_subchannels_sockets_and_servers() {
    let common::LiveAndDead {
        live: a,
        dead,
        target,
        channel,
    } = common::live_and_dead(3).await;
    let server = admin().await;
    let out = run(&["channelz", &server.addr.to_string(), "--sockets"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let id = channel.snapshot().channelz_id.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("channel {id} ")))
        .unwrap_or_else(|| panic!("channel {id} in:\n{text}"));
    assert!(
        line.contains(&target)
            && line.contains("READY")
            && line.contains("calls 3 started, 3 ok, 0 failed"),
        "{line}"
    );
    let live = text
        .lines()
        .find(|l| l.trim_start().starts_with("subchannel ") && l.contains(&a.addr().to_string()))
        .unwrap_or_else(|| panic!("the live subchannel in:\n{text}"));
    assert!(
        live.contains("READY") && live.contains("calls 3 started") && live.contains("last event"),
        "{live}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("subchannel ")
                && l.contains(&dead)
                && l.contains("last event")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("socket ")
            && l.contains(&format!("-> {}", a.addr()))
            && l.contains("streams 3 started, 3 ok")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("server ")
                && l.contains(&format!("listening on {}", server.addr))),
        "{text}"
    );
    channel.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channelz_against_a_server_without_it_says_so_in_one_line() {
    let plain = Backend::start("plain").await.unwrap();
    let out = run(&["channelz", &plain.addr().to_string()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("UNIMPLEMENTED: the server does not serve grpc.channelz.v1"),
        "{err}"
    );
    let out = run(&["channelz", "127.0.0.1:1", "--timeout", "2s"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let out = run(&["channelz", "127.0.0.1:1", "--page-size=-3"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--page-size"));
}
