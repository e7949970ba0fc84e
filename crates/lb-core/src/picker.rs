//! Pickers: the per-RPC choice of a subconn.

use std::sync::Arc;

use crate::{Status, SubConn};

/// Chooses a subconn for each RPC. Published by a balancer with
/// [`crate::ClientConn::update_state`] and used by the channel until the next one.
///
/// # Contract
///
/// * Called by the channel on every RPC, from any thread, concurrently.
/// * Must not block, and should not lock or allocate: it runs once per RPC.
/// * A picker is immutable once published: when the ready set changes, the balancer
///   publishes a new one. Counters (round-robin position, load) use atomics.
pub trait Picker: Send + Sync + 'static {
    /// Picks for one RPC; see [`PickResult`] for what each outcome does to it.
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_>;
}

/// What a picker knows about the RPC it picks for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PickInfo<'a> {
    /// The full method path, `/package.Service/Method`.
    pub method: &'a str,
    /// The request headers (gRPC metadata), when the channel has them.
    pub headers: Option<&'a http::HeaderMap>,
}

impl<'a> PickInfo<'a> {
    /// Info for an RPC on `method` with no headers.
    pub fn new(method: &'a str) -> Self {
        Self {
            method,
            headers: None,
        }
    }

    /// This info with the request's headers.
    pub fn with_headers(mut self, headers: &'a http::HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }
}

/// The outcome of a pick.
#[derive(Debug)]
pub enum PickResult<'a> {
    /// Send the RPC on this subconn.
    Pick(Pick<'a>),
    /// No decision yet (no subconn is ready, the balancer is still connecting): the
    /// RPC waits for the next picker, bounded by its deadline.
    Queue,
    /// Fail the RPC with this status unless it is wait-for-ready, in which case it
    /// waits for the next picker like [`PickResult::Queue`].
    Fail(Status),
    /// Fail the RPC with this status even if it is wait-for-ready (load shedding,
    /// policy decisions).
    Drop(Status),
}

/// A successful pick.
pub struct Pick<'a> {
    /// The subconn to send the RPC on.
    pub subconn: &'a SubConn,
    /// Called once with the RPC's final status and trailers, for policies that track
    /// load. `None` costs nothing.
    pub on_done: Option<Arc<dyn OnDone>>,
}

impl<'a> Pick<'a> {
    /// A pick of `subconn` with no completion callback.
    pub fn new(subconn: &'a SubConn) -> Self {
        Self {
            subconn,
            on_done: None,
        }
    }
}

impl std::fmt::Debug for Pick<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("subconn", self.subconn)
            .field("on_done", &self.on_done.is_some())
            .finish()
    }
}

/// A completion callback returned with a [`Pick`].
///
/// Called exactly once per picked RPC, by the channel, when the RPC ends (with its
/// final status, or the status it failed with before reaching the server). Must not
/// block.
pub trait OnDone: Send + Sync + 'static {
    /// The RPC ended.
    fn done(&self, info: &DoneInfo<'_>);
}

impl<F: Fn(&DoneInfo<'_>) + Send + Sync + 'static> OnDone for F {
    fn done(&self, info: &DoneInfo<'_>) {
        self(info)
    }
}

/// How a picked RPC ended.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DoneInfo<'a> {
    /// The final status (`OK` for success).
    pub status: &'a Status,
    /// The trailers the server sent, if the RPC got that far.
    pub trailers: Option<&'a http::HeaderMap>,
}

impl<'a> DoneInfo<'a> {
    /// Completion info for `status`, with optional `trailers`.
    pub fn new(status: &'a Status, trailers: Option<&'a http::HeaderMap>) -> Self {
        Self { status, trailers }
    }
}

/// A picker that queues every RPC: what a balancer publishes while it connects.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueuePicker;

impl Picker for QueuePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Queue
    }
}

/// A picker that fails every RPC with one status: what a balancer publishes in
/// `TransientFailure`. Wait-for-ready RPCs keep waiting.
#[derive(Debug, Clone)]
pub struct FailPicker(pub Status);

impl Picker for FailPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Fail(self.0.clone())
    }
}
