//! Peers that misbehave the way real broken backends do: a port that accepts and
//! closes (an L4 proxy with nothing behind it), one that accepts and never speaks (a
//! hung process whose kernel still completes handshakes), an HTTP/1 server, and a
//! bare-bones HTTP/2 peer that writes frames by hand so a test can count the pings it
//! receives or make it send a GOAWAY.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How a [`BadPeer`] treats each connection it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehavior {
    /// Closes the connection at once.
    AcceptAndClose,
    /// Keeps the connection open and never sends a byte.
    Silent,
    /// Answers like an HTTP/1.1 server that does not know HTTP/2: `400 Bad Request`.
    Http1,
    /// Speaks just enough HTTP/2: sends its SETTINGS, acknowledges the client's,
    /// counts the client's PINGs and answers them if `answer_pings`, never answers a
    /// request. With `goaway`, sends `GOAWAY(last stream 0, code, debug data)` right
    /// after its SETTINGS (as a gRPC server does to a client that pings too often:
    /// `ENHANCE_YOUR_CALM`, `too_many_pings`).
    RawHttp2 {
        /// Whether PINGs get their ACK.
        answer_pings: bool,
        /// An error code and debug data to send in a GOAWAY after the preface.
        goaway: Option<(u32, Vec<u8>)>,
    },
    /// Speaks HTTP/2 as `RawHttp2` does (answering pings), and answers a request
    /// with `GOAWAY(last stream 0, code)`: the server processed none of the
    /// connection's streams (a server shedding load with `ENHANCE_YOUR_CALM`).
    GoAwayOnRequest {
        /// The GOAWAY's error code.
        code: u32,
    },
}

/// A misbehaving peer on an ephemeral port of 127.0.0.1.
pub struct BadPeer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    pings: Arc<AtomicUsize>,
    client: Arc<Mutex<ClientPreface>>,
    task: JoinHandle<()>,
}

/// What a client said first on a [`Misbehavior::RawHttp2`] connection: its HTTP/2
/// settings and the connection window it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientPreface {
    /// Its SETTINGS, `(identifier, value)`, in order (`0x4`:
    /// `SETTINGS_INITIAL_WINDOW_SIZE`, the window of each stream).
    pub settings: Vec<(u16, u32)>,
    /// The sum of its WINDOW_UPDATE increments on the connection (stream 0): its
    /// connection window is 65,535 plus this.
    pub connection_window_increments: u64,
}

impl BadPeer {
    /// Starts listening.
    pub async fn start(behavior: Misbehavior) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let client = Arc::new(Mutex::new(ClientPreface::default()));
        let task = tokio::spawn(serve(
            listener,
            behavior,
            accepted.clone(),
            pings.clone(),
            client.clone(),
        ));
        Ok(Self {
            addr,
            accepted,
            pings,
            client,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// PING frames received so far ([`Misbehavior::RawHttp2`] only).
    pub fn pings(&self) -> usize {
        self.pings.load(Ordering::Relaxed)
    }

    /// What the last client said first ([`Misbehavior::RawHttp2`] only).
    pub fn client_preface(&self) -> ClientPreface {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for BadPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    behavior: Misbehavior,
    accepted: Arc<AtomicUsize>,
    pings: Arc<AtomicUsize>,
    client: Arc<Mutex<ClientPreface>>,
) {
    // Owned here: aborting this task drops every connection with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                let behavior = behavior.clone();
                let pings = pings.clone();
                let client = client.clone();
                connections.spawn(async move {
                    let _ = handle(stream, behavior, &pings, &client).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;

async fn handle(
    mut stream: TcpStream,
    behavior: Misbehavior,
    pings: &AtomicUsize,
    client: &Mutex<ClientPreface>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    match behavior {
        Misbehavior::AcceptAndClose => Ok(()),
        Misbehavior::Silent => {
            // Hold the connection; read and drop whatever comes, answer nothing.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Misbehavior::Http1 => {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await?;
            stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await
        }
        Misbehavior::RawHttp2 { .. } | Misbehavior::GoAwayOnRequest { .. } => {
            let (answer_pings, goaway, on_request) = match behavior {
                Misbehavior::RawHttp2 {
                    answer_pings,
                    goaway,
                } => (answer_pings, goaway, None),
                Misbehavior::GoAwayOnRequest { code } => (true, None, Some(code)),
                _ => return Ok(()),
            };
            let mut preface = [0u8; PREFACE.len()];
            stream.read_exact(&mut preface).await?;
            if preface != PREFACE {
                return Ok(());
            }
            *client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = ClientPreface::default();
            write_frame(&mut stream, SETTINGS, 0, &[]).await?;
            if let Some((code, debug)) = goaway {
                let mut payload = 0u32.to_be_bytes().to_vec();
                payload.extend_from_slice(&code.to_be_bytes());
                payload.extend_from_slice(&debug);
                write_frame(&mut stream, GOAWAY, 0, &payload).await?;
            }
            loop {
                let mut header = [0u8; 9];
                stream.read_exact(&mut header).await?;
                let len = (usize::from(header[0]) << 16)
                    | (usize::from(header[1]) << 8)
                    | usize::from(header[2]);
                let mut payload = vec![0u8; len];
                stream.read_exact(&mut payload).await?;
                let stream_id =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                match (header[3], header[4] & ACK) {
                    (SETTINGS, 0) => {
                        let settings = payload.chunks_exact(6).map(|p| {
                            let id = u16::from_be_bytes([p[0], p[1]]);
                            (id, u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                        });
                        client
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .settings
                            .extend(settings);
                        write_frame(&mut stream, SETTINGS, ACK, &[]).await?;
                    }
                    (WINDOW_UPDATE, _) if stream_id == 0 && payload.len() == 4 => {
                        let increment =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff;
                        client
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .connection_window_increments += u64::from(increment);
                    }
                    (PING, 0) => {
                        pings.fetch_add(1, Ordering::Relaxed);
                        if answer_pings {
                            write_frame(&mut stream, PING, ACK, &payload).await?;
                        }
                    }
                    (HEADERS, _) => {
                        if let Some(code) = on_request {
                            let mut payload = 0u32.to_be_bytes().to_vec();
                            payload.extend_from_slice(&code.to_be_bytes());
                            write_frame(&mut stream, GOAWAY, 0, &payload).await?;
                        }
                    }
                    _ => {} // requests and the rest go unanswered
                }
            }
        }
    }
}

async fn write_frame(
    stream: &mut TcpStream,
    kind: u8,
    flags: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(9 + len);
    frame.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    frame.extend_from_slice(&0u32.to_be_bytes()); // stream 0: connection frames only
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await
}

/// A real HTTP/2 server that answers every request with one plain HTTP response, not
/// gRPC's: what a proxy in front of a down backend sends (`503 Service
/// Unavailable`, `text/plain`), or a web server reached by mistake.
pub struct HttpPeer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpPeer {
    /// Listens on an ephemeral port of 127.0.0.1; every request gets `status` with
    /// `content_type` and a short text body.
    pub async fn start(status: u16, content_type: &'static str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let status = http::StatusCode::from_u16(status)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve_http(listener, status, content_type, hits.clone()));
        Ok(Self { addr, hits, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for HttpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http(
    listener: TcpListener,
    status: http::StatusCode,
    content_type: &'static str,
    hits: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let _ = stream.set_nodelay(true);
                let hits = hits.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let response = http::Response::builder()
                            .status(status)
                            .header(http::header::CONTENT_TYPE, content_type)
                            .body(format!("{status}\n"));
                        async move { response }
                    });
                    let http2 =
                        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = http2
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
