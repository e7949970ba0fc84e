//! `peak_ewma`: power of two choices over each backend's latency, as linkerd2-proxy
//! and Finagle balance. Not a grpc-go policy.
//!
//! Each subconn keeps a *peak-sensitive* moving average of its RPCs' latency: a
//! sample above the estimate replaces it at once (a backend that slows down is seen
//! at its first slow answer), a sample below it is averaged in with a weight that
//! grows with the time since the last one, `1 - e^(-Δt / decayTime)` (a backend that
//! recovers is trusted again over about `decayTime`), and is at least 1%, so that a
//! peak also fades with answers (its excess shrinks by 1/e every hundred faster
//! answers; the floor matters above ten answers a second at the default 10 s
//! `decayTime`): a backend answering tens of
//! thousands of RPCs a second would otherwise wear its slowest answer of the last
//! `decayTime` as its estimate, and look no faster than one that is slow every
//! time. The estimate also decays toward zero while no answer arrives, so a backend
//! that was avoided is tried again.
//!
//! A pick draws two distinct ready subconns at random and takes the one of lower
//! cost, `estimate × (RPCs in flight + 1)`: a backend twice as slow gets about half
//! the traffic, and one that stopped answering stops being picked as soon as it
//! holds more RPCs than the others. The estimate comes from the completion callback
//! (the channel's [`lb_core::DoneInfo::elapsed`], from pick to end); a failed RPC
//! never lowers it (a backend that fails fast must not look fast), and the RPCs in
//! flight count is lock-free. Picks take no lock and allocate nothing; each
//! completion takes its subconn's lock once.
//!
//! A subconn with no sample yet counts as no slower than `defaultRtt`, nor than the
//! subconn it is compared with: a new backend is tried soon (not starved behind a
//! 30 ms guess while its peers answer in 0.2 ms), and its RPCs in flight keep it
//! from being flooded before its first answer.
//!
//! Peak EWMA forgives slowly, by design: a backend that stalled for 1.5 s while its
//! peers answered in 0.2 ms is tried again only once its estimate has faded below
//! their cost, about `decayTime × ln(1.5 s / 0.2 ms)`: 90 s at the default 10 s, 4.5 s
//! at `"decayTime": "0.5s"`. Pick a shorter decay time to get stalled backends back
//! sooner, at the price of reacting to fewer samples.
//!
//! Config: `{"decayTime": "10s", "defaultRtt": "0.030s"}` (both optional, those are
//! the defaults, linkerd's). Connection handling is `round_robin`'s
//! ([`lb_core::base`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{
    Code, DoneInfo, Error, LbConfig, OnDone, Pick, PickInfo, PickResult, Picker, SubConn, SubConnId,
};

use crate::choice::Choices;
use crate::config::Fields;

/// The policy's name in service configs.
pub const NAME: &str = "peak_ewma";

/// The least weight of a sample below the estimate, however soon it follows the
/// last: a peak's excess also shrinks by 1/e every hundred faster answers, not only
/// over `decayTime`.
const SAMPLE_WEIGHT: f64 = 0.01;

/// The `peak_ewma` balancer builder, ready to register.
pub fn builder() -> BaseBuilder<PeakEwma> {
    BaseBuilder::new(NAME, PeakEwma::default())
}

