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

/// The longest delay or timeout a [`BackoffConfig`] accepts: one day.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The largest growth factor a [`BackoffConfig`] accepts.
const MAX_MULTIPLIER: f64 = 100.0;

impl BackoffConfig {
    /// Checks every field, naming the first one out of range: delays must be positive
    /// and at most a day with `base_delay <= max_delay`, `multiplier` finite and from
    /// 1 to 100, `jitter` from 0 to 1.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |setting, reason: String| Err(crate::Error::InvalidSetting { setting, reason });
        for (setting, d) in [
            ("BackoffConfig::base_delay", self.base_delay),
            ("BackoffConfig::max_delay", self.max_delay),
            (
                "BackoffConfig::min_connect_timeout",
                self.min_connect_timeout,
            ),
        ] {
            if d.is_zero() || d > MAX_DELAY {
                return bad(setting, format!("{d:?} is not within (0, 24h]"));
            }
        }
        if self.base_delay > self.max_delay {
            return bad(
                "BackoffConfig::base_delay",
                format!(
                    "{:?} is above max_delay ({:?})",
                    self.base_delay, self.max_delay
                ),
            );
        }
        if !(self.multiplier.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&self.multiplier)) {
            return bad(
                "BackoffConfig::multiplier",
                format!(
                    "{} is not a number from 1 to {MAX_MULTIPLIER}",
                    self.multiplier
                ),
            );
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return bad(
                "BackoffConfig::jitter",
                format!("{} is not a number from 0 to 1", self.jitter),
            );
        }
        Ok(())
    }
}

/// The backoff state of one subconn. Its config has passed
/// [`BackoffConfig::validate`], so the arithmetic below cannot overflow.
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
    fn out_of_range_settings_are_named() {
        let check = |config: BackoffConfig, setting: &str| {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(&err, crate::Error::InvalidSetting { setting: s, .. } if *s == setting),
                "{err}"
            );
            assert!(err.to_string().contains(setting), "{err}");
        };
        let d = BackoffConfig::default();
        assert!(d.validate().is_ok());
        check(
            BackoffConfig {
                multiplier: f64::INFINITY,
                ..d
            },
            "BackoffConfig::multiplier",
        );
        check(
            BackoffConfig {
                multiplier: f64::NAN,
                ..d
            },
            "BackoffConfig::multiplier",
        );
        check(
            BackoffConfig {
                multiplier: 0.5,
                ..d
            },
            "BackoffConfig::multiplier",
        );
        check(
            BackoffConfig {
                jitter: f64::NAN,
                ..d
            },
            "BackoffConfig::jitter",
        );
        check(BackoffConfig { jitter: 1.5, ..d }, "BackoffConfig::jitter");
        check(BackoffConfig { jitter: -0.1, ..d }, "BackoffConfig::jitter");
        check(
            BackoffConfig {
                base_delay: Duration::ZERO,
                ..d
            },
            "BackoffConfig::base_delay",
        );
        check(
            BackoffConfig {
                base_delay: Duration::from_secs(200),
                ..d
            },
            "BackoffConfig::base_delay",
        );
        check(
            BackoffConfig {
                max_delay: Duration::MAX,
                ..d
            },
            "BackoffConfig::max_delay",
        );
        check(
            BackoffConfig {
                min_connect_timeout: Duration::ZERO,
                ..d
            },
            "BackoffConfig::min_connect_timeout",
        );
    }

    #[test]
    fn the_largest_valid_settings_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig {
            base_delay: MAX_DELAY,
            max_delay: MAX_DELAY,
            multiplier: MAX_MULTIPLIER,
            jitter: 1.0,
            min_connect_timeout: MAX_DELAY,
        });
        for _ in 0..10 {
            assert!(b.next_delay() <= MAX_DELAY * 2);
        }
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
