//! One connection attempt: dial (TCP or a Unix socket), TLS, the HTTP/2 handshake,
//! and the server's preface. Only when the server's SETTINGS frame has arrived is the
//! connection established, as in grpc-go: a port that accepts and closes, or accepts
//! and says nothing (a hung process, an L4 proxy with nothing behind it, an HTTP/1 or
//! TLS server reached in plaintext), is a failed attempt.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection as H2Connection, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use lb_core::channelz::SocketAddress;

use super::frames::{ConnSignals, Ends, Watched};
use super::subconn::TransportOptions;
use crate::error::TransportError;

/// The byte stream under HTTP/2: TCP or a Unix socket, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An established HTTP/2 connection: the server has sent its preface.
pub(crate) type Connection = H2Connection<Watched<Box<dyn Io>>, Bytes>;

/// Where an address points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `host:port`.
    Tcp(String),
    /// `unix:/path` (or a relative path).
    Unix(std::path::PathBuf),
    /// `unix-abstract:name`: Linux's abstract socket namespace.
    UnixAbstract(Vec<u8>),
}

impl Endpoint {
    /// Reads an address string as the resolvers write it.
    pub(crate) fn parse(addr: &str) -> Self {
        if let Some(name) = addr.strip_prefix("unix-abstract:") {
            Endpoint::UnixAbstract(name.as_bytes().to_vec())
        } else if let Some(path) = addr.strip_prefix("unix:") {
            Endpoint::Unix(path.into())
        } else {
            Endpoint::Tcp(addr.to_owned())
        }
    }

    /// The authority a connection to this endpoint uses when nothing else names one:
    /// the address itself, or `localhost` for Unix sockets (as grpc-go).
    pub(crate) fn default_authority(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp(addr) => Some(addr),
            Endpoint::Unix(_) | Endpoint::UnixAbstract(_) => Some("localhost"),
        }
    }
}

/// One attempt, bounded by `timeout` as a whole. `tls_name` is the name a TLS
/// certificate must cover.
pub(crate) async fn connect(
    addr: &str,
    endpoint: &Endpoint,
    tls_name: &str,
    options: &TransportOptions,
    timeout: Duration,
) -> Result<(SendRequest<Bytes>, Connection, Arc<ConnSignals>), TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (io, ends) = tokio::time::timeout_at(deadline, dial(addr, endpoint, options))
        .await
        .map_err(|_| TransportError::Timeout {
            addr: addr.to_owned(),
            after: timeout,
        })??;
    #[cfg(feature = "tls")]
    let mut ends = ends;
    #[cfg(feature = "tls")]
    let io: Box<dyn Io> = match &options.tls {
        Some(tls) => {
            let stream = tokio::time::timeout_at(deadline, tls.connect(addr, tls_name, io))
                .await
                .map_err(|_| TransportError::Tls {
                    addr: addr.to_owned(),
                    reason: format!("no TLS handshake within {timeout:?}"),
                })??;
            ends.tls = Some(super::tls::describe(&stream));
            Box::new(stream)
        }
        None => io,
    };
    #[cfg(not(feature = "tls"))]
    let _ = tls_name;
    tokio::time::timeout_at(deadline, handshake(addr, io, ends, options))
        .await
        .map_err(|_| TransportError::NoPreface {
            addr: addr.to_owned(),
            after: timeout,
        })?
}

