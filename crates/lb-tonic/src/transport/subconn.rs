//! Subconns over real HTTP/2 connections: one task per subconn owns the connection
//! (driving h2 directly), follows gRPC's connection backoff, sends keepalive pings,
//! and reports every state change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, Scheme};
use lb_core::{
    Address, ConnectivityState, LoadReportWatch, SharedError, StateTracker, SubConnHandle,
    SubConnId, SubConnState,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connect::{self, Connection, Endpoint};
use super::frames::ConnSignals;
use super::health::{self, Health};
use super::load_reports::{self, LoadWatch, OobEnd};
use super::watch_stream::Outbound;
use crate::backoff::{Backoff, BackoffConfig};
use crate::error::TransportError;
use crate::introspect::{SocketStats, SubConnStats};

/// HTTP/2 keepalive pings, as grpc-go's `keepalive.ClientParameters`.
///
/// A ping is sent when nothing has been read from the server for `interval`; if
/// nothing answers within `timeout`, the connection is closed and the subconn goes
/// `IDLE`. The interval is at least [`Keepalive::MIN_INTERVAL`] (10 s, as grpc-go:
/// shorter ones are raised, with a warning) and is doubled for the whole channel
/// each time a server answers with `GOAWAY ENHANCE_YOUR_CALM "too_many_pings"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before a ping (at least [`Keepalive::MIN_INTERVAL`]).
    pub interval: Duration,
    /// How long to wait for a ping's answer before the connection counts as dead.
    pub timeout: Duration,
    /// Ping also when no RPC is in flight.
    pub while_idle: bool,
}

impl Keepalive {
    /// The shortest interval used: 10 s, grpc-go's floor. Servers close connections
    /// that ping more often than their enforcement policy allows (gRPC servers allow
    /// one ping per 5 minutes by default).
    pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
}

/// Connection settings shared by every subconn of a channel.
#[derive(Debug)]
pub(crate) struct TransportOptions {
    pub(crate) backoff: BackoffConfig,
    pub(crate) keepalive: Option<Keepalive>,
    /// The keepalive interval in force, in milliseconds: doubled on `too_many_pings`.
    pub(crate) keepalive_interval_ms: AtomicU64,
    /// `Builder::authority`: every connection's `:authority` unless an address
    /// carries its own.
    pub(crate) authority: Option<String>,
    /// The resolver's default authority for the target (`svc:443` of `dns:///svc:443`).
    pub(crate) target_authority: Option<String>,
    pub(crate) max_header_list_size: u32,
    /// Every request's `user-agent`, unless it has its own.
    pub(crate) user_agent: http::HeaderValue,
    /// HTTP/2 flow-control windows: each stream's, the connection's.
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    /// TCP keepalive idle time, when set.
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) tcp_nodelay: bool,
    /// Each attempt's timeout, when set; else the backoff's rule.
    pub(crate) connect_timeout: Option<Duration>,
    /// Whether subconns that ask for health checking get it (`Builder::disable_health_check`).
    pub(crate) health_checks: bool,
    /// The service config's `healthCheckConfig.serviceName`, when it has one.
    pub(crate) health_service: ArcSwapOption<String>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::TlsConfig>,
    /// `Builder::initial_stream_id` (tests only).
    #[cfg(feature = "test-hooks")]
    pub(crate) initial_stream_id: Option<u32>,
    /// The stream id past which a connection is drained, before h2 runs out of ids
    /// ([`DRAIN_AFTER_STREAM_ID`]; tests may move it).
    pub(crate) drain_after_stream_id: u32,
}

/// The stream id past which a connection is drained so that a new one takes the
/// next RPCs, before h2 runs out of stream ids (2^31 - 1): grpc-go's `MaxStreamID`,
/// three quarters of the space.
pub(crate) const DRAIN_AFTER_STREAM_ID: u32 = i32::MAX as u32 / 4 * 3;

