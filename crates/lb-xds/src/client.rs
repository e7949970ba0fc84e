//! The XdsClient: one ADS stream (state of the world) to the bootstrap's management
//! server, shared by every channel of the process with the same bootstrap.
//!
//! * Watchers subscribe to resources by type and name; each gets the cached value at
//!   once, then every change, a does-not-exist, or an error (the last good value
//!   stays theirs: an error is news, not a replacement).
//! * Each response is ACKed with its version and nonce, or NACKed with the last
//!   accepted version and an error detail naming every rejected resource and field.
//!   Valid resources of a NACKed response are still used, as gRPC does.
//! * A listener or cluster missing from a response was deleted (gRFC A53: unless the
//!   server has `ignore_resource_deletion`); a resource not received within the
//!   does-not-exist timeout (15 s) of being requested does not exist.
//! * A broken stream is re-established with exponential backoff, re-subscribing with
//!   the last accepted versions; the cache survives it.
//! * Nothing here blocks a caller: watchers get events over unbounded channels, and
//!   the stream runs on its own task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3 as core_pb;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::bootstrap::{Bootstrap, XdsServer};
use crate::resource::{self, Resource, ResourceType};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A gRPC channel to a management server, as [`AdsTransport`] makes it.
pub type GrpcChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::Status,
>;

/// Makes gRPC channels to management servers. `lb-tonic` implements it with an
/// `LbChannel` (its `xds` feature); anything that carries gRPC can.
pub trait AdsTransport: Send + Sync + 'static {
    /// A channel to `server`, with its credentials.
    fn connect(&self, server: &XdsServer) -> Result<GrpcChannel, BoxError>;
}

/// How an [`XdsClient`] behaves; the defaults are gRPC's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsClientOptions {
    /// How long a requested resource may take to arrive before it does not exist
    /// (gRPC: 15 s).
    pub resource_timeout: Duration,
    /// The first reconnect backoff (gRPC: 1 s), doubling up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The largest reconnect backoff (gRPC: 120 s).
    pub max_backoff: Duration,
}

impl Default for XdsClientOptions {
    fn default() -> Self {
        Self {
            resource_timeout: Duration::from_secs(15),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
        }
    }
}

/// What a watcher hears about its resource.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The resource, new or changed.
    Changed(Resource),
    /// It does not exist (never received in time, or deleted).
    DoesNotExist,
    /// The management server sent an invalid version of it, or cannot be reached;
    /// a value received before stays valid.
    Error(Arc<str>),
}

/// An event for one watched resource.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its type.
    pub ty: ResourceType,
    /// Its name.
    pub name: Arc<str>,
    /// What happened.
    pub what: WatchEvent,
}

/// A resource's state in the cache, as CSDS and `grpc-lb resolve` show it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CachedResource {
    /// Its type.
    pub ty: ResourceType,
    /// Its name.
    pub name: String,
    /// The value, if one was received.
    pub value: Option<Resource>,
    /// The value as the server sent it.
    pub raw: Option<Any>,
    /// The version of the response that carried the value.
    pub version: String,
    /// When the value arrived.
    pub last_updated: Option<SystemTime>,
    /// Whether it does not exist.
    pub does_not_exist: bool,
    /// The error of its last rejected update.
    pub error: Option<String>,
    /// The last rejected update: its version and when it came.
    pub failed: Option<(String, SystemTime)>,
}

struct Entry {
    value: Option<Resource>,
    raw: Option<Any>,
    version: String,
    updated: Option<SystemTime>,
    failed: Option<(String, SystemTime)>,
    does_not_exist: bool,
    error: Option<Arc<str>>,
    watchers: HashMap<u64, mpsc::UnboundedSender<Event>>,
    /// When it stops waiting and does not exist.
    deadline: Option<Instant>,
}

impl Entry {
    fn new() -> Self {
        Self {
            value: None,
            raw: None,
            version: String::new(),
            updated: None,
            failed: None,
            does_not_exist: false,
            error: None,
            watchers: HashMap::new(),
            deadline: None,
        }
    }

