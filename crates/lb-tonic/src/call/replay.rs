//! Request bodies that can be sent again: what retries, hedges and transparent
//! retries replay.
//!
//! Before the first attempt the channel reads what the body has ready at once. A body
//! that ends there (a unary request) is kept whole ([`Prefetched::Complete`]) and
//! every attempt gets a copy (its chunks are reference-counted). Any other body goes
//! through a [`Recorder`]: attempts read it through [`Cursor`]s, the one furthest
//! ahead pulls the next frame from the caller and records it for the others.
//!
//! Buffering is bounded, as gRFC A6 asks: per call
//! ([`crate::BufferLimits::per_call`]) and for the whole channel
//! ([`crate::BufferLimits::per_channel`]). When a stream outgrows
//! them, the call *commits* to the attempt that pulled the frame: the others stop,
//! no further attempt starts, and frames are freed as the survivor sends them. A call
//! also commits when response headers arrive ([`Recorder::commit`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body as _;
use tokio::sync::Notify;
use tonic::body::Body;

use crate::buffer::{Budget, Reservation};
use crate::transport::{BodySource, Chunk, Chunks};

/// A request body after [`prefetch`].
pub(crate) enum Prefetched {
    /// The whole body, in memory. `reservation` is `None` when the channel's budget
    /// had no room: the body is still sent, and resent transparently, but a retry
    /// policy does not apply.
    Complete {
        data: Chunks,
        trailers: Option<HeaderMap>,
        reservation: Option<Reservation>,
    },
    /// A body still being produced, read through a recorder.
    Streaming(Arc<Recorder>),
}

