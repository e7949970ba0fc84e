//! Channelz for a tonic server: its calls, its listening socket and each connection
//! it accepted.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame};
use lb_core::channelz::{
    self, CallCounts, Id, Registration, ServerData, ServerSource, Severity, SocketAddress,
    SocketData, SocketSource, Trace,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A server in channelz: counts its calls (through [`ServerStats::layer`]) and its
/// connections (through [`ServerStats::incoming`]). Cloning shares it; the server
/// leaves channelz when the last clone, layer and listener are gone.
///
/// ```no_run
/// # async fn demo(
/// #     service: lb_testkit::pb::echo_server::EchoServer<lb_testkit::EchoService>,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use lb_server::admin::{self, ServerStats};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// let stats = ServerStats::new();
/// tonic::transport::Server::builder()
///     .layer(stats.layer())
///     .add_routes(admin::services())
///     .add_service(service)
///     .serve_with_incoming(stats.incoming(listener)?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerStats {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStats")
            .field("channelz_id", &self.id())
            .finish_non_exhaustive()
    }
}

struct ServerInner {
    channelz: Registration,
    trace: Trace,
    succeeded: AtomicU64,
    failed: AtomicU64,
    started: AtomicU64,
    last_call_ms: AtomicU64,
    listen: Mutex<Vec<Id>>,
}

impl ServerSource for ServerInner {
    fn server_data(&self) -> ServerData {
        // Ended first: a call counted as ended is always counted as started.
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed).max(succeeded + failed);
        let mut calls = CallCounts::new(started, succeeded, failed);
        calls.last_started = channelz::time_of(self.last_call_ms.load(Ordering::Relaxed));
        let mut data = ServerData::default();
        data.calls = calls;
        data.trace = Some(self.trace.data());
        data.listen_sockets = self
            .listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        data
    }
}

impl Default for ServerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerStats {
    /// A new server in channelz.
    pub fn new() -> Self {
        let inner = Arc::new_cyclic(|me: &Weak<ServerInner>| ServerInner {
            channelz: channelz::registry().register_server(me.clone()),
            trace: Trace::default(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            last_call_ms: AtomicU64::new(0),
            listen: Mutex::default(),
        });
        inner.trace.log(Severity::Info, "server created");
        Self { inner }
    }

    /// The server's channelz id.
    pub fn id(&self) -> Id {
        self.inner.channelz.id()
    }

    /// The layer that counts calls, for `tonic::transport::Server::builder().layer`.
    pub fn layer(&self) -> ChannelzLayer {
        ChannelzLayer {
            server: self.inner.clone(),
        }
    }

    /// Accepts connections on `listener` (with `TCP_NODELAY`), each one a socket of
    /// this server in channelz while it lives; the listener is the server's listen
    /// socket. For `serve_with_incoming`.
    pub fn incoming(&self, listener: TcpListener) -> io::Result<Incoming> {
        let local = listener.local_addr()?;
        let listen = Arc::new_cyclic(|me: &Weak<ListenSocket>| ListenSocket {
            channelz: channelz::registry().register_socket(me.clone()),
            local,
            server: self.inner.clone(),
        });
        self.inner
            .listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listen.channelz.id());
        self.inner
            .trace
            .log(Severity::Info, format!("listening on {local}"));
        Ok(Incoming { listener, listen })
    }
}

struct ListenSocket {
    channelz: Registration,
    local: SocketAddr,
    server: Arc<ServerInner>,
}

impl SocketSource for ListenSocket {
    fn socket_data(&self) -> SocketData {
        let mut data = SocketData::default();
        data.local = Some(SocketAddress::Tcp(self.local));
        data
    }
}

impl Drop for ListenSocket {
    fn drop(&mut self) {
        let id = self.channelz.id();
        self.server
            .listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|l| *l != id);
    }
}

/// One connection the server accepted.
struct ServerSocket {
    channelz: Registration,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    last_remote_stream_ms: AtomicU64,
}

impl SocketSource for ServerSocket {
    fn socket_data(&self) -> SocketData {
        let mut data = SocketData::default();
        data.local = self.local.map(SocketAddress::Tcp);
        data.remote = self.remote.map(SocketAddress::Tcp);
        data.streams_started = self.started.load(Ordering::Relaxed);
        data.streams_succeeded = self.succeeded.load(Ordering::Relaxed);
        data.streams_failed = self.failed.load(Ordering::Relaxed);
        data.last_remote_stream_created =
            channelz::time_of(self.last_remote_stream_ms.load(Ordering::Relaxed));
        data
    }
}

/// The connections a [`ServerStats`] accepts, for `serve_with_incoming`.
pub struct Incoming {
    listener: TcpListener,
    listen: Arc<ListenSocket>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("local", &self.listen.local)
            .finish_non_exhaustive()
    }
}