/// The parsed config of `peak_ewma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakEwmaConfig {
    /// How long an old sample keeps weighing: the time constant of the average.
    pub decay_time: Duration,
    /// The latency assumed of a backend before any sample, when no backend has one.
    pub default_rtt: Duration,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        Self {
            decay_time: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

impl PeakEwmaConfig {
    /// How often the estimates decay while no answer arrives: a tenth of the decay
    /// time, between 10 ms and 1 s.
    fn decay_period(&self) -> Duration {
        (self.decay_time / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The picker builder of `peak_ewma`: one channel's latency estimates.
#[derive(Debug, Clone, Default)]
pub struct PeakEwma {
    estimates: HashMap<SubConnId, Arc<Ewma>>,
}

impl PickerBuilder for PeakEwma {
    fn build(&mut self, ready: &[ReadySubConn], config: Option<&LbConfig>) -> Arc<dyn Picker> {
        let config = config
            .and_then(LbConfig::get::<PeakEwmaConfig>)
            .copied()
            .unwrap_or_default();
        let decay_ns = config.decay_time.as_nanos() as f64;
        let now = Instant::now();
        let entries: Box<[Weighed]> = ready
            .iter()
            .map(|r| {
                let ewma = self.estimates.entry(r.subconn.id()).or_default().clone();
                ewma.set_decay(decay_ns);
                // Rebuilt every decay period: the estimates of backends that got no
                // answer meanwhile fade.
                ewma.decay(now);
                Weighed {
                    subconn: r.subconn.clone(),
                    ewma,
                }
            })
            .collect();
        Arc::new(PeakEwmaPicker {
            entries,
            default_ns: (config.default_rtt.as_nanos() as f64).max(1.0),
        })
    }

    fn subconn_removed(&mut self, subconn: &SubConn) {
        self.estimates.remove(&subconn.id());
    }

    fn refresh_period(&self, config: Option<&LbConfig>) -> Option<Duration> {
        let config = config
            .and_then(LbConfig::get::<PeakEwmaConfig>)
            .copied()
            .unwrap_or_default();
        Some(config.decay_period())
    }

    fn parse_config(&self, _: &str, config: &serde_json::Value) -> Result<LbConfig, Error> {
        let f = Fields::of(NAME, config)?;
        let defaults = PeakEwmaConfig::default();
        let decay_time = f.duration("decayTime", defaults.decay_time)?;
        if decay_time.is_zero() {
            return Err(f.error("decayTime", "must be greater than zero"));
        }
        let default_rtt = f.duration("defaultRtt", defaults.default_rtt)?;
        if default_rtt.is_zero() {
            return Err(f.error("defaultRtt", "must be greater than zero"));
        }
        Ok(LbConfig::new(PeakEwmaConfig {
            decay_time,
            default_rtt,
        }))
    }
}

/// One subconn's latency estimate and RPCs in flight; its own completion callback.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Ewma {
    outstanding: AtomicU64,
    /// The estimate in nanoseconds as `f64` bits, for picks (0: no sample yet).
    cost_ns: AtomicU64,
    /// The decay time in nanoseconds as `f64` bits.
    decay_ns: AtomicU64,
    estimate: Mutex<Estimate>,
}

#[derive(Debug, Default)]
struct Estimate {
    ns: f64,
    /// When `ns` was last updated (by a sample or a decay); `None` before the first
    /// sample.
    at: Option<Instant>,
}

impl Ewma {
    fn set_decay(&self, decay_ns: f64) {
        self.decay_ns.store(decay_ns.to_bits(), Ordering::Relaxed);
    }

    fn decay_ns(&self) -> f64 {
        f64::from_bits(self.decay_ns.load(Ordering::Relaxed)).max(1.0)
    }

    /// The current estimate in nanoseconds (0 before any sample).
    pub fn cost_ns(&self) -> f64 {
        f64::from_bits(self.cost_ns.load(Ordering::Relaxed))
    }

    /// RPCs in flight now.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets the estimate fade toward zero for the time since its last update.
    fn decay(&self, now: Instant) {
        let decay_ns = self.decay_ns();
        let mut e = self.lock();
        if let Some(at) = e.at {
            let dt = now.saturating_duration_since(at).as_nanos() as f64;
            e.ns *= (-dt / decay_ns).exp();
            e.at = Some(now);
            // Never back to "no sample": a faded backend costs almost nothing.
            self.cost_ns
                .store(e.ns.max(f64::MIN_POSITIVE).to_bits(), Ordering::Relaxed);
        }
    }

    /// Adds a latency sample of `rtt_ns`, taken at `now`. `failed`: the RPC failed,
    /// which may raise the estimate but never lowers it.
    fn sample(&self, rtt_ns: f64, failed: bool, now: Instant) {
        let decay_ns = self.decay_ns();
        let mut e = self.lock();
        e.ns = match e.at {
            None => rtt_ns,
            Some(_) if rtt_ns >= e.ns => rtt_ns, // the peak counts at once
            Some(_) if failed => e.ns,
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_nanos() as f64;
                // Forget by time, and by samples too: a backend answering tens of
                // thousands of RPCs a second would otherwise wear its slowest answer
                // of the last `decayTime` as its estimate.
                let w = (-dt / decay_ns).exp().min(1.0 - SAMPLE_WEIGHT);
                e.ns * w + rtt_ns * (1.0 - w)
            }
        };
        e.at = Some(now);
        self.cost_ns
            .store(e.ns.max(f64::MIN_POSITIVE).to_bits(), Ordering::Relaxed);
    }
}

impl OnDone for Ewma {
    fn done(&self, info: &DoneInfo<'_>) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        if info.elapsed.is_zero() {
            return; // nobody measured it
        }
        let failed = info.status.code() != Code::Ok;
        self.sample(info.elapsed.as_nanos() as f64, failed, Instant::now());
    }
}

struct Weighed {
    subconn: SubConn,
    ewma: Arc<Ewma>,
}

/// Picks the cheaper of two random ready subconns, cost = latency estimate × (RPCs
/// in flight + 1).
pub struct PeakEwmaPicker {
    entries: Box<[Weighed]>,
    /// `defaultRtt` in nanoseconds.
    default_ns: f64,
}

impl PeakEwmaPicker {
    /// The estimate of a subconn with no sample yet, compared with one whose
    /// estimate is `other` (0: none either): no slower than `defaultRtt`, nor than
    /// the other, so it is tried soon, and kept from more than its share by its RPCs
    /// in flight.
    #[inline]
    fn unsampled(&self, other: f64) -> f64 {
        if other > 0.0 {
            other.min(self.default_ns)
        } else {
            self.default_ns
        }
    }
}

impl Picker for PeakEwmaPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let drawn = Choices::draw(self.entries.len(), 2);
        let best = match *drawn.as_slice() {
            [a, b] => match (self.entries.get(a as usize), self.entries.get(b as usize)) {
                (Some(a), Some(b)) => {
                    let (ra, rb) = (a.ewma.cost_ns(), b.ewma.cost_ns());
                    let ra_or = if ra > 0.0 { ra } else { self.unsampled(rb) };
                    let rb_or = if rb > 0.0 { rb } else { self.unsampled(ra) };
                    let cost_a = ra_or * (a.ewma.outstanding() + 1) as f64;
                    let cost_b = rb_or * (b.ewma.outstanding() + 1) as f64;
                    Some(if cost_b < cost_a { b } else { a })
                }
                (a, b) => a.or(b),
            },
            [a] => self.entries.get(a as usize),
            _ => None,
        };
        match best {
            Some(entry) => {
                entry.ewma.outstanding.fetch_add(1, Ordering::Relaxed);
                PickResult::Pick(Pick::new(&entry.subconn).with_on_done(entry.ewma.clone()))
            }
            None => PickResult::Queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ewma() -> Ewma {
        let e = Ewma::default();
        e.set_decay(Duration::from_secs(10).as_nanos() as f64);
        e
    }

    const MS: f64 = 1e6;

    #[test]
    fn the_first_sample_is_the_estimate_and_peaks_count_at_once() {
        let e = ewma();
        let t0 = Instant::now();
        assert_eq!(e.cost_ns(), 0.0);
        e.sample(2.0 * MS, false, t0);
        assert_eq!(e.cost_ns(), 2.0 * MS);
        e.sample(50.0 * MS, false, t0 + Duration::from_millis(1));
        assert_eq!(e.cost_ns(), 50.0 * MS);
    }

    #[test]
    fn lower_samples_weigh_by_the_time_since_the_last() {
        let e = ewma();
        let t0 = Instant::now();
        e.sample(10.0 * MS, false, t0);
        // One decay time later a 0 ms sample weighs 1 - 1/e.
        e.sample(0.0, false, t0 + Duration::from_secs(10));
        let expected = 10.0 * MS * (-1.0f64).exp();
        assert!((e.cost_ns() - expected).abs() < 1.0, "{}", e.cost_ns());
    }

    #[test]
    fn a_peak_also_fades_over_a_few_hundred_faster_answers_however_quick() {
        let e = ewma();
        let t0 = Instant::now();
        e.sample(0.2 * MS, false, t0);
        e.sample(20.0 * MS, false, t0 + Duration::from_micros(10));
        assert_eq!(e.cost_ns(), 20.0 * MS, "the peak counts at once");
        // 20,000 answers a second: by time alone, each would weigh 5e-6.
        let mut t = t0 + Duration::from_micros(10);
        for _ in 0..100 {
            t += Duration::from_micros(50);
            e.sample(0.2 * MS, false, t);
        }
        let after_100 = e.cost_ns();
        let expected = 0.2 * MS + 19.8 * MS * 0.99f64.powi(100);
        assert!((after_100 - expected).abs() < 0.01 * MS, "{after_100}");
        for _ in 0..400 {
            t += Duration::from_micros(50);
            e.sample(0.2 * MS, false, t);
        }
        assert!(e.cost_ns() < 0.4 * MS, "{}", e.cost_ns());
    }

    #[test]
    fn failures_never_make_a_backend_look_faster() {
        let e = ewma();
        let t0 = Instant::now();
        e.sample(10.0 * MS, false, t0);
        e.sample(0.1 * MS, true, t0 + Duration::from_secs(30));
        assert_eq!(e.cost_ns(), 10.0 * MS);
        e.sample(20.0 * MS, true, t0 + Duration::from_secs(31));
        assert_eq!(e.cost_ns(), 20.0 * MS);
    }

    #[test]
    fn estimates_fade_without_answers() {
        let e = ewma();
        let t0 = Instant::now();
        e.decay(t0); // no sample: nothing to fade
        assert_eq!(e.cost_ns(), 0.0);
        e.sample(100.0 * MS, false, t0);
        e.decay(t0 + Duration::from_secs(20));
        let expected = 100.0 * MS * (-2.0f64).exp();
        assert!((e.cost_ns() - expected).abs() < 1.0);
    }
}
