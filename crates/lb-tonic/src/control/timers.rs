//! The policy's timers ([`lb_core::ClientConn::schedule`]), kept by the control task
//! in one queue ordered by deadline: no task per timer, cancelled timers are skipped
//! when their time comes, and replacing the policy drops every timer it set.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use lb_core::{TimerHandle, TimerId};
use tokio::time::Instant;

/// One timer waiting for its deadline.
struct Pending {
    at: Instant,
    /// Breaks ties between equal deadlines: timers set together fire in order.
    seq: u64,
    timer: TimerId,
    handle: TimerHandle,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed, so that the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The policy's pending timers.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Pending>,
    seq: u64,
}

impl Timers {
    /// Sets `timer` to fire `after` from now.
    pub(crate) fn schedule(&mut self, after: Duration, timer: TimerId) -> TimerHandle {
        let handle = TimerHandle::new();
        self.seq += 1;
        self.heap.push(Pending {
            at: Instant::now() + after,
            seq: self.seq,
            timer,
            handle: handle.clone(),
        });
        handle
    }

    /// When the earliest pending timer is due (cancelled ones count until then).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|p| p.at)
    }

    /// The last timer set so far: a batch of deliveries stops there, so that a
    /// policy that sets a zero-delay timer from its timer cannot hold the control
    /// task in one batch for ever.
    pub(crate) fn last_set(&self) -> u64 {
        self.seq
    }

    /// The earliest timer due by `now`, set no later than `last_set`, that was not
    /// cancelled, if any; cancelled ones on the way are dropped.
    pub(crate) fn pop_due(&mut self, now: Instant, last_set: u64) -> Option<TimerId> {
        while self
            .heap
            .peek()
            .is_some_and(|p| p.at <= now && p.seq <= last_set)
        {
            let pending = self.heap.pop()?;
            if !pending.handle.is_cancelled() {
                return Some(pending.timer);
            }
        }
        None
    }

    /// Drops every pending timer (their policy instance is gone).
    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let mut t = Timers::default();
        t.schedule(Duration::from_secs(3), TimerId::new(3));
        t.schedule(Duration::from_secs(1), TimerId::new(1));
        let cancelled = t.schedule(Duration::from_secs(2), TimerId::new(2));
        t.schedule(Duration::from_secs(1), TimerId::new(11));
        cancelled.cancel();
        let start = Instant::now();
        assert_eq!(t.next_deadline(), Some(start + Duration::from_secs(1)));
        assert_eq!(t.pop_due(start, u64::MAX), None, "nothing due yet");
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(t.pop_due(at(1), u64::MAX), Some(TimerId::new(1)));
        assert_eq!(
            t.pop_due(at(1), u64::MAX),
            Some(TimerId::new(11)),
            "same deadline: set order"
        );
        assert_eq!(t.pop_due(at(1), u64::MAX), None);
        assert_eq!(
            t.pop_due(at(5), u64::MAX),
            Some(TimerId::new(3)),
            "the cancelled one is skipped"
        );
        assert_eq!(t.len(), 0);
        t.schedule(Duration::from_secs(1), TimerId::new(4));
        t.clear();
        assert_eq!(t.next_deadline(), None);
        // A batch stops at the timers set before it began.
        let last = t.last_set();
        t.schedule(Duration::ZERO, TimerId::new(5));
        assert_eq!(t.pop_due(Instant::now(), last), None);
        assert_eq!(
            t.pop_due(Instant::now(), t.last_set()),
            Some(TimerId::new(5))
        );
    }
}
