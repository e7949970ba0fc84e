//! The channel over TLS (feature `tls`) against real TLS backends.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use lb_core::ConnectivityState;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, TestPki};
use lb_tonic::{LbChannel, TlsConfig};

fn request() -> tonic::Request<EchoRequest> {
    let mut req = tonic::Request::new(EchoRequest {
        message: "secret".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(10));
    req
}

#[tokio::test]
async fn rpcs_go_over_tls_to_every_backend() {
    let pki = TestPki::new().unwrap();
    let a = Backend::start_tls("a", &pki).await.unwrap();
    let b = Backend::start_tls("b", &pki).await.unwrap();
    let channel = LbChannel::builder(format!("static:///{},{}", a.addr(), b.addr()))
        .policy("round_robin")
        .tls(TlsConfig::with_ca_pem(pki.ca_pem().as_bytes()).unwrap())
        .wait_for_ready(true)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel.clone());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(
            client
                .unary_echo(request())
                .await
                .unwrap()
                .into_inner()
                .server,
        );
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(channel.state(), ConnectivityState::Ready);
    // Channelz shows each connection's TLS session.
    for sc in channel.snapshot().subconns {
        let registry = lb_core::channelz::registry();
        let sub = registry.subchannel(sc.channelz_id.unwrap()).unwrap();
        let socket = registry.socket(sub.sockets[0]).unwrap();
        let tls = socket.tls.expect("a TLS session");
        // The IANA name: TLS 1.3's suites are `TLS_AES_...`, not rustls's `TLS13_...`.
        assert!(
            tls.cipher_suite.starts_with("TLS_") && !tls.cipher_suite.starts_with("TLS13"),
            "{}",
            tls.cipher_suite
        );
        assert!(!tls.remote_certificate.is_empty());
    }
}

/// The error of one RPC through a channel to `backend` with `tls`.
async fn failed_rpc(backend: &Backend, tls: TlsConfig) -> tonic::Status {
    let channel = LbChannel::builder(format!("passthrough:///{}", backend.addr()))
        .tls(tls)
        .build()
        .unwrap();
    let status = EchoClient::new(channel)
        .unary_echo(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("TLS with 127.0.0.1:"),
        "{status:?}"
    );
    status
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_connection_and_says_why() {
    let server_pki = TestPki::new().unwrap();
    let other_ca = TestPki::new().unwrap();
    let backend = Backend::start_tls("a", &server_pki).await.unwrap();
    let tls = TlsConfig::with_ca_pem(other_ca.ca_pem().as_bytes()).unwrap();
    let status = failed_rpc(&backend, tls).await;
    assert!(
        status.message().to_lowercase().contains("certificate"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_name_the_certificate_does_not_cover_is_rejected() {
    let pki = TestPki::new().unwrap();
    let backend = Backend::start_tls("a", &pki).await.unwrap();
    let tls = TlsConfig::with_ca_pem(pki.ca_pem().as_bytes())
        .unwrap()
        .server_name("elsewhere.example")
        .unwrap();
    let status = failed_rpc(&backend, tls).await;
    assert!(
        status.message().contains("elsewhere.example") || status.message().contains("name"),
        "{status:?}"
    );
}

#[tokio::test]
async fn tls_to_a_plaintext_server_fails_clearly() {
    let pki = TestPki::new().unwrap();
    let plain = Backend::start("plain").await.unwrap();
    failed_rpc(
        &plain,
        TlsConfig::with_ca_pem(pki.ca_pem().as_bytes()).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn the_authority_is_the_tls_name_unless_a_server_name_is_given() {
    // A certificate for the service's name only, not for the backend's IP.
    let pki = TestPki::for_names(&["greeter.test"]).unwrap();
    let backend = Backend::start_tls("a", &pki).await.unwrap();
    let target = format!("static:///{}", backend.addr());
    let tls = || TlsConfig::with_ca_pem(pki.ca_pem().as_bytes()).unwrap();
    let rpc = |builder: lb_tonic::Builder| async move {
        EchoClient::new(builder.build().unwrap())
            .unary_echo(request())
            .await
    };

    // By default a static list's connections are named by their address: refused.
    let status = rpc(LbChannel::builder(target.as_str()).tls(tls()))
        .await
        .unwrap_err();
    assert!(status.message().contains("TLS with"), "{status:?}");

    // `.authority` names the service: the certificate is checked against it.
    let reply = rpc(LbChannel::builder(target.as_str())
        .tls(tls())
        .authority("greeter.test:443"))
    .await
    .unwrap();
    assert_eq!(reply.into_inner().server, "a");
    assert_eq!(backend.authorities().last().unwrap(), "greeter.test:443");

    // A TLS server name wins over the authority for the certificate only.
    rpc(LbChannel::builder(target.as_str())
        .tls(tls().server_name("greeter.test").unwrap())
        .authority("other.test:443"))
    .await
    .unwrap();
    assert_eq!(backend.authorities().last().unwrap(), "other.test:443");
}
