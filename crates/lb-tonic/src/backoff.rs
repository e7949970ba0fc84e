//! gRPC connection backoff (`doc/connection-backoff.md` in the gRPC repository).

use std::time::Duration;

/// How a subconn waits between connection attempts, and how long one attempt may
/// take. Defaults are gRPC's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The first backoff (gRPC: 1 s).
    pub base_delay: Duration,
    /// The growth factor per failed attempt (gRPC: 1.6).
    pub multiplier: f64,
    /// Randomization: each delay is spread by ±`jitter` of itself (gRPC: 0.2).
    pub jitter: f64,
    /// The largest backoff (gRPC: 120 s).
    pub max_delay: Duration,
    /// The least time one attempt may take before it counts as failed (gRPC: 20 s).
    /// An attempt may take `max(min_connect_timeout, current backoff)`.
    pub min_connect_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max_delay: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// The backoff state of one subconn.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            current: config.base_delay,
            config,
        }
    }

    /// After a successful connection: start again from the base delay.
    pub(crate) fn reset(&mut self) {
        self.current = self.config.base_delay;
    }

    /// How long the next attempt may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config.min_connect_timeout.max(self.current)
    }

    /// The delay after a failed attempt, jittered; grows the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        let delay = self.current.mul_f64(factor.max(0.0));
        let grown = self.current.mul_f64(self.config.multiplier.max(1.0));
        self.current = grown.min(self.config.max_delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_the_multiplier_with_jitter_up_to_the_max_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut expected = 1.0f64;
        for _ in 0..20 {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= expected * 0.8 - 1e-9 && d <= expected * 1.2 + 1e-9,
                "{d} vs {expected}"
            );
            expected = (expected * 1.6).min(120.0);
        }
        assert_eq!(b.connect_timeout(), Duration::from_secs(120));
        b.reset();
        assert_eq!(b.connect_timeout(), Duration::from_secs(20));
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(1200));
    }

    #[test]
    fn zero_jitter_is_exact() {
        let mut b = Backoff::new(BackoffConfig {
            jitter: 0.0,
            base_delay: Duration::from_millis(10),
            multiplier: 2.0,
            max_delay: Duration::from_millis(35),
            ..BackoffConfig::default()
        });
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 35, 35]);
    }
}
