//! ORCA (Open Request Cost Aggregation) load reports for `grpc-lb`: what a backend
//! tells its clients about its load, so that `weighted_round_robin` can send each
//! backend traffic in proportion to what it can take (gRFC A51, A58).
//!
//! A backend reports in two ways, with the same message (`xds.data.orca.v3.OrcaLoadReport`):
//!
//! * **per call**, in the response trailer [`TRAILER`] (`endpoint-load-metrics-bin`);
//! * **out of band**, on a server stream the client opens once per connection
//!   (`xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`).
//!
//! Without features this crate is the client side, used by the channel (`lb-tonic`):
//! [`from_trailers`] and [`decode`] turn what a server sent into an
//! [`lb_core::LoadReport`], [`oob_request`] encodes the stream's request. The
//! vendored protos are compiled at build time ([`pb`]).
//!
//! With the `server` feature it is the server side: a
//! [`server::ServerMetricsRecorder`] the application fills (CPU utilization, QPS,
//! errors, named metrics), a tower [`server::OrcaLayer`] that attaches the trailer to
//! every response, and [`server::OrcaService`], the out-of-band service:
//!
//! ```no_run
//! # #[cfg(feature = "server")] {
//! use std::time::Duration;
//! use lb_orca::server::{OrcaLayer, OrcaService, ServerMetricsRecorder};
//!
//! # async fn serve<S>(my_service: S) -> Result<(), Box<dyn std::error::Error>>
//! # where S: tonic::codegen::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
//! #   + tonic::server::NamedService + Clone + Send + Sync + 'static, S::Future: Send + 'static {
//! let recorder = ServerMetricsRecorder::new();
//! recorder.set_cpu_utilization(0.4)?; // fed by the application, from its own sampling
//! tonic::transport::Server::builder()
//!     // Counts the calls (QPS, errors per second) and adds the trailer to each.
//!     .layer(OrcaLayer::new(recorder.clone()).count_rates(Duration::from_secs(1)))
//!     .add_service(my_service)
//!     .add_service(OrcaService::new(recorder).min_interval(Duration::from_secs(1)).into_server())
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! # }
//! ```
//!
//! Decoding rejects values a weight cannot be computed from (negative, NaN,
//! infinite) with an [`OrcaError`] naming the field; the deprecated integer `rps`
//! field is read only when `rps_fractional` is absent.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use lb_core::LoadReport;
use prost::Message;

#[cfg(feature = "server")]
pub mod server;

/// The generated code, nested as its protobuf packages (its cross-package paths
/// count on it).
mod generated {
    #![allow(missing_docs, clippy::all, unreachable_pub)]
    pub mod xds {
        pub mod data {
            pub mod orca {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/xds.data.orca.v3.rs"));
                }
            }
        }
        pub mod service {
            pub mod orca {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/xds.service.orca.v3.rs"));
                }
            }
        }
    }
}

/// The generated protobuf types of the two vendored xds protos.
pub mod pb {
    /// `xds.data.orca.v3`: the load report.
    pub use crate::generated::xds::data::orca::v3 as data;
    /// `xds.service.orca.v3`: the out-of-band service and its request.
    pub use crate::generated::xds::service::orca::v3 as service;
}

/// The response trailer (binary metadata) that carries a per-call load report.
pub const TRAILER: &str = "endpoint-load-metrics-bin";

/// The path of the out-of-band stream.
pub const STREAM_CORE_METRICS: &str = "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics";

/// Why a load report could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrcaError {
    /// The trailer is not valid base64 (gRPC binary metadata).
    #[error("the {TRAILER} trailer is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not an `OrcaLoadReport`.
    #[error("malformed OrcaLoadReport: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A value no weight can be computed from.
    #[error("OrcaLoadReport field `{field}` is {value}: it must be a finite number >= 0")]
    Invalid {
        /// The field (`cpu_utilization`, `named_metrics["x"]`, ...).
        field: String,
        /// The value sent.
        value: f64,
    },
}

/// gRPC binary metadata is base64 with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The per-call load report in `trailers`, if the server sent one.
pub fn from_trailers(trailers: &http::HeaderMap) -> Option<Result<LoadReport, OrcaError>> {
    let value = trailers.get(TRAILER)?;
    Some(
        BASE64
            .decode(value.as_bytes())
            .map_err(OrcaError::from)
            .and_then(|bytes| decode(&bytes)),
    )
}

/// Decodes a serialized `OrcaLoadReport`.
pub fn decode(bytes: &[u8]) -> Result<LoadReport, OrcaError> {
    from_pb(pb::data::OrcaLoadReport::decode(bytes)?)
}

