//! The transport: a subconn's HTTP/2 connection and what runs on it.
//!
//! * `subconn.rs`: one task per subconn: connects, follows gRPC's backoff, sends
//!   keepalive pings, runs the health check and the load-report stream, and reports
//!   every state change through the [`SubConnEvents`] it is given.
//! * `connect.rs`: one connection attempt (TCP or a Unix socket, TLS in `tls.rs`,
//!   the HTTP/2 handshake, the server's preface).
//! * `frames.rs`: the reader that watches the server's frames (preface, GOAWAY, last
//!   read) under h2.
//! * `stream.rs`: one HTTP/2 stream: the request head and its body, whole or piped
//!   from a [`BodySource`].
//! * `watch_stream.rs`, `health.rs`, `load_reports.rs`: the streams a subconn opens
//!   for itself (gRFC A17's health watch, ORCA's out-of-band reports), and the
//!   per-call report in a response's trailers.
//!
//! The transport uses neither the control task nor the call path: they use it.

mod connect;
mod frames;
mod health;
mod load_reports;
mod stream;
mod subconn;
#[cfg(feature = "tls")]
mod tls;
mod watch_stream;

pub(crate) use frames::ActiveStream;
pub(crate) use load_reports::from_trailers;
pub(crate) use stream::{
    BodySource, Chunk, Chunks, Held, NotOpened, Outgoing, is_local, open, status_code, unprocessed,
};
pub use subconn::Keepalive;
pub(crate) use subconn::{
    Connected, DRAIN_AFTER_STREAM_ID, SubConnEvents, Transport, TransportOptions, new_transport,
};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;
