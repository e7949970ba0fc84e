//! The errors of `lb-tonic`.

use std::time::Duration;

/// Why a channel could not be built. Messages name the input that was wrong and,
/// where there is a list, what would have been valid. `Debug` prints the same one
/// line with its causes, so that `main` returning it says what to fix.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target could not be parsed, or no resolver serves its scheme.
    #[error(transparent)]
    Target(lb_core::Error),

    /// The default service config is invalid.
    #[error("invalid default service config: {0}")]
    ServiceConfig(lb_core::Error),

    /// The policy named with `Builder::policy` is not registered.
    #[error("`Builder::policy`: {0}")]
    Policy(lb_core::Error),

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

    /// A builder setting is out of its range (a backoff multiplier that is not
    /// finite, a jitter above 1, a zero keepalive timeout, ...).
    #[error("invalid setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting, as `BackoffConfig::multiplier` or `Keepalive::timeout`.
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&lb_core::error_chain(self))
    }
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
        /// h2's error.
        source: h2::Error,
    },
    /// The connection closed before the server sent its HTTP/2 preface (a port that
    /// accepts and closes, a server that does not speak HTTP/2 or wanted TLS).
    #[error("connection to {addr} closed before the server preface{}", match .source { Some(e) => format!(": {e}"), None => String::new() })]
    ClosedBeforePreface {
        /// The address.
        addr: String,
        /// h2's error, if the connection did not end cleanly.
        source: Option<h2::Error>,
    },
    /// The server did not send its HTTP/2 preface within the connect timeout (a hung
    /// process, a proxy with nothing behind it).
    #[error("{addr} sent no server preface within {after:?}")]
    NoPreface {
        /// The address.
        addr: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The server's first frame was not SETTINGS: it does not speak HTTP/2 (an
    /// HTTP/1 server, TLS where plaintext was expected).
    #[error(
        "{addr} is not an HTTP/2 server: its first frame (type {frame_type:#04x}) was not SETTINGS"
    )]
    BadPreface {
        /// The address.
        addr: String,
        /// The type byte of the first frame header it sent.
        frame_type: u8,
    },
    /// The server sent its preface and a GOAWAY at once, before the connection could
    /// be used (an overloaded server shedding connections, `too_many_pings`).
    #[error("{addr} refused the connection at once: {reason}")]
    RefusedAtOnce {
        /// The address.
        addr: String,
        /// The GOAWAY it sent.
        reason: String,
    },
    /// A keepalive ping went unanswered.
    #[error("{addr} did not answer a keepalive ping within {after:?}")]
    KeepaliveTimeout {
        /// The address.
        addr: String,
        /// The keepalive timeout.
        after: Duration,
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
        /// h2's error, if the connection did not end cleanly.
        source: Option<h2::Error>,
    },
}
