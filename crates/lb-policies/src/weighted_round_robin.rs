//! `weighted_round_robin`: round robin in proportion to each backend's weight,
//! from the backends' own load reports (ORCA, gRFC A58) or, without them, from the
//! resolver's static weights.
//!
//! # Where weights come from
//!
//! * **Load reports.** A backend that reports its load (see the `lb-orca` crate) is
//!   weighed `qps / (utilization + eps / qps × errorUtilizationPenalty)`: the
//!   requests it serves per unit of utilization, lowered by its error rate.
//!   `utilization` is the report's `application_utilization`, or its CPU
//!   utilization when that is 0; a report with no utilization or no QPS is ignored.
//!   Reports arrive per call, in the `endpoint-load-metrics-bin` trailer, or, with
//!   `enableOobLoadReport`, on an out-of-band stream every `oobReportingPeriod`
//!   (per-call reports are then not read, as in grpc-go). Either way the policy
//!   hears them through its subconns' load-report watch
//!   ([`lb_core::SubConn::watch_load_reports`]), so picks carry no callback.
//! * **Blackout and expiry.** A backend's reported weight counts only once it has
//!   reported for `blackoutPeriod` without a gap of `weightExpirationPeriod`; the
//!   blackout starts again when its connection is re-established, and after an
//!   expiry. Until then it weighs the mean of the backends whose weights count.
//! * **Static weights.** While fewer than two ready backends have a weight that
//!   counts, the resolver's [`lb_core::Weight`] attributes apply (registry metadata;
//!   1 without one), exactly as before load reports existed. Once two do, reported
//!   weights replace the static ones for every backend (a reported weight already
//!   measures capacity: scaling it by a static weight would count a bigger machine
//!   twice).
//!
//! Weights are recomputed every `weightUpdatePeriod` (1 s; at least 100 ms) on the
//! channel's control task, and a new picker is published when they changed.
//!
//! # The schedule
//!
//! On every rebuild the picker lays out one *period*: a sequence in which each
//! ready subconn appears in proportion to its weight (reported weights are scaled to
//! integers, the largest to 1,000, or less with more than 200 backends, and at least
//! 1). Picks walk the period cyclically: one striped atomic step, no lock, no
//! allocation, no callback.
//!
//! The period is nginx's smooth weighted round robin (every step each backend gains
//! its weight, the richest is picked and pays the total): with weights 5:1:1 it is
//! `a a b a c a a`, never more than four `a` in a row even across periods, and
//! backends of equal weight are kept apart. That costs O(period × backends); when the
//! product exceeds 2,000,000 (thousands of weighted backends) the layout switches to
//! placing backend `i`'s `k`-th slot at virtual time `(k + phase_i) / weight_i` with
//! a counting sort, O(period + backends): shares stay exact and each backend's own
//! picks evenly spaced, but backends of equal weight may bunch together.
//!
//! Periods are capped at [`MAX_PERIOD`] slots: larger weight sums are scaled down
//! (each weight stays at least 1), which keeps the memory per picker bounded at the
//! price of approximate shares for extreme weight ratios.
//!
//! # Config
//!
//! gRFC A58's, every field optional: `{"enableOobLoadReport": false,
//! "oobReportingPeriod": "10s", "blackoutPeriod": "10s", "weightExpirationPeriod":
//! "180s", "weightUpdatePeriod": "1s", "errorUtilizationPenalty": 1.0}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{
    BuildOptions, ConnectivityState, Error, LbConfig, LoadReport, LoadReportListener,
    LoadReportWatch, Pick, PickInfo, PickResult, Picker, ReportSource, SubConn, SubConnId,
    SubConnState,
};

use crate::config::Fields;
use crate::cursor::Cursor;

/// The policy's name in service configs.
pub const NAME: &str = "weighted_round_robin";

/// The largest period a picker lays out (4 MiB of schedule).
pub const MAX_PERIOD: usize = 1 << 20;

/// The `weighted_round_robin` balancer builder, ready to register.
pub fn builder() -> BaseBuilder<WeightedRoundRobin> {
    BaseBuilder::new(NAME, WeightedRoundRobin::default())
}

