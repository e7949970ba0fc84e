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

mod dns;
mod etcd;
mod manual;
mod tls;
mod zookeeper;

pub use dns::DnsServer;
pub use etcd::EtcdServer;
pub use manual::ManualResolver;
pub use tls::TestPki;
use tokio_rustls::TlsAcceptor;
pub use zookeeper::ZooKeeperServer;

/// The generated echo service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// The echo service: replies with the request's message and the backend's name.
#[derive(Clone)]
pub struct EchoService {
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
}

impl EchoService {
    /// A service that names itself `name` in every reply.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            hits: Arc::default(),
        }
    }

    /// RPCs received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn reply(&self, message: String) -> EchoReply {
        EchoReply {
            message,
            server: self.name.to_string(),
        }
    }

    async fn arrive(&self, req: &EchoRequest) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary_echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        self.arrive(&req).await;
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
        Ok(Response::new(self.reply(req.message)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let req = req.into_inner();
        self.arrive(&req).await;
        let this = self.clone();
        let replies = (0..req.count).map(move |i| Ok(this.reply(format!("{} {i}", req.message))));
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let mut stream = req.into_inner();
        let mut all = Vec::new();
        while let Some(msg) = stream.next().await {
            all.push(msg?.message);
        }
        Ok(Response::new(self.reply(all.join(","))))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStreamStream>, Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        let replies = req
            .into_inner()
            .map(move |msg| msg.map(|m| this.reply(m.message)));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A real echo server on 127.0.0.1, served with hyper's HTTP/2 server over an accept
/// loop this fixture owns, so that [`Backend::kill`] drops the listener and every
/// connection at once, as a killed process would.
pub struct Backend {
    name: Arc<str>,
    addr: SocketAddr,
    service: EchoService,
    connections: Arc<AtomicUsize>,
    tls: Option<TlsAcceptor>,
    task: Option<JoinHandle<()>>,
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
        let mut last = None;
        for _ in 0..200 {
            let port = fastrand_port();
            match bind((Ipv4Addr::LOCALHOST, port).into()) {
                Ok(listener) => return Ok(Self::serve(name, listener, None)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
    }

    fn serve(name: &str, listener: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        let name: Arc<str> = name.into();
        let service = EchoService::new(name.clone());
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            service.clone(),
            connections.clone(),
            tls.clone(),
        ));
        Self {
            name,
            addr,
            service,
            connections,
            tls,
            task: Some(task),
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
        self.service.hits()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Drops the listener and every connection at once: clients see their
    /// connections closed, in-flight RPCs fail, new connections are refused. Returns
    /// once the server task is gone.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
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
                    self.task = Some(tokio::spawn(accept_loop(
                        listener,
                        self.service.clone(),
                        self.connections.clone(),
                        self.tls.clone(),
                    )));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl GracefulServer {
    /// Starts serving the echo service named `name` on an ephemeral port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = EchoServer::new(EchoService::new(name));
        let task = tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "graceful test server ended");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

async fn accept_loop(
    listener: TcpListener,
    service: EchoService,
    open: Arc<AtomicUsize>,
    tls: Option<TlsAcceptor>,
) {
    let svc = TowerToHyperService::new(EchoServer::new(service));
    // Owned here: aborting this task drops every connection task with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Without TCP_NODELAY small responses wait for delayed ACKs (40 ms).
                let _ = stream.set_nodelay(true);
                let svc = svc.clone();
                let open = Open::new(&open);
                let tls = tls.clone();
                connections.spawn(async move {
                    let _open = open;
                    let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let served = match tls {
                        None => http2.serve_connection(TokioIo::new(stream), svc).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => http2.serve_connection(TokioIo::new(stream), svc).await,
                            Err(e) => {
                                tracing::debug!(error = %e, "test backend TLS handshake failed");
                                return;
                            }
                        },
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
