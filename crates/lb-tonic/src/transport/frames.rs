//! What the server says on a connection, watched below HTTP/2.
//!
//! h2 does not tell its user when the server's connection preface (its first SETTINGS
//! frame) arrived, what a GOAWAY's last stream id was, or when anything was last read.
//! The channel needs all three: a subconn is `READY` only once the server has spoken,
//! an RPC above a GOAWAY's last stream id was never processed (so it can be resent),
//! and keepalive pings are only due after a quiet interval. [`Watched`] wraps the byte
//! stream that h2 reads and follows the frame boundaries (a 9-byte header, then the
//! payload, which is skipped), recording those facts in [`ConnSignals`]. It copies
//! nothing but GOAWAY payloads, and costs a few comparisons per read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
/// How much of a GOAWAY's payload is kept: the last stream id, the error code and the
/// start of the debug data (`too_many_pings` and its kin are short).
const GOAWAY_CAPTURE: usize = 8 + 120;
/// `ENHANCE_YOUR_CALM`.
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
const NO_GOAWAY: u32 = u32::MAX;

/// What was seen on one connection; shared by the connection's reader, its subconn
/// task and the RPCs sent on it.
#[derive(Debug)]
pub(crate) struct ConnSignals {
    created: Instant,
    /// The first frame was the server's SETTINGS.
    preface: AtomicBool,
    /// The first frame was something else (an HTTP/1 reply, garbage): its type.
    bad_preface: AtomicU32,
    preface_seen: Notify,
    /// Milliseconds after `created` of the last read that returned data.
    last_read_ms: AtomicU64,
    /// The smallest last-stream-id of every GOAWAY received, or `NO_GOAWAY`.
    goaway_last_stream_id: AtomicU32,
    last_goaway: Mutex<Option<GoAway>>,
    goaway_seen: Notify,
    /// Streams open on the connection, counted only when keepalive needs to know.
    active_streams: AtomicUsize,
    /// The socket's local and remote ends, when known (for channelz).
    pub(crate) ends: Ends,
}

/// A socket's two ends.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ends {
    pub(crate) local: Option<lb_core::channelz::SocketAddress>,
    pub(crate) remote: Option<lb_core::channelz::SocketAddress>,
    /// The TLS session, on a TLS connection.
    pub(crate) tls: Option<lb_core::channelz::TlsData>,
}

/// Counts one open stream on a connection while it lives (for keepalive without
/// `while_idle`); costs nothing when nobody counts.
pub(crate) struct ActiveStream(Option<Arc<ConnSignals>>);

