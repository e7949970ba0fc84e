//! [`LbChannel`] and its [`Builder`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "xds")]
pub mod xds;

use lb_core::{BalancerRegistry, ConnectivityState, ResolverRegistry, ServiceConfig};
use tokio::sync::{mpsc, watch};
use tonic::body::Body;

use crate::backoff::BackoffConfig;
use crate::buffer::BufferLimits;
use crate::call::{self, ResponseBody};
use crate::control::{Control, ControlParts, Core, Msg, RetrySettings, policy_name};
use crate::error::Error;
use crate::introspect::{ChannelSnapshot, Stats};
use crate::transport::{DRAIN_AFTER_STREAM_ID, Keepalive, TransportOptions};

/// The idle timeout by default: 30 minutes, as grpc-go.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The largest header list (headers or trailers) accepted from a server by default:
/// 16 MiB, as grpc-go.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 << 20;

/// A load-balancing gRPC channel: give it to any generated tonic client.
///
/// Cheap to clone (one reference count); every clone shares the same resolver,
/// balancer and connections. When the last clone is dropped (or [`LbChannel::close`]
/// is called), the resolver stops, RPCs still waiting for a connection fail with
/// `CANCELLED`, and every connection closes once its in-flight RPCs end.
#[derive(Clone)]
pub struct LbChannel {
    handle: Arc<Handle>,
}

/// Owned by the `LbChannel` clones only: its drop closes the channel.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.core.tx.send(Msg::Close);
    }
}

impl std::fmt::Debug for LbChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbChannel")
            .field("state", &self.state())
            .finish()
    }
}

impl LbChannel {
    /// A builder for a channel to `target` (`static:///a:1,b:2`, `passthrough:///a:1`,
    /// `host:port`, or any scheme the resolver registry serves).
    pub fn builder(target: impl Into<String>) -> Builder {
        Builder::new(target.into())
    }

    /// The channel's aggregate connectivity state now.
    pub fn state(&self) -> ConnectivityState {
        *self.handle.core.state.borrow()
    }

    /// A receiver that sees every change of the aggregate state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectivityState> {
        self.handle.core.state.subscribe()
    }

    /// Closes the channel for every clone: the resolver stops, new RPCs and those
    /// waiting for a connection fail with `CANCELLED` ("the channel is closing"), and
    /// each connection closes once its in-flight RPCs end. Idempotent.
    pub fn close(&self) {
        let _ = self.handle.core.tx.send(Msg::Close);
    }

    /// Waits until the aggregate state is `state` or `timeout` passes; returns whether
    /// it was reached.
    pub async fn wait_for_state(&self, state: ConnectivityState, timeout: Duration) -> bool {
        let mut rx = self.watch_state();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s == state))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The future of one RPC through an [`LbChannel`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, tonic::Status>> + Send>>;

impl tower_service::Service<http::Request<Body>> for LbChannel {
    type Response = http::Response<ResponseBody>;
    type Error = tonic::Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Never busy: RPCs that cannot be sent yet wait inside their own future,
        // bounded by their deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(call::call(self.handle.core.clone(), request))
    }
}

impl LbChannel {
    /// The keepalive interval in force: the configured one raised to
    /// [`Keepalive::MIN_INTERVAL`], doubled for each `too_many_pings` GOAWAY a server
    /// sent. `None` without keepalive.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        let transport = &self.handle.core.transport;
        transport.keepalive.map(|_| transport.keepalive_interval())
    }

    /// The policy serving RPCs now (the default, or the one the service config
    /// chose).
    pub fn policy(&self) -> String {
        self.handle.core.published.load().policy.to_string()
    }

    /// What the channel is doing now: its target, policy and state, what the
    /// resolver said last, and each subconn with its state, last error and RPC
    /// counts. Costs a lock per call to this method, nothing on the RPC path beyond
    /// the counters (see [`Builder::disable_metrics`]).
    pub fn snapshot(&self) -> ChannelSnapshot {
        let core = &self.handle.core;
        let published = core.published.load();
        ChannelSnapshot {
            target: core.stats.target.clone(),
            channelz_id: core
                .channelz
                .as_ref()
                .map(lb_core::channelz::Registration::id),
            policy: published.policy.to_string(),
            state: published.state,
            picker_updates: *core.picker_version.borrow(),
            calls_in_flight: core.activity.in_flight() as u64,
            resolver: core.stats.resolver_snapshot(),
            subconns: core.stats.subconn_snapshots(),
        }
    }
}

