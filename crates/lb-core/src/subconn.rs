//! Subconns: one logical connection to one address, owned by the transport.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Address, ConnectivityState, LoadReportWatch, SharedError};

/// What a transport implements behind each [`SubConn`].
///
/// Both methods may be called from any thread (including from inside
/// [`crate::Picker::pick`]) and must return at once: they only ask for work that the
/// transport does in the background, and report its outcome as state changes through
/// [`crate::Balancer::update_subconn_state`].
pub trait SubConnHandle: Any + Send + Sync {
    /// Starts connecting if the subconn is `Idle`; does nothing otherwise.
    fn connect(&self);

    /// Closes the subconn for good: no new RPCs, in-flight RPCs finish, then the
    /// connection closes. Idempotent.
    fn shutdown(&self);

    /// The subconn this handle wraps, if it is a parent policy's wrapper around a
    /// subconn its child created (to see `connect` and `shutdown` calls, say).
    /// [`SubConn::handle`] looks through it, so a pick of the wrapper still reaches
    /// the transport's connection. `None` (the default) for a transport's own handle.
    fn inner(&self) -> Option<&SubConn> {
        None
    }

    /// Starts (`Some`) or stops (`None`) passing this subconn's load reports to a
    /// listener, replacing any earlier watch. Per call: the report in each RPC's
    /// trailer, when the RPC ends. Out of band: while the subconn is connected, the
    /// transport keeps a load-report stream open on its connection (reopened after
    /// each reconnection). Returns whether the transport supports it.
    ///
    /// The default passes the call on to the wrapped subconn ([`SubConnHandle::inner`])
    /// and returns `false` for a handle that wraps none.
    fn watch_load_reports(&self, watch: Option<LoadReportWatch>) -> bool {
        self.inner()
            .is_some_and(|inner| inner.watch_load_reports(watch))
    }
}

/// Identifies a subconn; unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubConnId(u64);

impl SubConnId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subconn#{}", self.0)
    }
}

/// A balancer's handle on one connection to one address.
///
/// Created by [`crate::ClientConn::new_subconn`]. A subconn starts `Idle` and only
/// connects when [`SubConn::connect`] is called; its state changes reach the balancer
/// through [`crate::Balancer::update_subconn_state`]. Cloning is one reference count;
/// equality and hashing use the [`SubConnId`].
#[derive(Clone)]
pub struct SubConn {
    inner: Arc<Inner>,
}

struct Inner {
    id: SubConnId,
    address: Address,
    handle: Arc<dyn SubConnHandle>,
}

impl SubConn {
    /// A subconn for `address`, backed by the transport's `handle`. Called by
    /// channel implementations (and the `test-util` recorder), not by balancers.
    pub fn new(address: Address, handle: Arc<dyn SubConnHandle>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: SubConnId::next(),
                address,
                handle,
            }),
        }
    }

    /// The subconn's id.
    pub fn id(&self) -> SubConnId {
        self.inner.id
    }

    /// The address this subconn connects to.
    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// Asks the transport to connect if the subconn is `Idle`. Non-blocking.
    pub fn connect(&self) {
        self.inner.handle.connect();
    }

    /// Shuts the subconn down for good. Non-blocking and idempotent.
    pub fn shutdown(&self) {
        self.inner.handle.shutdown();
    }

    /// The transport's handle, if it is a `T`: how a channel gets from a picked
    /// subconn back to its own connection type. Wrappers ([`SubConnHandle::inner`])
    /// are looked through.
    pub fn handle<T: SubConnHandle>(&self) -> Option<&T> {
        let mut subconn = self;
        loop {
            let handle: &dyn Any = subconn.inner.handle.as_ref();
            if let Some(found) = handle.downcast_ref::<T>() {
                return Some(found);
            }
            subconn = subconn.inner.handle.inner()?;
        }
    }

    /// Passes the backend's load reports (ORCA) to `watch`'s listener: each RPC's
    /// ([`crate::ReportSource::PerCall`], at no cost to picks) or those of an
    /// out-of-band stream ([`crate::ReportSource::OutOfBand`]); `None` stops them. One
    /// watch per subconn: a new one replaces the last. Returns `false` when the
    /// transport cannot (it then ignores the call; a policy should say so).
    pub fn watch_load_reports(&self, watch: Option<LoadReportWatch>) -> bool {
        self.inner.handle.watch_load_reports(watch)
    }

    /// The subconn this one wraps (see [`SubConnHandle::inner`]), if any.
    pub fn wrapped(&self) -> Option<&SubConn> {
        self.inner.handle.inner()
    }
}

impl PartialEq for SubConn {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}

impl Eq for SubConn {}

impl Hash for SubConn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.id.hash(state);
    }
}

impl fmt::Debug for SubConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubConn({} {})", self.inner.id.0, self.inner.address)
    }
}

/// A subconn failure that is not its connection's: the connection is up, but its
/// health check (gRFC A17) says the server is not serving, or the health stream
/// broke. A transport reports it as the `TransientFailure` error, so that
/// policies' messages call it what it is ([`failure_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} is connected but its health check failed: {reason}")]
pub struct HealthCheckFailed {
    /// The subconn's address.
    pub address: String,
    /// What the health service said, or how its stream ended.
    pub reason: String,
}

/// How a policy names a subconn's last error in the status of the RPCs it fails:
/// "last health check failure: …" for a [`HealthCheckFailed`], else "last
/// connection error: …" (grpc-go's wording).
pub fn failure_message(error: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if error.downcast_ref::<HealthCheckFailed>().is_some() {
        format!("last health check failure: {error}")
    } else {
        format!("last connection error: {error}")
    }
}

/// A subconn's new state, as delivered to [`crate::Balancer::update_subconn_state`].
#[derive(Clone, Debug)]
pub struct SubConnState {
    /// The state the subconn moved to.
    pub state: ConnectivityState,
    /// Why, for `TransientFailure` (and optionally `Idle` after a lost connection).
    pub error: Option<SharedError>,
}

impl SubConnState {
    /// A state with no error.
    pub fn new(state: ConnectivityState) -> Self {
        Self { state, error: None }
    }

    /// `TransientFailure` with the error that caused it.
    pub fn failure(error: SharedError) -> Self {
        Self {
            state: ConnectivityState::TransientFailure,
            error: Some(error),
        }
    }
}
