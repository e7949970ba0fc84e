//! The builder as a newcomer meets it: `.policy()` and `.default_service_config()`
//! together, errors that list what would have been valid, and tonic's `Endpoint`
//! settings, each seen on the wire or at a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, BadPeer, Misbehavior};
use lb_tonic::{Error, LbChannel};
use tonic::codec::CompressionEncoding;

mod common;
use common::*;

/// A default config with a method timeout of 100 ms and no policy.
const TIMEOUT_ONLY: &str =
    r#"{"methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "0.1s"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_default_service_config_combine_in_either_order() {
    let backends = start(&["a", "b"]).await;
    let target = static_target(&[&backends[0], &backends[1]]);
    let built = [
        LbChannel::builder(&target)
            .policy("round_robin")
            .default_service_config(TIMEOUT_ONLY),
        LbChannel::builder(&target)
            .default_service_config(TIMEOUT_ONLY)
            .policy("round_robin"),
        // The policy replaces the config's own loadBalancingConfig.
        LbChannel::builder(&target)
            .default_service_config(
                r#"{"loadBalancingConfig": [{"pick_first": {}}],
                    "methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "0.1s"}]}"#,
            )
            .policy("round_robin"),
    ];
    for builder in built {
        let channel = builder.build().unwrap();
        assert_eq!(channel.policy(), "round_robin");
        let mut client = EchoClient::new(channel);
        // round_robin: both backends serve.
        warm_up(&mut client, &["a", "b"]).await;
        // The method config: 100 ms against a 300 ms answer.
        let mut slow = echo_req("slow");
        slow.get_mut().delay_ms = 300;
        let status = echo(&mut client, slow).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    }
}

#[tokio::test]
async fn a_policy_typo_lists_the_registered_policies_in_one_line() {
    let error = LbChannel::builder("static:///127.0.0.1:1")
        .policy("round_robbin")
        .build()
        .err()
        .unwrap();
    assert!(matches!(error, Error::Policy(_)), "{error}");
    let message = error.to_string();
    assert!(message.starts_with("`Builder::policy`: "), "{message}");
    assert!(message.contains("registered: "), "{message}");
    assert!(message.contains("pick_first"), "{message}");
    assert!(
        message.ends_with("did you mean `round_robin`?"),
        "{message}"
    );
    // What `main` prints when it returns the error: the same line.
    assert_eq!(format!("{error:?}"), message);
}

