//! The service config's `retryThrottling` (gRFC A6): one token bucket per channel,
//! kept by the control task across configs that do not change it, drawn on by
//! every call.

use std::sync::atomic::{AtomicU32, Ordering};

use lb_core::service_config::RetryThrottling;

/// gRFC A6's token bucket for one channel: failed RPCs take a token, successful ones
/// give back `tokenRatio`; retries and hedges go out only while the bucket is more
/// than half full. Thousandths of a token, one atomic.
#[derive(Debug)]
pub(crate) struct Throttle {
    config: RetryThrottling,
    tokens_milli: AtomicU32,
}

impl Throttle {
    pub(crate) fn new(config: RetryThrottling) -> Self {
        Self {
            config,
            tokens_milli: AtomicU32::new(config.max_tokens_milli),
        }
    }

    pub(crate) fn config(&self) -> RetryThrottling {
        self.config
    }

    /// Whether a retry or hedge may go out now.
    pub(crate) fn allows(&self) -> bool {
        self.tokens_milli.load(Ordering::Relaxed) > self.config.max_tokens_milli / 2
    }

    /// An attempt failed with a retryable (or non-fatal) code, or was pushed back.
    pub(crate) fn failure(&self) {
        let _ = self
            .tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// An RPC succeeded.
    pub(crate) fn success(&self) {
        let max = self.config.max_tokens_milli;
        let ratio = self.config.token_ratio_milli;
        // Skip the write when full: the common case costs one load.
        if self.tokens_milli.load(Ordering::Relaxed) >= max {
            return;
        }
        let _ = self
            .tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(ratio).min(max))
            });
    }

    #[cfg(test)]
    fn tokens(&self) -> f64 {
        f64::from(self.tokens_milli.load(Ordering::Relaxed)) / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_stops_retries_at_half_and_refills_by_the_ratio() {
        let t = Throttle::new(RetryThrottling {
            max_tokens_milli: 10_000,
            token_ratio_milli: 500,
        });
        assert!(t.allows());
        for _ in 0..5 {
            t.failure();
        }
        assert_eq!(t.tokens(), 5.0);
        assert!(!t.allows(), "at the threshold, no retry");
        t.success();
        assert_eq!(t.tokens(), 5.5);
        assert!(t.allows());
        for _ in 0..100 {
            t.failure();
        }
        assert_eq!(t.tokens(), 0.0, "never below zero");
        for _ in 0..100 {
            t.success();
        }
        assert_eq!(t.tokens(), 10.0, "never above maxTokens");
    }
}
