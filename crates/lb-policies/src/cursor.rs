//! The per-picker position used by the cyclic pickers, without a shared hot spot.
//!
//! A single shared `AtomicUsize` makes every pick on every core write the same cache
//! line, which caps multi-core throughput below one core's. Instead a picker holds
//! [`STRIPES`] cursors, each on its own cache line, and each thread uses one of them:
//! picks on different threads touch different lines. Each cursor cycles through the
//! whole list on its own, so every thread's picks are spread evenly, and so is the
//! sum. Two threads that share a stripe may occasionally read the same position: a
//! repeated pick, never a wrong one.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cursors per picker: enough for one per core on common machines.
pub(crate) const STRIPES: usize = 16;

#[repr(align(128))] // two cache lines: also defeats the adjacent-line prefetcher
struct Padded(AtomicUsize);

/// A position in a list of fixed length, advanced on every [`Cursor::next`].
pub(crate) struct Cursor {
    len: usize,
    stripes: Box<[Padded]>,
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

impl Cursor {
    /// A cursor over `len` (at least 1) positions; each stripe starts at a random one,
    /// so channels built at the same moment do not all start on the same backend.
    pub(crate) fn new(len: usize) -> Self {
        let len = len.max(1);
        Self {
            len,
            stripes: (0..STRIPES)
                .map(|_| Padded(AtomicUsize::new(fastrand::usize(..len))))
                .collect(),
        }
    }

    /// The current position, advancing past it.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        let slot = &self.stripes[stripe() % STRIPES].0;
        let i = slot.load(Ordering::Relaxed);
        let i = if i >= self.len { 0 } else { i };
        let next = if i + 1 == self.len { 0 } else { i + 1 };
        slot.store(next, Ordering::Relaxed);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_every_position_from_a_random_start() {
        for len in [1, 2, 3, 17] {
            let c = Cursor::new(len);
            let first = c.next();
            let seq: Vec<_> = (1..2 * len).map(|_| c.next()).collect();
            let mut expected = first;
            for got in seq {
                expected = (expected + 1) % len;
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn threads_use_different_stripes() {
        let here = stripe();
        let there = std::thread::spawn(stripe).join().unwrap();
        assert_ne!(here, there);
    }
}