#[tokio::test]
async fn an_unregistered_scheme_is_a_build_error_that_says_what_to_write() {
    let message = |target: &str| {
        LbChannel::builder(target)
            .build()
            .err()
            .unwrap_or_else(|| panic!("{target} built"))
            .to_string()
    };
    let m = message("stattic:///127.0.0.1:1");
    assert!(m.contains("scheme `stattic`"), "{m}");
    assert!(m.contains("registered: "), "{m}");
    assert!(m.contains("static"), "{m}");
    assert!(m.ends_with("did you mean `static`?"), "{m}");
    let m = message("http://127.0.0.1:51051");
    assert!(m.contains("`dns:///host:port`"), "{m}");
    assert!(m.contains("`static:///"), "{m}");
    let m = message("xds:///svc");
    if cfg!(feature = "xds") {
        // Registered: without a bootstrap, the error says where it looked.
        assert!(m.contains("GRPC_XDS_BOOTSTRAP_CONFIG"), "{m}");
    } else {
        assert!(
            m.contains("scheme `xds`") && m.contains("`xds` feature"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn the_user_agent_names_the_application_and_the_library() {
    let backend = Backend::start("a").await.unwrap();
    let library = concat!("grpc-lb-rust/", env!("CARGO_PKG_VERSION"));
    for (set, expected) in [
        (None, library.to_owned()),
        (Some("inventory/1.2"), format!("inventory/1.2 {library}")),
    ] {
        let mut builder = LbChannel::builder(static_target(&[&backend]));
        if let Some(ua) = set {
            builder = builder.user_agent(ua);
        }
        let mut client = EchoClient::new(builder.build().unwrap());
        within("an RPC", echo(&mut client, echo_req("x")))
            .await
            .unwrap();
        assert_eq!(
            backend.last_user_agent().as_deref(),
            Some(expected.as_str())
        );
    }
    let error = LbChannel::builder("static:///127.0.0.1:1")
        .user_agent("bad\nagent")
        .build()
        .err()
        .unwrap();
    assert!(error.to_string().contains("Builder::user_agent"), "{error}");
}

#[tokio::test]
async fn flow_control_windows_are_what_the_client_announces() {
    let peer = BadPeer::start(Misbehavior::RawHttp2 {
        answer_pings: true,
        goaway: None,
    })
    .await
    .unwrap();
    let channel = LbChannel::builder(format!("static:///{}", peer.addr()))
        .initial_stream_window_size(1_000_000)
        .initial_connection_window_size(3_000_000)
        .build()
        .unwrap();
    // An RPC makes the channel connect; the peer never answers it.
    let mut client = EchoClient::new(channel);
    let mut req = echo_req("x");
    req.set_timeout(Duration::from_millis(300));
    let _ = echo(&mut client, req).await;
    within("the client's SETTINGS and WINDOW_UPDATE", async {
        loop {
            let preface = peer.client_preface();
            if preface.settings.contains(&(0x4, 1_000_000))
                && preface.connection_window_increments == 3_000_000 - 65_535
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    for (builder, setting) in [
        (
            LbChannel::builder("static:///127.0.0.1:1").initial_stream_window_size(1 << 31),
            "Builder::initial_stream_window_size",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1").initial_connection_window_size(u32::MAX),
            "Builder::initial_connection_window_size",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1").initial_stream_window_size(0),
            "Builder::initial_stream_window_size",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1").connect_timeout(Duration::ZERO),
            "Builder::connect_timeout",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1").connect_timeout(Duration::MAX),
            "Builder::connect_timeout",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1").tcp_keepalive(Some(Duration::ZERO)),
            "Builder::tcp_keepalive",
        ),
        (
            LbChannel::builder("static:///127.0.0.1:1")
                .tcp_keepalive(Some(Duration::from_secs(40_000))),
            "Builder::tcp_keepalive",
        ),
    ] {
        let error = builder.build().err().unwrap();
        assert!(
            matches!(error, Error::InvalidSetting { setting: s, .. } if s == setting),
            "{error}"
        );
    }
}

#[tokio::test]
async fn the_connect_timeout_bounds_each_attempt() {
    // A peer that accepts and never speaks: only the timeout ends the attempt.
    let peer = BadPeer::start(Misbehavior::Silent).await.unwrap();
    let channel = LbChannel::builder(format!("static:///{}", peer.addr()))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    let status = first_failure(&mut client, "the RPC to fail", |s| {
        s.message().contains("preface")
    })
    .await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("sent no server preface within 200ms"),
        "{status:?}"
    );
}

/// The TCP keepalive timer of the client's connection to `port`, from
/// `/proc/net/tcp`: `(timer kind, expiry in clock ticks)` (kind 2 is keepalive).
#[cfg(target_os = "linux")]
fn client_timer(port: u16) -> Option<(u32, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let remote = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when ...; established is state 01.
        if fields.get(2) != Some(&remote.as_str()) || fields.get(3) != Some(&"01") {
            return None;
        }
        let (kind, when) = fields.get(5)?.split_once(':')?;
        Some((
            u32::from_str_radix(kind, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn tcp_keepalive_is_set_on_the_connection() {
    let backend = Backend::start("a").await.unwrap();
    let port = backend.addr().port();
    let mut client = EchoClient::new(
        LbChannel::builder(static_target(&[&backend]))
            .tcp_keepalive(Some(Duration::from_secs(42)))
            .build()
            .unwrap(),
    );
    within("an RPC", echo(&mut client, echo_req("x")))
        .await
        .unwrap();
    // Idle now: the kernel's keepalive timer runs, due within 42 s (in ticks of
    // 1/100 s), not the system default of two hours.
    let timer = within("the keepalive timer", async {
        loop {
            if let Some((2, when)) = client_timer(port) {
                return when;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(timer <= 42 * 100, "{timer}");

    // Less than a second is one second (the kernel counts whole seconds), not an
    // error at every connect.
    let third = Backend::start("c").await.unwrap();
    let mut client = EchoClient::new(
        LbChannel::builder(static_target(&[&third]))
            .tcp_keepalive(Some(Duration::from_millis(500)))
            .build()
            .unwrap(),
    );
    within("an RPC", echo(&mut client, echo_req("x")))
        .await
        .unwrap();

    // Without it, no keepalive timer.
    let other = Backend::start("b").await.unwrap();
    let mut client = EchoClient::new(
        LbChannel::builder(static_target(&[&other]))
            .build()
            .unwrap(),
    );
    within("an RPC", echo(&mut client, echo_req("x")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_ne!(client_timer(other.addr().port()).map(|t| t.0), Some(2));
}

#[tokio::test]
async fn compression_and_message_limits_are_set_on_the_generated_client_as_with_tonic() {
    let backend = Backend::start("a").await.unwrap();
    let channel = LbChannel::builder(static_target(&[&backend]))
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let message = "compressible ".repeat(1000);
    let response = within("a compressed RPC", client.unary_echo(echo_req(&message)))
        .await
        .unwrap();
    assert_eq!(backend.last_grpc_encoding().as_deref(), Some("gzip"));
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    assert_eq!(response.into_inner().message, message);

    // A reply larger than the client accepts fails the RPC, naming the limit.
    let mut limited = EchoClient::new(channel).max_decoding_message_size(1000);
    let status = within("a limited RPC", limited.unary_echo(echo_req(&message)))
        .await
        .unwrap_err();
    assert!(status.message().contains("1000"), "{status:?}");
}
