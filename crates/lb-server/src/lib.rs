//! Server-side helpers for `grpc-lb`: a self-registering tonic server that stops
//! without failing a single RPC.
//!
//! A registry exists for rolling deploys, and a deploy stops servers with SIGTERM
//! (Kubernetes, systemd) or Ctrl-C. Stopping right away fails the RPCs in flight
//! and, worse, leaves the address registered until its lease or session expires,
//! so clients keep picking a dead server. [`Shutdown`] runs the right sequence
//! instead:
//!
//! 1. wait for SIGTERM or Ctrl-C (or any future, [`Shutdown::on`]);
//! 2. say `NOT_SERVING` on the health service, if given one ([`Shutdown::health`]),
//!    so health-checking clients stop picking this server at once;
//! 3. deregister from every registry ([`Shutdown::deregister`]);
//! 4. keep serving for the propagation delay ([`Shutdown::propagation_delay`],
//!    1 s by default) while clients see the removal and stop sending;
//! 5. stop the server gracefully: tonic sends GOAWAY, refuses new streams and lets
//!    the RPCs in flight finish, for at most [`Shutdown::drain_timeout`];
//! 6. return, and the process exits.
//!
//! ```no_run
//! # #[cfg(feature = "etcd")]
//! # async fn demo(
//! #     service: lb_testkit::pb::echo_server::EchoServer<lb_testkit::EchoService>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
//! use lb_server::Shutdown;
//!
//! let addr = "127.0.0.1:50051";
//! let registrar = EtcdRegistrar::register(
//!     EtcdOptions::default(), "greeter", addr, None, std::time::Duration::from_secs(10),
//! ).await?;
//! let (health, health_service) = tonic_health::server::health_reporter();
//! Shutdown::new()
//!     .deregister(registrar)
//!     .health(health, [""])
//!     .serve(|drained| {
//!         tonic::transport::Server::builder()
//!             .add_service(health_service)
//!             .add_service(service)
//!             .serve_with_shutdown(addr.parse().unwrap(), drained)
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! `lb_tonic`'s channel removes a deregistered address's subconn and lets its RPCs
//! in flight finish, so the sequence above costs its clients nothing; `cargo xtask
//! bench` measures it with a rolling restart under load (`docs/benchmarks.md`).
//!
//! With the `admin` feature, the `admin` module serves gRPC's admin services (channelz, gRFC
//! A14) beside the application's, as grpc-go's `admin.Register`.

#[cfg(feature = "admin")]
pub mod admin;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A registration that [`Shutdown`] removes: an etcd key, a ZooKeeper node, or
/// anything else a registry holds for this server.
pub trait Registration: Send + 'static {
    /// What it is, for logs (`etcd key greeter/10.0.0.1:50051`).
    fn describe(&self) -> String;

    /// Removes it. Should not take long; [`Shutdown`] gives up waiting after the
    /// deregistration timeout.
    fn deregister(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl Registration for Box<dyn Registration> {
    fn describe(&self) -> String {
        (**self).describe()
    }

    fn deregister(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        (*self).deregister()
    }
}

#[cfg(feature = "etcd")]
impl Registration for lb_resolvers::etcd::EtcdRegistrar {
    fn describe(&self) -> String {
        format!("etcd key {}", self.key())
    }

    fn deregister(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(lb_resolvers::etcd::EtcdRegistrar::deregister(*self))
    }
}

#[cfg(feature = "zookeeper")]
impl Registration for lb_resolvers::zookeeper::ZkRegistrar {
    fn describe(&self) -> String {
        format!("ZooKeeper node {}", self.path())
    }

    fn deregister(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(lb_resolvers::zookeeper::ZkRegistrar::deregister(*self))
    }
}

/// Resolves when the server should stop draining and close: give it to tonic's
/// `serve_with_shutdown` or `serve_with_incoming_shutdown`.
#[derive(Debug)]
pub struct Drained(oneshot::Receiver<()>);

impl Future for Drained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Sent, or the sender dropped: either way it is time.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// How a [`Shutdown::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The sequence ran and every RPC in flight finished.
    Drained,
    /// The sequence ran, but RPCs were still in flight at the drain timeout.
    DrainTimedOut,
    /// The server ended by itself before any signal (its future returned `Ok`).
    ServerEnded,
}

