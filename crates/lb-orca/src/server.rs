//! The server side of ORCA (feature `server`): what a tonic server adds so that its
//! clients' `weighted_round_robin` can weigh it by its load.
//!
//! * [`ServerMetricsRecorder`]: the backend's current load, filled by the
//!   application (CPU utilization from its own sampling, named metrics) and, with
//!   [`OrcaLayer::count_rates`], by the layer (requests and errors per second).
//! * [`OrcaLayer`]: a tower layer for `tonic::transport::Server::layer` that attaches
//!   the recorder's report to every response in the trailer
//!   `endpoint-load-metrics-bin` (per-call reporting). A handler can add values for
//!   its own call through the [`CallMetrics`] in the request's extensions.
//! * [`OrcaService`]: `xds.service.orca.v3.OpenRcaService`, the out-of-band stream
//!   on which the recorder's report is sent periodically.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use lb_core::LoadReport;

use crate::pb::data::OrcaLoadReport;
use crate::pb::service::OrcaLoadReportRequest;
use crate::pb::service::open_rca_service_server::{OpenRcaService, OpenRcaServiceServer};

/// A metric value the recorder refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("ORCA metric `{metric}` is {value}: it must be a finite number >= 0")]
pub struct InvalidMetric {
    /// The metric's name.
    pub metric: String,
    /// The value given.
    pub value: f64,
}

fn valid(metric: &str, value: f64) -> Result<f64, InvalidMetric> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(InvalidMetric {
            metric: metric.to_owned(),
            value,
        })
    }
}

/// An `f64` behind an atomic.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// A backend's current load, reported to clients by [`OrcaLayer`] and
/// [`OrcaService`]. Cheap to clone (one shared record); every method may be called
/// from any thread.
///
/// Unset values are 0, which clients read as "not reported". Setters refuse negative
/// and non-finite values with an [`InvalidMetric`] that names the metric.
#[derive(Clone, Debug, Default)]
pub struct ServerMetricsRecorder {
    inner: Arc<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    cpu: AtomicF64,
    mem: AtomicF64,
    application: AtomicF64,
    qps: AtomicF64,
    eps: AtomicF64,
    maps: Mutex<Maps>,
    /// Set by [`OrcaLayer::count_rates`]: the layer's call counts.
    rates: OnceLock<Arc<Rates>>,
}

#[derive(Debug, Default)]
struct Maps {
    utilization: BTreeMap<String, f64>,
    named: BTreeMap<String, f64>,
}

impl ServerMetricsRecorder {
    /// A recorder with nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// CPU utilization, as a fraction of the CPU available (may exceed 1.0).
    pub fn set_cpu_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        self.inner.cpu.set(valid("cpu_utilization", value)?);
        Ok(())
    }

    /// Memory utilization, as a fraction of the memory available.
    pub fn set_memory_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        self.inner.mem.set(valid("mem_utilization", value)?);
        Ok(())
    }

    /// The application's own utilization (the larger of CPU and memory, say), which
    /// clients prefer to CPU utilization when it is set.
    pub fn set_application_utilization(&self, value: f64) -> Result<(), InvalidMetric> {
        self.inner
            .application
            .set(valid("application_utilization", value)?);
        Ok(())
    }

    /// Requests per second. Ignored while the layer counts them
    /// ([`OrcaLayer::count_rates`]).
    pub fn set_qps(&self, value: f64) -> Result<(), InvalidMetric> {
        self.inner.qps.set(valid("rps_fractional", value)?);
        Ok(())
    }

    /// Errors per second. Ignored while the layer counts them
    /// ([`OrcaLayer::count_rates`]).
    pub fn set_eps(&self, value: f64) -> Result<(), InvalidMetric> {
        self.inner.eps.set(valid("eps", value)?);
        Ok(())
    }

    /// A named resource utilization, as a fraction.
    pub fn set_utilization(&self, name: &str, value: f64) -> Result<(), InvalidMetric> {
        let value = valid(&format!("utilization[{name:?}]"), value)?;
        self.maps().utilization.insert(name.to_owned(), value);
        Ok(())
    }

    /// An application metric (any finite value).
    pub fn set_named_metric(&self, name: &str, value: f64) -> Result<(), InvalidMetric> {
        if !value.is_finite() {
            return Err(InvalidMetric {
                metric: format!("named_metrics[{name:?}]"),
                value,
            });
        }
        self.maps().named.insert(name.to_owned(), value);
        Ok(())
    }

    /// Removes a named utilization or metric.
    pub fn remove(&self, name: &str) {
        let mut maps = self.maps();
        maps.utilization.remove(name);
        maps.named.remove(name);
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.inner
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The report clients get now.
    pub fn snapshot(&self) -> LoadReport {
        let (rps, eps) = match self.inner.rates.get() {
            Some(rates) => rates.per_second(),
            None => (self.inner.qps.get(), self.inner.eps.get()),
        };
        let maps = self.maps();
        let mut report = LoadReport::new()
            .with_cpu_utilization(self.inner.cpu.get())
            .with_mem_utilization(self.inner.mem.get())
            .with_application_utilization(self.inner.application.get())
            .with_rps(rps)
            .with_eps(eps);
        report.utilization = maps.utilization.clone();
        report.named_metrics = maps.named.clone();
        report
    }
}

