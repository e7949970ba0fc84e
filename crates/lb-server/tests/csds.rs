//! CSDS (gRFC A40) over the wire: an `xds:///` channel against the test ADS server,
//! and the admin services telling what its xDS client holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use lb_testkit::Backend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::xds::{AdsServer, CLUSTER, LISTENER, TestLocality, any, eds_cluster, simple};
use lb_tonic::LbChannel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_lists_every_resource_with_its_status_and_the_nack() {
    let backend = Backend::start("a").await.unwrap();
    let server = AdsServer::start().await.unwrap();
    server.set_all(simple(
        "echo",
        &[("c", vec![TestLocality::new("z", 0, &[backend.addr()])])],
    ));
    let bootstrap = lb_xds::Bootstrap::parse(&server.bootstrap_json("csds-node")).unwrap();
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(lb_tonic::xds::resolver().with_bootstrap(bootstrap));
    let channel = LbChannel::builder("xds:///echo")
        .resolvers(resolvers)
        .build()
        .unwrap();
    let mut client = EchoClient::new(channel);
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.unary_echo(EchoRequest::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let mut bad = eds_cluster("c");
    bad.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    server.set(CLUSTER, "c", any(&bad));
    server
        .wait_for_request(Duration::from_secs(5), |r| r.error_detail.is_some())
        .await
        .unwrap();

    // The admin services on a server of their own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(lb_server::admin::services())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let response = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let config = response
        .config
        .iter()
        .find(|c| c.node.as_ref().is_some_and(|n| n.id == "csds-node"))
        .expect("this test's client");
    let find = |type_url: &str, name: &str| {
        config
            .generic_xds_configs
            .iter()
            .find(|g| g.type_url == type_url && g.name == name)
            .unwrap_or_else(|| panic!("{type_url} {name} in {config:?}"))
    };
    let listener = find(LISTENER, "echo");
    assert_eq!(listener.client_status, ClientResourceStatus::Acked as i32);
    assert_eq!(listener.xds_config.as_ref().unwrap().type_url, LISTENER);
    assert!(!listener.version_info.is_empty() && listener.last_updated.is_some());
    // The NACKed cluster: its last good version still in use, and why the new one
    // was refused.
    let c = find(CLUSTER, "c");
    assert_eq!(c.client_status, ClientResourceStatus::Nacked as i32);
    let error = c.error_state.as_ref().unwrap();
    assert!(error.details.contains("lb_policy"), "{error:?}");
    assert_ne!(error.version_info, c.version_info);
    assert!(c.xds_config.is_some());
    assert_eq!(config.generic_xds_configs.len(), 4, "{config:?}");

    // Without contents, on the streaming call.
    let request = ClientStatusRequest {
        exclude_resource_contents: true,
        ..Default::default()
    };
    let mut stream = csds
        .stream_client_status(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(
        response
            .config
            .iter()
            .flat_map(|c| &c.generic_xds_configs)
            .all(|g| g.xds_config.is_none())
    );
    admin.abort();
}
