//! What gRFC A6 decides between attempts: whether a failed attempt may be retried
//! (retryable or non-fatal code, server pushback), and when. The channel's throttle
//! is the control task's (`crate::throttle`).

use std::time::Duration;

use http::HeaderMap;
use lb_core::service_config::{HedgingPolicy, RetryPolicy};

/// The method's policy, as the call runs it.
#[derive(Clone, Copy)]
pub(crate) enum Policy<'a> {
    /// Transparent retries only.
    None,
    Retry(&'a RetryPolicy),
    Hedge(&'a HedgingPolicy),
}

impl Policy<'_> {
    /// Attempts in all (1 without a policy).
    pub(crate) fn max_attempts(&self) -> u32 {
        match self {
            Policy::None => 1,
            Policy::Retry(p) => p.max_attempts,
            Policy::Hedge(p) => p.max_attempts,
        }
    }

    /// The retryable (or non-fatal) codes as a bit set: bit `c` for code `c`.
    pub(crate) fn code_mask(&self) -> u32 {
        let codes = match self {
            Policy::None => return 0,
            Policy::Retry(p) => &p.retryable_status_codes,
            Policy::Hedge(p) => &p.non_fatal_status_codes,
        };
        codes.iter().fold(0, |mask, c| mask | 1 << (*c as u32))
    }

    /// Whether a failure with `code` lets another attempt follow: a retryable code
    /// (retry) or a non-fatal one (hedging). Such failures are what the throttle
    /// counts.
    pub(crate) fn retryable(&self, code: tonic::Code) -> bool {
        let code = lb_core::Code::from_i32(code as i32);
        let codes = match self {
            Policy::None => return false,
            Policy::Retry(p) => &p.retryable_status_codes,
            Policy::Hedge(p) => &p.non_fatal_status_codes,
        };
        code.is_some_and(|c| codes.contains(&c))
    }
}

/// The delay before retry `n` (1 for the first retry): `random(0, min(initial ×
/// multiplier^(n-1), max))`, as gRFC A6 specifies.
pub(crate) fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
    let ceiling = policy.initial_backoff.as_secs_f64() * policy.backoff_multiplier.powi(exp);
    let ceiling = ceiling.min(policy.max_backoff.as_secs_f64());
    // Both bounds were validated positive and finite; `ceiling` may still overflow
    // to infinity for a huge multiplier, which `min` above has capped.
    Duration::try_from_secs_f64(ceiling * fastrand::f64()).unwrap_or(policy.max_backoff)
}

/// What the server said with `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// No pushback: the policy decides.
    None,
    /// A negative or malformed value: do not retry (or hedge) again.
    Stop,
    /// Retry after exactly this long.
    After(Duration),
}

/// Reads `grpc-retry-pushback-ms` from trailers (or a trailers-only response's
/// headers). More than one value means "do not retry", as grpc-go reads it.
pub(crate) fn pushback(trailers: Option<&HeaderMap>) -> Pushback {
    let Some(trailers) = trailers else {
        return Pushback::None;
    };
    let mut values = trailers.get_all("grpc-retry-pushback-ms").iter();
    let Some(value) = values.next() else {
        return Pushback::None;
    };
    if values.next().is_some() {
        return Pushback::Stop;
    }
    // An ASCII signed 32-bit integer with no unnecessary leading zeros.
    let parsed = value
        .to_str()
        .ok()
        .filter(|v| !(v.len() > 1 && v.starts_with('0')))
        .and_then(|v| v.parse::<i32>().ok());
    match parsed {
        Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms.unsigned_abs().into())),
        _ => Pushback::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            backoff_multiplier: 2.0,
            retryable_status_codes: vec![lb_core::Code::Unavailable],
        }
    }

    #[test]
    fn backoff_is_random_below_the_exponential_ceiling() {
        let p = policy();
        for (n, ceiling) in [(1, 100), (2, 200), (3, 300), (4, 300), (40, 300)] {
            let delays: Vec<Duration> = (0..200).map(|_| backoff(&p, n)).collect();
            assert!(
                delays.iter().all(|d| *d <= Duration::from_millis(ceiling)),
                "retry {n}: {:?}",
                delays.iter().max()
            );
            // Spread over the whole range, not stuck at one value.
            assert!(
                delays
                    .iter()
                    .any(|d| *d < Duration::from_millis(ceiling / 4))
            );
            assert!(
                delays
                    .iter()
                    .any(|d| *d > Duration::from_millis(ceiling * 3 / 4))
            );
        }
    }

    #[test]
    fn pushback_values() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-retry-pushback-ms", v.parse().unwrap());
            pushback(Some(&m))
        };
        assert_eq!(pushback(None), Pushback::None);
        assert_eq!(pushback(Some(&HeaderMap::new())), Pushback::None);
        assert_eq!(h("0"), Pushback::After(Duration::ZERO));
        assert_eq!(h("250"), Pushback::After(Duration::from_millis(250)));
        for stop in ["-1", "abc", "", "0250", "1.5", "2147483648"] {
            assert_eq!(h(stop), Pushback::Stop, "{stop:?}");
        }
        let mut two = HeaderMap::new();
        two.append("grpc-retry-pushback-ms", "10".parse().unwrap());
        two.append("grpc-retry-pushback-ms", "20".parse().unwrap());
        assert_eq!(pushback(Some(&two)), Pushback::Stop, "two values: no retry");
    }

    #[test]
    fn policies_know_their_codes() {
        let p = policy();
        let r = Policy::Retry(&p);
        assert!(r.retryable(tonic::Code::Unavailable));
        assert!(!r.retryable(tonic::Code::InvalidArgument));
        assert!(!Policy::None.retryable(tonic::Code::Unavailable));
        assert_eq!(Policy::None.max_attempts(), 1);
        assert_eq!(r.max_attempts(), 5);
    }
}