impl ActiveStream {
    pub(crate) fn new(signals: Option<&Arc<ConnSignals>>) -> Self {
        Self(signals.map(|s| {
            s.active_streams.fetch_add(1, Ordering::AcqRel);
            s.clone()
        }))
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.active_streams.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A GOAWAY frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoAway {
    pub(crate) last_stream_id: u32,
    pub(crate) error_code: u32,
    pub(crate) debug_data: Vec<u8>,
}

impl GoAway {
    /// gRPC servers answer too frequent keepalive pings with
    /// `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")`.
    pub(crate) fn is_too_many_pings(&self) -> bool {
        self.error_code == ENHANCE_YOUR_CALM && self.debug_data == b"too_many_pings"
    }

    /// `GOAWAY <code> "<debug data>"`, for messages.
    pub(crate) fn describe(&self) -> String {
        let reason = h2::Reason::from(self.error_code);
        if self.debug_data.is_empty() {
            format!("GOAWAY {reason:?}")
        } else {
            format!(
                "GOAWAY {reason:?} {:?}",
                String::from_utf8_lossy(&self.debug_data)
            )
        }
    }
}

impl ConnSignals {
    pub(crate) fn new(ends: Ends) -> Self {
        Self {
            ends,
            created: Instant::now(),
            preface: AtomicBool::new(false),
            bad_preface: AtomicU32::new(u32::MAX),
            preface_seen: Notify::new(),
            last_read_ms: AtomicU64::new(0),
            goaway_last_stream_id: AtomicU32::new(NO_GOAWAY),
            last_goaway: Mutex::new(None),
            goaway_seen: Notify::new(),
            active_streams: AtomicUsize::new(0),
        }
    }

    /// Resolves once the server's first frame has arrived: `Ok` if it was SETTINGS,
    /// else the type of the frame it sent instead.
    pub(crate) async fn preface(&self) -> Result<(), u8> {
        loop {
            let seen = self.preface_seen.notified();
            if self.preface.load(Ordering::Acquire) {
                return Ok(());
            }
            if let Some(kind) = self.bad_preface() {
                return Err(kind);
            }
            seen.await;
        }
    }

    /// The type of the server's first frame, if it was not SETTINGS.
    pub(crate) fn bad_preface(&self) -> Option<u8> {
        let bad = self.bad_preface.load(Ordering::Acquire);
        u8::try_from(bad).ok()
    }

    /// Resolves once the server has sent a GOAWAY.
    pub(crate) async fn goaway(&self) {
        loop {
            let seen = self.goaway_seen.notified();
            if self.goaway_last_stream_id.load(Ordering::Acquire) != NO_GOAWAY {
                return;
            }
            seen.await;
        }
    }

    /// Streams open now (counted by [`ActiveStream`]s).
    pub(crate) fn active_streams(&self) -> usize {
        self.active_streams.load(Ordering::Acquire)
    }

    /// When data was last read from the server.
    pub(crate) fn last_read(&self) -> Instant {
        self.created + std::time::Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }

    /// Whether the server's GOAWAY says stream `id` was never processed: it is above
    /// the GOAWAY's last stream id (RFC 9113, section 6.8).
    pub(crate) fn unprocessed(&self, id: u32) -> bool {
        let last = self.goaway_last_stream_id.load(Ordering::Acquire);
        last != NO_GOAWAY && id > last
    }

    /// The last GOAWAY received, if any.
    pub(crate) fn last_goaway(&self) -> Option<GoAway> {
        self.last_goaway
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn on_read(&self) {
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn on_first_frame(&self, kind: u8, flags: u8) {
        if kind == TYPE_SETTINGS && flags & FLAG_ACK == 0 {
            self.preface.store(true, Ordering::Release);
        } else {
            self.bad_preface.store(u32::from(kind), Ordering::Release);
        }
        self.preface_seen.notify_waiters();
    }

    fn on_goaway(&self, payload: &[u8]) {
        let (Some(id), Some(code)) = (payload.get(0..4), payload.get(4..8)) else {
            return; // malformed: h2 ends the connection with a protocol error
        };
        let last_stream_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) & 0x7fff_ffff;
        let error_code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        self.goaway_last_stream_id
            .fetch_min(last_stream_id, Ordering::AcqRel);
        *self
            .last_goaway
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(GoAway {
            last_stream_id,
            error_code,
            debug_data: payload.get(8..).unwrap_or_default().to_vec(),
        });
        self.goaway_seen.notify_waiters();
    }
}

/// Follows frame boundaries in the bytes read from the server.
#[derive(Debug)]
struct FrameParser {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to come (`None` while in a header).
    payload_left: Option<usize>,
    kind: u8,
    frames: u64,
    goaway: Vec<u8>,
}

impl FrameParser {
    fn new() -> Self {
        Self {
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: None,
            kind: 0,
            frames: 0,
            goaway: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8], signals: &ConnSignals) {
        while !bytes.is_empty() {
            match self.payload_left {
                None => {
                    let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                    self.header_len += n;
                    bytes = &bytes[n..];
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        let h = &self.header;
                        let len = (usize::from(h[0]) << 16)
                            | (usize::from(h[1]) << 8)
                            | usize::from(h[2]);
                        self.kind = h[3];
                        if self.frames == 0 {
                            signals.on_first_frame(h[3], h[4]);
                        }
                        self.frames += 1;
                        self.goaway.clear();
                        self.payload_left = Some(len);
                        if len == 0 {
                            self.end_of_frame(signals);
                        }
                    }
                }
                Some(left) => {
                    let n = left.min(bytes.len());
                    if self.kind == TYPE_GOAWAY {
                        let keep = (GOAWAY_CAPTURE - self.goaway.len().min(GOAWAY_CAPTURE)).min(n);
                        self.goaway.extend_from_slice(&bytes[..keep]);
                    }
                    bytes = &bytes[n..];
                    self.payload_left = Some(left - n);
                    if left == n {
                        self.end_of_frame(signals);
                    }
                }
            }
        }
    }

    fn end_of_frame(&mut self, signals: &ConnSignals) {
        self.payload_left = None;
        if self.kind == TYPE_GOAWAY {
            signals.on_goaway(&self.goaway);
        }
    }
}

pin_project_lite::pin_project! {
    /// A byte stream whose reads are watched for the frames above.
    pub(crate) struct Watched<T> {
        #[pin]
        inner: T,
        parser: FrameParser,
        signals: Arc<ConnSignals>,
    }
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, signals: Arc<ConnSignals>) -> Self {
        Self {
            inner,
            parser: FrameParser::new(),
            signals,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.signals.on_read();
                this.parser.feed(read, this.signals);
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn goaway(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(debug);
        frame(TYPE_GOAWAY, 0, 0, &p)
    }

    /// Feeds `bytes` in chunks of every size from 1 to 17, so that frame boundaries
    /// fall everywhere.
    fn feed_all_ways(bytes: &[u8], check: impl Fn(&ConnSignals)) {
        for chunk in 1..=17 {
            let signals = ConnSignals::new(Ends::default());
            let mut parser = FrameParser::new();
            for piece in bytes.chunks(chunk) {
                parser.feed(piece, &signals);
            }
            check(&signals);
        }
    }

    #[test]
    fn the_servers_settings_is_the_preface() {
        let mut bytes = frame(TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]));
        feed_all_ways(&bytes, |s| {
            assert!(s.preface.load(Ordering::Relaxed));
            assert!(!s.unprocessed(1));
        });
    }

    #[test]
    fn anything_else_first_is_a_bad_preface() {
        feed_all_ways(b"HTTP/1.1 400 Bad Request\r\n\r\n", |s| {
            assert!(!s.preface.load(Ordering::Relaxed));
            assert_eq!(s.bad_preface.load(Ordering::Relaxed), u32::from(b'P'));
        });
    }

    #[test]
    fn goaway_frames_are_read_across_reads_and_the_smallest_last_id_wins() {
        let mut bytes = frame(TYPE_SETTINGS, 0, 0, &[]);
        bytes.extend(frame(0x0, 0, 1, &[7; 40])); // DATA on stream 1
        bytes.extend(goaway(0x7fff_ffff, 0, b""));
        bytes.extend(frame(0x6, 0, 0, &[0; 8])); // PING
        bytes.extend(goaway(5, ENHANCE_YOUR_CALM, b"too_many_pings"));
        feed_all_ways(&bytes, |s| {
            assert!(s.unprocessed(7));
            assert!(!s.unprocessed(5));
            let g = s.last_goaway().unwrap();
            assert_eq!(g.last_stream_id, 5);
            assert!(g.is_too_many_pings(), "{g:?}");
        });
    }

    #[test]
    fn long_goaway_debug_data_is_cut_not_fatal() {
        let mut bytes = frame(TYPE_SETTINGS, 0, 0, &[]);
        bytes.extend(goaway(3, 0, &[b'x'; 1000]));
        bytes.extend(frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]));
        feed_all_ways(&bytes, |s| {
            let g = s.last_goaway().unwrap();
            assert_eq!(g.debug_data.len(), GOAWAY_CAPTURE - 8);
            assert!(s.unprocessed(4));
        });
    }
}
