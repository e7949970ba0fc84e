//! Counters that RPCs on every thread bump at once without sharing a cache line: one
//! slot per shard, a thread always using the same shard, and readers summing the
//! slots (or taking the latest time). An increment costs an uncontended atomic add;
//! a contended one, on a counter every core writes, costs a cache-line transfer per
//! RPC, which the channelz and snapshot counters must not pay.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per counter set: the cores, up to 8 (the memory is shards × 128 bytes per
/// set; threads beyond that share shards).
fn shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 8)
            .next_power_of_two()
    })
}

/// This thread's shard number (not yet reduced to a set's size).
#[inline]
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        let mut index = i.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed);
            i.set(index);
        }
        index
    })
}

/// One shard's `F` counters, on their own cache lines.
#[repr(align(128))]
struct Slot<const F: usize>([AtomicU64; F]);

/// `F` counters, sharded.
pub(crate) struct Sharded<const F: usize> {
    slots: Box<[Slot<F>]>,
}

impl<const F: usize> Sharded<F> {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..shards())
                .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    #[inline]
    fn slot(&self) -> &Slot<F> {
        // `slots.len()` is a power of two.
        &self.slots[thread_index() & (self.slots.len() - 1)]
    }

    /// Adds `n` to counter `field`.
    #[inline]
    pub(crate) fn add(&self, field: usize, n: u64) {
        self.slot().0[field].fetch_add(n, Ordering::Relaxed);
    }

    /// Records a time (or any value read back with [`Sharded::max`]) in `field`.
    #[inline]
    pub(crate) fn set(&self, field: usize, value: u64) {
        self.slot().0[field].store(value, Ordering::Relaxed);
    }

    /// Counter `field`'s total.
    pub(crate) fn sum(&self, field: usize) -> u64 {
        self.slots.iter().fold(0u64, |total, s| {
            total.wrapping_add(s.0[field].load(Ordering::Relaxed))
        })
    }

    /// The largest value of `field` across the shards (the latest time).
    pub(crate) fn max(&self, field: usize) -> u64 {
        self.slots
            .iter()
            .map(|s| s.0[field].load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_add_on_their_shards_and_readers_see_the_totals_and_latest() {
        let counters = Arc::new(Sharded::<2>::new());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let c = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(0, 3);
                    }
                    c.set(1, 100 + t);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counters.sum(0), 24_000);
        assert!((100..108).contains(&counters.max(1)));
        counters.set(1, 500);
        assert_eq!(counters.max(1), 500);
    }
}