/// The zero-downtime shutdown sequence (see the crate docs).
#[must_use]
pub struct Shutdown {
    registrations: Vec<Box<dyn Registration>>,
    health: Option<(HealthReporter, Vec<String>)>,
    propagation_delay: Duration,
    drain_timeout: Duration,
    deregister_timeout: Duration,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field(
                "registrations",
                &self
                    .registrations
                    .iter()
                    .map(|r| r.describe())
                    .collect::<Vec<_>>(),
            )
            .field("propagation_delay", &self.propagation_delay)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

/// The propagation delay by default: long enough for watch-based resolvers (etcd,
/// ZooKeeper: milliseconds) with a wide margin; DNS-based discovery needs its TTL.
pub const DEFAULT_PROPAGATION_DELAY: Duration = Duration::from_secs(1);

/// The drain timeout by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Shutdown {
    /// A sequence triggered by SIGTERM or Ctrl-C, with no registration yet.
    pub fn new() -> Self {
        Self {
            registrations: Vec::new(),
            health: None,
            propagation_delay: DEFAULT_PROPAGATION_DELAY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            deregister_timeout: Duration::from_secs(5),
            signal: None,
        }
    }

    /// Removes `registration` when the shutdown starts (all of them at once).
    pub fn deregister(mut self, registration: impl Registration) -> Self {
        self.registrations.push(Box::new(registration));
        self
    }

    /// Sets `services` (the empty name, the whole server, is always included) to
    /// `NOT_SERVING` on `reporter`'s health service when the shutdown starts.
    pub fn health<S: Into<String>>(
        mut self,
        reporter: HealthReporter,
        services: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut names: Vec<String> = services.into_iter().map(Into::into).collect();
        if !names.iter().any(String::is_empty) {
            names.push(String::new());
        }
        self.health = Some((reporter, names));
        self
    }

    /// How long to keep serving after deregistering, before draining (default
    /// [`DEFAULT_PROPAGATION_DELAY`]).
    pub fn propagation_delay(mut self, delay: Duration) -> Self {
        self.propagation_delay = delay;
        self
    }

    /// How long RPCs in flight may take to finish once draining (default
    /// [`DEFAULT_DRAIN_TIMEOUT`]).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long to wait for each deregistration (default 5 s): a registry that is
    /// down must not keep the server from stopping; its lease or session expires.
    pub fn deregister_timeout(mut self, timeout: Duration) -> Self {
        self.deregister_timeout = timeout;
        self
    }

    /// Starts the sequence when `signal` resolves instead of on SIGTERM or Ctrl-C.
    pub fn on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Runs the server `serve` builds around the [`Drained`] future it is given,
    /// and the sequence when the signal comes. Returns the server's error if it
    /// fails, else how it stopped.
    pub async fn serve<F, E>(self, serve: impl FnOnce(Drained) -> F) -> Result<Stopped, E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let Shutdown {
            registrations,
            health,
            propagation_delay,
            drain_timeout,
            deregister_timeout,
            signal,
        } = self;
        let (drain, drained) = oneshot::channel();
        let server = serve(Drained(drained));
        tokio::pin!(server);
        let signal = signal.unwrap_or_else(|| Box::pin(stop_signal()));
        tokio::select! {
            result = &mut server => {
                // Ended (or failed) by itself: nothing to drain, but leave no
                // registration behind.
                deregister_all(registrations, deregister_timeout).await;
                return result.map(|()| Stopped::ServerEnded);
            }
            () = signal => {}
        }
        tracing::info!("shutting down: deregistering, then draining");
        // The server keeps serving while the registrations go away.
        let sequence = async {
            if let Some((reporter, services)) = &health {
                for service in services {
                    reporter
                        .set_service_status(service, ServingStatus::NotServing)
                        .await;
                }
            }
            deregister_all(registrations, deregister_timeout).await;
            tokio::time::sleep(propagation_delay).await;
        };
        tokio::select! {
            result = &mut server => return result.map(|()| Stopped::ServerEnded),
            () = sequence => {}
        }
        tracing::info!(
            ?drain_timeout,
            "draining: GOAWAY sent, waiting for RPCs in flight"
        );
        let _ = drain.send(());
        match tokio::time::timeout(drain_timeout, server).await {
            Ok(result) => result.map(|()| Stopped::Drained),
            Err(_) => {
                tracing::warn!(
                    ?drain_timeout,
                    "RPCs still in flight at the drain timeout; stopping anyway"
                );
                Ok(Stopped::DrainTimedOut)
            }
        }
    }
}

async fn deregister_all(registrations: Vec<Box<dyn Registration>>, timeout: Duration) {
    let pending: Vec<_> = registrations
        .into_iter()
        .map(|r| {
            let what = r.describe();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, r.deregister()).await {
                    Ok(()) => tracing::info!(%what, "deregistered"),
                    Err(_) => tracing::warn!(%what, ?timeout, "deregistration timed out; it expires by itself"),
                }
            })
        })
        .collect();
    for task in pending {
        let _ = task.await;
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT): how Kubernetes, systemd and a terminal
/// ask a server to stop.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