/// The parsed config of `weighted_round_robin` (gRFC A58).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrrConfig {
    /// Load reports come from an out-of-band stream, not the per-call trailer.
    pub enable_oob_load_report: bool,
    /// How often the out-of-band stream asks for a report.
    pub oob_reporting_period: Duration,
    /// How long a backend must report before its weight counts.
    pub blackout_period: Duration,
    /// How long a weight counts after the backend's last report.
    pub weight_expiration_period: Duration,
    /// How often weights are recomputed (at least 100 ms).
    pub weight_update_period: Duration,
    /// How much the error rate weighs against utilization.
    pub error_utilization_penalty: f64,
}

impl Default for WrrConfig {
    fn default() -> Self {
        Self {
            enable_oob_load_report: false,
            oob_reporting_period: Duration::from_secs(10),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
        }
    }
}

/// The shortest `weightUpdatePeriod` (shorter ones are raised to it, as in grpc-go).
pub const MIN_WEIGHT_UPDATE_PERIOD: Duration = Duration::from_millis(100);

/// The picker builder of `weighted_round_robin`: one channel's per-backend weights.
#[derive(Clone, Default)]
pub struct WeightedRoundRobin {
    endpoints: HashMap<SubConnId, Endpoint>,
    /// The last picker and what it was built from, reused while nothing changed.
    last: Option<Built>,
    /// The transport cannot deliver load reports (said once).
    unsupported_logged: bool,
    /// gRFC A78's metrics for this channel.
    metrics: WrrMetrics,
}

/// What the builder keeps of one subconn.
#[derive(Clone, Default)]
struct Endpoint {
    weight: Arc<EndpointWeight>,
    /// The report source its watch asks for.
    watching: Option<ReportSource>,
}

#[derive(Clone)]
struct Built {
    subconns: Vec<SubConnId>,
    weights: Vec<u32>,
    picker: Arc<WeightedRoundRobinPicker>,
}

