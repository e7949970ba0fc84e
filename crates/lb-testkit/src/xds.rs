//! A management server for xDS tests: a real ADS server (state of the world) on
//! 127.0.0.1 that a test drives by setting resources, and builders for the resources
//! a gRPC client reads.
//!
//! Every change of resources sends each open stream a response for every type it
//! subscribes to; a request whose names changed gets a response for its type. Every
//! request is recorded, so a test can read the client's ACKs and NACKs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// `Listener`'s type URL.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `RouteConfiguration`'s type URL.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `Cluster`'s type URL.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `ClusterLoadAssignment`'s type URL.
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Default)]
struct Resources {
    by_type: HashMap<String, BTreeMap<String, Any>>,
    version: u64,
    requests: Vec<DiscoveryRequest>,
    /// Raw responses to send next on every stream instead of the resources.
    raw: Vec<DiscoveryResponse>,
    streams: usize,
}

struct Shared {
    resources: Mutex<Resources>,
    changed: watch::Sender<u64>,
    /// Bumped to end every open stream with an error.
    closing: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Resources> {
        self.resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The ADS server.
pub struct AdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    task: Option<JoinHandle<()>>,
}

impl AdsServer {
    /// Starts serving on a port outside the ephemeral range, so that it can be
    /// stopped and restarted on the same port ([`AdsServer::restart`]).
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None)
    }

    /// Starts serving over TLS with `pki`'s server certificate (and accepting its
    /// client certificate), for clients whose bootstrap has `tls` credentials.
    pub async fn start_tls(pki: &super::TestPki) -> std::io::Result<Self> {
        Self::start_with(Some(pki.acceptor()))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let (changed, _) = watch::channel(0);
        let (closing, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            resources: Mutex::default(),
            changed,
            closing,
        });
        let listener = super::restartable_listener()?;
        let addr = listener.local_addr()?;
        let mut server = Self {
            addr,
            shared,
            tls,
            task: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let service = AggregatedDiscoveryServiceServer::new(Ads(self.shared.clone()));
        let routes = tonic::service::Routes::new(service).prepare();
        // The backends' accept loop: TCP_NODELAY, TLS when asked, and every
        // connection dropped with the task.
        self.task = Some(tokio::spawn(super::accept_loop(
            super::Listener::Tcp(listener),
            super::Served::Routes(routes),
            Arc::default(),
            self.tls.clone(),
            super::Authorities::default(),
        )));
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `server_uri` of a bootstrap for it.
    pub fn uri(&self) -> String {
        self.addr.to_string()
    }

    /// A bootstrap JSON naming this server (insecure) and node `node_id`.
    pub fn bootstrap_json(&self, node_id: &str) -> String {
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}],
                 "server_features": ["xds_v3"]}}], "node": {{"id": "{node_id}"}}}}"#,
            self.addr
        )
    }

    fn changed(&self, mut f: impl FnMut(&mut Resources)) {
        let version = {
            let mut r = self.shared.lock();
            f(&mut r);
            r.version += 1;
            r.version
        };
        self.shared.changed.send_replace(version);
    }

    /// Sets a resource (any type) under `name`.
    pub fn set(&self, type_url: &str, name: &str, resource: Any) {
        self.changed(|r| {
            r.by_type
                .entry(type_url.to_owned())
                .or_default()
                .insert(name.to_owned(), resource.clone());
        });
    }

    /// Sets several resources at once: one version, one response per type.
    pub fn set_all(&self, resources: Vec<(&str, String, Any)>) {
        self.changed(|r| {
            for (type_url, name, any) in &resources {
                r.by_type
                    .entry((*type_url).to_owned())
                    .or_default()
                    .insert(name.clone(), any.clone());
            }
        });
    }

    /// Removes a resource.
    pub fn remove(&self, type_url: &str, name: &str) {
        self.changed(|r| {
            if let Some(m) = r.by_type.get_mut(type_url) {
                m.remove(name);
            }
        });
    }

    /// Sends `response` as it is on every open stream (garbage, a wrong type),
    /// before the next state of the world.
    pub fn send_raw(&self, response: DiscoveryResponse) {
        self.changed(|r| r.raw.push(response.clone()));
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.shared.lock().requests.clone()
    }

    /// The NACKs received: requests with an error detail.
    pub fn nacks(&self) -> Vec<DiscoveryRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.error_detail.is_some())
            .collect()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> usize {
        self.shared.lock().streams
    }

    /// Waits (at most `limit`) for a request that `f` accepts; returns it.
    pub async fn wait_for_request(
        &self,
        limit: Duration,
        f: impl Fn(&DiscoveryRequest) -> bool,
    ) -> Option<DiscoveryRequest> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| f(r)) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends every open stream with `UNAVAILABLE`; clients reconnect.
    pub fn close_streams(&self) {
        self.shared.closing.send_modify(|n| *n += 1);
    }

    /// Stops serving: the listener and every stream close.
    pub async fn stop(&mut self) {
        self.close_streams();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port, with the same resources.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let mut last = None;
        for _ in 0..100 {
            match super::bind(self.addr) {
                Ok(listener) => {
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.shared.closing.send_modify(|n| *n += 1);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Ads(Arc<Shared>);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let shared = self.0.clone();
        shared.lock().streams += 1;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut changed = shared.changed.subscribe();
            let mut closing = shared.closing.subscribe();
            closing.borrow_and_update();
            let mut subscribed: HashMap<String, Vec<String>> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut send: Vec<String> = Vec::new();
                tokio::select! {
                    request = requests.message() => match request {
                        Ok(Some(r)) => {
                            shared.lock().requests.push(r.clone());
                            let names = subscribed.get(&r.type_url);
                            if names != Some(&r.resource_names) {
                                subscribed.insert(r.type_url.clone(), r.resource_names.clone());
                                send.push(r.type_url);
                            }
                        }
                        _ => return,
                    },
                    c = changed.changed() => {
                        if c.is_err() { return; }
                        send.extend(subscribed.keys().cloned());
                        let raw = std::mem::take(&mut shared.lock().raw);
                        for response in raw {
                            if tx.send(Ok(response)).await.is_err() { return; }
                        }
                    },
                    _ = closing.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the test ADS server closed the stream"))).await;
                        return;
                    }
                }
                for type_url in send {
                    nonce += 1;
                    let response = {
                        let r = shared.lock();
                        let names = &subscribed[&type_url];
                        let all = r.by_type.get(&type_url);
                        let resources: Vec<Any> = all
                            .map(|m| {
                                m.iter()
                                    .filter(|(n, _)| names.is_empty() || names.contains(n))
                                    .map(|(_, a)| a.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        DiscoveryResponse {
                            version_info: r.version.to_string(),
                            resources,
                            type_url: type_url.clone(),
                            nonce: nonce.to_string(),
                            ..Default::default()
                        }
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type DeltaAggregatedResourcesStream = Pin<
        Box<
            dyn Stream<
                    Item = Result<
                        envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                        Status,
                    >,
                > + Send,
        >,
    >;

    async fn delta_aggregated_resources(
        &self,
        _: Request<
            Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest>,
        >,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the test ADS server speaks state of the world only",
        ))
    }
}

/// `message` packed in an `Any`.
pub fn any<M: Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource::default(),
        )),
        ..Default::default()
    }
}

/// The router filter, last of every client listener.
pub fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    }
}