/// Calls and errors per second over a sliding window, counted in ten buckets.
#[derive(Debug)]
struct Rates {
    start: Instant,
    bucket: Duration,
    buckets: [Bucket; BUCKETS],
}

/// Buckets kept: the ten of the window plus the one filling and a spare.
const BUCKETS: usize = 12;
/// Complete buckets a rate is computed over.
const WINDOW_BUCKETS: u64 = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// Which bucket (since `start`) the counts belong to.
    index: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl Rates {
    fn new(window: Duration) -> Self {
        let bucket = (window / WINDOW_BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            start: Instant::now(),
            bucket,
            buckets: Default::default(),
        }
    }

    fn index(&self) -> u64 {
        let elapsed = self.start.elapsed().as_nanos();
        u64::try_from(elapsed / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// Counts one finished call. Approximate at bucket boundaries under contention
    /// (a count can land in a bucket being recycled).
    fn record(&self, error: bool) {
        // Bucket indices start at 1 so that a fresh bucket (index 0) is never current.
        let i = self.index() + 1;
        let b = &self.buckets[(i % BUCKETS as u64) as usize];
        if b.index.load(Ordering::Acquire) != i && b.index.swap(i, Ordering::AcqRel) != i {
            b.calls.store(0, Ordering::Relaxed);
            b.errors.store(0, Ordering::Relaxed);
        }
        b.calls.fetch_add(1, Ordering::Relaxed);
        if error {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (calls, errors) per second over the last complete buckets (fewer than ten
    /// right after the start).
    fn per_second(&self) -> (f64, f64) {
        let now = self.index() + 1;
        let complete = (now - 1).min(WINDOW_BUCKETS);
        if complete == 0 {
            return (0.0, 0.0);
        }
        let (mut calls, mut errors) = (0u64, 0u64);
        for b in &self.buckets {
            let i = b.index.load(Ordering::Acquire);
            if i < now && i + complete >= now {
                calls += b.calls.load(Ordering::Relaxed);
                errors += b.errors.load(Ordering::Relaxed);
            }
        }
        let secs = self.bucket.as_secs_f64() * complete as f64;
        (calls as f64 / secs, errors as f64 / secs)
    }
}

/// Values a handler sets for its own call, found in the request's extensions when
/// the server runs [`OrcaLayer`]; they go into that call's trailer, over the
/// recorder's.
///
/// ```
/// # fn handler(request: tonic::Request<()>) {
/// if let Some(metrics) = request.extensions().get::<lb_orca::server::CallMetrics>() {
///     metrics.set_request_cost("db_rows", 120.0);
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallMetrics {
    inner: Arc<Mutex<LoadReport>>,
}

impl CallMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, LoadReport> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cost of this request (bytes read, rows scanned).
    pub fn set_request_cost(&self, name: &str, value: f64) {
        if value.is_finite() && value >= 0.0 {
            self.lock().request_cost.insert(name.to_owned(), value);
        }
    }

    /// A named utilization seen by this request.
    pub fn set_utilization(&self, name: &str, value: f64) {
        if value.is_finite() && value >= 0.0 {
            self.lock().utilization.insert(name.to_owned(), value);
        }
    }

    /// An application metric for this request.
    pub fn set_named_metric(&self, name: &str, value: f64) {
        if value.is_finite() {
            self.lock().named_metrics.insert(name.to_owned(), value);
        }
    }

    /// The call's report: the server's with this call's values over it.
    fn merged(&self, server: LoadReport) -> LoadReport {
        let call = self.lock();
        let mut report = server;
        report
            .request_cost
            .extend(call.request_cost.iter().map(|(k, v)| (k.clone(), *v)));
        report
            .utilization
            .extend(call.utilization.iter().map(|(k, v)| (k.clone(), *v)));
        report
            .named_metrics
            .extend(call.named_metrics.iter().map(|(k, v)| (k.clone(), *v)));
        report
    }
}

/// A tower layer that reports the recorder's load in every response's trailer
/// (`endpoint-load-metrics-bin`), for `tonic::transport::Server::layer`.
#[derive(Clone, Debug)]
pub struct OrcaLayer {
    recorder: ServerMetricsRecorder,
    rates: Option<Arc<Rates>>,
}

impl OrcaLayer {
    /// A layer reporting `recorder`'s values.
    pub fn new(recorder: ServerMetricsRecorder) -> Self {
        Self {
            recorder,
            rates: None,
        }
    }

    /// Counts the calls the layer sees, and reports requests and errors (non-`OK`
    /// statuses) per second over the last `window` as the recorder's QPS and EPS,
    /// in the trailer and on [`OrcaService`]. The counts live in the recorder: a
    /// second layer on the same recorder shares them (and the first window).
    #[must_use]
    pub fn count_rates(mut self, window: Duration) -> Self {
        let rates = self
            .recorder
            .inner
            .rates
            .get_or_init(|| Arc::new(Rates::new(window)))
            .clone();
        self.rates = Some(rates);
        self
    }
}

impl<S> tower_layer::Layer<S> for OrcaLayer {
    type Service = WithLoadReports<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithLoadReports {
            inner,
            recorder: self.recorder.clone(),
            rates: self.rates.clone(),
        }
    }
}

/// The service [`OrcaLayer`] wraps around a server's.
#[derive(Clone, Debug)]
pub struct WithLoadReports<S> {
    inner: S,
    recorder: ServerMetricsRecorder,
    rates: Option<Arc<Rates>>,
}

impl<S, B, ResB> tower_service::Service<http::Request<B>> for WithLoadReports<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = http::Response<ReportingBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let call = CallMetrics::default();
        request.extensions_mut().insert(call.clone());
        ResponseFuture {
            inner: self.inner.call(request),
            finish: Some(Finish {
                recorder: self.recorder.clone(),
                rates: self.rates.clone(),
                call,
            }),
        }
    }
}

/// What a call's end does: count it and add the report.
#[derive(Debug)]
struct Finish {
    recorder: ServerMetricsRecorder,
    rates: Option<Arc<Rates>>,
    call: CallMetrics,
}

impl Finish {
    /// Counts the call by the status in `headers` (its trailers, or the headers of
    /// a trailers-only response) and adds the report to them.
    fn apply(self, headers: &mut http::HeaderMap) {
        if let Some(rates) = &self.rates {
            let ok = headers
                .get("grpc-status")
                .is_none_or(|s| s.as_bytes() == b"0");
            rates.record(!ok);
        }
        let report = self.call.merged(self.recorder.snapshot());
        if report != LoadReport::default() {
            headers.insert(crate::TRAILER, crate::to_header_value(&report));
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`WithLoadReports`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
    }
}

impl<F, ResB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<ReportingBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let (mut parts, body) = response.into_parts();
        let mut finish = this.finish.take();
        if parts.headers.contains_key("grpc-status")
            && let Some(f) = finish.take()
        {
            // Trailers-only: the status (and so the report) is in the headers.
            f.apply(&mut parts.headers);
        }
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            ReportingBody {
                inner: body,
                finish,
            },
        )))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get the load report.
    pub struct ReportingBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
    }
}