/// The HTTP/2 handshake, through the server's preface.
async fn handshake(
    addr: &str,
    io: Box<dyn Io>,
    ends: Ends,
    options: &TransportOptions,
) -> Result<(SendRequest<Bytes>, Connection, Arc<ConnSignals>), TransportError> {
    let signals = Arc::new(ConnSignals::new(ends));
    let (sender, mut connection) = h2_builder(options)
        .handshake(Watched::new(io, signals.clone()))
        .await
        .map_err(|source| TransportError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    // The handshake only wrote our preface. Drive the connection until the server's
    // first frame arrives: it must be SETTINGS.
    tokio::select! {
        biased;
        preface = signals.preface() => match preface {
            Ok(()) => Ok((sender, connection, signals)),
            Err(kind) => Err(TransportError::BadPreface { addr: addr.to_owned(), frame_type: kind }),
        },
        ended = &mut connection => {
            let goaway = signals.last_goaway();
            if goaway.as_ref().is_some_and(|g| g.is_too_many_pings()) {
                options.back_off_keepalive(addr);
            }
            Err(match (signals.bad_preface(), goaway) {
                // h2 failed on the same bytes: say what they were.
                (Some(kind), _) => TransportError::BadPreface { addr: addr.to_owned(), frame_type: kind },
                // It spoke, then sent GOAWAY before we could use it: a failed attempt,
                // so that the backoff goes on.
                (None, Some(goaway)) => TransportError::RefusedAtOnce {
                    addr: addr.to_owned(),
                    reason: goaway.describe(),
                },
                (None, None) => TransportError::ClosedBeforePreface { addr: addr.to_owned(), source: ended.err() },
            })
        }
    }
}

fn h2_builder(options: &TransportOptions) -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .enable_push(false)
        // Large windows by default (hyper's client's) so one stream can fill a fast
        // link.
        .initial_window_size(options.stream_window)
        .initial_connection_window_size(options.connection_window)
        .max_send_buffer_size(1024 * 1024)
        .max_header_list_size(options.max_header_list_size);
    #[cfg(feature = "test-hooks")]
    if let Some(id) = options.initial_stream_id {
        builder.initial_stream_id(id);
    }
    builder
}

async fn dial(
    addr: &str,
    endpoint: &Endpoint,
    options: &TransportOptions,
) -> Result<(Box<dyn Io>, Ends), TransportError> {
    let io_err = |source| TransportError::Connect {
        addr: addr.to_owned(),
        source,
    };
    match endpoint {
        Endpoint::Tcp(host_port) => {
            let stream = TcpStream::connect(host_port.as_str())
                .await
                .map_err(io_err)?;
            // A connect to a dead local port in the ephemeral range can succeed by
            // connecting the socket to itself (TCP simultaneous open); no server.
            let local = stream.local_addr().map_err(io_err)?;
            let remote = stream.peer_addr().map_err(io_err)?;
            if local == remote {
                return Err(TransportError::SelfConnect {
                    addr: addr.to_owned(),
                });
            }
            stream.set_nodelay(options.tcp_nodelay).map_err(io_err)?;
            if let Some(idle) = options.tcp_keepalive {
                let keepalive = socket2::TcpKeepalive::new().with_time(idle);
                socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&keepalive)
                    .map_err(io_err)?;
            }
            let ends = Ends {
                local: Some(SocketAddress::Tcp(local)),
                remote: Some(SocketAddress::Tcp(remote)),
                tls: None,
            };
            Ok((Box::new(stream), ends))
        }
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(io_err)?;
            let ends = Ends {
                local: None,
                remote: Some(SocketAddress::Unix(path.display().to_string())),
                tls: None,
            };
            Ok((Box::new(stream), ends))
        }
        Endpoint::UnixAbstract(name) => {
            let stream = connect_abstract(name).map_err(io_err)?;
            let ends = Ends {
                local: None,
                remote: Some(SocketAddress::Unix(format!(
                    "@{}",
                    String::from_utf8_lossy(name)
                ))),
                tls: None,
            };
            Ok((Box::new(stream), ends))
        }
    }
}

#[cfg(target_os = "linux")]
fn connect_abstract(name: &[u8]) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    // A Unix-socket connect completes at once (or fails with EAGAIN when the
    // listener's backlog is full), so connecting before going non-blocking is fine.
    let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_: &[u8]) -> std::io::Result<tokio::net::UnixStream> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract Unix sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_addresses() {
        assert_eq!(
            Endpoint::parse("10.0.0.1:80"),
            Endpoint::Tcp("10.0.0.1:80".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/tmp/a.sock"),
            Endpoint::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix-abstract:grpc"),
            Endpoint::UnixAbstract(b"grpc".to_vec())
        );
        assert_eq!(
            Endpoint::parse("unix:/tmp/a.sock").default_authority(),
            Some("localhost")
        );
    }
}
