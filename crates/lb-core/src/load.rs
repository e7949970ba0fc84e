//! Load reports from backends (ORCA: Open Request Cost Aggregation), as policies
//! that weigh backends by their load receive them.
//!
//! A backend reports its load in two ways, both carrying the same fields
//! (`xds.data.orca.v3.OrcaLoadReport`):
//!
//! * **per call**, in the trailer `endpoint-load-metrics-bin` of each response: the
//!   channel decodes it and hands it to the pick's completion callbacks as
//!   [`crate::DoneInfo::load_report`];
//! * **out of band**, on a stream the channel opens on the subconn's connection
//!   (`xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`) when a policy asks for
//!   it with [`crate::SubConn::watch_load_reports`]: each report reaches the
//!   policy's [`LoadReportListener`].
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

/// A request for out-of-band load reports on a subconn.
#[derive(Clone)]
pub struct LoadReportWatch {
    /// How often the backend is asked to report. Backends may report less often
    /// (gRPC servers enforce a minimum, 30 s by default).
    pub interval: Duration,
    /// Who receives the reports.
    pub listener: Arc<dyn LoadReportListener>,
}

impl LoadReportWatch {
    /// Reports every `interval`, to `listener`.
    pub fn new(interval: Duration, listener: Arc<dyn LoadReportListener>) -> Self {
        Self { interval, listener }
    }
}

impl fmt::Debug for LoadReportWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadReportWatch")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}
