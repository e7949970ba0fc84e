//! The response body: forwards hyper's body and reports the RPC's end to the pick's
//! completion callback.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use lb_core::{Code, DoneInfo, OnDone, Status};

pin_project_lite::pin_project! {
    /// The body of a response from an [`crate::LbChannel`].
    pub struct ResponseBody {
        #[pin]
        inner: hyper::body::Incoming,
        done: Option<DoneGuard>,
    }
}

impl ResponseBody {
    pub(crate) fn new(inner: hyper::body::Incoming, done: Option<DoneGuard>) -> Self {
        Self { inner, done }
    }
}

/// Calls `on_done` exactly once: with the final status, or with `CANCELLED` if the
/// response is dropped before its end.
pub(crate) struct DoneGuard {
    on_done: Option<Arc<dyn OnDone>>,
}

impl DoneGuard {
    pub(crate) fn new(on_done: Arc<dyn OnDone>) -> Self {
        Self {
            on_done: Some(on_done),
        }
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

    pub(crate) fn finish(&mut self, status: &Status, trailers: Option<&HeaderMap>) {
        if let Some(on_done) = self.on_done.take() {
            on_done.done(&DoneInfo::new(status, trailers));
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.finish(
            &Status::new(Code::Cancelled, "the response was dropped before it ended"),
            None,
        );
    }
}

/// The gRPC status in headers or trailers, if any.
pub(crate) fn status_from(headers: &HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    let code = Code::from_i32(code).unwrap_or(Code::Unknown);
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(Status::new(code, message))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(done) = this.done {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let status = status_from(trailers).unwrap_or_else(|| {
                            Status::new(Code::Unknown, "trailers without grpc-status")
                        });
                        done.finish(&status, Some(trailers));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    done.finish(&Status::new(Code::Unavailable, e.to_string()), None);
                }
                Poll::Ready(None) => done.finish(
                    &Status::new(Code::Unknown, "the response ended without grpc-status"),
                    None,
                ),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
