//! Dev-only fixtures shared by the tests, examples and benchmarks of `grpc-lb`: the
//! echo service (every RPC kind) and real tonic backends on 127.0.0.1 that can be
//! killed abruptly and restarted on the same port.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use lb_testkit::{Backend, pb::{EchoRequest, echo_client::EchoClient}};
//!
//! let mut backend = Backend::start("a").await?;
//! let mut client = EchoClient::connect(format!("http://{}", backend.addr())).await.unwrap();
//! let reply = client.unary_echo(EchoRequest { message: "hi".into(), ..Default::default() }).await.unwrap();
//! assert_eq!(reply.get_ref().server, "a");
//! backend.kill().await; // listener and every connection dropped at once
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod child;
mod dns;
mod etcd;
mod health;
mod manual;
mod peers;
mod proxy;
mod tls;
pub mod xds;
mod zookeeper;

pub use dns::DnsServer;
pub use etcd::{ETCD_ROOT_PASSWORD, EtcdCluster, EtcdSecurity, EtcdServer, EtcdUser};
pub use manual::ManualResolver;
pub use peers::{BadPeer, ClientPreface, HttpPeer, Misbehavior};
pub use proxy::TcpProxy;
pub use tls::{PkiFiles, TestPki};
use tokio_rustls::TlsAcceptor;
pub use zookeeper::{ZK_SUPER_USER, ZooKeeperServer};

/// The generated echo service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// The echo service: replies with the request's message and the backend's name.
///
/// Unary messages that ask for a behavior (`n` counts the request's
/// `grpc-previous-rpc-attempts`, 0 on a first attempt):
///
/// | message | answer |
/// |---|---|
/// | `fail:<code>` | fails with that gRPC status code |
/// | `details:<n>` | fails with `ABORTED` carrying `n` bytes of status details (a `grpc-status-details-bin` trailer of about `4n/3` bytes) |
/// | `fail-until:<k>` | fails with `UNAVAILABLE` while `n < k` (attempt `k + 1` succeeds); also as a client stream's first message, after reading the stream |
/// | `pushback:<v>` | while `n == 0`, fails with `UNAVAILABLE` and the trailer `grpc-retry-pushback-ms: <v>` (`<v>,<w>`: the trailer twice) |
/// | `slow-first:<ms>` | while `n == 0`, waits `ms` before answering |
///
/// A bidi stream whose first message is `fail-after-first` answers it, then fails
/// with `UNAVAILABLE` (after its response headers: too late to retry). Every RPC can
/// also be made to fail or slow down for a while: [`EchoService::set_failure`],
/// [`EchoService::set_delay`].
#[derive(Clone)]
pub struct EchoService {
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    open_streams: Arc<AtomicUsize>,
    behavior: Arc<Behavior>,
}

/// What every RPC does, set at run time.
#[derive(Default)]
struct Behavior {
    /// Percent of unary RPCs that fail, with `fail_code`.
    fail_percent: std::sync::atomic::AtomicU32,
    fail_code: std::sync::atomic::AtomicI32,
    delay_ms: std::sync::atomic::AtomicU64,
    /// Unary RPCs whose handler was dropped before it answered (the client reset the
    /// stream, or the connection died).
    cancelled: AtomicUsize,
}

/// Counts a unary handler as cancelled unless it finishes.
struct Unfinished<'a>(Option<&'a AtomicUsize>);

impl Unfinished<'_> {
    fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The echo service as every test backend serves it: gzip accepted, and used for
/// answers to clients that accept it (tonic's defaults otherwise).
fn echo_server(service: EchoService) -> EchoServer<EchoService> {
    EchoServer::new(service)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
}