/// A client listener `name` whose routes come from RDS resource `route_name`.
pub fn listener_rds(name: &str, route_name: &str) -> Any {
    listener_with(
        name,
        hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: route_name.into(),
                },
            )),
            http_filters: vec![router_filter()],
            ..Default::default()
        },
    )
}

/// A client listener `name` with its HttpConnectionManager as given.
pub fn listener_with(name: &str, manager: hcm::HttpConnectionManager) -> Any {
    any(&listener::Listener {
        name: name.into(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(any(&manager)),
        }),
        ..Default::default()
    })
}

/// A route to `cluster` for every path.
pub fn route_to(cluster: &str) -> route::Route {
    route_with(route::route_action::ClusterSpecifier::Cluster(
        cluster.into(),
    ))
}

/// A route for every path with this cluster specifier.
pub fn route_with(specifier: route::route_action::ClusterSpecifier) -> route::Route {
    route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(specifier),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A route for every path to `clusters` by weight.
pub fn route_weighted(clusters: &[(&str, u32)]) -> route::Route {
    route_with(route::route_action::ClusterSpecifier::WeightedClusters(
        route::WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                    name: (*name).into(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    ))
}

/// A route configuration `name` with one virtual host for every domain.
pub fn route_config(name: &str, routes: Vec<route::Route>) -> Any {
    any(&route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// An EDS cluster `name` (endpoints under the same name), round robin.
pub fn eds_cluster(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// An aggregate cluster `name` over `clusters`, in priority order.
pub fn aggregate_cluster(name: &str, clusters: &[&str]) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::ClusterType(
            cluster::cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".into(),
                typed_config: Some(any(
                    &envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig {
                        clusters: clusters.iter().map(|c| (*c).into()).collect(),
                    },
                )),
            },
        )),
        ..Default::default()
    }
}

/// One locality of an EDS resource: its zone, priority, weight and endpoints.
#[derive(Debug, Clone)]
pub struct TestLocality {
    /// The zone (region `r`).
    pub zone: String,
    /// The priority, 0 highest.
    pub priority: u32,
    /// The locality's weight.
    pub weight: u32,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
}

impl TestLocality {
    /// A locality in `zone` at `priority`, weight 1.
    pub fn new(zone: &str, priority: u32, endpoints: &[SocketAddr]) -> Self {
        Self {
            zone: zone.into(),
            priority,
            weight: 1,
            endpoints: endpoints.to_vec(),
        }
    }

    /// With weight `weight`.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// The `ClusterLoadAssignment` of `name` with `localities`.
pub fn endpoints(name: &str, localities: &[TestLocality]) -> Any {
    any(&endpoints_message(name, localities))
}

/// The `ClusterLoadAssignment` message itself, to edit before packing.
pub fn endpoints_message(
    name: &str,
    localities: &[TestLocality],
) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: localities
            .iter()
            .map(|l| endpoint::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "r".into(),
                    zone: l.zone.clone(),
                    sub_zone: String::new(),
                }),
                load_balancing_weight: Some(UInt32Value { value: l.weight }),
                priority: l.priority,
                lb_endpoints: l
                    .endpoints
                    .iter()
                    .map(|a| endpoint::LbEndpoint {
                        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                            endpoint::Endpoint {
                                address: Some(socket_address(*a)),
                                ..Default::default()
                            },
                        )),
                        health_status: core::HealthStatus::Healthy as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// An Envoy socket address.
pub fn socket_address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A complete xDS config for `target`: listener → route config → one EDS cluster
/// per `(cluster, localities)`, the route sending every RPC to the first cluster.
pub fn simple(
    target: &str,
    clusters: &[(&str, Vec<TestLocality>)],
) -> Vec<(&'static str, String, Any)> {
    let route_name = format!("{target}-route");
    let mut all = vec![
        (
            LISTENER,
            target.to_owned(),
            listener_rds(target, &route_name),
        ),
        (
            ROUTE,
            route_name.clone(),
            route_config(
                &route_name,
                vec![route_to(clusters.first().map_or("", |c| c.0))],
            ),
        ),
    ];
    for (name, localities) in clusters {
        all.push((CLUSTER, (*name).to_owned(), any(&eds_cluster(name))));
        all.push((ENDPOINTS, (*name).to_owned(), endpoints(name, localities)));
    }
    all
}