impl futures_util::Stream for Incoming {
    type Item = io::Result<TrackedIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (stream, remote) = match ready!(self.listener.poll_accept(cx)) {
            Ok(accepted) => accepted,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        // Without it, small responses wait for the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            return Poll::Ready(Some(Err(e)));
        }
        let local = stream.local_addr().ok();
        let server = self.listen.server.channelz.id();
        let socket = Arc::new_cyclic(|me: &Weak<ServerSocket>| ServerSocket {
            channelz: channelz::registry().register_server_socket(server, me.clone()),
            local,
            remote: Some(remote),
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_remote_stream_ms: AtomicU64::new(0),
        });
        Poll::Ready(Some(Ok(TrackedIo { stream, socket })))
    }
}

/// An accepted connection, registered in channelz while it lives.
pub struct TrackedIo {
    stream: TcpStream,
    socket: Arc<ServerSocket>,
}

impl std::fmt::Debug for TrackedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedIo")
            .field("channelz_id", &self.socket.channelz.id())
            .field("remote", &self.socket.remote)
            .finish_non_exhaustive()
    }
}

/// What a request on a [`TrackedIo`] carries; [`ChannelzLayer`] replaces it with
/// tonic's `TcpConnectInfo`, so `Request::remote_addr` works as usual.
#[derive(Clone)]
pub struct TrackedConnectInfo {
    tcp: TcpConnectInfo,
    socket: Arc<ServerSocket>,
}

impl std::fmt::Debug for TrackedConnectInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedConnectInfo")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl Connected for TrackedIo {
    type ConnectInfo = TrackedConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TrackedConnectInfo {
            tcp: TcpConnectInfo {
                local_addr: self.socket.local,
                remote_addr: self.socket.remote,
            },
            socket: self.socket.clone(),
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts a server's calls (and, on a [`TrackedIo`], its connection's streams).
#[derive(Clone)]
pub struct ChannelzLayer {
    server: Arc<ServerInner>,
}

impl std::fmt::Debug for ChannelzLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelzLayer")
            .field("server", &self.server.channelz.id())
            .finish()
    }
}

impl<S> tower_layer::Layer<S> for ChannelzLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            server: self.server.clone(),
        }
    }
}

/// The service [`ChannelzLayer`] makes.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    server: Arc<ServerInner>,
}

impl<S> std::fmt::Debug for Counted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

/// One call's end, counted once: on its status, or as failed if dropped first.
struct CallEnd {
    server: Arc<ServerInner>,
    socket: Option<Arc<ServerSocket>>,
}

impl CallEnd {
    fn end(self, ok: bool, eos: bool) {
        let CallEnd { server, socket } = self;
        let counter = if ok {
            &server.succeeded
        } else {
            &server.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(socket) = socket {
            let counter = if eos {
                &socket.succeeded
            } else {
                &socket.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A call's end, if it was not counted yet: failed.
struct Pending(Option<CallEnd>);

impl Pending {
    fn end(&mut self, ok: bool, eos: bool) {
        if let Some(end) = self.0.take() {
            end.end(ok, eos);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.end(false, false);
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Counted<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let now = channelz::now_ms();
        let socket = request
            .extensions_mut()
            .remove::<TrackedConnectInfo>()
            .map(|info| {
                request.extensions_mut().insert(info.tcp);
                info.socket
            });
        if let Some(socket) = &socket {
            socket.started.fetch_add(1, Ordering::Relaxed);
            socket.last_remote_stream_ms.store(now, Ordering::Relaxed);
        }
        self.server.started.fetch_add(1, Ordering::Relaxed);
        self.server.last_call_ms.store(now, Ordering::Relaxed);
        let mut pending = Pending(Some(CallEnd {
            server: self.server.clone(),
            socket,
        }));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // A trailers-only answer carries its status in the headers and ends the
            // stream with them: hyper may never poll its empty body.
            let code = grpc_status(response.headers());
            if let Some(ok) = code
                && response.body().is_end_stream()
            {
                pending.end(ok, true);
            }
            Ok(response.map(|inner| CountedBody {
                inner,
                code,
                pending: Pending(pending.0.take()),
            }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|v| v.as_bytes() == b"0")
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when it ends.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        code: Option<bool>,
        pending: Pending,
    }
}

impl<B> std::fmt::Debug for CountedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                // The trailers end the stream: hyper need not poll again.
                if let Some(trailers) = f.trailers_ref() {
                    let ok = grpc_status(trailers).or(*this.code).unwrap_or(false);
                    this.pending.end(ok, true);
                }
            }
            Some(Err(_)) => this.pending.end(false, false),
            None => this.pending.end(this.code.unwrap_or(false), true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