impl<B> Body for ReportingBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(f) = this.finish.take() {
                        f.apply(&mut trailers);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `xds.service.orca.v3.OpenRcaService`: streams the recorder's report to each
/// client that asks, every interval it asks for (but no more often than
/// [`OrcaService::min_interval`]). The first report is sent at once.
#[derive(Clone, Debug)]
pub struct OrcaService {
    recorder: ServerMetricsRecorder,
    min_interval: Duration,
}

impl OrcaService {
    /// The shortest interval by default: 30 s, as grpc-go's servers.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);
    /// The shortest interval accepted by [`OrcaService::min_interval`].
    pub const FLOOR: Duration = Duration::from_millis(10);

    /// A service reporting `recorder`'s values.
    pub fn new(recorder: ServerMetricsRecorder) -> Self {
        Self {
            recorder,
            min_interval: Self::DEFAULT_MIN_INTERVAL,
        }
    }

    /// Clients asking for a shorter interval (or none) get this one. Values below
    /// [`OrcaService::FLOOR`] (10 ms) are raised to it.
    #[must_use]
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval.max(Self::FLOOR);
        self
    }

    /// The interval a stream asking for `requested` gets.
    fn interval_for(&self, requested: Option<&prost_types::Duration>) -> Duration {
        let requested = requested
            .and_then(|d| {
                let secs = u64::try_from(d.seconds).ok()?;
                let nanos = u32::try_from(d.nanos).ok()?;
                Some(Duration::new(secs, nanos))
            })
            .unwrap_or_default();
        requested.max(self.min_interval)
    }