/// Checks and converts a decoded `OrcaLoadReport`.
pub fn from_pb(report: pb::data::OrcaLoadReport) -> Result<LoadReport, OrcaError> {
    #[allow(deprecated)]
    let rps = if report.rps_fractional == 0.0 {
        report.rps as f64
    } else {
        report.rps_fractional
    };
    let mut out = LoadReport::new()
        .with_cpu_utilization(checked("cpu_utilization", report.cpu_utilization)?)
        .with_mem_utilization(checked("mem_utilization", report.mem_utilization)?)
        .with_application_utilization(checked(
            "application_utilization",
            report.application_utilization,
        )?)
        .with_rps(checked("rps_fractional", rps)?)
        .with_eps(checked("eps", report.eps)?);
    out.request_cost = checked_map("request_cost", report.request_cost)?;
    out.utilization = checked_map("utilization", report.utilization)?;
    // Named metrics are the application's own: any finite value goes.
    out.named_metrics = report
        .named_metrics
        .into_iter()
        .map(|(k, v)| {
            if v.is_finite() {
                Ok((k, v))
            } else {
                Err(OrcaError::Invalid {
                    field: format!("named_metrics[{k:?}]"),
                    value: v,
                })
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(out)
}

fn checked(field: &str, value: f64) -> Result<f64, OrcaError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(OrcaError::Invalid {
            field: field.to_owned(),
            value,
        })
    }
}

fn checked_map(
    field: &str,
    map: std::collections::HashMap<String, f64>,
) -> Result<BTreeMap<String, f64>, OrcaError> {
    map.into_iter()
        .map(|(k, v)| {
            if v.is_finite() && v >= 0.0 {
                Ok((k, v))
            } else {
                Err(OrcaError::Invalid {
                    field: format!("{field}[{k:?}]"),
                    value: v,
                })
            }
        })
        .collect()
}

/// `report` as the protobuf message.
pub fn to_pb(report: &LoadReport) -> pb::data::OrcaLoadReport {
    #[allow(deprecated)]
    pb::data::OrcaLoadReport {
        cpu_utilization: report.cpu_utilization,
        mem_utilization: report.mem_utilization,
        rps: 0,
        request_cost: report.request_cost.clone().into_iter().collect(),
        utilization: report.utilization.clone().into_iter().collect(),
        rps_fractional: report.rps_fractional,
        eps: report.eps,
        named_metrics: report.named_metrics.clone().into_iter().collect(),
        application_utilization: report.application_utilization,
    }
}

/// `report` serialized as an `OrcaLoadReport`.
pub fn encode(report: &LoadReport) -> Vec<u8> {
    to_pb(report).encode_to_vec()
}

/// `report` as the value of the [`TRAILER`] (unpadded base64, as gRPC sends binary
/// metadata).
pub fn to_header_value(report: &LoadReport) -> http::HeaderValue {
    let text = BASE64.encode(encode(report));
    // Base64 is always a valid header value.
    http::HeaderValue::try_from(text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// The serialized `OrcaLoadReportRequest` that opens an out-of-band stream asking
/// for a report every `interval`.
pub fn oob_request(interval: Duration) -> Vec<u8> {
    pb::service::OrcaLoadReportRequest {
        report_interval: Some(prost_types::Duration {
            seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
        }),
        request_cost_names: Vec::new(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LoadReport {
        let mut r = LoadReport::new()
            .with_cpu_utilization(0.25)
            .with_mem_utilization(0.5)
            .with_application_utilization(0.75)
            .with_rps(120.5)
            .with_eps(3.0)
            .with_named_metric("queue", 7.0);
        r.utilization.insert("disk".into(), 0.1);
        r.request_cost.insert("bytes".into(), 4096.0);
        r
    }

    #[test]
    fn a_report_survives_the_trailer() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(TRAILER, to_header_value(&sample()));
        let decoded = from_trailers(&trailers).unwrap().unwrap();
        assert_eq!(decoded, sample());
    }

    #[test]
    fn padded_base64_is_accepted_too() {
        let padded = base64::engine::general_purpose::STANDARD.encode(encode(&sample()));
        let mut trailers = http::HeaderMap::new();
        trailers.insert(TRAILER, padded.parse().unwrap());
        assert_eq!(from_trailers(&trailers).unwrap().unwrap(), sample());
    }

    #[test]
    fn no_trailer_is_no_report() {
        assert!(from_trailers(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(TRAILER, "!!!not base64".parse().unwrap());
        assert!(matches!(
            from_trailers(&trailers),
            Some(Err(OrcaError::Base64(_)))
        ));
        // Valid base64 of bytes that are no protobuf (a truncated varint field).
        trailers.insert(TRAILER, BASE64.encode([0x08, 0xff]).parse().unwrap());
        assert!(matches!(
            from_trailers(&trailers),
            Some(Err(OrcaError::Protobuf(_)))
        ));
    }

    #[test]
    fn negative_and_non_finite_values_name_their_field() {
        let mut pb = to_pb(&sample());
        pb.cpu_utilization = -1.0;
        let e = from_pb(pb).unwrap_err().to_string();
        assert!(e.contains("cpu_utilization"), "{e}");
        let mut pb = to_pb(&sample());
        pb.utilization.insert("gpu".into(), f64::NAN);
        let e = from_pb(pb).unwrap_err().to_string();
        assert!(e.contains(r#"utilization["gpu"]"#), "{e}");
        let mut pb = to_pb(&sample());
        pb.named_metrics.insert("m".into(), f64::INFINITY);
        assert!(from_pb(pb).is_err());
        // Named metrics may be negative.
        let mut pb = to_pb(&sample());
        pb.named_metrics.insert("delta".into(), -2.0);
        assert_eq!(from_pb(pb).unwrap().named_metrics["delta"], -2.0);
    }

    #[test]
    fn the_deprecated_integer_rps_is_a_fallback() {
        #[allow(deprecated)]
        let pb = pb::data::OrcaLoadReport {
            rps: 40,
            ..Default::default()
        };
        assert_eq!(from_pb(pb).unwrap().rps_fractional, 40.0);
    }

    #[test]
    fn the_oob_request_carries_the_interval() {
        let bytes = oob_request(Duration::from_millis(1500));
        let req = pb::service::OrcaLoadReportRequest::decode(bytes.as_slice()).unwrap();
        let d = req.report_interval.unwrap();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
