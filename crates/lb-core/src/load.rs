//! Load reports from backends (ORCA: Open Request Cost Aggregation), as policies
//! that weigh backends by their load receive them.
//!
//! A backend reports its load in two ways, both carrying the same fields
//! (`xds.data.orca.v3.OrcaLoadReport`):
//!
//! * **per call**, in the trailer `endpoint-load-metrics-bin` of each response;
//! * **out of band**, on a stream the channel opens on the subconn's connection
//!   (`xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`).
//!
//! A policy hears them through a [`LoadReportListener`] it sets on a subconn with
//! [`crate::SubConn::watch_load_reports`], choosing the [`ReportSource`]: per-call
//! reports then cost the picks nothing (the channel hands each to the subconn's
//! listener when the RPC ends). A pick's completion callbacks also see the per-call
//! report of their RPC, as [`crate::DoneInfo::load_report`].
//!
//! This crate only defines the data; decoding and the stream live in the transport
//! (`lb-tonic`, through `lb-orca`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One load report from a backend, as ORCA's `OrcaLoadReport`.
///
/// Utilizations are fractions of what the backend has (1.0 = all of it; a backend
/// may report more than 1.0 past its soft limit). A field the backend did not set
/// reads 0.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LoadReport {
    /// CPU utilization, as a fraction of the CPU available.
    pub cpu_utilization: f64,
    /// Memory utilization, as a fraction of the memory available.
    pub mem_utilization: f64,
    /// The application's own notion of utilization (the larger of CPU and memory,
    /// say). `weighted_round_robin` prefers it to `cpu_utilization` when it is set.
    pub application_utilization: f64,
    /// Requests per second served, over everything the backend serves.
    pub rps_fractional: f64,
    /// Errors per second.
    pub eps: f64,
    /// Application costs of this one request (per-call reports only), by name.
    pub request_cost: BTreeMap<String, f64>,
    /// Named resource utilizations, as fractions, by name.
    pub utilization: BTreeMap<String, f64>,
    /// Application metrics, by name.
    pub named_metrics: BTreeMap<String, f64>,
}

impl LoadReport {
    /// An empty report (every field 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// This report with `cpu_utilization`.
    #[must_use]
    pub fn with_cpu_utilization(mut self, value: f64) -> Self {
        self.cpu_utilization = value;
        self
    }

    /// This report with `application_utilization`.
    #[must_use]
    pub fn with_application_utilization(mut self, value: f64) -> Self {
        self.application_utilization = value;
        self
    }

    /// This report with `mem_utilization`.
    #[must_use]
    pub fn with_mem_utilization(mut self, value: f64) -> Self {
        self.mem_utilization = value;
        self
    }

    /// This report with `rps_fractional` (requests per second).
    #[must_use]
    pub fn with_rps(mut self, value: f64) -> Self {
        self.rps_fractional = value;
        self
    }

    /// This report with `eps` (errors per second).
    #[must_use]
    pub fn with_eps(mut self, value: f64) -> Self {
        self.eps = value;
        self
    }

    /// This report with a named metric.
    #[must_use]
    pub fn with_named_metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.named_metrics.insert(name.into(), value);
        self
    }
}

/// Receives the out-of-band load reports of one subconn (see
/// [`crate::SubConn::watch_load_reports`]).
///
/// Called from the transport's task for the subconn, one report at a time; must not
/// block.
pub trait LoadReportListener: Send + Sync + 'static {
    /// The backend sent a report.
    fn on_load_report(&self, report: &LoadReport);
}

impl<F: Fn(&LoadReport) + Send + Sync + 'static> LoadReportListener for F {
    fn on_load_report(&self, report: &LoadReport) {
        self(report)
    }
}

/// Where a subconn's load reports come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportSource {
    /// The trailer of each RPC on the subconn (sent by servers that report per
    /// call).
    PerCall,
    /// A stream on the subconn's connection, asking for a report this often.
    /// Backends may report less often (gRPC servers enforce a minimum, 30 s by
    /// default).
    OutOfBand(Duration),
}

/// A request for a subconn's load reports ([`crate::SubConn::watch_load_reports`]).
#[derive(Clone)]
pub struct LoadReportWatch {
    /// Where the reports come from.
    pub source: ReportSource,
    /// Who receives them.
    pub listener: Arc<dyn LoadReportListener>,
}

impl LoadReportWatch {
    /// Each RPC's report (its trailer), to `listener`.
    pub fn per_call(listener: Arc<dyn LoadReportListener>) -> Self {
        Self {
            source: ReportSource::PerCall,
            listener,
        }
    }

    /// A report every `interval` on an out-of-band stream, to `listener`.
    pub fn out_of_band(interval: Duration, listener: Arc<dyn LoadReportListener>) -> Self {
        Self {
            source: ReportSource::OutOfBand(interval),
            listener,
        }
    }
}

impl fmt::Debug for LoadReportWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadReportWatch")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}
