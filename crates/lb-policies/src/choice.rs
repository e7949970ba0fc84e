//! Random distinct choices for the power-of-d-choices pickers (`least_request`,
//! `peak_ewma`), without allocating.
//!
//! The choices are drawn *without* replacement. gRFC A48 (and grpc-go) draw with
//! replacement, so with three backends a third of the two-choice picks compare a
//! backend with itself and take it whatever its load: a stalled backend then keeps
//! one pick in nine and, within a second, holds every caller. Distinct choices
//! never pick the most loaded of the candidates while another is drawn.

/// The most choices a picker draws (A48 caps `choiceCount` at 10).
pub(crate) const MAX_CHOICES: usize = 10;

/// Up to [`MAX_CHOICES`] distinct indices below `n`.
pub(crate) struct Choices {
    picked: [u32; MAX_CHOICES],
    len: usize,
}

impl Choices {
    /// `k` distinct random indices below `n`, in random order (every index when
    /// `n <= k`, shuffled: the pickers keep the first of equally loaded choices, so
    /// a fixed order would send every tie to the same backend).
    #[inline]
    pub(crate) fn draw(n: usize, k: usize) -> Self {
        let mut picked = [0u32; MAX_CHOICES];
        let k = k.min(MAX_CHOICES);
        if n <= k {
            for (i, slot) in picked.iter_mut().enumerate().take(n) {
                *slot = i as u32;
            }
            // Fisher-Yates over at most ten entries.
            for i in (1..n).rev() {
                picked.swap(i, fastrand::usize(..=i));
            }
            return Self { picked, len: n };
        }
        if k == 2 {
            // The common case: one random word, split in two and scaled by
            // multiplication (Lemire), the second draw skipping the first. The bias
            // is below 2^-32 for any realistic `n`.
            let r = fastrand::u64(..);
            let a = ((r & 0xffff_ffff) * n as u64) >> 32;
            let mut b = ((r >> 32) * (n as u64 - 1)) >> 32;
            if b >= a {
                b += 1;
            }
            picked[0] = a as u32;
            picked[1] = b as u32;
            return Self { picked, len: 2 };
        }
        let mut len = 0;
        while len < k {
            let c = fastrand::usize(..n) as u32;
            if !picked[..len].contains(&c) {
                picked[len] = c;
                len += 1;
            }
        }
        Self { picked, len }
    }

    /// The indices drawn.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u32] {
        &self.picked[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_distinct_and_in_range() {
        for (n, k) in [(2, 2), (3, 2), (10, 2), (5, 4), (12, 10), (3, 10), (1, 2)] {
            for _ in 0..500 {
                let c = Choices::draw(n, k);
                let s = c.as_slice();
                assert_eq!(s.len(), k.min(n));
                for (i, x) in s.iter().enumerate() {
                    assert!((*x as usize) < n);
                    assert!(!s[..i].contains(x), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn when_every_index_is_drawn_each_comes_first_evenly() {
        // Ties go to the first choice: with as many backends as choices, each must
        // come first as often as the others.
        for n in [2usize, 3, 10] {
            let mut first = vec![0u32; n];
            let rounds = 10_000 * n as u32;
            for _ in 0..rounds {
                let c = Choices::draw(n, 10.min(n.max(2)));
                let mut s = c.as_slice().to_vec();
                first[s[0] as usize] += 1;
                s.sort_unstable();
                assert_eq!(s, (0..n as u32).collect::<Vec<_>>(), "all of them");
            }
            let even = rounds / n as u32;
            for f in &first {
                assert!(
                    (even * 9 / 10..even * 11 / 10).contains(f),
                    "n={n}: {first:?}"
                );
            }
        }
    }

    #[test]
    fn every_pair_is_drawn_evenly() {
        // With three backends each unordered pair comes up a third of the time.
        let mut pairs = [0u32; 3];
        for _ in 0..30_000 {
            let c = Choices::draw(3, 2);
            let s = c.as_slice();
            pairs[(3 - s[0] - s[1]) as usize] += 1; // indexed by the one left out
        }
        for p in pairs {
            assert!((9_000..11_000).contains(&p), "{pairs:?}");
        }
    }
}
