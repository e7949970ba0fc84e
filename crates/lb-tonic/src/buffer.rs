//! The retry buffer's limits, and the channel-wide account of the request bytes kept
//! for replay ([`Budget`]): the control task holds it, every call draws on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How much request data the channel keeps for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// The most one call may keep (default 1 MiB, as grpc-java).
    pub per_call: usize,
    /// The most all calls of a channel may keep together (default 16 MiB).
    pub per_channel: usize,
}

impl Default for BufferLimits {
    fn default() -> Self {
        Self {
            per_call: 1 << 20,
            per_channel: 16 << 20,
        }
    }
}

/// The channel-wide account of buffered bytes.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limits: BufferLimits,
}

impl Budget {
    pub(crate) fn new(limits: BufferLimits) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limits,
        }
    }

    pub(crate) fn per_call(&self) -> usize {
        self.limits.per_call
    }

    /// Takes `n` bytes if the channel has room.
    pub(crate) fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n)
                    .filter(|&u| u <= self.limits.per_channel)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes held in the channel's budget, given back on drop.
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    /// Takes `bytes` from `budget`, if both the call's and the channel's limits allow.
    pub(crate) fn take(budget: &Arc<Budget>, bytes: usize) -> Option<Self> {
        (bytes <= budget.per_call() && budget.take(bytes)).then(|| Self {
            budget: budget.clone(),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}