/// Configures an [`LbChannel`].
#[must_use]
pub struct Builder {
    target: String,
    resolvers: ResolverRegistry,
    balancers: BalancerRegistry,
    default_service_config: Option<String>,
    policy: Option<String>,
    use_resolver_config: bool,
    wait_for_ready: bool,
    backoff: BackoffConfig,
    keepalive: Option<Keepalive>,
    authority: Option<String>,
    idle_timeout: Option<Duration>,
    max_header_list_size: u32,
    retries: bool,
    retry_buffer: BufferLimits,
    health_checks: bool,
    metrics: bool,
    channelz: bool,
    user_agent: Option<String>,
    stream_window: u32,
    connection_window: u32,
    tcp_keepalive: Option<Duration>,
    tcp_nodelay: bool,
    connect_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::TlsConfig>,
    #[cfg(feature = "test-hooks")]
    initial_stream_id: Option<u32>,
    #[cfg(feature = "test-hooks")]
    drain_after_stream_id: Option<u32>,
}

impl Builder {
    fn new(target: String) -> Self {
        Self {
            target,
            resolvers: default_resolvers(),
            balancers: default_balancers(),
            default_service_config: None,
            policy: None,
            use_resolver_config: true,
            wait_for_ready: false,
            backoff: BackoffConfig::default(),
            keepalive: None,
            authority: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            retries: true,
            retry_buffer: BufferLimits::default(),
            health_checks: true,
            metrics: true,
            channelz: true,
            user_agent: None,
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            tcp_keepalive: None,
            tcp_nodelay: true,
            connect_timeout: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "test-hooks")]
            initial_stream_id: None,
            #[cfg(feature = "test-hooks")]
            drain_after_stream_id: None,
        }
    }

    /// The resolvers to choose from by the target's scheme (default:
    /// `lb_resolvers::registry()`).
    pub fn resolvers(mut self, resolvers: ResolverRegistry) -> Self {
        self.resolvers = resolvers;
        self
    }

    /// The policies a service config may name (default: `lb_policies::registry()`).
    pub fn balancers(mut self, balancers: BalancerRegistry) -> Self {
        self.balancers = balancers;
        self
    }

    /// The service config (JSON) used until, and unless, the resolver sends one.
    /// With [`Builder::policy`] too, the policy replaces its `loadBalancingConfig`
    /// (and only that), whichever is called first.
    pub fn default_service_config(mut self, json: impl Into<String>) -> Self {
        self.default_service_config = Some(json.into());
        self
    }

    /// The load-balancing policy of the default service config, by its registered
    /// name, with its default config: `.policy("round_robin")`. It replaces the
    /// `loadBalancingConfig` of [`Builder::default_service_config`] and keeps the
    /// rest (method configs, retry policies, health checking), whichever of the two
    /// is called first. As with any default config, a service config from the
    /// resolver takes over (see [`Builder::disable_resolver_service_config`]). An
    /// unregistered name is a build error that lists the registered ones.
    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = Some(policy.to_owned());
        self
    }

    /// Ignore service configs from the resolver; use the default one only.
    pub fn disable_resolver_service_config(mut self) -> Self {
        self.use_resolver_config = false;
        self
    }

    /// Whether RPCs wait for a ready subconn instead of failing while the channel is
    /// in `TRANSIENT_FAILURE` (default `false`). Per call: [`crate::WaitForReady`].
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.wait_for_ready = wait;
        self
    }

    /// Connection backoff (default: gRPC's). Checked by [`Builder::build`]
    /// ([`BackoffConfig::validate`]).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// HTTP/2 keepalive pings (default: none). An interval under
    /// [`Keepalive::MIN_INTERVAL`] is raised to it, with a warning; a zero timeout is
    /// a build error.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// After this long with no RPC, the channel goes `IDLE`: it closes its
    /// connections and its resolver, and the next RPC brings them back (default
    /// [`DEFAULT_IDLE_TIMEOUT`], 30 minutes; `None` keeps the channel connected).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Turns client-side health checking (gRFC A17) off: subconns count as ready as
    /// soon as they connect, whatever the service config's `healthCheckConfig` says.
    pub fn disable_health_check(mut self) -> Self {
        self.health_checks = false;
        self
    }

    /// Stops counting RPCs: no per-subconn RPC counts in [`LbChannel::snapshot`] and
    /// no channel metrics (see `docs/channel.md`), even with a `metrics` recorder
    /// installed. Subconn states, errors and resolver updates are still in the
    /// snapshot. Counting costs a few relaxed atomic additions per RPC; this exists
    /// mostly to measure that.
    pub fn disable_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Whether the channel is in channelz (gRFC A14; on by default): registered with
    /// its subchannels and connections in `lb_core::channelz::registry()`, which
    /// `lb_server::admin` serves, with their traces and, while the per-RPC counters
    /// are on ([`Builder::disable_metrics`]), channelz's call, stream and message
    /// counts. Off, the channel is not listed and counts only what
    /// [`LbChannel::snapshot`] shows.
    pub fn channelz(mut self, on: bool) -> Self {
        self.channelz = on;
        self
    }

    /// Turns the service config's `retryPolicy` and `hedgingPolicy` off (gRFC A6's
    /// "disabling retries", for callers that retry themselves). Transparent retries
    /// of RPCs no server processed still happen.
    pub fn disable_retries(mut self) -> Self {
        self.retries = false;
        self
    }

    /// How much request data the channel keeps so that retries, hedges and
    /// transparent retries can replay it (default 1 MiB per call, 16 MiB for the
    /// channel). A call whose request outgrows it commits to its current attempt.
    pub fn retry_buffer(mut self, limits: BufferLimits) -> Self {
        self.retry_buffer = limits;
        self
    }

    /// The largest header list (response headers or trailers, such as a large
    /// `grpc-status-details-bin`) accepted from a server (default
    /// [`DEFAULT_MAX_HEADER_LIST_SIZE`], 16 MiB). A larger one fails the RPC.
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }

    /// The `user-agent` of every request the channel sends (RPCs, health and load
    /// report streams): `"{user_agent} grpc-lb-rust/<version>"` (default: the
    /// library's part alone), after the request's own if it carries one. As tonic's
    /// `Endpoint::user_agent` and grpc-go's `WithUserAgent`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// HTTP/2's initial flow-control window of each stream, in bytes (default
    /// [`DEFAULT_STREAM_WINDOW`], 2 MiB, as hyper's client). As tonic's
    /// `Endpoint::initial_stream_window_size`; at most 2^31 - 1.
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.stream_window = bytes;
        self
    }

    /// HTTP/2's flow-control window of each connection, in bytes (default
    /// [`DEFAULT_CONNECTION_WINDOW`], 5 MiB, as hyper's client). As tonic's
    /// `Endpoint::initial_connection_window_size`; at most 2^31 - 1.
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.connection_window = bytes;
        self
    }

    /// TCP keepalive probes on every connection after this long idle (default:
    /// none, the OS default), in whole seconds (rounded up) from 1 s to 32,767 s,
    /// the kernel's range. As tonic's `Endpoint::tcp_keepalive`. HTTP/2 pings,
    /// which also see a stalled server process, are [`Builder::keepalive`].
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// `TCP_NODELAY` on every connection (default `true`: small messages are not
    /// held back by Nagle's algorithm). As tonic's `Endpoint::tcp_nodelay`.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// How long each connection attempt (TCP, TLS, and the server's HTTP/2
    /// preface) may take, at most a day. As tonic's `Endpoint::connect_timeout`. By default,
    /// grpc-go's rule: the larger of [`BackoffConfig::min_connect_timeout`] (20 s)
    /// and the current backoff.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Connect with TLS (feature `tls`); requests use the `https` scheme.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::transport::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The `:authority` of every request, and the name TLS certificates must cover
    /// unless [`crate::TlsConfig::server_name`] says otherwise.
    ///
    /// By default, as in grpc-go: the target's host when it names one
    /// (`svc.example.com:443` for `dns:///svc.example.com:443`, see
    /// `ResolverBuilder::authority`), else each connection's own address (static
    /// lists, registries; `localhost` for Unix sockets). An address's
    /// [`lb_core::Authority`] attribute wins over both.
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Test hook (feature `test-hooks`): every connection's first stream gets this
    /// id (odd, as a client's are) instead of 1, so that tests reach the end of the
    /// stream-id space without 2^30 RPCs.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn initial_stream_id(mut self, id: u32) -> Self {
        self.initial_stream_id = Some(id);
        self
    }

    /// Test hook (feature `test-hooks`): drain connections past this stream id
    /// instead of grpc-go's three quarters of the space (`u32::MAX`: never, so that
    /// connections run out of ids).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn drain_after_stream_id(mut self, id: u32) -> Self {
        self.drain_after_stream_id = Some(id);
        self
    }

    /// Starts the resolver and the control task. Must be called within a tokio
    /// runtime. Fails on a bad target, an unknown scheme, an invalid default service
    /// config, a setting out of range, or a resolver that refuses the target.
    pub fn build(self) -> Result<LbChannel, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (target, resolver_builder) = self
            .resolvers
            .resolve(&self.target)
            .map_err(Error::Target)?;
        let mut default_config = match &self.default_service_config {
            Some(json) => {
                ServiceConfig::parse(json, &self.balancers).map_err(Error::ServiceConfig)?
            }
            None => ServiceConfig::default(),
        };
        if let Some(policy) = &self.policy {
            let chosen = self
                .balancers
                .require(policy)
                .and_then(|_| {
                    let json = format!(
                        r#"{{"loadBalancingConfig": [{{{}: {{}}}}]}}"#,
                        serde_json_string(policy)
                    );
                    ServiceConfig::parse(&json, &self.balancers)
                })
                .map_err(Error::Policy)?;
            if let Some(lb) = chosen.lb_policy() {
                default_config = default_config.replace_policy(lb.clone());
            }
        }
        self.backoff.validate()?;
        let keepalive = self.keepalive.map(validate_keepalive).transpose()?;
        for (setting, bytes) in [
            ("Builder::initial_stream_window_size", self.stream_window),
            (
                "Builder::initial_connection_window_size",
                self.connection_window,
            ),
        ] {
            if bytes == 0 || bytes > MAX_WINDOW {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!("{bytes} is not from 1 to 2^31 - 1 (HTTP/2's largest window)"),
                });
            }
        }
        let tcp_keepalive = self
            .tcp_keepalive
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        if let Some(secs) = tcp_keepalive
            && !(1..=MAX_TCP_KEEPALIVE_SECS).contains(&secs)
        {
            return Err(Error::InvalidSetting {
                setting: "Builder::tcp_keepalive",
                reason: format!(
                    "must be from 1 s to {MAX_TCP_KEEPALIVE_SECS} s (None turns it off)"
                ),
            });
        }
        if self
            .connect_timeout
            .is_some_and(|d| d.is_zero() || d > MAX_CONNECT_TIMEOUT)
        {
            return Err(Error::InvalidSetting {
                setting: "Builder::connect_timeout",
                reason: "must be greater than zero and at most a day".to_owned(),
            });
        }
        let user_agent = match &self.user_agent {
            Some(ua) => format!("{ua} {LIBRARY_AGENT}"),
            None => LIBRARY_AGENT.to_owned(),
        };
        let user_agent =
            http::HeaderValue::from_str(&user_agent).map_err(|_| Error::InvalidSetting {
                setting: "Builder::user_agent",
                reason: format!("{user_agent:?} is not a valid header value"),
            })?;
        #[cfg(feature = "test-hooks")]
        if let Some(id) = self.initial_stream_id
            && (id % 2 == 0 || id > i32::MAX as u32)
        {
            return Err(Error::InvalidSetting {
                setting: "Builder::initial_stream_id",
                reason: format!("{id} is not an odd number below 2^31"),
            });
        }
        if let Some(a) = &self.authority
            && a.parse::<http::uri::Authority>().is_err()
        {
            return Err(Error::InvalidAuthority(a.clone()));
        }
        let target_authority = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resolver_builder.authority(&target)
        }))
        .ok()
        .flatten();
        let default_config = Arc::new(default_config);
        let policy = policy_name(&default_config);
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = Arc::new(TransportOptions {
            backoff: self.backoff,
            keepalive,
            keepalive_interval_ms: std::sync::atomic::AtomicU64::new(keepalive.map_or(0, |k| {
                u64::try_from(k.interval.as_millis()).unwrap_or(u64::MAX)
            })),
            authority: self.authority,
            target_authority,
            max_header_list_size: self.max_header_list_size,
            user_agent,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            tcp_keepalive: tcp_keepalive.map(Duration::from_secs),
            tcp_nodelay: self.tcp_nodelay,
            connect_timeout: self.connect_timeout,
            health_checks: self.health_checks,
            health_service: arc_swap::ArcSwapOption::new(
                default_config
                    .health_check()
                    .map(|h| Arc::new(h.service_name.clone())),
            ),
            #[cfg(feature = "tls")]
            tls: self.tls,
            #[cfg(feature = "test-hooks")]
            initial_stream_id: self.initial_stream_id,
            #[cfg(feature = "test-hooks")]
            drain_after_stream_id: self.drain_after_stream_id.unwrap_or(DRAIN_AFTER_STREAM_ID),
            #[cfg(not(feature = "test-hooks"))]
            drain_after_stream_id: DRAIN_AFTER_STREAM_ID,
        });
        let stats = Arc::new(Stats::new(target.to_string(), self.metrics, self.channelz));
        let core = Core::new(
            tx.clone(),
            default_config.clone(),
            self.wait_for_ready,
            &policy,
            transport,
            RetrySettings {
                enabled: self.retries,
                buffer: self.retry_buffer,
            },
            stats,
        );
        let mut control = Control::new(ControlParts {
            core: core.clone(),
            rx,
            target: target.clone(),
            resolver_builder,
            balancers: self.balancers,
            default_config,
            use_resolver_config: self.use_resolver_config,
            idle_timeout: self.idle_timeout,
        })
        .map_err(Error::ServiceConfig)?;
        control.start().map_err(|source| Error::Resolver {
            target: target.to_string(),
            source,
        })?;
        runtime.spawn(control.run());
        tracing::debug!(target = %target, "channel created");
        Ok(LbChannel {
            handle: Arc::new(Handle { core }),
        })
    }
}

