//! Subconns over real HTTP/2 connections: one task per subconn owns the connection,
//! follows gRPC's connection backoff and reports every state change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lb_core::{
    Address, ConnectivityState, SharedError, StateTracker, SubConnHandle, SubConnId, SubConnState,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::body::Body;

use crate::backoff::{Backoff, BackoffConfig};
use crate::control::Msg;
use crate::error::TransportError;

/// HTTP/2 keepalive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// How long to wait for a ping's answer before the connection counts as dead.
    pub timeout: Duration,
    /// Ping also when no RPC is in flight.
    pub while_idle: bool,
}

/// Connection settings shared by every subconn of a channel.
#[derive(Debug, Clone)]
pub(crate) struct TransportOptions {
    pub(crate) backoff: BackoffConfig,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) authority: Option<Authority>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConfig>,
}

impl TransportOptions {
    fn scheme(&self) -> Scheme {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return Scheme::HTTPS;
        }
        Scheme::HTTP
    }
}

/// The byte stream under HTTP/2: plain TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A ready connection: what an RPC needs to send on it.
pub(crate) struct Connected {
    pub(crate) sender: SendRequest<Body>,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    draining: AtomicBool,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Connected {
    /// The server sent GOAWAY: no new RPCs on this connection. The subconn goes
    /// `IDLE` at once and lets the RPCs in flight finish in the background.
    pub(crate) fn drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            let _ = self.cmds.send(Cmd::Drain);
        }
    }
}

enum Cmd {
    Connect,
    Drain,
    Shutdown,
}

/// The transport behind a [`lb_core::SubConn`].
pub(crate) struct Transport {
    cmds: mpsc::UnboundedSender<Cmd>,
    connected: Arc<ArcSwapOption<Connected>>,
}

impl SubConnHandle for Transport {
    fn connect(&self) {
        let _ = self.cmds.send(Cmd::Connect);
    }

    fn shutdown(&self) {
        let _ = self.cmds.send(Cmd::Shutdown);
    }
}

impl Transport {
    /// The connection, while the subconn is ready and not draining. One atomic load.
    #[inline]
    pub(crate) fn connected(&self) -> Option<Arc<Connected>> {
        self.connected
            .load_full()
            .filter(|c| !c.draining.load(Ordering::Acquire))
    }
}

/// A transport whose task has not started yet (it needs the subconn's id).
pub(crate) struct Unstarted {
    cmds: mpsc::UnboundedReceiver<Cmd>,
    drain: mpsc::WeakUnboundedSender<Cmd>,
    connected: Arc<ArcSwapOption<Connected>>,
}

pub(crate) fn new_transport() -> (Transport, Unstarted) {
    let (tx, rx) = mpsc::unbounded_channel();
    let connected = Arc::new(ArcSwapOption::empty());
    (
        Transport {
            cmds: tx.clone(),
            connected: connected.clone(),
        },
        Unstarted {
            cmds: rx,
            // A weak sender: the task must not keep its own command channel open, or
            // it would never see every handle dropped.
            drain: tx.downgrade(),
            connected,
        },
    )
}

impl Unstarted {
    /// Starts the subconn's task. It ends after a shutdown, or when every handle on
    /// the subconn is gone.
    pub(crate) fn spawn(
        self,
        id: SubConnId,
        address: Address,
        events: mpsc::UnboundedSender<Msg>,
        options: Arc<TransportOptions>,
    ) {
        tokio::spawn(run(id, address, self, events, options));
    }
}

struct Reporter {
    id: SubConnId,
    addr: Arc<str>,
    tracker: StateTracker,
    events: mpsc::UnboundedSender<Msg>,
}

impl Reporter {
    fn report(&mut self, state: ConnectivityState, error: Option<SharedError>) {
        if let Err(e) = self.tracker.transition(state) {
            // A bug in this file, not in the caller's input: log it and keep going.
            tracing::error!(subconn = %self.id, addr = %self.addr, error = %e, "subconn state machine violated");
            return;
        }
        match &error {
            Some(e) => {
                tracing::debug!(subconn = %self.id, addr = %self.addr, %state, error = %e, "subconn state")
            }
            None => tracing::debug!(subconn = %self.id, addr = %self.addr, %state, "subconn state"),
        }
        let _ = self.events.send(Msg::SubConnState {
            id: self.id,
            state: SubConnState { state, error },
        });
    }
}

/// Waits for a shutdown (or for every handle to be dropped), ignoring the rest.
async fn shutdown_requested(cmds: &mut mpsc::UnboundedReceiver<Cmd>) {
    while let Some(Cmd::Connect | Cmd::Drain) = cmds.recv().await {}
}

/// How a ready connection stopped being used.
enum Ended {
    Closed(Result<(), hyper::Error>),
    Draining,
    Shutdown,
}

