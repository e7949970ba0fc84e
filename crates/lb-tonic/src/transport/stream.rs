//! One RPC's HTTP/2 stream: the request head, then its body, on a subconn's h2
//! connection.
//!
//! A body that was read whole before sending (a unary request) is written at once,
//! with no task; a body that still streams is piped from its recorder (so other
//! attempts can replay it) by a task that follows flow control and stops, resetting
//! the stream, when the call is cancelled, ends by its deadline, commits to another
//! attempt, or is reset by the server.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::HeaderMap;
use tokio::sync::oneshot;

use super::frames::ActiveStream;
use crate::introspect::{MessageCount, SocketStats};

/// One frame of a request body.
#[derive(Clone, Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// A body's data: nearly always one chunk (a unary message), kept without a vector.
#[derive(Clone, Default)]
pub(crate) enum Chunks {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl Chunks {
    pub(crate) fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            Chunks::Empty => Chunks::One(chunk),
            Chunks::One(first) => Chunks::Many(VecDeque::from([first, chunk])),
            Chunks::Many(mut all) => {
                all.push_back(chunk);
                Chunks::Many(all)
            }
        };
    }

    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        match self {
            Chunks::Empty => None,
            Chunks::One(_) => match std::mem::take(self) {
                Chunks::One(chunk) => Some(chunk),
                _ => None,
            },
            Chunks::Many(all) => all.pop_front(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Chunks::Empty => true,
            Chunks::One(_) => false,
            Chunks::Many(all) => all.is_empty(),
        }
    }

    /// The data as frames, in order.
    pub(crate) fn into_frames(mut self) -> VecDeque<Chunk> {
        let mut out = VecDeque::new();
        while let Some(c) = self.pop() {
            out.push_back(Chunk::Data(c));
        }
        out
    }
}

/// A request body still being produced, as one attempt reads it (the call path's
/// replay cursor): the transport owns this trait so that it never imports its
/// caller.
pub(crate) trait BodySource: Send + 'static {
    /// The next frame; `None` at the end of the body.
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Chunk, tonic::Status>>> + Send;
}

/// No streaming body: for streams whose request is always whole.
pub(crate) enum NoBody {}

impl BodySource for NoBody {
    async fn next_chunk(&mut self) -> Option<Result<Chunk, tonic::Status>> {
        match *self {}
    }
}

/// A request body as it is sent.
pub(crate) enum Outgoing<B> {
    /// The whole body, in memory.
    Complete {
        data: Chunks,
        trailers: Option<HeaderMap>,
    },
    /// A body still being produced: sent as it comes.
    Piped(B),
}

/// A stream that was opened: the response to wait for, and the handle that resets it.
pub(crate) struct Opened {
    pub(crate) response: ResponseFuture,
    pub(crate) stream_id: u32,
    pub(crate) handle: StreamHandle,
}

/// What the RPC holds of its stream until it ends: the handle that resets it, and
/// its place in the connection's count of open streams.
pub(crate) struct Held {
    pub(crate) handle: StreamHandle,
    pub(crate) _active: ActiveStream,
}

/// The stream could not be opened; nothing reached the server.
pub(crate) struct NotOpened {
    pub(crate) error: h2::Error,
}

/// Resets the stream when asked, or when dropped before the call ended (a cancelled
/// RPC must not keep its stream, nor its body's producer, alive).
pub(crate) enum StreamHandle {
    /// The body was written whole; the stream's send half is kept to reset it.
    Inline(SendStream<Bytes>),
    /// A task pipes the body; closing this channel makes it reset the stream.
    Piped(Option<oneshot::Sender<()>>),
}

impl StreamHandle {
    /// Resets the stream with `CANCEL` (the call was cancelled or ran out of time).
    pub(crate) fn cancel(&mut self) {
        match self {
            StreamHandle::Inline(send) => send.send_reset(Reason::CANCEL),
            StreamHandle::Piped(cancel) => {
                if let Some(cancel) = cancel.take() {
                    let _ = cancel.send(());
                }
            }
        }
    }
}

