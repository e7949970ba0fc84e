//! The response body: the h2 stream's data and trailers, bounded by the call's
//! deadline, reporting the RPC's end to the pick's completion callback.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use lb_core::{Address, Callbacks, Code, DoneInfo, LoadReportListener, Status};

use super::CallGuard;
use crate::introspect::{MessageCount, SocketStats};
use crate::transport::Held;

/// The body of a response from an [`crate::LbChannel`]: the response stream's
/// messages and trailers. Past the call's deadline it ends with `DEADLINE_EXCEEDED`
/// and the stream is reset; a stream the server resets ends with the status that
/// the reset means.
pub struct ResponseBody {
    recv: RecvStream,
    phase: Phase,
    stream: Held,
    deadline: Option<Deadline>,
    done: Option<DoneGuard>,
    addr: Address,
    report: Option<ThrottleReport>,
    call: CallGuard,
    /// Messages received so far, for channelz (with the per-RPC counters on).
    received: MessageCount,
}

/// What the channel's retry throttle learns from a call's final status: a success
/// refills it, a failure with one of the method's retryable codes drains it.
pub(crate) struct ThrottleReport {
    pub(crate) throttle: Arc<crate::throttle::Throttle>,
    /// Retryable (or non-fatal) codes, bit `c` for code `c`.
    pub(crate) failures: u32,
}

