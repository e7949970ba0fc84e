//! The ORCA load report decoders under property sweeps of 100,000 random and
//! mutated inputs each: the serialized `OrcaLoadReport`, and the per-call trailer
//! (`endpoint-load-metrics-bin`, base64) as a server sends it. None may panic or
//! hang, and every error must say what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;

use lb_core::test_util::sweep::{Mutator, sweep};
use lb_orca::pb::data::OrcaLoadReport;
use lb_orca::{OrcaError, TRAILER};
use prost::Message;

/// Reports that use every field.
fn reports() -> Vec<Vec<u8>> {
    let full = OrcaLoadReport {
        cpu_utilization: 0.5,
        mem_utilization: 0.25,
        rps_fractional: 120.5,
        eps: 3.0,
        application_utilization: 0.8,
        request_cost: HashMap::from([("db".to_owned(), 2.5)]),
        utilization: HashMap::from([("gpu".to_owned(), 0.9), ("disk".to_owned(), 0.1)]),
        named_metrics: HashMap::from([("queue".to_owned(), 17.0)]),
        ..Default::default()
    };
    #[allow(deprecated)]
    let old_rps = OrcaLoadReport {
        rps: 42,
        ..Default::default()
    };
    vec![
        full.encode_to_vec(),
        old_rps.encode_to_vec(),
        OrcaLoadReport::default().encode_to_vec(),
        OrcaLoadReport {
            cpu_utilization: 1.0,
            ..Default::default()
        }
        .encode_to_vec(),
    ]
}

fn named(e: &OrcaError) -> Result<(), String> {
    let message = e.to_string();
    match e {
        OrcaError::Invalid { field, .. } if field.is_empty() => Err(format!("no field: {e:?}")),
        _ if message.trim().is_empty() => Err(format!("an empty message: {e:?}")),
        _ => Ok(()),
    }
}

#[test]
fn serialized_load_reports_survive_100_000_mutations() {
    let mut inputs = Mutator::from_bytes(0x0bca, &reports());
    let report = sweep(
        "orca report",
        100_000,
        || inputs.next_input(),
        lb_orca::decode,
        |_, e| named(e),
    );
    assert!(report.accepted > 1_000, "{report}");
}

#[test]
fn load_report_trailers_survive_100_000_mutations() {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut corpus: Vec<Vec<u8>> = reports()
        .iter()
        .map(|r| engine.encode(r).into_bytes())
        .collect();
    corpus.push(
        base64::engine::general_purpose::STANDARD
            .encode(&reports()[0])
            .into_bytes(),
    );
    // Mutate the report, then encode it: the base64 stays valid and the sweep
    // reaches the protobuf and the value checks behind it.
    let mut reports = Mutator::from_bytes(0x7a11, &self::reports());
    let mut texts =
        Mutator::from_bytes(0x7a12, &corpus).with_tokens(&["=", "==", "-", "_", "+", "/"]);
    let mut flip = false;
    let report = sweep(
        "orca trailer",
        100_000,
        || {
            flip = !flip;
            if flip {
                engine.encode(reports.next_input()).into_bytes()
            } else {
                texts.next_input()
            }
        },
        |bytes| {
            // Only what can be a header value reaches the decoder.
            let Ok(value) = http::HeaderValue::from_bytes(bytes) else {
                return Ok(None);
            };
            let mut trailers = http::HeaderMap::new();
            trailers.insert(TRAILER, value);
            lb_orca::from_trailers(&trailers).transpose()
        },
        |_, e| named(e),
    );
    assert!(report.accepted > 1_000, "{report}");
}