impl TransportOptions {
    fn scheme(&self) -> Scheme {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return Scheme::HTTPS;
        }
        Scheme::HTTP
    }

    /// The `:authority` of connections to `address`: the address's own
    /// [`lb_core::Authority`], else the channel's, else the target's host, else the
    /// address itself (`localhost` for Unix sockets), as grpc-go chooses.
    pub(crate) fn authority_for<'a>(
        &'a self,
        address: &'a Address,
        endpoint: &'a Endpoint,
    ) -> &'a str {
        address
            .authority()
            .or(self.authority.as_deref())
            .or(self.target_authority.as_deref())
            .or(endpoint.default_authority())
            .unwrap_or(address.addr())
    }

    pub(crate) fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms.load(Ordering::Relaxed))
    }

    /// A server said `too_many_pings`: ping half as often from now on.
    pub(crate) fn back_off_keepalive(&self, addr: &str) {
        if self.keepalive.is_none() {
            return;
        }
        let previous = self
            .keepalive_interval_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ms| {
                Some(ms.saturating_mul(2))
            })
            .unwrap_or_default();
        tracing::warn!(
            %addr,
            interval = ?Duration::from_millis(previous.saturating_mul(2)),
            "the server answered keepalive pings with GOAWAY too_many_pings; doubling the keepalive interval"
        );
    }
}

/// Where subconn tasks report their state changes: the control task, which owns the
/// subconns' balancer. Called from the subconn's task; must not block (enqueue).
pub(crate) trait SubConnEvents: Send + Sync + 'static {
    /// Subconn `id` moved to `state`; calls for one subconn come in order.
    fn subconn_state(&self, id: SubConnId, state: SubConnState);
}

/// A ready connection: what an RPC needs to send on it.
pub(crate) struct Connected {
    pub(crate) sender: SendRequest<Bytes>,
    /// False while its health check says the server is not serving.
    healthy: AtomicBool,
    /// Whether RPCs count their streams (keepalive without `while_idle` needs it).
    pub(crate) count_streams: bool,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    pub(crate) signals: Arc<ConnSignals>,
    draining: AtomicBool,
    cmds: mpsc::UnboundedSender<Cmd>,
    /// The subconn's load-report watch (per-call reports are handed to it).
    pub(crate) load_watch: Arc<LoadWatch>,
    /// The connection's counters, when the channel counts RPCs.
    pub(crate) stats: Option<Arc<SocketStats>>,
    /// The connection in channelz (always registered).
    socket: Arc<SocketStats>,
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
    /// The policy's load-report watch changed.
    LoadReports,
}

/// The transport behind a [`lb_core::SubConn`].
pub(crate) struct Transport {
    cmds: mpsc::UnboundedSender<Cmd>,
    connected: Arc<ArcSwapOption<Connected>>,
    load_watch: Arc<LoadWatch>,
}

impl SubConnHandle for Transport {
    fn connect(&self) {
        let _ = self.cmds.send(Cmd::Connect);
    }

    fn shutdown(&self) {
        let _ = self.cmds.send(Cmd::Shutdown);
    }

    fn watch_load_reports(&self, watch: Option<LoadReportWatch>) -> bool {
        self.load_watch.set(watch);
        let _ = self.cmds.send(Cmd::LoadReports);
        true
    }
}

impl Transport {
    /// The connection, while the subconn is ready (and healthy) and not draining.
    /// One atomic load.
    #[inline]
    pub(crate) fn connected(&self) -> Option<Arc<Connected>> {
        self.connected
            .load_full()
            .filter(|c| !c.draining.load(Ordering::Acquire) && c.healthy.load(Ordering::Acquire))
    }
}

/// A transport whose task has not started yet (it needs the subconn's id).
pub(crate) struct Unstarted {
    cmds: mpsc::UnboundedReceiver<Cmd>,
    drain: mpsc::WeakUnboundedSender<Cmd>,
    connected: Arc<ArcSwapOption<Connected>>,
    /// The policy asked for health checking.
    health: bool,
    load_watch: Arc<LoadWatch>,
}

