//! The channel survives what it is given: panicking policies and pickers, a control
//! task that ends, an explicit close, and idleness.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{ConnectivityState, LbConfig, Pick, PickInfo, PickResult, Picker, SubConn};
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, ManualResolver};
use lb_tonic::LbChannel;

mod common;
use common::*;

/// A policy (first ready subconn) that panics on command: when building a picker,
/// or in every pick.
#[derive(Clone, Default)]
struct Fragile {
    panic_in_build: Arc<AtomicBool>,
    panic_in_pick: Arc<AtomicBool>,
}

struct FragilePicker {
    subconn: SubConn,
    panic_in_pick: Arc<AtomicBool>,
}

impl Picker for FragilePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        if self.panic_in_pick.load(Ordering::Relaxed) {
            panic!("the picker broke");
        }
        PickResult::Pick(Pick::new(&self.subconn))
    }
}

impl PickerBuilder for Fragile {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        if self.panic_in_build.load(Ordering::Relaxed) {
            panic!("the picker builder broke");
        }
        Arc::new(FragilePicker {
            subconn: ready[0].subconn.clone(),
            panic_in_pick: self.panic_in_pick.clone(),
        })
    }
}

fn fragile_channel(resolver: &ManualResolver, fragile: &Fragile) -> LbChannel {
    let mut balancers = lb_policies::registry();
    balancers.register(BaseBuilder::new("fragile", fragile.clone()));
    LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .balancers(balancers)
        .policy("fragile")
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_policy_fails_rpcs_with_internal_and_recovers_and_dropping_closes_everything() {
    let backends = start(&["a", "b"]).await;
    let resolver = ManualResolver::new();
    let fragile = Fragile::default();
    fragile.panic_in_build.store(true, Ordering::Relaxed);
    resolver.update_addrs(&[backends[0].addr(), backends[1].addr()]);
    let channel = fragile_channel(&resolver, &fragile);
    let mut client = EchoClient::new(channel.clone());

    // The first picker build panics: RPCs fail with INTERNAL naming the policy,
    // and the channel keeps answering.
    let status = within("a failed RPC", async {
        loop {
            match echo(&mut client, echo_req("x")).await {
                Err(s) if s.code() == tonic::Code::Internal => return s,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    assert!(
        status
            .message()
            .contains("load-balancing policy `fragile` panicked"),
        "{status:?}"
    );
    assert!(
        status.message().contains("the picker builder broke"),
        "{status:?}"
    );
    // (It is rebuilt, and panics again, every so often: it may be CONNECTING.)
    assert_ne!(channel.state(), ConnectivityState::Ready);

    // Fixed: the channel rebuilds the policy by itself with the last addresses.
    fragile.panic_in_build.store(false, Ordering::Relaxed);
    let server = within("the rebuilt policy", echo(&mut client, wfr(echo_req("x"))))
        .await
        .unwrap();
    assert!(server == "a" || server == "b");

    // A picker that panics fails the RPC, not the caller.
    fragile.panic_in_pick.store(true, Ordering::Relaxed);
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status
            .message()
            .contains("the picker of load-balancing policy `fragile` panicked: the picker broke"),
        "{status:?}"
    );
    fragile.panic_in_pick.store(false, Ordering::Relaxed);
    echo(&mut client, echo_req("x")).await.unwrap();

    // Dropping the channel still closes every connection and the resolver.
    let mut state = channel.watch_state();
    drop(client);
    drop(channel);
    within("the control task to end", async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert!(!resolver.is_running());
    every_connection_closed(&backends).await;
}

#[test]
fn when_the_control_task_dies_queued_rpcs_fail_at_once() {
    // The channel's runtime, shut down mid-test: its control task is dropped there.
    let channel_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let test_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut dead = test_rt
        .block_on(Backend::start_restartable("dead"))
        .unwrap();
    let target = format!("passthrough:///{}", dead.addr());
    test_rt.block_on(dead.kill());
    let channel = channel_rt.block_on(async {
        LbChannel::builder(target)
            .backoff(fast_backoff())
            .build()
            .unwrap()
    });
    test_rt.block_on(async {
        let mut client = EchoClient::new(channel.clone());
        let mut req = wfr(echo_req("queued"));
        req.set_timeout(Duration::from_secs(30));
        let queued = tokio::spawn(async move { echo(&mut client, req).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!queued.is_finished(), "a wait-for-ready RPC waits");
        // The runtime goes away with the control task (not a clean close).
        std::thread::spawn(move || drop(channel_rt)).join().unwrap();
        let status = within("the queued RPC to fail", queued)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert!(
            status.message().contains("the channel is closing"),
            "{status:?}"
        );
    });
}

#[tokio::test]
async fn a_closed_channel_fails_queued_and_new_rpcs_with_cancelled() {
    let mut dead = Backend::start_restartable("dead").await.unwrap();
    let target = format!("passthrough:///{}", dead.addr());
    dead.kill().await;
    let channel = LbChannel::builder(target)
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    let queued = tokio::spawn({
        let mut client = client.clone();
        async move { echo(&mut client, wfr(echo_req("queued"))).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    channel.close();
    let status = within("the queued RPC", queued).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert_eq!(status.message(), "the channel is closing");
    let status = echo(&mut client, echo_req("late")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert_eq!(channel.state(), ConnectivityState::Shutdown);
}

#[tokio::test]
async fn an_idle_channel_closes_its_connections_and_resolver_and_the_next_rpc_reconnects() {
    let backends = start(&["a", "b"]).await;
    let resolver = ManualResolver::new();
    resolver.update_addrs(&[backends[0].addr(), backends[1].addr()]);
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .policy("round_robin")
        .idle_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;

    assert!(
        channel
            .wait_for_state(ConnectivityState::Idle, Duration::from_secs(5))
            .await,
        "state {}",
        channel.state()
    );
    assert!(!resolver.is_running(), "the resolver is closed while idle");
    every_connection_closed(&backends).await;

    // The next RPC brings everything back.
    let server = within("an RPC after idleness", echo(&mut client, echo_req("back")))
        .await
        .unwrap();
    assert!(server == "a" || server == "b");
    assert!(resolver.is_running());
    warm_up(&mut client, &["a", "b"]).await;
}

#[tokio::test]
async fn an_rpc_in_flight_keeps_the_channel_from_going_idle() {
    let backend = Backend::start("a").await.unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .idle_timeout(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    let mut req = wfr(echo_req("slow"));
    req.get_mut().delay_ms = 800;
    let slow = tokio::spawn(async move { echo(&mut client, req).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        channel.state(),
        ConnectivityState::Ready,
        "idle during an RPC"
    );
    assert_eq!(backend.open_connections(), 1);
    assert_eq!(within("the slow RPC", slow).await.unwrap().unwrap(), "a");
    assert!(
        channel
            .wait_for_state(ConnectivityState::Idle, Duration::from_secs(5))
            .await
    );
}
