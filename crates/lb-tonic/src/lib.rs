//! The `grpc-lb` channel: an [`LbChannel`] is a `tower::Service` that generated tonic
//! clients use unchanged, and behind it a resolver, a load-balancing policy and one
//! real HTTP/2 connection per subconn.
//!
//! ```no_run
//! use lb_testkit::pb::{EchoRequest, echo_client::EchoClient};
//! use lb_tonic::{LbChannel, ServedBy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = LbChannel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
//!     .policy("round_robin")
//!     .build()?;
//! let mut client = EchoClient::new(channel);
//! let reply = client.unary_echo(EchoRequest { message: "hi".into(), ..Default::default() }).await?;
//! println!("served by {:?}", reply.extensions().get::<ServedBy>());
//! # Ok(()) }
//! ```
//!
//! * One control task per channel serializes resolver updates, subconn state changes
//!   and balancer calls (`lb-core`'s contract: balancers need no locks).
//! * A subconn owns one HTTP/2 connection (h2, driven directly) and reports true
//!   states: `IDLE → CONNECTING → READY` once the server's HTTP/2 preface has
//!   arrived; a failed attempt → `TRANSIENT_FAILURE` then, after gRPC's connection
//!   backoff ([`BackoffConfig`]), `IDLE`; a connection that closes → `IDLE` at once.
//! * Each RPC picks from the current picker with one atomic load and no lock; "queue"
//!   waits for the next picker; "fail" returns `UNAVAILABLE` naming the last error
//!   unless the RPC is wait-for-ready ([`WaitForReady`]); the picked backend is in the
//!   response's [`ServedBy`]. The call's deadline bounds all of it, response stream
//!   included.
//! * A service config that names another policy switches gracefully: the old policy
//!   serves until the new one leaves `CONNECTING`.
//! * A panicking policy, picker or resolver does not take the channel down; an idle
//!   channel ([`Builder::idle_timeout`]) closes its connections until the next RPC.
//!
//! Policies come from `lb-policies`, resolvers from `lb-resolvers`; both registries can
//! be replaced on the [`Builder`].

// The channel's three parts, one direction between them: the call path uses the
// control task's published state and the transport; the control task uses the
// transport; the transport uses neither (docs/architecture.md).
mod call;
mod control;
mod transport;

// The public face, over all three.
mod channel;

// Small things the parts share.
mod backoff;
mod buffer;
mod counters;
mod error;
mod grpc_message;
mod introspect;
mod metrics;
mod throttle;

pub use backoff::BackoffConfig;
pub use buffer::BufferLimits;
pub use call::{Attempt, ResponseBody, ServedBy, WaitForReady};
/// xDS (feature `xds`): the `xds` scheme's transport and resolver builder.
#[cfg(feature = "xds")]
pub use channel::xds;
pub use channel::{
    Builder, DEFAULT_CONNECTION_WINDOW, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_LIST_SIZE,
    DEFAULT_STREAM_WINDOW, LbChannel, ResponseFuture,
};
pub use error::{Error, TransportError};
pub use introspect::{ChannelSnapshot, ResolverSnapshot, RpcCounts, SubConnSnapshot};
pub use metrics::names as metric_names;
pub use transport::Keepalive;
#[cfg(feature = "tls")]
pub use transport::TlsConfig;