/// A transport for one subconn; `health`: its policy asked for health checking.
pub(crate) fn new_transport(health: bool) -> (Transport, Unstarted) {
    let (tx, rx) = mpsc::unbounded_channel();
    let connected = Arc::new(ArcSwapOption::empty());
    let load_watch = Arc::new(LoadWatch::default());
    (
        Transport {
            cmds: tx.clone(),
            connected: connected.clone(),
            load_watch: load_watch.clone(),
        },
        Unstarted {
            cmds: rx,
            // A weak sender: the task must not keep its own command channel open, or
            // it would never see every handle dropped.
            drain: tx.downgrade(),
            connected,
            health,
            load_watch,
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
        events: Arc<dyn SubConnEvents>,
        options: Arc<TransportOptions>,
        stats: Arc<SubConnStats>,
    ) {
        tokio::spawn(run(id, address, self, events, options, stats));
    }
}

struct Reporter {
    id: SubConnId,
    addr: Arc<str>,
    tracker: StateTracker,
    events: Arc<dyn SubConnEvents>,
    stats: Arc<SubConnStats>,
    /// The current connection has been `READY` (its health check passed once): its
    /// loss is a lost connection, not a failed attempt, even while a reopened health
    /// watch has it `CONNECTING`.
    was_ready: bool,
}

impl Reporter {
    fn report(&mut self, state: ConnectivityState, error: Option<SharedError>) {
        if state == ConnectivityState::Ready {
            self.was_ready = true;
        }
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
        self.stats.state(
            state,
            error.as_ref().map(|e| lb_core::error_chain(e.as_ref())),
        );
        self.events
            .subconn_state(self.id, SubConnState { state, error });
    }
}

/// Waits for a shutdown (or for every handle to be dropped), ignoring the rest.
async fn shutdown_requested(cmds: &mut mpsc::UnboundedReceiver<Cmd>) {
    while let Some(Cmd::Connect | Cmd::Drain | Cmd::LoadReports) = cmds.recv().await {}
}

/// How a ready connection stopped being used.
enum Ended {
    /// It closed, or was closed for an unanswered keepalive ping.
    Closed(TransportError),
    /// The server sent GOAWAY (or an RPC saw one): no new RPCs, the ones in flight
    /// finish on the connection, driven in the background.
    Draining(Connection),
    /// The balancer shut the subconn down.
    Shutdown(Connection),
}

async fn run(
    id: SubConnId,
    address: Address,
    unstarted: Unstarted,
    events: Arc<dyn SubConnEvents>,
    options: Arc<TransportOptions>,
    stats: Arc<SubConnStats>,
) {
    let Unstarted {
        mut cmds,
        drain,
        connected,
        health,
        load_watch,
    } = unstarted;
    let addr: Arc<str> = address.addr().into();
    let mut reporter = Reporter {
        id,
        addr: addr.clone(),
        tracker: StateTracker::new(),
        events,
        stats: stats.clone(),
        was_ready: false,
    };
    let mut backoff = Backoff::new(options.backoff);
    let endpoint = Endpoint::parse(&addr);
    let authority_str = options.authority_for(&address, &endpoint).to_owned();
    let authority: Option<Authority> = authority_str.parse().ok();
    let tls_name = host_of(&authority_str).to_owned();

    'idle: loop {
        match cmds.recv().await {
            Some(Cmd::Connect) => {}
            // For a connection already gone; a watch starts with the next one.
            Some(Cmd::Drain | Cmd::LoadReports) => continue 'idle,
            Some(Cmd::Shutdown) | None => break 'idle,
        }
        reporter.was_ready = false;
        reporter.report(ConnectivityState::Connecting, None);
        let timeout = options
            .connect_timeout
            .unwrap_or_else(|| backoff.connect_timeout());
        let attempt = match &authority {
            Some(authority) => {
                tokio::select! {
                    r = connect::connect(&addr, &endpoint, &tls_name, &options, timeout) => {
                        r.map(|c| (c, authority.clone()))
                    }
                    () = shutdown_requested(&mut cmds) => break 'idle,
                }
            }
            None => Err(TransportError::BadAddress {
                addr: authority_str.clone(),
            }),
        };
        let failure = match attempt {
            Ok(((sender, connection, signals), authority)) => {
                let Some(drain) = drain.upgrade() else {
                    break 'idle; // every handle is gone
                };
                // Health-checked subconns stay CONNECTING until the first answer.
                let health_service = health
                    .then(|| options.health_service.load_full())
                    .flatten()
                    .filter(|_| options.health_checks);
                let scheme = options.scheme();
                let socket = SocketStats::new(
                    stats.clone(),
                    signals.ends.local.clone(),
                    signals.ends.remote.clone(),
                    signals.ends.tls.clone(),
                );
                let conn = Arc::new(Connected {
                    sender: sender.clone(),
                    healthy: AtomicBool::new(health_service.is_none()),
                    count_streams: options.keepalive.is_some_and(|k| !k.while_idle),
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    signals: signals.clone(),
                    draining: AtomicBool::new(false),
                    cmds: drain,
                    load_watch: load_watch.clone(),
                    stats: stats.counts_rpcs().then(|| socket.clone()),
                    socket: socket.clone(),
                });
                connected.store(Some(conn.clone()));
                if health_service.is_none() {
                    // The server has spoken: only now does the backoff start over.
                    backoff.reset();
                    reporter.report(ConnectivityState::Ready, None);
                }
                // Where the health and load-report streams go.
                let to = Outbound {
                    sender: sender.clone(),
                    scheme,
                    authority,
                    signals: conn.count_streams.then(|| signals.clone()),
                    user_agent: options.user_agent.clone(),
                };
                let checker = health_service.map(|service| HealthChecker {
                    service,
                    to: to.clone(),
                    watch: None,
                    reopen_at: Some(Instant::now()),
                    backoff: Backoff::new(options.backoff),
                    received: false,
                    unimplemented_logged: false,
                });
                let ended = serve(Serving {
                    connection,
                    _sender: sender,
                    signals: &signals,
                    cmds: &mut cmds,
                    options: &options,
                    addr: &addr,
                    reporter: &mut reporter,
                    connected: &conn,
                    checker,
                    backoff: &mut backoff,
                    oob: OobReporter {
                        watch: &load_watch,
                        to,
                        running: None,
                        reopen_at: None,
                        backoff: Backoff::new(options.backoff),
                        unimplemented: false,
                    },
                })
                .await;
                connected.store(None);
                if signals.last_goaway().is_some_and(|g| g.is_too_many_pings()) {
                    options.back_off_keepalive(&addr);
                }
                let error = match ended {
                    Ended::Closed(error) => error,
                    Ended::Draining(connection) => {
                        // No new RPCs here; the ones in flight finish in the background
                        // while the balancer decides whether to reconnect. The socket
                        // stays in channelz until then.
                        tokio::spawn(async move {
                            let _ = connection.await;
                            drop(socket);
                        });
                        TransportError::GoAway {
                            addr: addr.to_string(),
                        }
                    }
                    Ended::Shutdown(connection) => {
                        // No new RPCs; the ones in flight finish, then the connection
                        // closes (every sender is gone).
                        tokio::spawn(async move {
                            let _ = connection.await;
                            drop(socket);
                        });
                        break 'idle;
                    }
                };
                if !reporter.was_ready {
                    // Lost before its first health answer: a failed attempt.
                    Some(error)
                } else {
                    let error: SharedError = Arc::new(error);
                    if reporter.tracker.get() == ConnectivityState::Connecting {
                        // Lost while a health watch reopened: CONNECTING cannot go
                        // IDLE but through TRANSIENT_FAILURE.
                        reporter.report(ConnectivityState::TransientFailure, Some(error.clone()));
                    }
                    reporter.report(ConnectivityState::Idle, Some(error));
                    None
                }
            }
            Err(error) => Some(error),
        };
        if let Some(error) = failure {
            // Already failing (its health check never passed): the backoff follows.
            if reporter.tracker.get() != ConnectivityState::TransientFailure {
                reporter.report(ConnectivityState::TransientFailure, Some(Arc::new(error)));
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown_requested(&mut cmds) => break 'idle,
            }
            reporter.report(ConnectivityState::Idle, None);
        }
    }
    connected.store(None);
    reporter.report(ConnectivityState::Shutdown, None);
}