/// Hop-by-hop headers HTTP/2 forbids; h2 refuses a request that carries one.
const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Opens a stream for `head` (whose URI carries scheme and authority) and starts
/// sending `body`.
pub(crate) async fn open<B: BodySource>(
    sender: &SendRequest<Bytes>,
    mut head: http::Request<()>,
    body: Outgoing<B>,
    counts: Option<(&Arc<SocketStats>, u64)>,
) -> Result<Opened, NotOpened> {
    let sender = match sender.clone().ready().await {
        Ok(sender) => sender,
        Err(error) => return Err(NotOpened { error }),
    };
    let mut sender = sender;
    let headers = head.headers_mut();
    for name in CONNECTION_HEADERS {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
    *head.version_mut() = http::Version::HTTP_2;
    let empty = matches!(&body, Outgoing::Complete { data, trailers: None } if data.is_empty());
    let (response, mut send) = match sender.send_request(head, empty) {
        Ok(opened) => opened,
        Err(error) => return Err(NotOpened { error }),
    };
    let stream_id = response.stream_id().as_u32();
    let handle = match body {
        Outgoing::Complete { mut data, trailers } => {
            // Written now: h2 buffers what the flow-control window does not take yet.
            let mut sent = MessageCount::default();
            let mut messages = 0;
            while let Some(chunk) = data.pop() {
                if counts.is_some() {
                    messages += sent.feed(&chunk);
                }
                let last = data.is_empty() && trailers.is_none();
                if send.send_data(chunk, last).is_err() {
                    break; // the stream is gone; the response says why
                }
            }
            if let Some(trailers) = trailers {
                let _ = send.send_trailers(trailers);
            }
            // Written with the stream's start: they take its time.
            if let Some((counts, at)) = counts.filter(|_| messages > 0) {
                counts.messages_sent(messages, at);
            }
            StreamHandle::Inline(send)
        }
        Outgoing::Piped(source) => {
            let (cancel, cancelled) = oneshot::channel();
            tokio::spawn(pipe(
                source,
                send,
                cancelled,
                counts.map(|(c, _)| c.clone()),
            ));
            StreamHandle::Piped(Some(cancel))
        }
    };
    Ok(Opened {
        response,
        stream_id,
        handle,
    })
}

/// Sends a streaming body, following flow control, until it ends, the call is
/// cancelled (dropped, past its deadline, committed to another attempt) or the server
/// resets the stream.
async fn pipe(
    mut source: impl BodySource,
    mut send: SendStream<Bytes>,
    mut cancelled: oneshot::Receiver<()>,
    counts: Option<Arc<SocketStats>>,
) {
    let mut sent = MessageCount::default();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = &mut cancelled => return send.send_reset(Reason::CANCEL),
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return, // the server is done
            chunk = source.next_chunk() => chunk,
        };
        match chunk {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(status)) => {
                tracing::debug!(error = %status, "the request body ended in error; resetting the stream");
                return send.send_reset(Reason::CANCEL);
            }
            Some(Ok(Chunk::Data(data))) => {
                let messages = counts.as_ref().map_or(0, |_| sent.feed(&data));
                if send_with_capacity(&mut send, data, false, &mut cancelled)
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(counts) = counts.as_ref().filter(|_| messages > 0) {
                    counts.messages_sent(messages, lb_core::channelz::now_ms());
                }
            }
            Some(Ok(Chunk::Trailers(trailers))) => {
                let _ = send.send_trailers(trailers);
                return;
            }
        }
    }
}

/// Sends `data` as the peer's flow-control window allows.
async fn send_with_capacity(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    cancelled: &mut oneshot::Receiver<()>,
) -> Result<(), ()> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(drop);
    }
    send.reserve_capacity(data.len());
    while !data.is_empty() {
        let mut capacity = send.capacity();
        if capacity == 0 {
            capacity = tokio::select! {
                biased;
                _ = &mut *cancelled => {
                    send.send_reset(Reason::CANCEL);
                    return Err(());
                }
                c = std::future::poll_fn(|cx| send.poll_capacity(cx)) => match c {
                    Some(Ok(c)) => c,
                    _ => return Err(()), // the stream or connection is gone
                },
            };
        }
        let chunk = data.split_to(capacity.min(data.len()));
        send.send_data(chunk, end && data.is_empty())
            .map_err(drop)?;
    }
    Ok(())
}

/// The gRPC status code for an h2 error (the gRPC HTTP/2 protocol's mapping).
pub(crate) fn status_code(error: &h2::Error) -> tonic::Code {
    // A GOAWAY, whatever its reason (`ENHANCE_YOUR_CALM` included), or a connection
    // that failed: the server is unavailable, as grpc-go ends such streams.
    if error.is_go_away() || error.is_io() {
        return tonic::Code::Unavailable;
    }
    match error.reason() {
        Some(Reason::REFUSED_STREAM) => tonic::Code::Unavailable,
        Some(Reason::CANCEL) => tonic::Code::Cancelled,
        Some(Reason::ENHANCE_YOUR_CALM) => tonic::Code::ResourceExhausted,
        Some(Reason::INADEQUATE_SECURITY) => tonic::Code::PermissionDenied,
        Some(_) => tonic::Code::Internal,
        None => tonic::Code::Unavailable,
    }
}

/// Whether `error` is h2's own refusal of something this client asked, with nothing
/// from the peer or the socket: when opening a stream, that is h2 running out of
/// stream ids (requests are made valid before they reach h2: connection headers
/// stripped, scheme and authority set).
pub(crate) fn is_local(error: &h2::Error) -> bool {
    error.reason().is_none() && !error.is_io() && !error.is_go_away() && !error.is_reset()
}

/// Whether `error` on stream `id` means the server never processed it: it refused
/// the stream (`REFUSED_STREAM`, RFC 9113 section 8.7), or the stream is above the
/// last stream id of a GOAWAY the server sent (section 6.8).
pub(crate) fn unprocessed(
    error: &h2::Error,
    id: u32,
    signals: &Arc<super::frames::ConnSignals>,
) -> bool {
    (error.is_reset() && error.reason() == Some(Reason::REFUSED_STREAM)) || signals.unprocessed(id)
}