/// The request's `grpc-previous-rpc-attempts`, 0 when absent.
fn previous_attempts<T>(req: &Request<T>) -> u32 {
    req.metadata()
        .get("grpc-previous-rpc-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn unavailable(name: &str, why: &str) -> Status {
    Status::unavailable(format!("{name} {why}"))
}

impl EchoService {
    /// A service that names itself `name` in every reply.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            hits: Arc::default(),
            open_streams: Arc::default(),
            behavior: Arc::default(),
        }
    }

    /// From now on, `percent` of unary RPCs (0 to 100, chosen at random) fail with
    /// `code`; 0 turns failures off.
    pub fn set_failure(&self, percent: u32, code: tonic::Code) {
        self.behavior
            .fail_code
            .store(code as i32, Ordering::Relaxed);
        self.behavior
            .fail_percent
            .store(percent.min(100), Ordering::Relaxed);
    }

    /// From now on, every RPC waits this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.behavior.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Unary RPCs whose handler was dropped before answering: reset by the client
    /// (a cancelled hedge, a deadline) or cut off with the connection.
    pub fn cancelled(&self) -> usize {
        self.behavior.cancelled.load(Ordering::Relaxed)
    }

    /// RPCs received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Server-streaming and bidi response streams the server is still producing:
    /// one ends when it is finished, or when the client resets it.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    fn reply(&self, message: String) -> EchoReply {
        EchoReply {
            message,
            server: self.name.to_string(),
            previous_attempts: 0,
        }
    }

    async fn arrive(&self, req: &EchoRequest) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let delay = req.delay_ms + self.behavior.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    /// The failure [`EchoService::set_failure`] asked for, if this RPC draws one.
    fn drawn_failure(&self) -> Option<Status> {
        let percent = self.behavior.fail_percent.load(Ordering::Relaxed);
        (percent > 0 && fastrand::u32(0..100) < percent).then(|| {
            Status::new(
                tonic::Code::from_i32(self.behavior.fail_code.load(Ordering::Relaxed)),
                format!("{} is failing", self.name),
            )
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary_echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let unfinished = Unfinished(Some(&self.behavior.cancelled));
        let previous = previous_attempts(&req);
        let req = req.into_inner();
        self.arrive(&req).await;
        let answer = self.unary(req, previous).await;
        unfinished.finish();
        answer
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let req = req.into_inner();
        self.arrive(&req).await;
        let this = self.clone();
        let interval = Duration::from_millis(req.interval_ms);
        let replies = tokio_stream::iter(0..req.count).then(move |i| {
            let this = this.clone();
            let message = req.message.clone();
            async move {
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Ok(this.reply(format!("{message} {i}")))
            }
        });
        Ok(Response::new(self.tracked(Box::pin(replies))))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let previous = previous_attempts(&req);
        let mut stream = req.into_inner();
        let mut all = Vec::new();
        while let Some(msg) = stream.next().await {
            all.push(msg?.message);
        }
        if let Some(k) = all
            .first()
            .and_then(|m| m.strip_prefix("fail-until:"))
            .and_then(|k| k.parse::<u32>().ok())
            && previous < k
        {
            return Err(unavailable(
                &self.name,
                &format!("fails attempt {}", previous + 1),
            ));
        }
        let mut reply = self.reply(all.join(","));
        reply.previous_attempts = previous;
        Ok(Response::new(reply))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStreamStream>, Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let mut first = true;
        let mut failing = false;
        let replies = req.into_inner().map(move |msg| {
            if failing {
                return Err(unavailable(&this.name, "fails after its first reply"));
            }
            let m = msg?;
            if first && m.message == "fail-after-first" {
                failing = true;
            }
            first = false;
            Ok(this.reply(m.message))
        });
        Ok(Response::new(self.tracked(Box::pin(replies))))
    }
}

impl EchoService {
    /// `replies`, counted in [`EchoService::open_streams`] until dropped.
    fn tracked(&self, replies: ReplyStream) -> ReplyStream {
        Box::pin(Tracked {
            inner: replies,
            _open: Open::new(&self.open_streams),
        })
    }
}

impl EchoService {
    async fn unary(&self, req: EchoRequest, previous: u32) -> Result<Response<EchoReply>, Status> {
        if let Some(status) = self.drawn_failure() {
            return Err(status);
        }
        let arg = |prefix: &str| req.message.strip_prefix(prefix);
        if let Some(k) = arg("fail-until:").and_then(|k| k.parse::<u32>().ok())
            && previous < k
        {
            return Err(unavailable(
                &self.name,
                &format!("fails attempt {}", previous + 1),
            ));
        }
        if let Some(value) = arg("pushback:")
            && previous == 0
        {
            let mut status = unavailable(&self.name, "pushes back");
            // `pushback:10,20` sends the trailer twice.
            for v in value.split(',') {
                if let Ok(v) = v.parse() {
                    status.metadata_mut().append("grpc-retry-pushback-ms", v);
                }
            }
            return Err(status);
        }
        if let Some(ms) = arg("slow-first:").and_then(|ms| ms.parse::<u64>().ok())
            && previous == 0
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // `fail:<code>` answers with that gRPC status code.
        if let Some(code) = req
            .message
            .strip_prefix("fail:")
            .and_then(|c| c.parse::<i32>().ok())
        {
            return Err(Status::new(
                tonic::Code::from_i32(code),
                format!("{} failed as asked", self.name),
            ));
        }
        if let Some(n) = req
            .message
            .strip_prefix("details:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            let details: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            return Err(Status::with_details(
                tonic::Code::Aborted,
                format!("{} sends {n} bytes of details", self.name),
                details.into(),
            ));
        }
        let mut reply = self.reply(req.message);
        reply.previous_attempts = previous;
        Ok(Response::new(reply))
    }
}