/// The library's part of every `user-agent`.
const LIBRARY_AGENT: &str = concat!("grpc-lb-rust/", env!("CARGO_PKG_VERSION"));

/// The default [`Builder::initial_stream_window_size`]: 2 MiB, as hyper's client.
pub const DEFAULT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The default [`Builder::initial_connection_window_size`]: 5 MiB, as hyper's
/// client.
pub const DEFAULT_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// HTTP/2's largest flow-control window.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The longest TCP keepalive idle time Linux takes (`TCP_KEEPIDLE`).
const MAX_TCP_KEEPALIVE_SECS: u64 = 32_767;

/// The longest connect timeout (as the backoff's delays).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Applies grpc-go's floor to the keepalive interval and checks the timeout.
fn validate_keepalive(mut k: Keepalive) -> Result<Keepalive, Error> {
    if k.timeout.is_zero() {
        return Err(Error::InvalidSetting {
            setting: "Keepalive::timeout",
            reason: "must be greater than zero".to_owned(),
        });
    }
    if k.interval < Keepalive::MIN_INTERVAL {
        tracing::warn!(
            interval = ?k.interval,
            floor = ?Keepalive::MIN_INTERVAL,
            "keepalive interval below the floor; using the floor"
        );
        k.interval = Keepalive::MIN_INTERVAL;
    }
    Ok(k)
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The resolvers a channel has unless told otherwise: `lb_resolvers::registry()`,
/// and `xds` with the `xds` feature.
fn default_resolvers() -> ResolverRegistry {
    #[allow(unused_mut)]
    let mut registry = lb_resolvers::registry();
    #[cfg(feature = "xds")]
    registry.register(xds::resolver());
    registry
}

/// The policies a channel has unless told otherwise: `lb_policies::registry()`, and
/// the xDS tree's `xds_cluster_impl_experimental` with the `xds` feature.
fn default_balancers() -> BalancerRegistry {
    #[allow(unused_mut)]
    let mut registry = lb_policies::registry();
    #[cfg(feature = "xds")]
    lb_xds::register_policies(&mut registry);
    registry
}
