//! Jittered exponential backoff for registry reconnects, so that a fleet of clients
//! that lost its registry at the same moment does not come back in lockstep.

use std::time::Duration;

use tokio::time::Instant;

/// gRPC's connection-backoff multiplier.
const MULTIPLIER: f64 = 1.6;
/// Each wait is the nominal one times a random factor in `1 ± JITTER`.
const JITTER: f64 = 0.2;

/// Waits between attempts: `initial`, then 1.6 times longer each time up to `max`,
/// each randomized by ±20%. [`Backoff::succeeded`] starts over, once the thing that
/// failed has worked for a while (so a connection that fails right after it is made
/// still waits longer each time).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    healthy_since: Option<Instant>,
}

impl Backoff {
    /// A backoff starting at `initial` (at least 1 ms) and growing to `max` (at least
    /// `initial`).
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
            healthy_since: None,
        }
    }

    /// The wait before the next attempt; each call makes the following one longer.
    /// If the last success lasted at least `max`, starts over from `initial`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        if self
            .healthy_since
            .take()
            .is_some_and(|t| t.elapsed() >= self.max)
        {
            self.next = self.initial;
        }
        let nominal = self.next;
        self.next = nominal.mul_f64(MULTIPLIER).min(self.max);
        let factor = 1.0 + JITTER * (fastrand::f64() * 2.0 - 1.0);
        nominal.mul_f64(factor)
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The attempt worked (a connection was made, a watch created): if it keeps
    /// working for `max`, the next failure starts over from `initial`.
    pub(crate) fn connected(&mut self) {
        if self.healthy_since.is_none() {
            self.healthy_since = Some(Instant::now());
        }
    }

    /// Proof that things work (a registry event arrived): start over now.
    pub(crate) fn succeeded(&mut self) {
        self.next = self.initial;
        self.healthy_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_1_6_up_to_the_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut nominal = 100.0_f64;
        for _ in 0..12 {
            let d = b.next_delay().as_secs_f64() * 1e3;
            assert!(
                d >= nominal * 0.8 - 1e-6 && d <= nominal * 1.2 + 1e-6,
                "{d} vs {nominal}"
            );
            nominal = (nominal * 1.6).min(1000.0);
        }
        b.succeeded();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let waits: Vec<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(10)).next_delay())
            .collect();
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 40, "clients must not retry in lockstep");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_success_does_not_reset_but_a_long_one_does() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..6 {
            b.next_delay();
        }
        b.connected();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(
            b.next_delay() >= Duration::from_millis(800),
            "failed right after connecting"
        );
        b.connected();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