/// A response stream that counts itself open while it lives.
struct Tracked {
    inner: ReplyStream,
    _open: Open,
}

impl Stream for Tracked {
    type Item = Result<EchoReply, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// How a test backend reports its load (ORCA, through `lb-orca`'s server side).
#[derive(Clone, Debug)]
pub struct Orca {
    /// The load reported; set its values at any time.
    pub recorder: lb_orca::server::ServerMetricsRecorder,
    /// Attach the report to every response (the per-call trailer); the
    /// out-of-band `OpenRcaService` is served either way.
    pub per_call: bool,
    /// The shortest out-of-band interval granted.
    pub min_interval: Duration,
}

impl Orca {
    /// Reports of `recorder`, per call and out of band (granting intervals down to
    /// 20 ms).
    pub fn new(recorder: lb_orca::server::ServerMetricsRecorder) -> Self {
        Self {
            recorder,
            per_call: true,
            min_interval: Duration::from_millis(20),
        }
    }

    /// Reports fixed values: `qps` requests per second at `utilization` CPU.
    pub fn fixed(qps: f64, utilization: f64) -> Self {
        let recorder = lb_orca::server::ServerMetricsRecorder::new();
        // Test values are valid: an invalid one would fail the test's assertions.
        let _ = recorder.set_qps(qps);
        let _ = recorder.set_cpu_utilization(utilization);
        Self::new(recorder)
    }

    /// Only out of band: no trailer.
    #[must_use]
    pub fn out_of_band_only(mut self) -> Self {
        self.per_call = false;
        self
    }
}

/// A real echo server on 127.0.0.1, served with hyper's HTTP/2 server over an accept
/// loop this fixture owns, so that [`Backend::kill`] drops the listener and every
/// connection at once, as a killed process would.
pub struct Backend {
    name: Arc<str>,
    addr: SocketAddr,
    serving: Serving,
}

/// What a backend serves with, across restarts.
struct Serving {
    service: EchoService,
    served: Served,
    health: Option<tonic_health::server::HealthReporter>,
    /// `Watch` calls its health service received (when it counts them).
    health_watches: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    authorities: Authorities,
    tls: Option<TlsAcceptor>,
    task: Option<JoinHandle<()>>,
}

impl Serving {
    fn new(name: Arc<str>, tls: Option<TlsAcceptor>) -> Self {
        let service = EchoService::new(name);
        Self {
            served: Served::Echo(echo_server(service.clone())),
            service,
            health: None,
            health_watches: Arc::default(),
            connections: Arc::default(),
            authorities: Authorities::default(),
            tls,
            task: None,
        }
    }

    /// Serves `grpc.health.v1.Health` too, every service `SERVING` at first.
    fn with_health(mut self) -> Self {
        let (reporter, health) = tonic_health::server::health_reporter();
        let routes = tonic::service::Routes::new(echo_server(self.service.clone()))
            .add_service(health)
            .prepare();
        self.served = Served::Routes(routes);
        self.health = Some(reporter);
        self
    }