impl std::fmt::Debug for WeightedRoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightedRoundRobin")
            .field("backends", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl PickerBuilder for WeightedRoundRobin {
    fn started(&mut self, options: &BuildOptions) {
        self.metrics = WrrMetrics::new(&options.target.to_string());
    }

    fn build(&mut self, ready: &[ReadySubConn], config: Option<&LbConfig>) -> Arc<dyn Picker> {
        let config = config
            .and_then(LbConfig::get::<WrrConfig>)
            .copied()
            .unwrap_or_default();
        let source = if config.enable_oob_load_report {
            ReportSource::OutOfBand(config.oob_reporting_period)
        } else {
            ReportSource::PerCall
        };
        let now = Instant::now();
        let mut reported = Vec::with_capacity(ready.len());
        let mut unsupported = false;
        for r in ready {
            let e = self.endpoints.entry(r.subconn.id()).or_default();
            if e.watching != Some(source) {
                let listener: Arc<dyn LoadReportListener> = e.weight.clone();
                let watch = match source {
                    ReportSource::PerCall => LoadReportWatch::per_call(listener),
                    ReportSource::OutOfBand(interval) => {
                        LoadReportWatch::out_of_band(interval, listener)
                    }
                };
                unsupported |= !r.subconn.watch_load_reports(Some(watch));
                e.watching = Some(source);
            }
            let weight = match e.weight.usable(now, &config) {
                Usable::Yes(w) => w,
                Usable::NotYet => {
                    self.metrics.not_yet_usable.increment(1);
                    0.0
                }
                Usable::Stale => {
                    self.metrics.stale.increment(1);
                    0.0
                }
            };
            self.metrics.weights.record(weight);
            reported.push(weight);
        }

        if unsupported && !self.unsupported_logged {
            self.unsupported_logged = true;
            tracing::warn!(
                "weighted_round_robin: this channel's transport cannot deliver load reports; weights come from the resolver only"
            );
        }
        let weights = reported_weights(ready.len(), &reported).unwrap_or_else(|| {
            self.metrics.rr_fallback.increment(1);
            ready.iter().map(|r| r.address.weight().get()).collect()
        });
        if let Some(last) = &self.last
            && last.weights == weights
            && last.subconns.len() == ready.len()
            && last
                .subconns
                .iter()
                .zip(ready)
                .all(|(id, r)| *id == r.subconn.id())
        {
            return last.picker.clone();
        }
        let picker = Arc::new(WeightedRoundRobinPicker::new(
            ready
                .iter()
                .zip(&weights)
                .map(|(r, w)| (r.subconn.clone(), *w))
                .collect(),
        ));
        self.last = Some(Built {
            subconns: ready.iter().map(|r| r.subconn.id()).collect(),
            weights,
            picker: picker.clone(),
        });
        picker
    }

    fn subconn_removed(&mut self, subconn: &SubConn) {
        self.endpoints.remove(&subconn.id());
    }

    fn subconn_state_changed(&mut self, subconn: &SubConn, state: &SubConnState) {
        // Connected again: the blackout starts over (A58).
        if state.state == ConnectivityState::Ready
            && let Some(e) = self.endpoints.get(&subconn.id())
        {
            e.weight.reset();
        }
    }

    fn refresh_period(&self, config: Option<&LbConfig>) -> Option<Duration> {
        let config = config
            .and_then(LbConfig::get::<WrrConfig>)
            .copied()
            .unwrap_or_default();
        Some(config.weight_update_period)
    }

    fn parse_config(&self, _: &str, config: &serde_json::Value) -> Result<LbConfig, Error> {
        let f = Fields::of(NAME, config)?;
        let d = WrrConfig::default();
        let weight_expiration_period =
            f.duration("weightExpirationPeriod", d.weight_expiration_period)?;
        if weight_expiration_period.is_zero() {
            return Err(f.error("weightExpirationPeriod", "must be greater than zero"));
        }
        let oob_reporting_period = f.duration("oobReportingPeriod", d.oob_reporting_period)?;
        let enable_oob_load_report = f.boolean("enableOobLoadReport", false)?;
        if enable_oob_load_report && oob_reporting_period.is_zero() {
            return Err(f.error("oobReportingPeriod", "must be greater than zero"));
        }
        Ok(LbConfig::new(WrrConfig {
            enable_oob_load_report,
            oob_reporting_period,
            blackout_period: f.duration("blackoutPeriod", d.blackout_period)?,
            weight_expiration_period,
            weight_update_period: f
                .duration("weightUpdatePeriod", d.weight_update_period)?
                .max(MIN_WEIGHT_UPDATE_PERIOD),
            error_utilization_penalty: f
                .non_negative("errorUtilizationPenalty", d.error_utilization_penalty)?,
        }))
    }
}

/// The integer weight of each ready subconn from its reported weight (0: none
/// counts yet), the missing ones at the mean; `None` when fewer than two count (the
/// static weights apply).
fn reported_weights(backends: usize, reported: &[f64]) -> Option<Vec<u32>> {
    let (mut counted, mut sum, mut max) = (0usize, 0.0f64, 0.0f64);
    for &w in reported {
        if w > 0.0 {
            counted += 1;
            sum += w;
            max = max.max(w);
        }
    }
    if counted < 2 {
        return None;
    }
    let mean = sum / counted as f64;
    // The largest weight becomes `top`: enough precision, a bounded period.
    let top = (200_000 / backends.max(1)).clamp(10, 1000) as f64;
    let scale = top / max;
    Some(
        reported
            .iter()
            .map(|&w| {
                let w = if w > 0.0 { w } else { mean };
                ((w * scale).round() as u32).max(1)
            })
            .collect(),
    )
}

/// One backend's weight from its load reports: the listener of its subconn's
/// reports (per call or out of band).
#[derive(Debug, Default)]
pub struct EndpointWeight {
    state: Mutex<WeightState>,
    /// Whether a report was taken since the last reset: a rebuild skips the lock of
    /// a backend that never reported.
    reported: AtomicBool,
}

#[derive(Debug, Default)]
struct WeightState {
    /// The raw reported load, kept so the penalty applies at recompute time.
    qps: f64,
    eps: f64,
    utilization: f64,
    /// Since when the backend has reported without a gap (the blackout's start).
    non_empty_since: Option<Instant>,
    last_updated: Option<Instant>,
}

impl EndpointWeight {
    fn lock(&self) -> std::sync::MutexGuard<'_, WeightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a report (ignored without utilization or QPS, as A58 says).
    pub fn on_report(&self, report: &LoadReport, now: Instant) {
        let utilization = if report.application_utilization > 0.0 {
            report.application_utilization
        } else {
            report.cpu_utilization
        };
        let valid = |x: f64| x.is_finite() && x >= 0.0;
        if !(utilization > 0.0
            && report.rps_fractional > 0.0
            && valid(utilization)
            && valid(report.rps_fractional)
            && valid(report.eps))
        {
            return;
        }
        let mut s = self.lock();
        s.qps = report.rps_fractional;
        s.eps = report.eps;
        s.utilization = utilization;
        s.last_updated = Some(now);
        s.non_empty_since.get_or_insert(now);
        self.reported.store(true, Ordering::Release);
    }

    /// Forgets the blackout's progress: the subconn (re)connected.
    fn reset(&self) {
        if !self.reported.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        s.non_empty_since = None;
        s.last_updated = None;
        self.reported.store(false, Ordering::Release);
    }

    /// The weight that counts at `now`, or 0 when none does (no report yet, in the
    /// blackout, or expired, which restarts the blackout).
    pub fn weight(&self, now: Instant, config: &WrrConfig) -> f64 {
        match self.usable(now, config) {
            Usable::Yes(w) => w,
            Usable::NotYet | Usable::Stale => 0.0,
        }
    }

    fn usable(&self, now: Instant, config: &WrrConfig) -> Usable {
        if !self.reported.load(Ordering::Acquire) {
            return Usable::NotYet;
        }
        let penalty = config.error_utilization_penalty;
        let mut s = self.lock();
        let Some(last) = s.last_updated else {
            return Usable::NotYet;
        };
        if now.saturating_duration_since(last) >= config.weight_expiration_period {
            s.non_empty_since = None;
            return Usable::Stale;
        }
        let blacked_out = match s.non_empty_since {
            None => true,
            Some(since) => now.saturating_duration_since(since) < config.blackout_period,
        };
        if !config.blackout_period.is_zero() && blacked_out {
            return Usable::NotYet;
        }
        let weight = s.qps / (s.utilization + s.eps / s.qps * penalty);
        if weight.is_finite() && weight > 0.0 {
            Usable::Yes(weight)
        } else {
            Usable::NotYet
        }
    }
}

/// Whether a backend's reported weight counts now.
enum Usable {
    Yes(f64),
    /// No report yet, or in the blackout.
    NotYet,
    /// Its last report is older than `weightExpirationPeriod`.
    Stale,
}

/// gRFC A78's `weighted_round_robin` metrics, labelled with the channel's
/// `grpc.target`; recorded on each weight update (off the RPC path).
#[derive(Clone)]
struct WrrMetrics {
    rr_fallback: Counter,
    not_yet_usable: Counter,
    stale: Counter,
    weights: Histogram,
}

impl WrrMetrics {
    #[cfg(feature = "metrics")]
    fn new(target: &str) -> Self {
        let t = target.to_owned();
        Self {
            rr_fallback: metrics::counter!(metric_names::RR_FALLBACK, "grpc.target" => t.clone()),
            not_yet_usable: metrics::counter!(metric_names::NOT_YET_USABLE, "grpc.target" => t.clone()),
            stale: metrics::counter!(metric_names::STALE, "grpc.target" => t.clone()),
            weights: metrics::histogram!(metric_names::WEIGHTS, "grpc.target" => t),
        }
    }

    #[cfg(not(feature = "metrics"))]
    fn new(_: &str) -> Self {
        Self::noop()
    }

    /// Until the channel is known: records nothing.
    fn noop() -> Self {
        Self {
            rr_fallback: Counter::noop(),
            not_yet_usable: Counter::noop(),
            stale: Counter::noop(),
            weights: Histogram::noop(),
        }
    }
}

impl Default for WrrMetrics {
    fn default() -> Self {
        Self::noop()
    }
}

#[cfg(feature = "metrics")]
use metrics::{Counter, Histogram};

/// Stand-ins without the `metrics` feature.
#[cfg(not(feature = "metrics"))]
#[derive(Clone)]
struct Counter;
#[cfg(not(feature = "metrics"))]
impl Counter {
    fn noop() -> Self {
        Self
    }
    fn increment(&self, _: u64) {}
}
#[cfg(not(feature = "metrics"))]
#[derive(Clone)]
struct Histogram;
#[cfg(not(feature = "metrics"))]
impl Histogram {
    fn noop() -> Self {
        Self
    }
    fn record(&self, _: f64) {}
}

/// The names of gRFC A78's `weighted_round_robin` metrics, as grpc-go names them.
/// Each is labelled `grpc.target`.
pub mod metric_names {
    /// Counter: weight updates at which fewer than two backends had a usable
    /// weight, so static weights applied.
    pub const RR_FALLBACK: &str = "grpc.lb.wrr.rr_fallback";
    /// Counter: per weight update, backends whose weight is not usable yet (no
    /// report, or in the blackout period).
    pub const NOT_YET_USABLE: &str = "grpc.lb.wrr.endpoint_weight_not_yet_usable";
    /// Counter: per weight update, backends whose last report expired.
    pub const STALE: &str = "grpc.lb.wrr.endpoint_weight_stale";
    /// Histogram: per weight update, each backend's weight (0 when not usable).
    pub const WEIGHTS: &str = "grpc.lb.wrr.endpoint_weights";
}

impl LoadReportListener for EndpointWeight {
    fn on_load_report(&self, report: &LoadReport) {
        self.on_report(report, Instant::now());
    }
}

/// Walks a precomputed smooth weighted schedule.
pub struct WeightedRoundRobinPicker {
    subconns: Box<[SubConn]>,
    /// Indices into `subconns`: one period of the schedule.
    schedule: Box<[u32]>,
    cursor: Cursor,
}

impl WeightedRoundRobinPicker {
    /// A picker over `(subconn, weight)` pairs, which must not be empty. Weights of 0
    /// count as 1.
    pub fn new(weighted: Vec<(SubConn, u32)>) -> Self {
        let weights: Vec<u32> = weighted.iter().map(|(_, w)| *w).collect();
        let schedule = schedule(&weights);
        Self {
            cursor: Cursor::new(schedule.len()),
            subconns: weighted.into_iter().map(|(sc, _)| sc).collect(),
            schedule,
        }
    }

    /// One period of the schedule, as indices into the subconn list.
    pub fn period(&self) -> &[u32] {
        &self.schedule
    }
}

impl Picker for WeightedRoundRobinPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let slot = self.schedule.get(self.cursor.next()).copied().unwrap_or(0);
        match self.subconns.get(slot as usize) {
            Some(subconn) => PickResult::Pick(Pick::new(subconn)),
            None => PickResult::Queue,
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Above this many steps (period × backends) the layout falls back from nginx's
/// smooth weighted round robin to the O(period + backends) virtual-time layout.
const NGINX_BUDGET: u128 = 2_000_000;

/// nginx's smooth weighted round robin, run for one period: every step each backend
/// gains its weight and the richest pays the total. Exactly periodic, and it keeps
/// equal-weight backends apart, which the virtual-time layout does not.
fn nginx_smooth(w: &[u64], total: u64) -> Box<[u32]> {
    let total = total as i64;
    let mut current = vec![0i64; w.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, c) in current.iter_mut().enumerate() {
                *c += w[i] as i64;
            }
            for i in 1..current.len() {
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

/// Lays out one period of the smooth schedule for `weights` (see the module docs).
pub(crate) fn schedule(weights: &[u32]) -> Box<[u32]> {
    let n = weights.len();
    if n == 0 {
        return Box::new([]);
    }
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let mut total: u64 = w.iter().sum();
    if total > MAX_PERIOD as u64 {
        let scale = MAX_PERIOD as f64 / total as f64;
        w.iter_mut()
            .for_each(|x| *x = ((*x as f64 * scale).floor() as u64).max(1));
        total = w.iter().sum();
    }
    let period = total as usize;
    if (total as u128) * (n as u128) <= NGINX_BUDGET {
        return nginx_smooth(&w, total);
    }
    let n1 = n as u64 + 1;

    // Slot k of backend i sits at virtual time t = (k + (i+1)/(n+1)) / w_i, the fraction
    // (k*(n+1) + i + 1) / (w_i*(n+1)); its bucket is floor(t * period). The buckets of
    // consecutive k are walked as quotient and remainder, with no division per slot,
    // then a counting sort places the slots and the few shared buckets are ordered by
    // exact time.
    let mut buckets: Vec<u32> = Vec::with_capacity(period);
    let mut starts = vec![0u32; period + 1];
    for (i, &wi) in w.iter().enumerate() {
        let den = wi * n1;
        let first = (i as u64 + 1) * total;
        let step = n1 * total;
        let (mut q, mut r) = (first / den, first % den);
        let (step_q, step_r) = (step / den, step % den);
        for _ in 0..wi {
            let b = (q as usize).min(period - 1);
            buckets.push(b as u32);
            starts[b + 1] += 1;
            q += step_q;
            r += step_r;
            if r >= den {
                q += 1;
                r -= den;
            }
        }
    }
    for b in 0..period {
        starts[b + 1] += starts[b];
    }
    let mut fill = starts.clone();
    // (backend, k) per slot.
    let mut slots: Vec<(u32, u32)> = vec![(0, 0); period];
    let mut next = buckets.iter();
    for (i, &wi) in w.iter().enumerate() {
        for k in 0..wi {
            let b = next.next().map_or(0, |&b| b as usize);
            slots[fill[b] as usize] = (i as u32, k as u32);
            fill[b] += 1;
        }
    }
    let time = |&(i, k): &(u32, u32)| {
        (u64::from(k) * n1 + u64::from(i) + 1) as f64 / (w[i as usize] * n1) as f64
    };
    for b in 0..period {
        let range = starts[b] as usize..starts[b + 1] as usize;
        if range.len() > 1 {
            slots[range].sort_unstable_by(|x, y| time(x).total_cmp(&time(y)).then(x.0.cmp(&y.0)));
        }
    }
    slots.into_iter().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &[u32]) -> String {
        s.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn five_one_one_interleaves() {
        assert_eq!(names(&schedule(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn equal_light_weights_are_kept_apart() {
        // b and c split the period (the virtual-time layout put them side by side and
        // left 7 a in a row); across periods a runs at most 6.
        let s = names(&schedule(&[9, 1, 1]));
        assert_eq!(s, "aaabaaacaaa");
        assert!(!format!("{s}{s}").contains("aaaaaaa"), "{s}");
    }

    #[test]
    fn equal_weights_reduce_to_round_robin() {
        assert_eq!(names(&schedule(&[3, 3, 3])), "abc");
        assert_eq!(names(&schedule(&[1, 1])), "ab");
    }

    #[test]
    fn weights_share_their_gcd() {
        assert_eq!(schedule(&[10, 20, 30]).len(), 6);
    }

    #[test]
    fn zero_counts_as_one_and_empty_is_empty() {
        assert_eq!(names(&schedule(&[0, 1])), "ab");
        assert!(schedule(&[]).is_empty());
    }

    #[test]
    fn huge_weight_sums_are_capped_and_every_backend_stays() {
        let s = schedule(&[u32::MAX, u32::MAX - 1, 1]);
        assert!(s.len() <= MAX_PERIOD + 3);
        for i in 0..3 {
            assert!(s.contains(&i), "backend {i} lost");
        }
    }
}
