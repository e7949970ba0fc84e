//! Request bodies that can be sent again.
//!
//! A stream that the server refused unprocessed (HTTP/2 `REFUSED_STREAM`, or above the
//! last stream id of a graceful GOAWAY) is safe to resend, as gRPC's transparent retry
//! does, but the first attempt has consumed its body by then. So before sending, the channel reads
//! what the body has ready at once: a unary request's whole body. A body that ends
//! within [`LIMIT`] bytes is kept and can be replayed; a longer or still-streaming one
//! is sent as it is (its read part first) and is not retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame};
use tonic::body::Body;

/// The most a replayable body may hold.
pub(crate) const LIMIT: usize = 64 * 1024;

/// A request body after [`prefetch`].
pub(crate) enum Prefetched {
    /// The whole body, kept: [`Prefetched::body`] can be called again.
    Complete {
        data: Chunks,
        trailers: Option<HeaderMap>,
    },
    /// Part of the body was read; the rest still streams. Sendable once.
    Partial(Option<Body>),
}

impl Prefetched {
    /// A body to send: a fresh copy for a complete body, the original (once) for a
    /// partial one.
    #[cfg(test)]
    pub(crate) fn body(&mut self) -> Option<Body> {
        match self {
            Prefetched::Complete { data, trailers } => Some(Body::new(Replay {
                data: data.clone(),
                trailers: trailers.clone(),
            })),
            Prefetched::Partial(body) => body.take(),
        }
    }

    /// The body for one attempt: a copy of a complete body (cheap: its chunks are
    /// reference-counted), the original stream (once) for a partial one.
    pub(crate) fn outgoing(&mut self) -> Option<crate::stream::Outgoing> {
        match self {
            Prefetched::Complete { data, trailers } => Some(crate::stream::Outgoing::Complete {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            Prefetched::Partial(body) => body.take().map(crate::stream::Outgoing::Streaming),
        }
    }

    /// Takes back a body that never left (its stream could not be opened).
    pub(crate) fn hand_back(&mut self, outgoing: crate::stream::Outgoing) {
        if let (Prefetched::Partial(slot), crate::stream::Outgoing::Streaming(body)) =
            (self, outgoing)
        {
            *slot = Some(body);
        }
    }

    /// Whether the body can be sent again.
    pub(crate) fn is_replayable(&self) -> bool {
        matches!(self, Prefetched::Complete { .. })
    }
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
    fn push(&mut self, chunk: Bytes) {
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
}

/// Reads the frames `body` has ready now, up to [`LIMIT`] bytes, without waiting.
pub(crate) async fn prefetch(mut body: Body) -> Result<Prefetched, tonic::Status> {
    let mut data = Chunks::Empty;
    let mut size = 0;
    let mut trailers = None;
    let ended = std::future::poll_fn(|cx| {
        loop {
            if size > LIMIT {
                return Poll::Ready(Ok(false));
            }
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => {
                        size += chunk.len();
                        data.push(chunk);
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Err(status)),
                Poll::Ready(None) => return Poll::Ready(Ok(true)),
                // Not ready now: a stream still being produced. Stop reading.
                Poll::Pending => return Poll::Ready(Ok(false)),
            }
        }
    })
    .await?;
    if ended {
        return Ok(Prefetched::Complete { data, trailers });
    }
    Ok(Prefetched::Partial(Some(Body::new(Chain {
        prefix: data,
        trailers,
        rest: body,
    }))))
}

/// A complete body, sent again from memory.
#[cfg(test)]
struct Replay {
    data: Chunks,
    trailers: Option<HeaderMap>,
}

#[cfg(test)]
impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(chunk) = self.data.pop() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }
}

/// The frames already read, then the rest of the original body.
struct Chain {
    prefix: Chunks,
    trailers: Option<HeaderMap>,
    rest: Body,
}

impl http_body::Body for Chain {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(chunk) = self.prefix.pop() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_complete_body_replays_as_often_as_asked() {
        let mut p = prefetch(Body::new(
            http_body_util::Full::new(Bytes::from_static(b"abc")).map_err(|e| match e {}),
        ))
        .await
        .unwrap();
        assert!(p.is_replayable());
        for _ in 0..3 {
            assert_eq!(collect(p.body().unwrap()).await, b"abc");
        }
    }

    #[tokio::test]
    async fn a_streaming_body_is_sent_once_with_nothing_lost() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, tonic::Status>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first "))))
            .await
            .unwrap();
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut p = prefetch(Body::new(stream)).await.unwrap();
        assert!(!p.is_replayable(), "the stream had not ended");
        let body = p.body().unwrap();
        assert!(p.body().is_none(), "sendable once");
        tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(body).await, b"first second");
    }

    #[tokio::test]
    async fn several_chunks_replay_in_order() {
        let chunks = vec![
            Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
            Ok(Frame::data(Bytes::from_static(b"c"))),
        ];
        let mut p = prefetch(Body::new(http_body_util::StreamBody::new(
            tokio_stream::iter(chunks),
        )))
        .await
        .unwrap();
        assert!(p.is_replayable());
        assert_eq!(collect(p.body().unwrap()).await, b"abc");
        assert_eq!(collect(p.body().unwrap()).await, b"abc");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_kept() {
        let big = Bytes::from(vec![7u8; LIMIT + 1]);
        let chunks = vec![
            Ok::<_, tonic::Status>(Frame::data(big.clone())),
            Ok(Frame::data(Bytes::from_static(b"x"))),
        ];
        let body = Body::new(http_body_util::StreamBody::new(tokio_stream::iter(chunks)));
        let mut p = prefetch(body).await.unwrap();
        assert!(!p.is_replayable());
        assert_eq!(collect(p.body().unwrap()).await.len(), LIMIT + 2);
    }
}
