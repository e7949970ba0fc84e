//! The errors of `lb-tonic`.

use std::time::Duration;

/// Why a channel could not be built. Messages name the input that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target could not be parsed, or no resolver serves its scheme.
    #[error(transparent)]
    Target(lb_core::Error),

    /// The default service config (or the policy named with `policy`) is invalid.
    #[error("invalid default service config: {0}")]
    ServiceConfig(lb_core::Error),

    /// The resolver refused the target.
    #[error("resolver for `{target}` failed to start: {source}")]
    Resolver {
        /// The target.
        target: String,
        /// The resolver's error.
        source: lb_core::resolver::BuildError,
    },

    /// The channel was built outside a tokio runtime.
    #[error("LbChannel::build must be called from within a tokio runtime")]
    NoRuntime,

    /// TLS settings could not be built (bad PEM, bad server name).
    #[error("TLS: {0}")]
    Tls(String),

    /// The `:authority` override is not a valid URI authority.
    #[error("invalid authority `{0}`")]
    InvalidAuthority(String),
}

/// Why a connection attempt failed or a connection ended: what the balancer sees as
/// a subconn's error, and what failing RPCs name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The attempt took longer than the connect timeout.
    #[error("connect to {addr}: timed out after {after:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The socket connected to itself (a dead local port in the ephemeral range).
    #[error("connect to {addr}: the socket connected to itself (nothing listens there)")]
    SelfConnect {
        /// The address.
        addr: String,
    },
    /// The address cannot be used as an HTTP/2 `:authority`.
    #[error("address `{addr}` is not a valid URI authority")]
    BadAddress {
        /// The address.
        addr: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, no ALPN h2).
    #[error("TLS with {addr}: {reason}")]
    Tls {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        /// The address.
        addr: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The server sent GOAWAY: the connection takes no new RPCs.
    #[error("{addr} sent GOAWAY: the connection is draining")]
    GoAway {
        /// The address.
        addr: String,
    },
    /// An established connection ended.
    #[error("connection to {addr} closed{}", match .source { Some(e) => format!(": {e}"), None => String::new() })]
    Closed {
        /// The address.
        addr: String,
        /// hyper's error, if the connection did not end cleanly.
        source: Option<hyper::Error>,
    },
}