    /// The tonic service, for `Server::add_service`.
    pub fn into_server(self) -> OpenRcaServiceServer<Self> {
        OpenRcaServiceServer::new(self)
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for OrcaService {
    type StreamCoreMetricsStream = ReportStream;

    async fn stream_core_metrics(
        &self,
        request: tonic::Request<OrcaLoadReportRequest>,
    ) -> Result<tonic::Response<Self::StreamCoreMetricsStream>, tonic::Status> {
        let interval = self.interval_for(request.get_ref().report_interval.as_ref());
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recorder = self.recorder.clone();
        // Ends when the client goes away: tonic drops the stream.
        let stream =
            futures_util::stream::unfold((ticker, recorder), |(mut ticker, recorder)| async move {
                ticker.tick().await;
                let report = crate::to_pb(&recorder.snapshot());
                Some((Ok(report), (ticker, recorder)))
            });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_refuse_what_no_weight_comes_from() {
        let r = ServerMetricsRecorder::new();
        assert_eq!(
            r.set_cpu_utilization(-0.5),
            Err(InvalidMetric {
                metric: "cpu_utilization".into(),
                value: -0.5
            })
        );
        assert!(r.set_qps(f64::NAN).is_err());
        assert!(r.set_utilization("disk", f64::INFINITY).is_err());
        assert!(r.set_named_metric("delta", -3.0).is_ok());
        r.set_cpu_utilization(0.5).unwrap();
        r.set_qps(100.0).unwrap();
        let s = r.snapshot();
        assert_eq!((s.cpu_utilization, s.rps_fractional), (0.5, 100.0));
        assert_eq!(s.named_metrics["delta"], -3.0);
        r.remove("delta");
        assert!(r.snapshot().named_metrics.is_empty());
    }

    #[test]
    fn rates_count_complete_buckets_only() {
        let rates = Rates::new(Duration::from_secs(10)); // 1 s buckets
        for i in 0..30u32 {
            rates.record(i.is_multiple_of(3));
        }
        // The current bucket is not complete yet: nothing to report.
        assert_eq!(rates.per_second(), (0.0, 0.0));
    }

    #[test]
    fn rates_are_per_second_over_the_window() {
        let rates = Rates::new(Duration::from_millis(100)); // 10 ms buckets
        let until = Instant::now() + Duration::from_millis(300);
        let mut n = 0u64;
        while Instant::now() < until {
            rates.record(n.is_multiple_of(4));
            n += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        let (calls, errors) = rates.per_second();
        // Whatever the pace was, a quarter of the calls failed.
        assert!(calls > 0.0);
        let ratio = errors / calls;
        assert!((0.15..0.35).contains(&ratio), "{errors}/{calls}");
    }

    #[test]
    fn the_interval_is_at_least_the_minimum() {
        let svc =
            OrcaService::new(ServerMetricsRecorder::new()).min_interval(Duration::from_secs(1));
        let ask = |s: i64, n: i32| prost_types::Duration {
            seconds: s,
            nanos: n,
        };
        assert_eq!(svc.interval_for(None), Duration::from_secs(1));
        assert_eq!(
            svc.interval_for(Some(&ask(0, 1_000))),
            Duration::from_secs(1)
        );
        assert_eq!(svc.interval_for(Some(&ask(5, 0))), Duration::from_secs(5));
        assert_eq!(svc.interval_for(Some(&ask(-5, 0))), Duration::from_secs(1));
        let floor = OrcaService::new(ServerMetricsRecorder::new()).min_interval(Duration::ZERO);
        assert_eq!(floor.interval_for(None), OrcaService::FLOOR);
    }
}