/// Reads the frames `body` has ready now, up to the per-call limit, without waiting.
pub(crate) async fn prefetch(
    mut body: Body,
    budget: &Arc<Budget>,
) -> Result<Prefetched, tonic::Status> {
    let limit = budget.per_call();
    let mut data = Chunks::Empty;
    let mut size = 0;
    let mut trailers = None;
    let ended = std::future::poll_fn(|cx| {
        loop {
            if size > limit {
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
        return Ok(Prefetched::Complete {
            data,
            trailers,
            reservation: Reservation::take(budget, size),
        });
    }
    let mut frames = data.into_frames();
    if let Some(t) = trailers {
        frames.push_back(Chunk::Trailers(t));
    }
    Ok(Prefetched::Streaming(Recorder::new(
        frames, size, body, budget,
    )))
}

/// A streaming request body shared by a call's attempts.
pub(crate) struct Recorder {
    state: Mutex<RecState>,
    /// Woken when a frame is recorded, the body ends, or a puller gives up its turn.
    more: Notify,
    /// The caller's body; whoever holds the lock pulls from it.
    source: tokio::sync::Mutex<Body>,
    budget: Arc<Budget>,
}

struct RecState {
    /// Frames not yet freed; `frames[0]` is frame number `base`.
    frames: VecDeque<Chunk>,
    base: usize,
    ended: bool,
    failed: Option<tonic::Status>,
    /// Bytes of `frames` held in the budget.
    held: usize,
    /// The attempt (cursor id) the call committed to.
    owner: Option<u32>,
    /// Where each live cursor is.
    positions: Vec<(u32, usize)>,
}

impl RecState {
    /// Frees the frames the owner has sent; returns the bytes freed.
    fn free_sent(&mut self) -> usize {
        let Some(owner) = self.owner else { return 0 };
        let pos = self
            .positions
            .iter()
            .find(|(id, _)| *id == owner)
            .map_or(self.base, |(_, p)| *p);
        let mut freed = 0;
        while self.base < pos {
            match self.frames.pop_front() {
                Some(Chunk::Data(d)) => freed += d.len(),
                Some(Chunk::Trailers(_)) => {}
                None => break,
            }
            self.base += 1;
        }
        let freed = freed.min(self.held);
        self.held -= freed;
        freed
    }
}

impl Recorder {
    /// A recorder whose first frames (`size` bytes) were already read from `rest`.
    fn new(frames: VecDeque<Chunk>, size: usize, rest: Body, budget: &Arc<Budget>) -> Arc<Self> {
        let fits = size <= budget.per_call() && budget.take(size);
        Arc::new(Self {
            state: Mutex::new(RecState {
                frames,
                base: 0,
                ended: false,
                failed: None,
                held: if fits { size } else { 0 },
                // Over the limit already: the first attempt is the only one.
                owner: if fits { None } else { Some(0) },
                positions: Vec::new(),
            }),
            more: Notify::new(),
            source: tokio::sync::Mutex::new(rest),
            budget: budget.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RecState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cursor for attempt `id`, from the first frame. `None` once the call has
    /// committed to another attempt (nothing may be replayed).
    pub(crate) fn cursor(self: &Arc<Self>, id: u32) -> Option<Cursor> {
        let mut st = self.lock();
        if st.owner.is_some_and(|o| o != id) || st.base > 0 {
            return None;
        }
        st.positions.push((id, 0));
        Some(Cursor {
            recorder: self.clone(),
            id,
            pos: 0,
        })
    }

    /// Commits the call to attempt `id`: other cursors stop, sent frames are freed.
    pub(crate) fn commit(&self, id: u32) {
        let freed = {
            let mut st = self.lock();
            if st.owner.is_some() {
                return;
            }
            st.owner = Some(id);
            st.free_sent()
        };
        self.budget.give(freed);
        self.more.notify_waiters();
    }

    /// The attempt the call is committed to, if any.
    pub(crate) fn owner(&self) -> Option<u32> {
        self.lock().owner
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let held = self.lock().held;
        self.budget.give(held);
    }
}

/// One attempt's place in a recorded body.
pub(crate) struct Cursor {
    recorder: Arc<Recorder>,
    id: u32,
    pos: usize,
}

/// A cursor's attempt lost: the call committed to another one.
pub(crate) fn superseded() -> tonic::Status {
    tonic::Status::cancelled("the call committed to another attempt")
}

impl BodySource for Cursor {
    async fn next_chunk(&mut self) -> Option<Result<Chunk, tonic::Status>> {
        self.next().await
    }
}

impl Cursor {
    /// The next frame: recorded already, or pulled from the caller's body (and
    /// recorded for the other attempts). `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Option<Result<Chunk, tonic::Status>> {
        let recorder = self.recorder.clone();
        loop {
            let more = recorder.more.notified();
            {
                let mut st = recorder.lock();
                if let Some(frame) = self.take_recorded(&mut st) {
                    let freed = st.free_sent();
                    drop(st);
                    recorder.budget.give(freed);
                    return Some(frame);
                }
                if st.ended {
                    return None;
                }
                if let Some(e) = &st.failed {
                    return Some(Err(e.clone()));
                }
            }
            // Our turn to pull from the caller, unless another attempt is pulling:
            // then wait for what it records.
            let Ok(source) = recorder.source.try_lock() else {
                more.await;
                continue;
            };
            let mut pulling = Pulling {
                source: Some(source),
                more: &recorder.more,
            };
            {
                let st = recorder.lock();
                if self.pos < st.base + st.frames.len() || st.ended || st.failed.is_some() {
                    continue; // recorded while we took the lock
                }
                if st.owner.is_some_and(|o| o != self.id) {
                    return Some(Err(superseded()));
                }
            }
            let pulled = std::future::poll_fn(|cx| match pulling.source.as_mut() {
                Some(source) => Pin::new(&mut **source).poll_frame(cx),
                None => Poll::Ready(None),
            })
            .await;
            self.record(pulled);
        }
    }

    /// The frame at this cursor, if it is recorded and this attempt may send it.
    fn take_recorded(&mut self, st: &mut RecState) -> Option<Result<Chunk, tonic::Status>> {
        if st.owner.is_some_and(|o| o != self.id) {
            return Some(Err(superseded()));
        }
        let index = self.pos.checked_sub(st.base)?;
        let frame = st.frames.get(index)?.clone();
        self.pos += 1;
        if let Some(p) = st.positions.iter_mut().find(|(id, _)| *id == self.id) {
            p.1 = self.pos;
        }
        Some(Ok(frame))
    }

    fn record(&mut self, pulled: Option<Result<http_body::Frame<Bytes>, tonic::Status>>) {
        let recorder = &self.recorder;
        let mut commit = false;
        {
            let mut st = recorder.lock();
            match pulled {
                None => st.ended = true,
                Some(Err(e)) => st.failed = Some(e),
                Some(Ok(frame)) => {
                    let chunk = match frame.into_data() {
                        Ok(data) => {
                            let len = data.len();
                            if st.owner.is_none() {
                                let within = st.held + len <= recorder.budget.per_call();
                                if within && recorder.budget.take(len) {
                                    st.held += len;
                                } else {
                                    // Outgrew the buffer: this attempt, furthest
                                    // ahead, is the one that goes on (gRFC A6).
                                    commit = true;
                                }
                            }
                            Chunk::Data(data)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(t) => Chunk::Trailers(t),
                            Err(_) => return, // an unknown frame kind: nothing to send
                        },
                    };
                    // Kept until the owner has sent it (it is at the end of the
                    // queue, so a committed call holds at most this one frame
                    // beyond the limit).
                    st.frames.push_back(chunk);
                }
            }
        }
        if commit {
            recorder.commit(self.id);
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let mut st = self.recorder.lock();
        st.positions.retain(|(id, _)| *id != self.id);
    }
}

/// A cursor's turn at the caller's body. Dropping it (after a pull, or when the
/// puller is cancelled mid-pull) releases the body and then wakes every cursor waiting
/// for a frame, so that one of them takes its turn.
struct Pulling<'a> {
    source: Option<tokio::sync::MutexGuard<'a, Body>>,
    more: &'a Notify,
}

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        drop(self.source.take());
        self.more.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use http_body::Frame;
    use http_body_util::BodyExt;

    use super::*;
    use crate::buffer::BufferLimits;

    fn budget(per_call: usize, per_channel: usize) -> Arc<Budget> {
        Arc::new(Budget::new(BufferLimits {
            per_call,
            per_channel,
        }))
    }

    fn stream() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, tonic::Status>>,
        Body,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        (tx, Body::new(body))
    }

    async fn data(cursor: &mut Cursor) -> Vec<u8> {
        match cursor.next().await {
            Some(Ok(Chunk::Data(d))) => d.to_vec(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_complete_body_is_kept_whole_and_counted() {
        let b = budget(1024, 4096);
        let body = Body::new(
            http_body_util::Full::new(Bytes::from_static(b"abc")).map_err(|e| match e {}),
        );
        let p = prefetch(body, &b).await.unwrap();
        assert!(matches!(
            &p,
            Prefetched::Complete {
                reservation: Some(_),
                ..
            }
        ));
        assert_eq!(b.used(), 3);
        drop(p);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn attempts_replay_what_the_first_pulled_and_wait_for_more() {
        let b = budget(1024, 4096);
        let (tx, body) = stream();
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let Prefetched::Streaming(r) = prefetch(body, &b).await.unwrap() else {
            panic!("a stream that has not ended is recorded");
        };
        let mut first = r.cursor(0).unwrap();
        assert_eq!(data(&mut first).await, b"one");
        tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
            .await
            .unwrap();
        assert_eq!(data(&mut first).await, b"two");

        // A second attempt starts over from the beginning, without the caller.
        let mut second = r.cursor(1).unwrap();
        assert_eq!(data(&mut second).await, b"one");
        assert_eq!(data(&mut second).await, b"two");
        // Both wait for the third frame; whichever pulls records it for the other.
        let waiting = tokio::spawn(async move { data(&mut second).await });
        tokio::task::yield_now().await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"three"))))
            .await
            .unwrap();
        assert_eq!(data(&mut first).await, b"three");
        assert_eq!(waiting.await.unwrap(), b"three");
        drop(tx);
        assert!(first.next().await.is_none());
        assert_eq!(b.used(), 11);
        drop(first);
        drop(r);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn committing_stops_the_others_and_frees_what_the_owner_sent() {
        let b = budget(1024, 4096);
        let (tx, body) = stream();
        tx.send(Ok(Frame::data(Bytes::from_static(b"aa"))))
            .await
            .unwrap();
        let Prefetched::Streaming(r) = prefetch(body, &b).await.unwrap() else {
            panic!()
        };
        let mut winner = r.cursor(3).unwrap();
        let mut loser = r.cursor(4).unwrap();
        assert_eq!(data(&mut winner).await, b"aa");
        r.commit(3);
        assert_eq!(r.owner(), Some(3));
        assert_eq!(b.used(), 0, "the sent frame is freed");
        assert!(matches!(loser.next().await, Some(Err(s)) if s.code() == tonic::Code::Cancelled));
        assert!(r.cursor(5).is_none(), "no new attempt after a commit");
        tx.send(Ok(Frame::data(Bytes::from_static(b"bbb"))))
            .await
            .unwrap();
        assert_eq!(data(&mut winner).await, b"bbb");
        assert_eq!(b.used(), 0, "after the commit nothing is kept");
    }

    #[tokio::test]
    async fn outgrowing_the_per_call_limit_commits_to_the_attempt_that_pulled() {
        let b = budget(8, 4096);
        let (tx, body) = stream();
        tx.send(Ok(Frame::data(Bytes::from_static(b"12345"))))
            .await
            .unwrap();
        let Prefetched::Streaming(r) = prefetch(body, &b).await.unwrap() else {
            panic!()
        };
        let mut lagging = r.cursor(0).unwrap();
        let mut leading = r.cursor(1).unwrap();
        assert_eq!(data(&mut leading).await, b"12345");
        tx.send(Ok(Frame::data(Bytes::from_static(b"6789"))))
            .await
            .unwrap();
        assert_eq!(data(&mut leading).await, b"6789");
        assert_eq!(r.owner(), Some(1), "9 bytes > 8: committed to the puller");
        assert!(matches!(lagging.next().await, Some(Err(_))));
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn the_channel_budget_is_shared_between_calls() {
        let b = budget(1024, 10);
        let full =
            Body::new(http_body_util::Full::new(Bytes::from(vec![0u8; 8])).map_err(|e| match e {}));
        let first = prefetch(full, &b).await.unwrap();
        assert_eq!(b.used(), 8);
        let full =
            Body::new(http_body_util::Full::new(Bytes::from(vec![0u8; 8])).map_err(|e| match e {}));
        let second = prefetch(full, &b).await.unwrap();
        assert!(
            matches!(
                &second,
                Prefetched::Complete {
                    reservation: None,
                    ..
                }
            ),
            "no room: sent, not retryable"
        );
        drop(first);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_puller_cancelled_mid_pull_hands_its_turn_on() {
        let b = budget(1024, 4096);
        let (tx, body) = stream();
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        let Prefetched::Streaming(r) = prefetch(body, &b).await.unwrap() else {
            panic!()
        };
        let mut a = r.cursor(0).unwrap();
        let mut c = r.cursor(1).unwrap();
        assert_eq!(data(&mut a).await, b"x");
        assert_eq!(data(&mut c).await, b"x");
        // `a` starts pulling (nothing there yet) and is cancelled.
        let pulling = tokio::spawn(async move { a.next().await.map(|_| ()) });
        tokio::task::yield_now().await;
        pulling.abort();
        let _ = pulling.await;
        let waiting = tokio::spawn(async move { data(&mut c).await });
        tokio::task::yield_now().await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"y"))))
            .await
            .unwrap();
        assert_eq!(waiting.await.unwrap(), b"y");
    }
}
