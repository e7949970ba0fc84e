//! Channelz (gRFC A14): a process-wide registry of channels, subchannels, sockets
//! and servers that admin tools read while the process runs.
//!
//! The model only: a channel implementation registers what it creates and answers
//! with plain data when asked ([`ChannelSource`], [`SocketSource`], ...); a server
//! (`lb_server::admin`) serves the registry as `grpc.channelz.v1.Channelz`.
//! Registration happens when a channel, subchannel or connection is made, never per
//! RPC, and the registry holds only weak references: what is dropped disappears
//! with its [`Registration`].
//!
//! ```
//! use std::sync::Arc;
//! use lb_core::ConnectivityState;
//! use lb_core::channelz::{self, ChannelData, ChannelSource};
//!
//! struct MyChannel { registration: Option<channelz::Registration> }
//! impl ChannelSource for MyChannel {
//!     fn channel_data(&self) -> ChannelData {
//!         let mut data = ChannelData::default();
//!         data.target = "static:///127.0.0.1:50051".into();
//!         data.state = Some(ConnectivityState::Ready);
//!         data
//!     }
//! }
//!
//! let channel = Arc::new_cyclic(|me: &std::sync::Weak<MyChannel>| MyChannel {
//!     registration: Some(channelz::registry().register_channel(me.clone())),
//! });
//! let id = channel.registration.as_ref().map(|r| r.id()).unwrap();
//! let data = channelz::registry().channel(id).unwrap();
//! assert_eq!(data.target, "static:///127.0.0.1:50051");
//! drop(channel);
//! assert!(channelz::registry().channel(id).is_none());
//! ```

mod clock;
mod registry;
mod trace;

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::ConnectivityState;

pub use clock::{now_ms, time_of};
pub use registry::{Page, Registration, Registry, registry};
pub use trace::{Severity, Trace, TraceData, TraceEvent};

/// A channelz id: unique in the process across every kind of entity, never
/// reused, always positive.
pub type Id = i64;

/// What a channel reports ([`ChannelSource`]) and, with `target` its address, what a
/// subchannel reports ([`SubchannelSource`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ChannelData {
    /// The channel's target, or the subchannel's address.
    pub target: String,
    /// Its connectivity state; `None` is channelz's `UNKNOWN`.
    pub state: Option<ConnectivityState>,
    /// Calls (for a channel) or attempts (for a subchannel).
    pub calls: CallCounts,
    /// Recent events, if it keeps a trace.
    pub trace: Option<TraceData>,
    /// Child channels (a channel that balances over other channels).
    pub channels: Vec<Id>,
    /// Subchannels it balances over.
    pub subchannels: Vec<Id>,
    /// Its sockets (for a subchannel: its connection, and draining ones).
    pub sockets: Vec<Id>,
}

/// Calls counted by a channel, subchannel or server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallCounts {
    /// Started.
    pub started: u64,
    /// Ended with `OK`.
    pub succeeded: u64,
    /// Ended with any other status.
    pub failed: u64,
    /// When the last one started, if any did.
    pub last_started: Option<SystemTime>,
}

impl CallCounts {
    /// Counts with these totals and no start time.
    pub fn new(started: u64, succeeded: u64, failed: u64) -> Self {
        Self {
            started,
            succeeded,
            failed,
            last_started: None,
        }
    }
}

/// One end of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketAddress {
    /// A TCP/IP address.
    Tcp(SocketAddr),
    /// A Unix domain socket's path (`@name` for an abstract one).
    Unix(String),
    /// Anything else, by name.
    Other(String),
}

/// What a socket reports ([`SocketSource`]): one HTTP/2 connection, or a server's
/// listening socket (which has only `local`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SocketData {
    /// The local end.
    pub local: Option<SocketAddress>,
    /// The remote end.
    pub remote: Option<SocketAddress>,
    /// The name the remote end was dialled by, when it differs from its address.
    pub remote_name: String,
    /// Streams started on it.
    pub streams_started: u64,
    /// Streams that ended with the end-of-stream flag received (client) or sent
    /// (server).
    pub streams_succeeded: u64,
    /// Streams that ended otherwise (reset, cancelled, connection lost).
    pub streams_failed: u64,
    /// gRPC messages sent, if counted.
    pub messages_sent: u64,
    /// gRPC messages received, if counted.
    pub messages_received: u64,
    /// HTTP/2 keepalive pings sent.
    pub keepalives_sent: u64,
    /// When this end last started a stream.
    pub last_local_stream_created: Option<SystemTime>,
    /// When the other end last started a stream.
    pub last_remote_stream_created: Option<SystemTime>,
    /// When a message was last sent.
    pub last_message_sent: Option<SystemTime>,
    /// When a message was last received.
    pub last_message_received: Option<SystemTime>,
    /// Connection-level flow-control window the remote end granted us, if known.
    pub local_flow_control_window: Option<i64>,
    /// Connection-level flow-control window we granted the remote end, if known.
    pub remote_flow_control_window: Option<i64>,
    /// TLS details, for a TLS socket.
    pub tls: Option<TlsData>,
}

/// TLS details of a socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsData {
    /// The cipher suite's IANA name (`TLS_AES_128_GCM_SHA256`), or another name
    /// for a suite without one.
    pub cipher_suite: String,
    /// This end's certificate, DER.
    pub local_certificate: Vec<u8>,
    /// The other end's certificate, DER.
    pub remote_certificate: Vec<u8>,
}

/// What a server reports ([`ServerSource`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerData {
    /// Calls the server received.
    pub calls: CallCounts,
    /// Recent events, if it keeps a trace.
    pub trace: Option<TraceData>,
    /// Its listening sockets.
    pub listen_sockets: Vec<Id>,
}

/// A channel the application created, as channelz shows it.
pub trait ChannelSource: Send + Sync + 'static {
    /// Its data now.
    fn channel_data(&self) -> ChannelData;
}

/// A subchannel (a subconn), as channelz shows it.
pub trait SubchannelSource: Send + Sync + 'static {
    /// Its data now: `target` is its address.
    fn subchannel_data(&self) -> ChannelData;
}

/// A socket, as channelz shows it.
pub trait SocketSource: Send + Sync + 'static {
    /// Its data now.
    fn socket_data(&self) -> SocketData;
}

/// A server, as channelz shows it.
pub trait ServerSource: Send + Sync + 'static {
    /// Its data now.
    fn server_data(&self) -> ServerData;
}
