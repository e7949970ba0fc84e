//! The channel against real tonic servers on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{
    Address, Code, ConnectivityState, DoneInfo, LbConfig, OnDone, Pick, PickInfo, PickResult,
    Picker, ResolverState, SubConn,
};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, GracefulServer, ManualResolver};
use lb_tonic::{BackoffConfig, LbChannel, ServedBy};
use tonic::Request;

mod common;
use common::*;

#[tokio::test]
async fn round_robin_spreads_rpcs_evenly() {
    let backends = start(&["a", "b", "c"]).await;
    let channel = rr_channel(static_target(&backends.iter().collect::<Vec<_>>()));
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b", "c"]).await;
    assert_eq!(channel.state(), ConnectivityState::Ready);

    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let server = echo(&mut client, echo_req(&format!("{i}"))).await.unwrap();
        *counts.entry(server).or_default() += 1;
    }
    // One thread, no picker change: strict rotation.
    assert_eq!(
        counts,
        HashMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)])
    );
}

#[tokio::test]
async fn responses_name_the_backend_that_served_them() {
    let backend = Backend::start("only").await.unwrap();
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let response = client.unary_echo(wfr(echo_req("hi"))).await.unwrap();
    let served_by = response.extensions().get::<ServedBy>().unwrap();
    assert_eq!(served_by.0.addr(), backend.addr().to_string());
    assert_eq!(response.get_ref().message, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_gets_no_new_rpcs_and_a_restarted_one_gets_traffic_again() {
    let mut backends = start(&["a", "b", "c"]).await;
    let channel = rr_channel(static_target(&backends.iter().collect::<Vec<_>>()));
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b", "c"]).await;

    backends[0].kill().await;
    let mut failures = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        match echo(&mut client, echo_req(&format!("{i}"))).await {
            Ok(server) => *counts.entry(server).or_default() += 1,
            Err(status) => failures.push((i, status)),
        }
    }
    // At most one RPC may fail: the first one routed to the dead backend, if it was
    // written before the client read the close (the server sent no GOAWAY, so nothing
    // could tell). It is among the first three, one rotation of the cursor. RPCs that
    // had not reached the socket are retried transparently.
    assert!(failures.len() <= 1, "failures after the kill: {failures:?}");
    assert!(failures.iter().all(|(i, _)| *i < 3), "{failures:?}");
    assert_eq!(counts.get("a"), None, "the dead backend served nothing");
    assert!(counts["b"] >= 90 && counts["c"] >= 90, "{counts:?}");

    backends[0].restart().await.unwrap();
    warm_up(&mut client, &["a"]).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..90 {
        let server = echo(&mut client, echo_req(&format!("{i}"))).await.unwrap();
        *counts.entry(server).or_default() += 1;
    }
    assert!(
        counts.get("a").copied().unwrap_or(0) >= 20,
        "the restarted backend is used again: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_gracefully_under_load_loses_no_rpc() {
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(GracefulServer::start(name).await.unwrap());
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let channel = rr_channel(format!("static:///{}", addrs.join(",")));
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b", "c"]).await;

    // Eight workers send RPCs (not wait-for-ready) while b sends GOAWAY and closes.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                for i in 0..150 {
                    match echo(&mut client, echo_req(&format!("{i}"))).await {
                        Ok(server) => ok.push(server),
                        Err(status) => failed.push(status),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    within("b to stop", servers[1].stop()).await;
    let (mut served, mut failed) = (Vec::new(), Vec::new());
    for w in workers {
        let (ok, f) = within("the load", w).await.unwrap();
        served.extend(ok);
        failed.extend(f);
    }
    // RPCs that crossed the server's GOAWAY are above its last stream id: the
    // server never processed them, so they are sent again elsewhere. None fails.
    assert!(failed.is_empty(), "failed RPCs: {failed:?}");
    assert_eq!(served.len(), 8 * 150);
    // After the stop, b serves nothing more.
    for i in 0..30 {
        assert_ne!(
            echo(&mut client, echo_req(&format!("{i}"))).await.unwrap(),
            "b"
        );
    }
}

#[tokio::test]
async fn all_backends_down_fails_fast_with_the_last_connection_error() {
    let mut backends = start(&["a", "b"]).await;
    let target = static_target(&backends.iter().collect::<Vec<_>>());
    for b in &mut backends {
        b.kill().await;
    }
    let channel = rr_channel(target);
    let mut client = EchoClient::new(channel.clone());
    let status = within("a failing RPC", echo(&mut client, echo_req("x")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("last connection error: connect to 127.0.0.1:"),
        "{status:?}"
    );
    assert!(status.message().contains("refused"), "{status:?}");
    assert_eq!(channel.state(), ConnectivityState::TransientFailure);
}

#[tokio::test]
async fn wait_for_ready_waits_for_a_backend_and_respects_its_deadline() {
    let mut backend = Backend::start_restartable("late").await.unwrap();
    let target = format!("passthrough:///{}", backend.addr());
    backend.kill().await;
    let channel = rr_channel(target);
    let mut client = EchoClient::new(channel.clone());
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await
    );

    // A deadline shorter than the outage: DEADLINE_EXCEEDED, not UNAVAILABLE.
    let mut req = wfr(echo_req("short"));
    req.set_timeout(Duration::from_millis(200));
    let status = within("the deadline", echo(&mut client, req))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    // Without wait-for-ready the same RPC fails at once.
    let status = echo(&mut client, echo_req("fail-fast")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { echo(&mut client, wfr(echo_req("patient"))).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !waiting.is_finished(),
        "a wait-for-ready RPC waits while nothing is ready"
    );
    backend.restart().await.unwrap();
    let server = within("the waiting RPC", waiting).await.unwrap().unwrap();
    assert_eq!(server, "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_updates_add_and_remove_backends_without_failing_in_flight_rpcs() {
    let backends = start(&["a", "b", "c"]).await;
    let resolver = ManualResolver::new();
    resolver.update_addrs(&[backends[0].addr(), backends[1].addr()]);
    let channel = manual_rr_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;

    // Slow RPCs in flight on both a and b...
    let in_flight: Vec<_> = (0..6)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let req = Request::new(EchoRequest {
                    message: format!("slow {i}"),
                    delay_ms: 400,
                    ..Default::default()
                });
                echo(&mut client, req).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while a is removed and c added.
    resolver.update_addrs(&[backends[1].addr(), backends[2].addr()]);
    let mut served = Vec::new();
    for rpc in in_flight {
        served.push(
            within("an in-flight RPC", rpc)
                .await
                .unwrap()
                .expect("in-flight RPCs finish"),
        );
    }
    assert!(
        served.iter().any(|s| s == "a"),
        "some slow RPCs were on a: {served:?}"
    );

    warm_up(&mut client, &["c"]).await;
    for i in 0..60 {
        let server = echo(&mut client, echo_req(&format!("{i}"))).await.unwrap();
        assert_ne!(server, "a", "a was removed");
    }
}

#[tokio::test]
async fn streaming_rpcs_of_every_kind() {
    let backends = start(&["a", "b"]).await;
    let channel = rr_channel(static_target(&backends.iter().collect::<Vec<_>>()));
    let mut client = EchoClient::new(channel);
    warm_up(&mut client, &["a", "b"]).await;

    assert_eq!(
        server_stream(&mut client, "n", 5).await,
        ["n 0", "n 1", "n 2", "n 3", "n 4"]
    );

    let requests = tokio_stream::iter((0..4).map(|i| EchoRequest {
        message: format!("{i}"),
        ..Default::default()
    }));
    let reply = client.client_stream(requests).await.unwrap().into_inner();
    assert_eq!(reply.message, "0,1,2,3");

    let requests = tokio_stream::iter((0..3).map(|i| EchoRequest {
        message: format!("m{i}"),
        ..Default::default()
    }));
    let mut replies = client.bidi_stream(requests).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        got.push(reply.message);
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn dropping_the_channel_closes_every_connection_and_task() {
    let backends = start(&["a", "b"]).await;
    let resolver = ManualResolver::new();
    resolver.update_addrs(&[backends[0].addr(), backends[1].addr()]);
    let channel = manual_rr_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    warm_up(&mut client, &["a", "b"]).await;
    assert_eq!(
        backends[0].open_connections() + backends[1].open_connections(),
        2
    );
    assert!(resolver.is_running());

    let mut state = channel.watch_state();
    drop(client);
    drop(channel);
    within("the control task to end", async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert!(!resolver.is_running(), "the resolver was dropped");
    within("every connection to close", async {
        while backends.iter().any(|b| b.open_connections() > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn pick_first_is_the_default_and_fails_over() {
    let mut backends = start(&["first", "second"]).await;
    let channel = LbChannel::builder(static_target(&backends.iter().collect::<Vec<_>>()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    for i in 0..20 {
        assert_eq!(
            echo(&mut client, wfr(echo_req(&format!("{i}"))))
                .await
                .unwrap(),
            "first"
        );
    }
    backends[0].kill().await;
    // The connection drops, pick_first goes idle; the next RPC starts a new pass, the
    // first address is refused and the second one serves.
    let server = within("failover", async {
        loop {
            if let Ok(s) = echo(&mut client, wfr(echo_req("after"))).await
                && s == "second"
            {
                return s;
            }
        }
    })
    .await;
    assert_eq!(server, "second");
}

/// A policy that records every RPC's final status through the completion callback.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Code>>>);

struct RecordingPicker {
    subconn: SubConn,
    on_done: Arc<dyn OnDone>,
}

impl Picker for RecordingPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::new(&self.subconn).with_on_done(self.on_done.clone()))
    }
}

impl PickerBuilder for Recording {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        let log = self.0.clone();
        Arc::new(RecordingPicker {
            subconn: ready[0].subconn.clone(),
            on_done: Arc::new(move |info: &DoneInfo<'_>| {
                log.lock().unwrap().push(info.status.code())
            }),
        })
    }
}

#[tokio::test]
async fn the_completion_callback_gets_each_rpcs_final_status() {
    let backend = Backend::start("a").await.unwrap();
    let recording = Recording::default();
    let mut balancers = lb_policies::registry();
    balancers.register(BaseBuilder::new("recording", recording.clone()));
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .balancers(balancers)
        .policy("recording")
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    echo(&mut client, wfr(echo_req("ok"))).await.unwrap();
    let status = echo(&mut client, wfr(echo_req("fail:5")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(server_stream(&mut client, "s", 2).await.len(), 2);
    assert_eq!(
        *recording.0.lock().unwrap(),
        [Code::Ok, Code::NotFound, Code::Ok]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_config_from_the_resolver_switches_policy_gracefully() {
    let backends = start(&["a", "b"]).await;
    let addrs: Vec<Address> = backends.iter().map(|b| Address::from(b.addr())).collect();
    let resolver = ManualResolver::new();
    resolver.update(
        ResolverState::new(addrs.clone())
            .with_service_config(r#"{"loadBalancingConfig": [{"pick_first": {}}]}"#),
    );
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    for _ in 0..10 {
        assert_eq!(echo(&mut client, wfr(echo_req("pf"))).await.unwrap(), "a");
    }

    // RPCs run throughout the switch; none may fail.
    let load = tokio::spawn({
        let mut client = client.clone();
        async move {
            let mut failures = 0;
            for _ in 0..300 {
                if echo(&mut client, echo_req("load")).await.is_err() {
                    failures += 1;
                }
            }
            failures
        }
    });
    resolver.update(
        ResolverState::new(addrs.clone())
            .with_service_config(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#),
    );
    assert_eq!(within("the load", load).await.unwrap(), 0);
    warm_up(&mut client, &["a", "b"]).await;

    // An invalid config keeps the previous one (round robin).
    resolver.update(ResolverState::new(addrs).with_service_config(r#"{"loadBalancingConfig": "#));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(echo(&mut client, echo_req("after")).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "still round robin: {seen:?}");
}

#[tokio::test]
async fn resolver_errors_and_empty_address_lists_fail_rpcs_with_what_went_wrong() {
    let resolver = ManualResolver::new();
    let channel = manual_rr_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    resolver.report_error("registry unreachable");
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await
    );
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("registry unreachable"),
        "{status:?}"
    );

    resolver.update(ResolverState::new(Vec::new()));
    let status = within("a failing RPC", async {
        loop {
            let status = echo(&mut client, echo_req("x")).await.unwrap_err();
            if status.message().contains("no addresses") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn bad_targets_and_configs_are_typed_errors() {
    let err = LbChannel::builder("static:///127.0.0.1:1,oops")
        .build()
        .unwrap_err();
    assert!(matches!(err, lb_tonic::Error::Resolver { .. }), "{err:?}");
    assert!(err.to_string().contains("`oops`"), "{err}");

    let err = LbChannel::builder("static:///").build().unwrap_err();
    assert!(matches!(err, lb_tonic::Error::Target(_)), "{err:?}");
    assert!(err.to_string().contains("endpoint is empty"), "{err}");

    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .policy("no_such_policy")
        .build()
        .unwrap_err();
    assert!(matches!(err, lb_tonic::Error::Policy(_)), "{err:?}");
    assert!(err.to_string().contains("no_such_policy"), "{err}");

    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .default_service_config(r#"{"methodConfig": [{"timeout": "soon"}]}"#)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("methodConfig[0].timeout"), "{err}");

    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .authority("bad authority")
        .build()
        .unwrap_err();
    assert!(
        matches!(err, lb_tonic::Error::InvalidAuthority(_)),
        "{err:?}"
    );
}

#[test]
fn building_outside_a_runtime_is_an_error() {
    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .build()
        .unwrap_err();
    assert!(matches!(err, lb_tonic::Error::NoRuntime), "{err:?}");
}

#[tokio::test]
async fn load_balancing_policy_is_read_as_grpc_reads_it() {
    let backends = start(&["a", "b"]).await;
    let target = static_target(&backends.iter().collect::<Vec<_>>());
    // The proto enum's JSON spelling, as grpc-go and C-core accept it.
    let channel = LbChannel::builder(target.as_str())
        .default_service_config(r#"{"loadBalancingPolicy": "ROUND_ROBIN"}"#)
        .build()
        .unwrap();
    assert_eq!(channel.policy(), "round_robin");
    warm_up(&mut EchoClient::new(channel), &["a", "b"]).await;

    // An unknown name is pick_first, not an invalid config.
    let channel = LbChannel::builder(target.as_str())
        .default_service_config(r#"{"loadBalancingPolicy": "no_such_policy"}"#)
        .build()
        .unwrap();
    assert_eq!(channel.policy(), "pick_first");
}

#[tokio::test]
async fn an_invalid_first_service_config_from_the_resolver_fails_the_channel_with_the_error() {
    let backend = Backend::start("a").await.unwrap();
    let resolver = ManualResolver::new();
    resolver.update(
        ResolverState::new(vec![Address::from(backend.addr())])
            .with_service_config(r#"{"loadBalancingConfig": []}"#),
    );
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    // gRFC A21: no good config before it, so the channel fails (it does not fall
    // back to the default config and connect).
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await
    );
    let status = echo(&mut client, echo_req("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("invalid service config at `loadBalancingConfig`"),
        "{status:?}"
    );
    assert_eq!(backend.open_connections(), 0);

    // A valid one fixes it; a later invalid one keeps it.
    resolver.update(
        ResolverState::new(vec![Address::from(backend.addr())])
            .with_service_config(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#),
    );
    assert_eq!(echo(&mut client, wfr(echo_req("x"))).await.unwrap(), "a");
    resolver.update(
        ResolverState::new(vec![Address::from(backend.addr())])
            .with_service_config(r#"{"loadBalancingConfig": []}"#),
    );
    for _ in 0..10 {
        assert_eq!(echo(&mut client, echo_req("x")).await.unwrap(), "a");
    }
    assert_eq!(channel.policy(), "round_robin");
}

#[tokio::test]
async fn settings_out_of_range_are_builder_errors_naming_the_setting() {
    let build = |backoff: BackoffConfig| {
        LbChannel::builder("passthrough:///127.0.0.1:1")
            .backoff(backoff)
            .build()
            .unwrap_err()
    };
    for (backoff, setting) in [
        (
            BackoffConfig {
                multiplier: f64::INFINITY,
                ..BackoffConfig::default()
            },
            "BackoffConfig::multiplier",
        ),
        (
            BackoffConfig {
                jitter: f64::NAN,
                ..BackoffConfig::default()
            },
            "BackoffConfig::jitter",
        ),
        (
            BackoffConfig {
                max_delay: Duration::ZERO,
                ..BackoffConfig::default()
            },
            "BackoffConfig::max_delay",
        ),
    ] {
        let err = build(backoff);
        assert!(
            matches!(&err, lb_tonic::Error::InvalidSetting { setting: s, .. } if *s == setting),
            "{err:?}"
        );
        assert!(err.to_string().contains(setting), "{err}");
    }
    let err = LbChannel::builder("passthrough:///127.0.0.1:1")
        .keepalive(lb_tonic::Keepalive {
            interval: Duration::from_secs(30),
            timeout: Duration::ZERO,
            while_idle: false,
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("Keepalive::timeout"), "{err}");
}

#[tokio::test]
async fn a_policy_switch_completes_as_soon_as_the_new_policy_leaves_connecting() {
    let backend = Backend::start("a").await.unwrap();
    let mut dead = Backend::start_restartable("dead").await.unwrap();
    let dead_addr = dead.addr();
    dead.kill().await;
    let resolver = ManualResolver::new();
    resolver.update(
        ResolverState::new(vec![Address::from(backend.addr())])
            .with_service_config(r#"{"loadBalancingConfig": [{"pick_first": {}}]}"#),
    );
    let channel = manual_channel(&resolver);
    let mut client = EchoClient::new(channel.clone());
    assert_eq!(echo(&mut client, wfr(echo_req("x"))).await.unwrap(), "a");

    // The new policy's only backend is down: it goes TRANSIENT_FAILURE, not READY,
    // and the switch completes then, as grpc-go's graceful switch does.
    resolver.update(
        ResolverState::new(vec![Address::from(dead_addr)])
            .with_service_config(r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#),
    );
    assert!(
        channel
            .wait_for_state(ConnectivityState::TransientFailure, Duration::from_secs(5))
            .await,
        "state {}",
        channel.state()
    );
    assert_eq!(channel.policy(), "round_robin");
}

#[tokio::test]
async fn rpcs_wait_for_the_first_resolution_and_use_its_service_config() {
    let backend = Backend::start("a").await.unwrap();
    backend.service().set_delay(Duration::from_millis(300));
    let resolver = ManualResolver::new();
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    // Nothing resolved yet: the caller's deadline bounds the wait, and says why.
    let mut req = echo_req("early");
    req.set_timeout(Duration::from_millis(100));
    let status = echo(&mut client, req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("name resolution"), "{status:?}");

    // An RPC sent before the resolver reports follows the config it brings: its
    // 100 ms method timeout cuts the 300 ms answer short.
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { echo(&mut client, echo_req("waits")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    resolver.update(
        lb_core::ResolverState::new(vec![lb_core::Address::from(backend.addr())])
            .with_service_config(
                r#"{"methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "0.1s"}]}"#,
            ),
    );
    let status = within("the waiting RPC", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_name_resolution_comes_out_of_the_callers_deadline() {
    let backend = Backend::start("a").await.unwrap();
    backend.service().set_delay(Duration::from_millis(600));
    let resolver = ManualResolver::new();
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    // A 1 s deadline, 700 ms of it spent waiting for the resolver, then a 600 ms
    // answer: past the deadline (counted from after the wait, it would succeed).
    let waiting = tokio::spawn(async move {
        let mut req = echo_req("waits");
        req.set_timeout(Duration::from_secs(1));
        echo(&mut client, req).await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    resolver.update_addrs(&[backend.addr()]);
    let status = within("the waiting RPC", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_channel_ends_rpcs_waiting_for_name_resolution() {
    let resolver = ManualResolver::new();
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    // No deadline, and the resolver never reports.
    let waiting = tokio::spawn(async move { echo(&mut client, echo_req("waits")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    channel.close();
    let status = within("the waiting RPC", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert!(status.message().contains("closing"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_that_wakes_an_idle_channel_follows_the_new_resolvers_config() {
    let backend = Backend::start("a").await.unwrap();
    backend.service().set_delay(Duration::from_millis(300));
    let resolver = ManualResolver::new();
    resolver.update_addrs(&[backend.addr()]);
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    within("the first RPC", echo(&mut client, echo_req("first")))
        .await
        .unwrap();
    assert!(
        channel
            .wait_for_state(ConnectivityState::Idle, Duration::from_secs(5))
            .await
    );
    // While the channel is idle the resolver's config changes: the RPC that wakes
    // the channel waits for the new resolver's report and gets its 100 ms timeout.
    resolver.update(
        lb_core::ResolverState::new(vec![lb_core::Address::from(backend.addr())])
            .with_service_config(
                r#"{"methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "0.1s"}]}"#,
            ),
    );
    let status = within(
        "the RPC after idleness",
        echo(&mut client, echo_req("back")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_selector_without_a_service_config_is_not_used() {
    struct Refuse;
    impl lb_core::routing::ConfigSelector for Refuse {
        fn select(
            &self,
            _: &lb_core::routing::RpcInfo<'_>,
        ) -> Result<lb_core::routing::RpcConfig, lb_core::Status> {
            Err(lb_core::Status::unavailable("refused by the selector"))
        }
    }
    let backend = Backend::start("a").await.unwrap();
    let resolver = ManualResolver::new();
    let state = || lb_core::ResolverState::new(vec![lb_core::Address::from(backend.addr())]);
    resolver.update(state().with_config_selector(Arc::new(Refuse)));
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    // No service config came with it: the default config applies, no selector.
    assert_eq!(
        within("an RPC", echo(&mut client, echo_req("x")))
            .await
            .unwrap(),
        "a"
    );
    // With a service config, it applies.
    resolver.update(
        state()
            .with_service_config("{}")
            .with_config_selector(Arc::new(Refuse)),
    );
    let mut refused = None;
    for _ in 0..100 {
        match echo(&mut client, echo_req("x")).await {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let status = refused.expect("the selector never applied");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("refused by the selector"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_selector_that_panics_fails_the_rpc_with_internal() {
    struct Panics;
    impl lb_core::routing::ConfigSelector for Panics {
        fn select(
            &self,
            _: &lb_core::routing::RpcInfo<'_>,
        ) -> Result<lb_core::routing::RpcConfig, lb_core::Status> {
            panic!("selector bug")
        }
    }
    let backend = Backend::start("a").await.unwrap();
    let resolver = ManualResolver::new();
    resolver.update(
        lb_core::ResolverState::new(vec![lb_core::Address::from(backend.addr())])
            .with_service_config("{}")
            .with_config_selector(Arc::new(Panics)),
    );
    let channel = LbChannel::builder("manual:///svc")
        .resolvers(resolver.registry())
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    for _ in 0..3 {
        let status = within("an RPC", echo(&mut client, echo_req("x")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(
            status.message().contains("config selector panicked"),
            "{status:?}"
        );
    }
    assert_ne!(channel.state(), ConnectivityState::Shutdown);
}
