//! One process-wide clock for channelz timestamps: a counter can store "when" in an
//! `AtomicU64` of milliseconds, and a reader turns it into wall-clock time.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

fn epoch() -> &'static (Instant, SystemTime) {
    static EPOCH: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    EPOCH.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Milliseconds since the process's channelz epoch, plus one: `0` stays free to mean
/// "never". Monotonic.
pub fn now_ms() -> u64 {
    let ms = u64::try_from(epoch().0.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    ms + 1
}

/// The wall-clock time of a value from [`now_ms`]; `None` for `0` ("never").
pub fn time_of(ms: u64) -> Option<SystemTime> {
    let since = ms.checked_sub(1)?;
    epoch().1.checked_add(Duration::from_millis(since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_never_and_now_is_now() {
        assert_eq!(time_of(0), None);
        let at = time_of(now_ms()).expect("a time");
        let off = SystemTime::now()
            .duration_since(at)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(5), "{off:?}");
    }
}