/// A ready connection's health check (gRFC A17).
struct HealthChecker {
    service: Arc<String>,
    /// The connection the watch opens on.
    to: Outbound,
    /// The running watch: its task (aborted, and its stream reset, when this is
    /// dropped with the connection or replaced) and its answers.
    watch: Option<(AbortOnDrop<()>, mpsc::UnboundedReceiver<Health>)>,
    /// When to (re)open the watch.
    reopen_at: Option<Instant>,
    backoff: Backoff,
    /// The running watch has answered: when it ends, the next one opens at once.
    received: bool,
    unimplemented_logged: bool,
}

impl HealthChecker {
    fn start(&mut self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(health::watch(self.to.clone(), self.service.to_string(), tx));
        self.watch = Some((AbortOnDrop(task), rx));
        self.reopen_at = None;
        self.received = false;
    }

    /// The next answer, or a never-ready future without a watch.
    async fn next(&mut self) -> Option<Health> {
        match &mut self.watch {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The watch ended: when to open the next one. After an answer, at once, with
    /// the backoff started over; else after the backoff (gRFC A17).
    fn ended(&mut self) {
        self.watch = None;
        if self.received {
            self.backoff.reset();
            self.reopen_at = Some(Instant::now());
        } else {
            self.reopen_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }
}

/// What [`serve`] drives.
struct Serving<'a> {
    connection: Connection,
    /// Held until the connection is no longer served: h2 closes a connection whose
    /// every sender is gone.
    _sender: SendRequest<Bytes>,
    signals: &'a ConnSignals,
    cmds: &'a mut mpsc::UnboundedReceiver<Cmd>,
    options: &'a TransportOptions,
    addr: &'a str,
    reporter: &'a mut Reporter,
    connected: &'a Connected,
    checker: Option<HealthChecker>,
    backoff: &'a mut Backoff,
    oob: OobReporter<'a>,
}

/// A ready connection's out-of-band load-report stream, while a policy watches the
/// subconn ([`SubConnHandle::watch_load_reports`]).
struct OobReporter<'a> {
    watch: &'a LoadWatch,
    to: Outbound,
    /// The stream's task; aborted when dropped (the connection ended) or replaced.
    running: Option<AbortOnDrop<OobEnd>>,
    /// When to (re)open the stream after it ended.
    reopen_at: Option<Instant>,
    backoff: Backoff,
    /// The server has no `OpenRcaService`: not asked again on this connection.
    unimplemented: bool,
}

impl OobReporter<'_> {
    /// Starts (or restarts, or stops) the stream to follow the current watch.
    fn follow(&mut self) {
        self.running = None;
        self.reopen_at = None;
        let Some((interval, listener)) = self.watch.out_of_band() else {
            return;
        };
        if self.unimplemented {
            return;
        }
        self.running = Some(AbortOnDrop(tokio::spawn(load_reports::stream(
            self.to.clone(),
            interval,
            listener,
        ))));
    }