    /// Serves a health service whose `Watch` streams end with `UNAVAILABLE` after
    /// `ttl`, every service `SERVING` at first.
    fn with_expiring_health(mut self, ttl: Duration) -> Self {
        let reporter = tonic_health::server::HealthReporter::new();
        let inner = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = health::ExpiringHealth::new(inner, ttl, self.health_watches.clone());
        let routes = tonic::service::Routes::new(echo_server(self.service.clone()))
            .add_service(tonic_health::pb::health_server::HealthServer::new(health))
            .prepare();
        self.served = Served::Routes(routes);
        self.health = Some(reporter);
        self
    }

    /// Reports `orca.recorder`'s load: per call (the trailer) and out of band.
    fn with_orca(mut self, orca: &Orca) -> Self {
        let routes = tonic::service::Routes::new(echo_server(self.service.clone()))
            .add_service(
                lb_orca::server::OrcaService::new(orca.recorder.clone())
                    .min_interval(orca.min_interval)
                    .into_server(),
            )
            .prepare();
        self.served = if orca.per_call {
            let layer = lb_orca::server::OrcaLayer::new(orca.recorder.clone());
            Served::Orca(tower_layer::Layer::layer(&layer, routes))
        } else {
            Served::Routes(routes)
        };
        self
    }

    fn start(&mut self, listener: Listener) {
        self.task = Some(tokio::spawn(accept_loop(
            listener,
            self.served.clone(),
            self.connections.clone(),
            self.tls.clone(),
            self.authorities.clone(),
        )));
    }

    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What requests arrived with: the distinct `:authority` values in order, and the
/// last `grpc-timeout` header.
#[derive(Clone, Default)]
struct Authorities(Arc<std::sync::Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    authorities: Vec<String>,
    grpc_timeout: Option<String>,
    user_agent: Option<String>,
    grpc_encoding: Option<String>,
}

impl Authorities {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, request: &http::HeaderMap, authority: Option<&str>) {
        let header = |name: &str| {
            request
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let authority = authority.unwrap_or("");
        let mut seen = self.seen();
        if seen.authorities.last().map(String::as_str) != Some(authority) {
            seen.authorities.retain(|a| a != authority);
            seen.authorities.push(authority.to_owned());
        }
        seen.grpc_timeout = header("grpc-timeout");
        seen.user_agent = header("user-agent");
        seen.grpc_encoding = header("grpc-encoding");
    }

    fn grpc_encoding(&self) -> Option<String> {
        self.seen().grpc_encoding.clone()
    }

    fn user_agent(&self) -> Option<String> {
        self.seen().user_agent.clone()
    }

    fn get(&self) -> Vec<String> {
        self.seen().authorities.clone()
    }

    fn grpc_timeout(&self) -> Option<String> {
        self.seen().grpc_timeout.clone()
    }
}

impl Backend {
    /// Starts a backend on an ephemeral port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Ok(Self::serve(name, listener, None))
    }

    /// Starts a backend on `addr` (any 127.0.0.0/8 address is local on Linux, so
    /// several backends can share one port, as DNS-discovered backends do).
    pub async fn start_at(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self::serve(name, bind(addr)?, None))
    }

