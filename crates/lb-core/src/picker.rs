//! Pickers: the per-RPC choice of a subconn.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{AttributeValue, Attributes, LoadReport, Status, SubConn};

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
    /// The attributes the resolver's config selector gave the RPC
    /// ([`crate::routing::ConfigSelector`]), if any.
    pub attributes: Option<&'a Attributes>,
}

impl<'a> PickInfo<'a> {
    /// Info for an RPC on `method` with no headers.
    pub fn new(method: &'a str) -> Self {
        Self {
            method,
            headers: None,
            attributes: None,
        }
    }

    /// This info with the request's headers.
    pub fn with_headers(mut self, headers: &'a http::HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }

    /// This info with the RPC's attributes (from a config selector).
    pub fn with_attributes(mut self, attributes: &'a Attributes) -> Self {
        self.attributes = Some(attributes);
        self
    }

    /// The RPC's attribute of type `T`, if its config selector set one (the
    /// cluster an xDS route chose, a [`crate::routing::RequestHash`]).
    pub fn attribute<T: AttributeValue>(&self) -> Option<&'a T> {
        self.attributes.and_then(Attributes::get::<T>)
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
    /// The picking policy is idle: the RPC waits like [`PickResult::Queue`], and
    /// the channel calls [`crate::Balancer::exit_idle`] on its root policy, which
    /// parents pass down to their children. How an idle policy deep in a tree
    /// (a cluster's pick_first whose connection closed) learns that an RPC wants
    /// it, as grpc-go's idle picker calls `ExitIdle` itself.
    Idle,
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
    /// load or failures: the picking policy's callback, then those of the parent
    /// policies that wrapped it. Empty costs nothing.
    pub on_done: Callbacks,
}

impl<'a> Pick<'a> {
    /// A pick of `subconn` with no completion callback.
    pub fn new(subconn: &'a SubConn) -> Self {
        Self {
            subconn,
            on_done: Callbacks::new(),
        }
    }

    /// This pick with one more completion callback (a parent policy adds its own to
    /// its child's this way). No allocation for up to [`Callbacks::INLINE`].
    #[must_use]
    pub fn with_on_done(mut self, on_done: Arc<dyn OnDone>) -> Self {
        self.on_done.push(on_done);
        self
    }
}

impl std::fmt::Debug for Pick<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pick")
            .field("subconn", self.subconn)
            .field("on_done", &self.on_done.len())
            .finish()
    }
}

/// The completion callbacks of one pick.
///
/// A policy's picker adds its callback; a parent policy that calls a child's picker
/// adds its own to the child's, and so on up. The first [`Callbacks::INLINE`] are
/// kept inline, so composing policies allocates nothing per pick (cloning an `Arc` is
/// a reference count); deeper nesting combines the rest into one allocation.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use lb_core::{Callbacks, Code, DoneInfo, OnDone, Status};
///
/// let calls = Arc::new(AtomicUsize::new(0));
/// let counted: Arc<dyn OnDone> = Arc::new({
///     let calls = calls.clone();
///     move |_: &DoneInfo<'_>| { calls.fetch_add(1, Ordering::Relaxed); }
/// });
/// let mut cbs = Callbacks::new();
/// cbs.push(counted.clone()); // the child's
/// cbs.push(counted);         // its parent's
/// cbs.done(&DoneInfo::new(&Status::new(Code::Ok, ""), None));
/// assert_eq!(calls.load(Ordering::Relaxed), 2);
/// ```
#[derive(Clone, Default)]
pub struct Callbacks {
    inline: [Option<Arc<dyn OnDone>>; Callbacks::INLINE],
    len: u8,
}

impl Callbacks {
    /// How many callbacks are kept without allocating.
    pub const INLINE: usize = 4;

    /// No callback.
    pub const fn new() -> Self {
        Self {
            inline: [None, None, None, None],
            len: 0,
        }
    }

    /// Adds `on_done`, called after the ones already there.
    pub fn push(&mut self, on_done: Arc<dyn OnDone>) {
        let len = usize::from(self.len);
        if len < Self::INLINE {
            self.inline[len] = Some(on_done);
            self.len += 1;
        } else if let Some(last) = self.inline[Self::INLINE - 1].take() {
            // Deeper than the inline slots: the last slot holds the rest, in order.
            self.inline[Self::INLINE - 1] = Some(Arc::new(Both(last, on_done)));
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many slots are used.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Calls every callback, in the order they were added.
    pub fn done(&self, info: &DoneInfo<'_>) {
        for cb in self.inline.iter().flatten() {
            cb.done(info);
        }
    }
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Callbacks({})", self.len)
    }
}

/// Two callbacks in a row: what [`Callbacks`] keeps past its inline slots.
struct Both(Arc<dyn OnDone>, Arc<dyn OnDone>);

impl OnDone for Both {
    fn done(&self, info: &DoneInfo<'_>) {
        self.0.done(info);
        self.1.done(info);
    }
}

/// A completion callback returned with a [`Pick`].
///
/// Called exactly once per picked RPC attempt, by the channel, when it ends (with its
/// final status, or the status it failed with before reaching the server; a retried
/// RPC's every attempt is reported). Must not block; a panic in it is caught and
/// logged by the channel.
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
    /// The time from the pick to the RPC's end, as the channel measured it (zero
    /// when nobody measured): what latency-aware policies feed on.
    pub elapsed: Duration,
    /// The backend's load report for this call (ORCA's `endpoint-load-metrics-bin`
    /// trailer), decoded by the channel when the server sent one.
    pub load_report: Option<&'a LoadReport>,
}

impl<'a> DoneInfo<'a> {
    /// Completion info for `status`, with optional `trailers`.
    pub fn new(status: &'a Status, trailers: Option<&'a http::HeaderMap>) -> Self {
        Self {
            status,
            trailers,
            elapsed: Duration::ZERO,
            load_report: None,
        }
    }

    /// This info with the backend's load report.
    #[must_use]
    pub fn with_load_report(mut self, report: Option<&'a LoadReport>) -> Self {
        self.load_report = report;
        self
    }

    /// This info with the RPC's duration since its pick.
    #[must_use]
    pub fn with_elapsed(mut self, elapsed: Duration) -> Self {
        self.elapsed = elapsed;
        self
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

/// A picker that asks to leave idle: what a balancer publishes in `Idle`, so that
/// the first RPC starts it connecting ([`PickResult::Idle`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdlePicker;

impl Picker for IdlePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Idle
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