    fn notify(&mut self, ty: ResourceType, name: &str, what: WatchEvent) {
        let name: Arc<str> = name.into();
        self.watchers.retain(|_, tx| {
            tx.send(Event {
                ty,
                name: name.clone(),
                what: what.clone(),
            })
            .is_ok()
        });
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<ResourceType, HashMap<String, Entry>>,
    /// The last accepted version of each type.
    versions: HashMap<ResourceType, String>,
    /// The last nonce of each type on the current stream.
    nonces: HashMap<ResourceType, String>,
    next_watcher: u64,
    /// Why the last stream failed, while no stream is up.
    stream_error: Option<Arc<str>>,
}

impl State {
    fn names(&self, ty: ResourceType) -> Vec<String> {
        let mut names: Vec<String> = self
            .entries
            .get(&ty)
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

struct Shared {
    state: Arc<Mutex<State>>,
    wake: mpsc::UnboundedSender<()>,
    bootstrap: Bootstrap,
}

/// The process's xDS client for one bootstrap. Cheap to clone; the ADS stream ends
/// when the last clone and watch are dropped.
#[derive(Clone)]
pub struct XdsClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("server", &self.shared.bootstrap.servers[0].uri)
            .finish()
    }
}

/// A subscription; dropping it unsubscribes.
pub struct WatchHandle {
    shared: Arc<Shared>,
    ty: ResourceType,
    name: String,
    id: u64,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WatchHandle({} {:?})", self.ty, self.name)
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        let Some(entries) = state.entries.get_mut(&self.ty) else {
            return;
        };
        let Some(entry) = entries.get_mut(&self.name) else {
            return;
        };
        entry.watchers.remove(&self.id);
        if entry.watchers.is_empty() {
            entries.remove(&self.name);
            drop(state);
            let _ = self.shared.wake.send(());
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The lock guards plain data that every writer leaves consistent.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Clients = Mutex<HashMap<String, Weak<Shared>>>;

fn clients() -> &'static Clients {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    CLIENTS.get_or_init(Clients::default)
}

impl XdsClient {
    /// The process's client for `bootstrap`: an existing one (with its cache) if any
    /// channel still uses one, else a new one whose stream starts on the current
    /// tokio runtime.
    pub fn get(
        bootstrap: &Bootstrap,
        transport: Arc<dyn AdsTransport>,
        options: XdsClientOptions,
    ) -> Result<Self, BoxError> {
        let mut all = clients()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = all.get(&bootstrap.key).and_then(Weak::upgrade) {
            return Ok(Self { shared });
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the xDS client needs a tokio runtime")?;
        let server = bootstrap.servers[0].clone();
        let channel = transport.connect(&server)?;
        let state = Arc::new(Mutex::new(State::default()));
        let (wake, woken) = mpsc::unbounded_channel();
        let stream = Ads {
            state: state.clone(),
            channel,
            server,
            node: node(bootstrap),
            options,
        };
        runtime.spawn(stream.run(woken));
        let shared = Arc::new(Shared {
            state,
            wake,
            bootstrap: bootstrap.clone(),
        });
        all.retain(|_, w| w.strong_count() > 0);
        all.insert(bootstrap.key.clone(), Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    /// Every xDS client of the process still in use (for CSDS).
    pub fn all() -> Vec<XdsClient> {
        clients()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .map(|shared| XdsClient { shared })
            .collect()
    }

    /// The node this client sends, as the protobuf the server sees.
    pub fn node(&self) -> core_pb::Node {
        node(&self.shared.bootstrap)
    }

    /// The bootstrap this client was made for.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.shared.bootstrap
    }

    /// Subscribes to a resource: `events` gets its cached state at once (if any),
    /// then every change.
    pub fn watch(
        &self,
        ty: ResourceType,
        name: &str,
        events: mpsc::UnboundedSender<Event>,
    ) -> WatchHandle {
        let mut state = lock(&self.shared.state);
        state.next_watcher += 1;
        let id = state.next_watcher;
        let stream_error = state.stream_error.clone();
        let entries = state.entries.entry(ty).or_default();
        let is_new = !entries.contains_key(name);
        let entry = entries.entry(name.to_owned()).or_insert_with(Entry::new);
        let cached = if let Some(value) = &entry.value {
            Some(WatchEvent::Changed(value.clone()))
        } else if entry.does_not_exist {
            Some(WatchEvent::DoesNotExist)
        } else {
            entry.error.clone().or(stream_error).map(WatchEvent::Error)
        };
        if let Some(what) = cached {
            let _ = events.send(Event {
                ty,
                name: name.into(),
                what,
            });
        }
        entry.watchers.insert(id, events);
        drop(state);
        if is_new {
            let _ = self.shared.wake.send(());
        }
        WatchHandle {
            shared: self.shared.clone(),
            ty,
            name: name.to_owned(),
            id,
        }
    }

    /// Every resource in the cache.
    pub fn dump(&self) -> Vec<CachedResource> {
        let state = lock(&self.shared.state);
        let mut all: Vec<CachedResource> = state
            .entries
            .iter()
            .flat_map(|(ty, entries)| {
                entries.iter().map(|(name, e)| CachedResource {
                    ty: *ty,
                    name: name.clone(),
                    value: e.value.clone(),
                    raw: e.raw.clone(),
                    version: e.version.clone(),
                    last_updated: e.updated,
                    does_not_exist: e.does_not_exist,
                    error: e.error.as_deref().map(str::to_owned),
                    failed: e.failed.clone(),
                })
            })
            .collect();
        all.sort_by(|a, b| (a.ty, &a.name).cmp(&(b.ty, &b.name)));
        all
    }
}

fn node(bootstrap: &Bootstrap) -> core_pb::Node {
    let n = &bootstrap.node;
    core_pb::Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        locality: Some(core_pb::Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "grpc-lb".to_owned(),
        user_agent_version_type: Some(core_pb::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        client_features: vec![
            "envoy.lb.does_not_support_overprovisioning".to_owned(),
            "xds.config.resource-in-sotw".to_owned(),
        ],
        metadata: Some(crate::json::to_struct(&n.metadata)),
        ..Default::default()
    }
}

/// The ADS stream's task.
struct Ads {
    state: Arc<Mutex<State>>,
    channel: GrpcChannel,
    server: XdsServer,
    node: core_pb::Node,
    options: XdsClientOptions,
}

/// How a stream ended.
enum Ended {
    /// Every client handle is gone.
    Dropped,
    /// It failed; whether a response had arrived on it first.
    Failed(String, bool),
}

impl Ads {
    async fn run(self, mut woken: mpsc::UnboundedReceiver<()>) {
        let mut backoff = self.options.initial_backoff;
        loop {
            match self.stream(&mut woken).await {
                Ended::Dropped => return,
                Ended::Failed(reason, got_response) => {
                    metrics::counter!("grpc.xds_client.server_failure", "grpc.xds.server" => self.server.uri.clone())
                        .increment(1);
                    metrics::gauge!("grpc.xds_client.connected", "grpc.xds.server" => self.server.uri.clone())
                        .set(0.0);
                    let reason: Arc<str> =
                        format!("xDS management server {}: {reason}", self.server.uri).into();
                    tracing::warn!(%reason, "xDS stream ended");
                    self.failed(&reason, got_response);
                    if got_response {
                        backoff = self.options.initial_backoff;
                    }
                    let jitter = 0.8 + fastrand::f64() * 0.4;
                    let wait = backoff.mul_f64(jitter);
                    backoff = backoff.saturating_mul(2).min(self.options.max_backoff);
                    // Wait, unless every handle is dropped meanwhile.
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            woke = woken.recv() => if woke.is_none() { return },
                        }
                    }
                }
            }
        }
    }

    /// The stream broke: timers stop until the next stream asks again. Unless a
    /// response had arrived on it (gRFC A57: the server was reachable, and the next
    /// stream will likely be too), watchers without a value hear why.
    fn failed(&self, reason: &Arc<str>, got_response: bool) {
        let mut state = lock(&self.state);
        state.nonces.clear();
        if !got_response {
            state.stream_error = Some(reason.clone());
        }
        for (ty, entries) in &mut state.entries {
            for (name, entry) in entries.iter_mut() {
                entry.deadline = None;
                if !got_response && entry.value.is_none() && !entry.does_not_exist {
                    entry.notify(*ty, name, WatchEvent::Error(reason.clone()));
                }
            }
        }
    }

    fn request(&self, state: &State, ty: ResourceType, node: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.versions.get(&ty).cloned().unwrap_or_default(),
            node: node.then(|| self.node.clone()),
            resource_names: state.names(ty),
            type_url: ty.type_url().to_owned(),
            response_nonce: state.nonces.get(&ty).cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Sends a request for every type whose names changed since `sent`, starting
    /// the does-not-exist timers of names not yet received.
    fn subscribe(
        &self,
        tx: &mpsc::UnboundedSender<DiscoveryRequest>,
        sent: &mut HashMap<ResourceType, Vec<String>>,
        first: &mut bool,
    ) {
        let mut state = lock(&self.state);
        let deadline = Instant::now() + self.options.resource_timeout;
        for ty in ResourceType::ALL {
            let names = state.names(ty);
            let before = sent.get(&ty).map_or(&[][..], |n| &n[..]);
            if names == before && (sent.contains_key(&ty) || names.is_empty()) {
                continue;
            }
            let request = self.request(&state, ty, *first);
            *first = false;
            let new: HashSet<&String> = names.iter().filter(|n| !before.contains(n)).collect();
            if let Some(entries) = state.entries.get_mut(&ty) {
                for (name, entry) in entries.iter_mut() {
                    // Only what never arrived waits: a resource received invalid
                    // exists.
                    if new.contains(name)
                        && entry.value.is_none()
                        && entry.error.is_none()
                        && !entry.does_not_exist
                    {
                        entry.deadline = Some(deadline);
                    }
                }
            }
            let _ = tx.send(request);
            sent.insert(ty, names);
        }
    }

    async fn stream(&self, woken: &mut mpsc::UnboundedReceiver<()>) -> Ended {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sent = HashMap::new();
        let mut first = true;
        self.subscribe(&tx, &mut sent, &mut first);
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone());
        let call = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx));
        tokio::pin!(call);
        let mut responses = loop {
            tokio::select! {
                response = &mut call => match response {
                    Ok(r) => break r.into_inner(),
                    Err(status) => return Ended::Failed(describe(&status), false),
                },
                woke = woken.recv() => match woke {
                    None => return Ended::Dropped,
                    Some(()) => self.subscribe(&tx, &mut sent, &mut first),
                },
                () = self.sleep_until_deadline() => self.expire(),
            }
        };
        let mut got_response = false;
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        if !got_response {
                            got_response = true;
                            lock(&self.state).stream_error = None;
                            metrics::gauge!("grpc.xds_client.connected", "grpc.xds.server" => self.server.uri.clone())
                                .set(1.0);
                        }
                        if let Some(reply) = self.handle(response) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(None) => return Ended::Failed("the server closed the ADS stream".into(), got_response),
                    Err(status) => return Ended::Failed(describe(&status), got_response),
                },
                woke = woken.recv() => match woke {
                    None => return Ended::Dropped,
                    Some(()) => self.subscribe(&tx, &mut sent, &mut first),
                },
                () = self.sleep_until_deadline() => self.expire(),
            }
        }
    }

    async fn sleep_until_deadline(&self) {
        let next = {
            let state = lock(&self.state);
            state
                .entries
                .values()
                .flat_map(|e| e.values())
                .filter_map(|e| e.deadline)
                .min()
        };
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Resources whose timers ran out do not exist.
    fn expire(&self) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        for (ty, entries) in &mut state.entries {
            for (name, entry) in entries.iter_mut() {
                if entry.deadline.is_some_and(|d| d <= now) {
                    entry.deadline = None;
                    entry.does_not_exist = true;
                    tracing::debug!(%ty, %name, "xDS resource does not exist (not received in time)");
                    entry.notify(*ty, name, WatchEvent::DoesNotExist);
                }
            }
        }
    }

    /// Applies a response and returns its ACK or NACK; `None` for a type this
    /// client never asked for, which it neither ACKs nor NACKs (as grpc-go).
    fn handle(&self, response: DiscoveryResponse) -> Option<DiscoveryRequest> {
        let mut state = lock(&self.state);
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "xDS response of a type never requested, ignored");
            return None;
        };
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut unnamed = false;
        let (mut valid, mut invalid) = (0u64, 0u64);
        let entries = state.entries.entry(ty).or_default();
        for (i, any) in response.resources.iter().enumerate() {
            let decoded = resource::decode(ty, any);
            let Some(name) = decoded.name else {
                unnamed = true;
                invalid += 1;
                if let Err(e) = decoded.result {
                    errors.push(format!("{ty} resource [{i}]: {e}"));
                }
                continue;
            };
            // Sent twice in one response: the last one stands (as grpc-go).
            seen.insert(name.clone());
            let Some(entry) = entries.get_mut(&name) else {
                // Not subscribed (any more): ignored, but an invalid one is still
                // NACKed, as grpc-go decodes and judges every resource.
                if let Err(e) = decoded.result {
                    invalid += 1;
                    errors.push(format!("{ty} {name:?}: {e}"));
                }
                continue;
            };
            entry.deadline = None;
            match decoded.result {
                Ok(value) => {
                    valid += 1;
                    entry.raw = Some(any.clone());
                    entry.version = response.version_info.clone();
                    entry.updated = Some(SystemTime::now());
                    entry.error = None;
                    entry.does_not_exist = false;
                    if entry.value.as_ref() != Some(&value) {
                        entry.value = Some(value.clone());
                        entry.notify(ty, &name, WatchEvent::Changed(value));
                    }
                }
                Err(e) => {
                    invalid += 1;
                    let message = format!("{ty} {name:?}: {e}");
                    tracing::warn!(%message, "xDS resource rejected");
                    let reason: Arc<str> = message.clone().into();
                    entry.error = Some(reason.clone());
                    entry.failed = Some((response.version_info.clone(), SystemTime::now()));
                    entry.notify(ty, &name, WatchEvent::Error(reason));
                    errors.push(message);
                }
            }
        }
        if ty.all_in_each_response() && !unnamed && !self.server.ignore_resource_deletion {
            for (name, entry) in entries.iter_mut() {
                if !seen.contains(name) && entry.value.is_some() {
                    entry.value = None;
                    entry.raw = None;
                    entry.does_not_exist = true;
                    entry.deadline = None;
                    tracing::info!(%ty, %name, "xDS resource deleted by the server");
                    entry.notify(ty, name, WatchEvent::DoesNotExist);
                }
            }
        }
        let labels = [
            ("grpc.xds.server", self.server.uri.clone()),
            ("grpc.xds.resource_type", ty.short_name().to_owned()),
        ];
        metrics::counter!("grpc.xds_client.resource_updates_valid", &labels).increment(valid);
        metrics::counter!("grpc.xds_client.resource_updates_invalid", &labels).increment(invalid);
        if errors.is_empty() {
            state.versions.insert(ty, response.version_info.clone());
        }
        state.nonces.insert(ty, response.nonce.clone());
        let mut reply = self.request(&state, ty, false);
        if !errors.is_empty() {
            reply.error_detail = Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: errors.join("; "),
                details: vec![],
            });
        }
        Some(reply)
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