async fn run(
    id: SubConnId,
    address: Address,
    unstarted: Unstarted,
    events: mpsc::UnboundedSender<Msg>,
    options: Arc<TransportOptions>,
) {
    let Unstarted {
        mut cmds,
        drain,
        connected,
    } = unstarted;
    let addr: Arc<str> = address.addr().into();
    let mut reporter = Reporter {
        id,
        addr: addr.clone(),
        tracker: StateTracker::new(),
        events,
    };
    let mut backoff = Backoff::new(options.backoff);
    // The `:authority` of every request: the override, else the address itself.
    let authority: Option<Authority> = match &options.authority {
        Some(a) => Some(a.clone()),
        None => addr.parse().ok(),
    };

    'idle: loop {
        match cmds.recv().await {
            Some(Cmd::Connect) => {}
            Some(Cmd::Drain) => continue 'idle, // for a connection already gone
            Some(Cmd::Shutdown) | None => break 'idle,
        }
        reporter.report(ConnectivityState::Connecting, None);
        let timeout = backoff.connect_timeout();
        let attempt = tokio::select! {
            r = tokio::time::timeout(timeout, connect(&addr, &options)) => match r {
                Ok(r) => r,
                Err(_) => Err(TransportError::Timeout { addr: addr.to_string(), after: timeout }),
            },
            () = shutdown_requested(&mut cmds) => break 'idle,
        };
        let attempt = attempt.and_then(|c| match &authority {
            Some(a) => Ok((c, a.clone())),
            None => Err(TransportError::BadAddress {
                addr: addr.to_string(),
            }),
        });
        match attempt {
            Ok(((sender, connection), authority)) => {
                let Some(drain) = drain.upgrade() else {
                    break 'idle; // every handle is gone
                };
                backoff.reset();
                connected.store(Some(Arc::new(Connected {
                    sender,
                    scheme: options.scheme(),
                    authority,
                    draining: AtomicBool::new(false),
                    cmds: drain,
                })));
                reporter.report(ConnectivityState::Ready, None);
                let mut connection = Box::pin(connection);
                let ended = loop {
                    tokio::select! {
                        r = &mut connection => break Ended::Closed(r),
                        cmd = cmds.recv() => match cmd {
                            Some(Cmd::Connect) => continue,
                            Some(Cmd::Drain) => break Ended::Draining,
                            Some(Cmd::Shutdown) | None => break Ended::Shutdown,
                        },
                    }
                };
                connected.store(None);
                match ended {
                    Ended::Closed(result) => {
                        let error = TransportError::Closed {
                            addr: addr.to_string(),
                            source: result.err(),
                        };
                        reporter.report(ConnectivityState::Idle, Some(Arc::new(error)));
                    }
                    Ended::Draining => {
                        // No new RPCs here; the ones in flight finish in the background
                        // while the balancer decides whether to reconnect.
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        let error = TransportError::GoAway {
                            addr: addr.to_string(),
                        };
                        reporter.report(ConnectivityState::Idle, Some(Arc::new(error)));
                    }
                    Ended::Shutdown => {
                        // Shut down: no new RPCs; the ones in flight finish, then the
                        // connection closes (every sender is gone).
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        break 'idle;
                    }
                }
            }
            Err(error) => {
                reporter.report(ConnectivityState::TransientFailure, Some(Arc::new(error)));
                let delay = backoff.next_delay();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown_requested(&mut cmds) => break 'idle,
                }
                reporter.report(ConnectivityState::Idle, None);
            }
        }
    }
    connected.store(None);
    reporter.report(ConnectivityState::Shutdown, None);
}

type Connection = http2::Connection<TokioIo<Box<dyn Io>>, Body, TokioExecutor>;

async fn connect(
    addr: &str,
    options: &TransportOptions,
) -> Result<(SendRequest<Body>, Connection), TransportError> {
    let io_err = |source| TransportError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let stream = TcpStream::connect(addr).await.map_err(io_err)?;
    // A connect to a dead local port in the ephemeral range can succeed by connecting
    // the socket to itself (TCP simultaneous open); that is no server.
    if stream.local_addr().map_err(io_err)? == stream.peer_addr().map_err(io_err)? {
        return Err(TransportError::SelfConnect {
            addr: addr.to_owned(),
        });
    }
    stream.set_nodelay(true).map_err(io_err)?;
    #[cfg(feature = "tls")]
    let io: Box<dyn Io> = match &options.tls {
        Some(tls) => Box::new(tls.connect(addr, stream).await?),
        None => Box::new(stream),
    };
    #[cfg(not(feature = "tls"))]
    let io: Box<dyn Io> = Box::new(stream);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(k) = options.keepalive {
        builder
            .keep_alive_interval(k.interval)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(k.while_idle);
    }
    builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| TransportError::Handshake {
            addr: addr.to_owned(),
            source,
        })
}