impl ThrottleReport {
    fn count(self, code: Code) {
        if code == Code::Ok {
            self.throttle.success();
        } else if self.failures & (1 << (code as u32)) != 0 {
            self.throttle.failure();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Ended,
}

/// A call's deadline, as a timer.
pub(crate) struct Deadline {
    pub(crate) sleep: Pin<Box<tokio::time::Sleep>>,
    /// The timeout the call was given, for the message.
    pub(crate) timeout: Duration,
    /// When the call started, for the message.
    pub(crate) started: tokio::time::Instant,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("from", &self.addr)
            .field("ended", &(self.phase == Phase::Ended))
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub(crate) fn new(
        recv: RecvStream,
        stream: Held,
        deadline: Option<Deadline>,
        done: Option<DoneGuard>,
        addr: Address,
        call: CallGuard,
        report: Option<ThrottleReport>,
    ) -> Self {
        Self {
            recv,
            phase: Phase::Data,
            stream,
            deadline,
            done,
            addr,
            report,
            call,
            received: MessageCount::default(),
        }
    }

    /// The call ended with `code`.
    fn ended(&mut self, code: Code) {
        self.call.ended(code == Code::Ok);
        if let Some(report) = self.report.take() {
            report.count(code);
        }
    }

    /// Ends the call with `status`: the stream is reset, the callback told.
    fn fail(&mut self, status: &Status) -> tonic::Status {
        self.phase = Phase::Ended;
        self.ended(status.code());
        self.stream.handle.cancel();
        if let Some(done) = &mut self.done {
            done.finish(status, None);
        }
        super::to_tonic(status)
    }

    fn stream_error(&mut self, error: &h2::Error) -> tonic::Status {
        let code = crate::transport::status_code(error);
        let status = Status::new(
            lb_core::Code::from_i32(code as i32).unwrap_or(Code::Unknown),
            format!("{}: {}", self.addr, lb_core::error_chain(error)),
        );
        self.fail(&status)
    }

    /// Whether the deadline has passed (registers the timer otherwise): the
    /// timeout, and how long the call ran.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<(Duration, Duration)> {
        let deadline = self.deadline.as_mut()?;
        deadline
            .sleep
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| (deadline.timeout, deadline.started.elapsed()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.phase != Phase::Ended
            && let Poll::Ready(expired) = this.poll_deadline(cx)
        {
            // Checked first: a server that keeps the receive buffer full never lets
            // the stream return `Pending`, and must not outrun the deadline.
            return Poll::Ready(expired);
        }
        loop {
            match this.phase {
                Phase::Ended => return Poll::Ready(None),
                Phase::Data => match this.recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        // Read: let the server send as much again.
                        let _ = this.recv.flow_control().release_capacity(data.len());
                        if let Some(socket) = this.done.as_ref().and_then(DoneGuard::socket)
                            && socket.counts_messages()
                        {
                            let n = this.received.feed(&data);
                            if n > 0 {
                                socket.messages_received(n);
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(this.stream_error(&e))));
                    }
                    Poll::Ready(None) => this.phase = Phase::Trailers,
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Trailers => match this.recv.poll_trailers(cx) {
                    Poll::Ready(Ok(Some(trailers))) => {
                        this.phase = Phase::Ended;
                        if this.done.is_some() || this.report.is_some() || this.call.counts() {
                            // The code alone, unless a callback wants the message.
                            let code = code_from(&trailers).unwrap_or(Code::Unknown);
                            this.ended(code);
                            if let Some(done) = &mut this.done {
                                done.end(code, Some(&trailers), || {
                                    status_from(&trailers).unwrap_or_else(|| {
                                        Status::new(Code::Unknown, "trailers without grpc-status")
                                    })
                                });
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Poll::Ready(Ok(None)) => {
                        this.phase = Phase::Ended;
                        if let Some(done) = &mut this.done {
                            done.end_of_stream();
                            done.finish(
                                &Status::new(
                                    Code::Unknown,
                                    "the response ended without grpc-status",
                                ),
                                None,
                            );
                        }
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(this.stream_error(&e)))),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl ResponseBody {
    /// The deadline check: an error once it has passed (the stream is reset), else
    /// `Pending` with the timer registered.
    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.expired(cx) {
            Some((timeout, ran)) => {
                let status = Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "deadline of {timeout:?} exceeded: the call ran {ran:?} (the stream was reset)"
                    ),
                );
                Poll::Ready(Some(Err(self.fail(&status))))
            }
            None => Poll::Pending,
        }
    }
}

/// Ends a picked attempt exactly once: with the final status, or with `CANCELLED`
/// if the response is dropped before its end. Counts the attempt in its subconn's
/// stats, hands the backend's per-call load report to the subconn's listener, and
/// calls the pick's callbacks with the status, the time since the pick and the
/// report.
pub(crate) struct DoneGuard {
    on_done: Option<Callbacks>,
    /// The subconn's per-call load-report listener, if its policy set one.
    per_call: Option<Arc<dyn LoadReportListener>>,
    /// When it was picked, if a callback wants to know.
    picked_at: Option<std::time::Instant>,
    /// The connection's counters (and its subconn's), when the channel counts RPCs.
    stats: Option<Arc<SocketStats>>,
    /// When the attempt started (channelz ms), for its stream's start.
    started_ms: u64,
    /// Its stream opened; and the server ended it (end of stream received).
    opened: bool,
    eos: bool,
}

impl DoneGuard {
    /// A guard for `callbacks`, `per_call` and `stats`; `None` when there is none of
    /// them. The clock is read only for callbacks.
    pub(crate) fn new(
        callbacks: Callbacks,
        per_call: Option<Arc<dyn LoadReportListener>>,
        stats: Option<Arc<SocketStats>>,
    ) -> Option<Self> {
        if callbacks.is_empty() && per_call.is_none() && stats.is_none() {
            return None;
        }
        let started_ms = stats.as_ref().map_or(0, |s| s.attempt_started());
        Some(Self {
            picked_at: (!callbacks.is_empty()).then(std::time::Instant::now),
            on_done: Some(callbacks),
            per_call,
            stats,
            started_ms,
            opened: false,
            eos: false,
        })
    }

    /// Takes the response headers: a trailers-only response (an error, usually)
    /// carries its status there, and callers often drop its body unread, so it is
    /// reported now.
    pub(crate) fn with_headers(mut self, headers: &HeaderMap) -> Self {
        if let Some(status) = status_from(headers) {
            self.finish(&status, Some(headers));
        }
        self
    }

    /// The connection's counters, when the channel counts RPCs.
    pub(crate) fn socket(&self) -> Option<&Arc<SocketStats>> {
        self.stats.as_ref()
    }

    /// Where the attempt's messages are counted, with its start time (channelz
    /// ms), when channelz counts them.
    pub(crate) fn message_counts(&self) -> Option<(&Arc<SocketStats>, u64)> {
        self.stats
            .as_ref()
            .filter(|s| s.counts_messages())
            .map(|s| (s, self.started_ms))
    }

    /// The attempt's stream opened on the connection.
    pub(crate) fn stream_opened(&mut self) {
        self.opened = true;
        if let Some(stats) = &self.stats {
            stats.stream_opened(self.started_ms);
        }
    }

    /// The server ended the stream, with or without trailers.
    pub(crate) fn end_of_stream(&mut self) {
        self.eos = true;
    }

    pub(crate) fn finish(&mut self, status: &Status, trailers: Option<&HeaderMap>) {
        self.end(status.code(), trailers, || status.clone());
    }

    /// Ends the attempt with `code`; `status` is made only if a callback or listener
    /// will see it (an RPC with neither allocates nothing here).
    pub(crate) fn end(
        &mut self,
        code: Code,
        trailers: Option<&HeaderMap>,
        status: impl FnOnce() -> Status,
    ) {
        let Some(on_done) = self.on_done.take() else {
            return;
        };
        if let Some(stats) = &self.stats {
            let eos = self.eos || trailers.is_some();
            stats.ended(code, self.opened.then_some(eos));
        }
        if on_done.is_empty() && self.per_call.is_none() {
            return;
        }
        let status = &status();
        let report = crate::transport::from_trailers(trailers);
        // A policy's code must not take the RPC down with it.
        let called = catch_unwind(AssertUnwindSafe(|| {
            if let (Some(listener), Some(report)) = (self.per_call.take(), &report) {
                listener.on_load_report(report);
            }
            if let Some(picked_at) = self.picked_at {
                let info = DoneInfo::new(status, trailers)
                    .with_elapsed(picked_at.elapsed())
                    .with_load_report(report.as_ref());
                on_done.done(&info);
            }
        }));
        if called.is_err() {
            tracing::error!("a load-balancing policy's completion callback panicked");
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.end(Code::Cancelled, None, || {
            Status::new(Code::Cancelled, "the response was dropped before it ended")
        });
    }
}

/// The gRPC status in headers or trailers, if any.
pub(crate) fn status_from(headers: &HeaderMap) -> Option<Status> {
    let code = code_from(headers)?;
    Some(Status::new(code, crate::grpc_message::of(headers)))
}

/// The code of `grpc-status` in headers or trailers, if any (an unknown number is
/// `UNKNOWN`).
pub(super) fn code_from(headers: &HeaderMap) -> Option<Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code).unwrap_or(Code::Unknown))
}