    /// Starts a backend that speaks TLS (ALPN `h2`) with `pki`'s server certificate.
    pub async fn start_tls(name: &str, pki: &TestPki) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Ok(Self::serve(name, listener, Some(pki.acceptor())))
    }

    /// Starts a backend on a port outside the kernel's ephemeral range (32768–60999),
    /// so that after [`Backend::kill`] no client socket can take the port (a client
    /// reconnecting to a dead ephemeral port can connect to itself) and
    /// [`Backend::restart`] can bind it again.
    pub async fn start_restartable(name: &str) -> std::io::Result<Self> {
        Ok(Self::serve_with(
            Serving::new(name.into(), None),
            restartable_listener()?,
        ))
    }

    /// Starts a restartable backend that also serves `grpc.health.v1.Health`
    /// (tonic-health), every service `SERVING` until [`Backend::set_health`] says
    /// otherwise.
    pub async fn start_with_health(name: &str) -> std::io::Result<Self> {
        let serving = Serving::new(name.into(), None).with_health();
        Ok(Self::serve_with(serving, restartable_listener()?))
    }

    /// Starts a restartable backend whose health service ends every `Watch` stream
    /// with `UNAVAILABLE` after `ttl`, as a proxy's stream idle timeout would (after
    /// the answers it had to send); statuses as [`Backend::set_health`] sets them.
    pub async fn start_with_expiring_health(name: &str, ttl: Duration) -> std::io::Result<Self> {
        let serving = Serving::new(name.into(), None).with_expiring_health(ttl);
        Ok(Self::serve_with(serving, restartable_listener()?))
    }

    /// Starts a restartable backend that reports its load (ORCA) as `orca` says:
    /// per call and on `OpenRcaService`.
    pub async fn start_with_orca(name: &str, orca: &Orca) -> std::io::Result<Self> {
        let serving = Serving::new(name.into(), None).with_orca(orca);
        Ok(Self::serve_with(serving, restartable_listener()?))
    }

    fn serve(name: &str, listener: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        Self::serve_with(Serving::new(name.into(), tls), listener)
    }

    fn serve_with(mut serving: Serving, listener: TcpListener) -> Self {
        let name = serving.service.name.clone();
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        serving.start(Listener::Tcp(listener));
        Self {
            name,
            addr,
            serving,
        }
    }

    /// Sets what its health service says about `service` (`""` is the whole
    /// server): `SERVING` or `NOT_SERVING`. Only for [`Backend::start_with_health`].
    pub async fn set_health(&self, service: &str, serving: bool) {
        use tonic_health::ServingStatus;
        if let Some(reporter) = &self.serving.health {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(service, status).await;
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend's name, as it appears in replies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// RPCs received so far (over every run of this backend).
    pub fn hits(&self) -> usize {
        self.serving.service.hits()
    }

    /// Health `Watch` calls received so far (counted only by
    /// [`Backend::start_with_expiring_health`]'s service).
    pub fn health_watches(&self) -> usize {
        self.serving.health_watches.load(Ordering::Relaxed)
    }

    /// The echo service it serves, to change its behavior at run time
    /// ([`EchoService::set_failure`], [`EchoService::set_delay`]).
    pub fn service(&self) -> &EchoService {
        &self.serving.service
    }

    /// Server-streaming and bidi responses still being produced (see
    /// [`EchoService::open_streams`]).
    pub fn open_streams(&self) -> usize {
        self.serving.service.open_streams()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.serving.connections.load(Ordering::Relaxed)
    }

    /// The distinct `:authority` values that requests carried, in the order first
    /// seen (most recent last).
    pub fn authorities(&self) -> Vec<String> {
        self.serving.authorities.get()
    }

    /// The `grpc-timeout` header of the last request, if it had one.
    pub fn last_grpc_timeout(&self) -> Option<String> {
        self.serving.authorities.grpc_timeout()
    }

    /// The `grpc-encoding` header of the last request (`gzip` for a compressed
    /// one), if it had one.
    pub fn last_grpc_encoding(&self) -> Option<String> {
        self.serving.authorities.grpc_encoding()
    }

    /// The `user-agent` header of the last request, if it had one.
    pub fn last_user_agent(&self) -> Option<String> {
        self.serving.authorities.user_agent()
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.serving.task.is_some()
    }

    /// Drops the listener and every connection at once: clients see their
    /// connections closed, in-flight RPCs fail, new connections are refused. Returns
    /// once the server task is gone.
    pub async fn kill(&mut self) {
        self.serving.kill().await;
    }

    /// Serves again on the same port (after [`Backend::kill`]).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill().await;
        // The aborted accept loop releases the port when its task is dropped; retry
        // briefly in case the runtime has not dropped it yet.
        let mut last = None;
        for _ in 0..100 {
            match bind(self.addr) {
                Ok(listener) => {
                    self.serving.start(Listener::Tcp(listener));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

/// An echo server on a Unix-domain socket: a path, or a name in Linux's abstract
/// namespace. Its address is what a `unix` target resolves to (`unix:/path`,
/// `unix-abstract:name`).
pub struct UnixBackend {
    address: String,
    serving: Serving,
    _dir: Option<tempfile::TempDir>,
}

impl UnixBackend {
    /// Serves on a socket file in a fresh temporary directory (removed on drop).
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(format!("{name}.sock"));
        let listener = tokio::net::UnixListener::bind(&path)?;
        let mut serving = Serving::new(name.into(), None);
        serving.start(Listener::Unix(listener));
        Ok(Self {
            address: format!("unix:{}", path.display()),
            serving,
            _dir: Some(dir),
        })
    }

    /// Serves on the abstract socket `name` (Linux only).
    #[cfg(target_os = "linux")]
    pub async fn start_abstract(name: &str) -> std::io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let socket_name = format!("grpc-lb-test-{name}-{}", fastrand::u64(..));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(socket_name.as_bytes())?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        let mut serving = Serving::new(name.into(), None);
        serving.start(Listener::Unix(tokio::net::UnixListener::from_std(
            listener,
        )?));
        Ok(Self {
            address: format!("unix-abstract:{socket_name}"),
            serving,
            _dir: None,
        })
    }

    /// The address: `unix:/path/to/name.sock` or `unix-abstract:name`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The path of the socket file (for a path socket).
    pub fn path(&self) -> Option<&str> {
        self.address.strip_prefix("unix:")
    }

    /// The abstract name (for an abstract socket).
    pub fn abstract_name(&self) -> Option<&str> {
        self.address.strip_prefix("unix-abstract:")
    }

    /// RPCs received so far.
    pub fn hits(&self) -> usize {
        self.serving.service.hits()
    }

    /// The distinct `:authority` values that requests carried.
    pub fn authorities(&self) -> Vec<String> {
        self.serving.authorities.get()
    }
}

/// Whether the child process has already exited.
fn exited(child: &mut Option<tokio::process::Child>) -> bool {
    child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
}

/// A free TCP port on 127.0.0.1 outside the ephemeral range, for servers that must
/// restart on the same port.
pub fn free_port() -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..200 {
        let port = fastrand_port();
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// A listener on 127.0.0.1 outside the ephemeral range.
fn restartable_listener() -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..200 {
        match bind((Ipv4Addr::LOCALHOST, fastrand_port()).into()) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

fn fastrand_port() -> u16 {
    // 20000..32000: below the ephemeral range, above common service ports.
    fastrand::u16(20_000..32_000)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A tonic `Server` serving the echo service, stopped gracefully: it sends GOAWAY,
/// lets RPCs in flight finish, then closes (how a well-behaved server shuts down).
pub struct GracefulServer {
    addr: SocketAddr,
    service: EchoService,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl GracefulServer {
    /// Starts serving the echo service named `name` on an ephemeral port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::serve(EchoService::new(name), listener)
    }

    /// Starts on a port outside the ephemeral range, so that it can be started again
    /// on the same port after [`GracefulServer::stop`] ([`GracefulServer::restart`]).
    pub async fn start_restartable(name: &str) -> std::io::Result<Self> {
        let port = free_port()?;
        Self::serve(
            EchoService::new(name),
            bind((Ipv4Addr::LOCALHOST, port).into())?,
        )
    }

    fn serve(service: EchoService, listener: TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, task) = Self::spawn(service.clone(), listener);
        Ok(Self {
            addr,
            service,
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn spawn(
        service: EchoService,
        listener: TcpListener,
    ) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = echo_server(service.clone());
        let task = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let served = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "graceful test server ended");
            }
        });
        (stop, task)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its echo service (hits, behavior).
    pub fn service(&self) -> &EchoService {
        &self.service
    }

    /// Sends GOAWAY, waits for in-flight RPCs to finish and the server to close.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops gracefully if running, then serves again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let mut last = None;
        for _ in 0..100 {
            match bind(self.addr) {
                Ok(listener) => {
                    let (stop, task) = Self::spawn(self.service.clone(), listener);
                    self.stop = Some(stop);
                    self.task = Some(task);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

impl Drop for GracefulServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Counts a connection while it is alive.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a backend accepts connections.
enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

/// What a backend's connections serve: the echo service, or it and the health
/// service behind tonic's router (kept apart so that plain backends, which the
/// benchmarks use, pay no routing).
#[derive(Clone)]
enum Served {
    Echo(EchoServer<EchoService>),
    /// The echo service and others (health, ORCA's out-of-band service).
    Routes(tonic::service::Routes),
    /// The same, with ORCA's per-call trailer on every response.
    Orca(lb_orca::server::WithLoadReports<tonic::service::Routes>),
}

type Incoming = hyper::body::Incoming;
type EchoFuture =
    <EchoServer<EchoService> as tonic::codegen::Service<http::Request<Incoming>>>::Future;
type RoutesFuture =
    <tonic::service::Routes as tonic::codegen::Service<http::Request<Incoming>>>::Future;
type OrcaFuture =
    <lb_orca::server::WithLoadReports<tonic::service::Routes> as tower_service::Service<
        http::Request<Incoming>,
    >>::Future;

pin_project_lite::pin_project! {
    #[project = ServedFutureProj]
    enum ServedFuture {
        Echo { #[pin] f: EchoFuture },
        Routes { #[pin] f: RoutesFuture },
        Orca { #[pin] f: OrcaFuture },
    }
}

impl std::future::Future for ServedFuture {
    type Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            ServedFutureProj::Echo { f } => f.poll(cx),
            ServedFutureProj::Routes { f } => f.poll(cx),
            ServedFutureProj::Orca { f } => f
                .poll(cx)
                .map(|r| r.map(|response| response.map(tonic::body::Body::new))),
        }
    }
}

impl tonic::codegen::Service<http::Request<Incoming>> for Served {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = ServedFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            Served::Echo(s) => {
                tonic::codegen::Service::<http::Request<Incoming>>::poll_ready(s, cx)
            }
            Served::Routes(r) => {
                tonic::codegen::Service::<http::Request<Incoming>>::poll_ready(r, cx)
            }
            Served::Orca(o) => tower_service::Service::<http::Request<Incoming>>::poll_ready(o, cx),
        }
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        match self {
            Served::Echo(s) => ServedFuture::Echo { f: s.call(request) },
            Served::Routes(r) => ServedFuture::Routes { f: r.call(request) },
            Served::Orca(o) => ServedFuture::Orca {
                f: tower_service::Service::call(o, request),
            },
        }
    }
}

async fn accept_loop(
    listener: Listener,
    served: Served,
    open: Arc<AtomicUsize>,
    tls: Option<TlsAcceptor>,
    authorities: Authorities,
) {
    let svc = TowerToHyperService::new(RecordAuthority {
        inner: served,
        authorities,
    });
    // Owned here: aborting this task drops every connection task with it.
    let mut connections = JoinSet::new();
    loop {
        let accepted = async {
            match &listener {
                Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
                Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
            }
        };
        tokio::select! {
            accepted = accepted => {
                let Ok(stream) = accepted else { continue };
                let svc = svc.clone();
                let open = Open::new(&open);
                let tls = tls.clone();
                connections.spawn(async move {
                    let _open = open;
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let served = match (stream, tls) {
                        (Accepted::Tcp(stream), None) => {
                            // Without TCP_NODELAY small responses wait for delayed ACKs (40 ms).
                            let _ = stream.set_nodelay(true);
                            http2.serve_connection(TokioIo::new(stream), svc).await
                        }
                        (Accepted::Tcp(stream), Some(tls)) => {
                            let _ = stream.set_nodelay(true);
                            match tls.accept(stream).await {
                                Ok(stream) => http2.serve_connection(TokioIo::new(stream), svc).await,
                                Err(e) => {
                                    tracing::debug!(error = %e, "test backend TLS handshake failed");
                                    return;
                                }
                            }
                        }
                        (Accepted::Unix(stream), _) => {
                            http2.serve_connection(TokioIo::new(stream), svc).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "test backend connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Records each request's `:authority` and `grpc-timeout`, then serves it.
#[derive(Clone)]
struct RecordAuthority<S> {
    inner: S,
    authorities: Authorities,
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for RecordAuthority<S>
where
    S: tonic::codegen::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.authorities.record(
            request.headers(),
            request.uri().authority().map(|a| a.as_str()),
        );
        self.inner.call(request)
    }
}