    /// The stream ended: open it again after a backoff, unless the server has no
    /// such service.
    fn ended(&mut self, end: Result<OobEnd, tokio::task::JoinError>, addr: &str) {
        self.running = None;
        let end = match end {
            Ok(end) => end,
            Err(e) => OobEnd {
                unimplemented: false,
                received: false,
                why: format!("the load-report task failed: {e}"),
            },
        };
        if end.unimplemented {
            self.unimplemented = true;
            tracing::error!(%addr, "the server does not implement xds.service.orca.v3.OpenRcaService; no out-of-band load reports on this connection");
            return;
        }
        if end.received {
            self.backoff.reset();
        }
        tracing::debug!(%addr, why = %end.why, "the out-of-band load-report stream ended");
        self.reopen_at = Some(Instant::now() + self.backoff.next_delay());
    }

    async fn next_end(&mut self) -> Result<OobEnd, tokio::task::JoinError> {
        match &mut self.running {
            Some(task) => (&mut task.0).await,
            None => std::future::pending().await,
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Serving<'_> {
    /// Opens the health watch again; the subconn is `CONNECTING` while it opens,
    /// until its first answer (gRFC A17).
    fn reopen_health_watch(&mut self) {
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        checker.start();
        if self.reporter.tracker.get() == ConnectivityState::TransientFailure {
            self.reporter.report(ConnectivityState::Connecting, None);
        }
    }

    /// Reports what the health service said.
    fn on_health(&mut self, health: Option<Health>) {
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        let addr = self.addr;
        let report_failure = |reporter: &mut Reporter, why: String| {
            if reporter.tracker.get() != ConnectivityState::TransientFailure {
                let error = lb_core::HealthCheckFailed {
                    address: addr.to_owned(),
                    reason: why,
                };
                reporter.report(ConnectivityState::TransientFailure, Some(Arc::new(error)));
            }
        };
        match health {
            Some(Health::Serving) => {
                checker.received = true;
                checker.backoff.reset();
                self.connected.healthy.store(true, Ordering::Release);
                if self.reporter.tracker.get() != ConnectivityState::Ready {
                    self.backoff.reset();
                    self.reporter.report(ConnectivityState::Ready, None);
                }
            }
            Some(Health::NotServing(status)) => {
                // An answer all the same: the backoff starts over (gRFC A17).
                checker.received = true;
                checker.backoff.reset();
                self.connected.healthy.store(false, Ordering::Release);
                report_failure(
                    self.reporter,
                    format!("service {:?} is {status}", checker.service),
                );
            }
            Some(Health::Unimplemented) => {
                // gRFC A17: a server without the health service counts as healthy;
                // say so once, loudly, since the config asked for checks.
                if !checker.unimplemented_logged {
                    checker.unimplemented_logged = true;
                    tracing::error!(%addr, service = %checker.service, "the server does not implement grpc.health.v1.Health; health checking is off for this connection");
                }
                self.connected.healthy.store(true, Ordering::Release);
                checker.watch = None;
                if self.reporter.tracker.get() != ConnectivityState::Ready {
                    self.backoff.reset();
                    self.reporter.report(ConnectivityState::Ready, None);
                }
            }
            Some(Health::Ended(why)) => self.watch_ended(why),
            None => self.watch_ended("the health watch stopped".to_owned()),
        }
    }

    /// The watch ended: the subconn is `TRANSIENT_FAILURE` until a new watch says
    /// otherwise; the new one opens at once if the last one answered, else after
    /// the backoff (gRFC A17).
    fn watch_ended(&mut self, why: String) {
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        self.connected.healthy.store(false, Ordering::Release);
        checker.ended();
        if self.reporter.tracker.get() != ConnectivityState::TransientFailure {
            let error = lb_core::HealthCheckFailed {
                address: self.addr.to_owned(),
                reason: format!("service {:?}: {why}", checker.service),
            };
            self.reporter
                .report(ConnectivityState::TransientFailure, Some(Arc::new(error)));
        }
    }
}

/// Drives a ready connection, with keepalive pings and its health check, until it
/// ends.
async fn serve(mut this: Serving<'_>) -> Ended {
    let keepalive = this.options.keepalive;
    let interval = this.options.keepalive_interval();
    let mut pinger = keepalive.and_then(|_| this.connection.ping_pong());
    let mut next_check = Instant::now() + interval;
    // While a ping is out: when it times out.
    let mut pong_due: Option<Instant> = None;
    let addr = this.addr.to_owned();
    this.oob.follow();
    loop {
        let reopen_at = this.checker.as_ref().and_then(|c| c.reopen_at);
        let oob_reopen_at = this.oob.reopen_at;
        tokio::select! {
            ended = &mut this.connection => {
                return Ended::Closed(TransportError::Closed { addr, source: ended.err() });
            }
            cmd = this.cmds.recv() => match cmd {
                Some(Cmd::Connect) => {}
                Some(Cmd::LoadReports) => this.oob.follow(),
                Some(Cmd::Drain) => return Ended::Draining(this.connection),
                Some(Cmd::Shutdown) | None => return Ended::Shutdown(this.connection),
            },
            () = this.signals.goaway() => return Ended::Draining(this.connection),
            health = next_health(&mut this.checker) => this.on_health(health),
            () = sleep_until_some(reopen_at) => this.reopen_health_watch(),
            end = this.oob.next_end() => this.oob.ended(end, &addr),
            () = sleep_until_some(oob_reopen_at) => this.oob.follow(),
            () = tokio::time::sleep_until(next_check), if pinger.is_some() && pong_due.is_none() => {
                let now = Instant::now();
                let quiet_until = Instant::from_std(this.signals.last_read()) + interval;
                let while_idle = keepalive.is_some_and(|k| k.while_idle);
                if quiet_until > now {
                    next_check = quiet_until; // something was read meanwhile
                } else if !while_idle && this.signals.active_streams() == 0 {
                    next_check = now + interval;
                } else if let Some(p) = &mut pinger {
                    if let Err(e) = p.send_ping(h2::Ping::opaque()) {
                        return Ended::Closed(TransportError::Closed { addr, source: Some(e) });
                    }
                    this.connected.socket.keepalive_sent();
                    let timeout = keepalive.map_or(interval, |k| k.timeout);
                    pong_due = Some(now + timeout);
                }
            }
            pong = poll_pong(&mut pinger), if pong_due.is_some() => match pong {
                Ok(()) => {
                    pong_due = None;
                    next_check = Instant::now() + interval;
                }
                Err(e) => return Ended::Closed(TransportError::Closed { addr, source: Some(e) }),
            },
            () = sleep_until_some(pong_due) => {
                let after = keepalive.map_or(interval, |k| k.timeout);
                tracing::debug!(%addr, ?after, "keepalive ping unanswered; closing the connection");
                return Ended::Closed(TransportError::KeepaliveTimeout { addr, after });
            }
        }
    }
}

async fn next_health(checker: &mut Option<HealthChecker>) -> Option<Health> {
    match checker {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_pong(pinger: &mut Option<h2::PingPong>) -> Result<(), h2::Error> {
    match pinger {
        Some(p) => std::future::poll_fn(|cx| p.poll_pong(cx)).await.map(drop),
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The host part of `host:port` or `[v6]:port`: the TLS server name of an authority.
pub(crate) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_authorities() {
        assert_eq!(host_of("localhost:443"), "localhost");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:50051"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("svc.example.com:443"), "svc.example.com");
    }

    fn options() -> TransportOptions {
        TransportOptions {
            backoff: BackoffConfig::default(),
            keepalive: None,
            keepalive_interval_ms: AtomicU64::new(10_000),
            authority: None,
            target_authority: None,
            max_header_list_size: 16 << 20,
            user_agent: http::HeaderValue::from_static("test"),
            stream_window: 65_535,
            connection_window: 65_535,
            tcp_keepalive: None,
            tcp_nodelay: true,
            connect_timeout: None,
            health_checks: true,
            health_service: ArcSwapOption::empty(),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "test-hooks")]
            initial_stream_id: None,
            drain_after_stream_id: DRAIN_AFTER_STREAM_ID,
        }
    }

    #[test]
    fn authority_precedence_is_grpc_gos() {
        let mut o = options();
        let plain = Address::new("10.0.0.1:443");
        let tagged =
            Address::new("10.0.0.2:443").with_attribute(lb_core::Authority::new("shard-2:443"));
        let unix = Address::new("unix:/tmp/a.sock");
        let ep = |a: &Address| Endpoint::parse(a.addr());
        assert_eq!(o.authority_for(&plain, &ep(&plain)), "10.0.0.1:443");
        assert_eq!(o.authority_for(&unix, &ep(&unix)), "localhost");
        o.target_authority = Some("svc.example.com:443".into());
        assert_eq!(o.authority_for(&plain, &ep(&plain)), "svc.example.com:443");
        o.authority = Some("override:1".into());
        assert_eq!(o.authority_for(&plain, &ep(&plain)), "override:1");
        assert_eq!(
            o.authority_for(&tagged, &ep(&tagged)),
            "shard-2:443",
            "the address's own wins"
        );
    }

    #[test]
    fn too_many_pings_doubles_the_interval() {
        let mut o = options();
        o.back_off_keepalive("a:1");
        assert_eq!(
            o.keepalive_interval(),
            Duration::from_secs(10),
            "no keepalive, no change"
        );
        o.keepalive = Some(Keepalive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            while_idle: false,
        });
        o.back_off_keepalive("a:1");
        o.back_off_keepalive("a:1");
        assert_eq!(o.keepalive_interval(), Duration::from_secs(40));
    }
}
