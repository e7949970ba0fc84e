//! Channel idleness, as grpc-go's idleness manager: a channel with no RPC for its
//! idle timeout closes its connections and its resolver, and the next RPC brings
//! them back. RPCs count themselves in and out here with two relaxed atomics and one
//! clock read; the control task checks the count on a timer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// RPC activity of one channel.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    epoch: Instant,
    /// Milliseconds after `epoch` at which the last RPC ended (or the channel left
    /// idleness).
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Marks now as activity (the channel was just used or woke up).
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A call started (the call path counts each one in and out).
    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A call ended: it counts as activity.
    pub(crate) fn call_ended(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Calls under way.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the channel may next be found idle for `timeout`, or `None` if it is
    /// idle for that long already.
    pub(crate) fn idle_check(&self, timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + timeout);
        }
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let due = last + timeout;
        (due > now).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_rpcs_in_flight_for_the_timeout() {
        let a = Activity::new();
        assert!(
            a.idle_check(Duration::from_secs(60)).is_some(),
            "just created"
        );
        assert!(a.idle_check(Duration::ZERO).is_none());
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        assert!(
            a.idle_check(Duration::ZERO).is_some(),
            "an RPC is in flight"
        );
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.touch();
        assert!(a.idle_check(Duration::from_secs(60)).is_some());
    }
}
