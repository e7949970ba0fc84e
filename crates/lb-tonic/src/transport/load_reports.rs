//! ORCA load reports on the client: the per-call trailer decoded for the pick's
//! completion callbacks, and the out-of-band stream
//! (`xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`) a subconn keeps open on
//! its connection while a policy watches it ([`lb_core::SubConn::watch_load_reports`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use lb_core::{LoadReport, LoadReportListener, LoadReportWatch, ReportSource};

/// A subconn's load-report watch, shared by its handle, its task and its
/// connections.
#[derive(Default)]
pub(crate) struct LoadWatch {
    watch: ArcSwapOption<LoadReportWatch>,
    /// The watch is per call: checked on every RPC's end, so one relaxed load.
    per_call: AtomicBool,
}

impl LoadWatch {
    pub(crate) fn set(&self, watch: Option<LoadReportWatch>) {
        let per_call = watch
            .as_ref()
            .is_some_and(|w| w.source == ReportSource::PerCall);
        self.watch.store(watch.map(Arc::new));
        self.per_call.store(per_call, Ordering::Release);
    }

    /// The listener of per-call reports, if the watch is per call.
    #[inline]
    pub(crate) fn per_call(&self) -> Option<Arc<dyn LoadReportListener>> {
        if !self.per_call.load(Ordering::Acquire) {
            return None;
        }
        self.watch
            .load()
            .as_ref()
            .filter(|w| w.source == ReportSource::PerCall)
            .map(|w| w.listener.clone())
    }

    /// The interval and listener of an out-of-band watch, if the watch is one.
    pub(crate) fn out_of_band(&self) -> Option<(Duration, Arc<dyn LoadReportListener>)> {
        self.watch.load().as_ref().and_then(|w| match w.source {
            ReportSource::OutOfBand(interval) => Some((interval, w.listener.clone())),
            ReportSource::PerCall => None,
        })
    }
}

use super::watch_stream::{Outbound, StreamEnd, server_stream};

/// The load report in a response's trailers, if the server sent a valid one. A
/// malformed one is logged (at most once a minute) and ignored.
pub(crate) fn from_trailers(trailers: Option<&http::HeaderMap>) -> Option<LoadReport> {
    match lb_orca::from_trailers(trailers?)? {
        Ok(report) => Some(report),
        Err(error) => {
            if should_log() {
                tracing::warn!(%error, "ignoring a malformed ORCA load report (logged at most once a minute)");
            }
            None
        }
    }
}

/// Rate limit for warnings about malformed reports: once a minute, process-wide.
fn should_log() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 60;
    let last = LAST.load(Ordering::Relaxed);
    now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// How an out-of-band stream ended.
#[derive(Debug)]
pub(crate) struct OobEnd {
    /// The server has no `OpenRcaService`: do not ask again on this connection.
    pub(crate) unimplemented: bool,
    /// At least one report arrived (the backoff starts over).
    pub(crate) received: bool,
    pub(crate) why: String,
}

/// Streams load reports from the server of `sender`'s connection to `listener`,
/// asking for one every `interval`, until the stream ends.
pub(crate) async fn stream(
    to: Outbound,
    interval: Duration,
    listener: Arc<dyn LoadReportListener>,
) -> OobEnd {
    let request = lb_orca::oob_request(interval);
    let mut received = false;
    let mut warned = false;
    let end = server_stream(&to, lb_orca::STREAM_CORE_METRICS, &request, |message| {
        match lb_orca::decode(&message) {
            Ok(report) => {
                received = true;
                listener.on_load_report(&report);
            }
            Err(error) if !warned => {
                warned = true;
                tracing::warn!(%error, "ignoring a malformed out-of-band ORCA load report");
            }
            Err(_) => {}
        }
        Ok(())
    })
    .await;
    let (unimplemented, why) = match end {
        StreamEnd::Status(tonic::Code::Unimplemented, message) => (true, message),
        StreamEnd::Status(code, message) => (
            false,
            format!(
                "ended with {}: {message}",
                crate::grpc_message::code_name(code)
            ),
        ),
        StreamEnd::Failed(why) | StreamEnd::Stopped(why) => (false, why),
    };
    OobEnd {
        unimplemented,
        received,
        why,
    }
}
