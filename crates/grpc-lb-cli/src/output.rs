//! How addresses, subconns and times are printed, as text and as JSON.

use std::time::{Duration, SystemTime};

use lb_core::Address;
use lb_tonic::SubConnSnapshot;
use serde_json::{Value, json};

/// Now, as RFC 3339 UTC with milliseconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// An address's registry metadata, if it has any.
fn metadata(address: &Address) -> Option<&serde_json::Value> {
    address
        .attributes()
        .get::<lb_resolvers::Metadata>()
        .map(|m| &m.0)
}

/// Where an xDS endpoint sits in its channel's tree.
fn xds(address: &Address) -> Option<&lb_xds::XdsEndpoint> {
    address.attributes().get::<lb_xds::XdsEndpoint>()
}

/// One address as a text line: `host:port  weight W  [authority A]  [metadata {...}]`.
pub(crate) fn address_line(address: &Address) -> String {
    let mut line = format!("{:<24} weight {}", address.addr(), address.weight().get());
    if let Some(authority) = address.authority() {
        line.push_str(&format!("  authority {authority}"));
    }
    if let Some(m) = metadata(address) {
        line.push_str(&format!("  metadata {m}"));
    }
    if let Some(x) = xds(address) {
        line.push_str(&format!("  {x}"));
    }
    line
}

/// One address as JSON.
pub(crate) fn address_json(address: &Address) -> Value {
    json!({
        "address": address.addr(),
        "weight": address.weight().get(),
        "authority": address.authority(),
        "metadata": metadata(address),
        "xds": xds(address).map(|x| json!({
            "cluster": &*x.cluster,
            "priority": &*x.priority,
            "locality": x.locality.to_string(),
        })),
    })
}

/// One subconn as JSON.
pub(crate) fn subconn_json(sc: &SubConnSnapshot) -> Value {
    json!({
        "id": sc.id.get(),
        "address": sc.address.addr(),
        "state": sc.state.as_str(),
        "in_state_ms": millis(sc.in_state_for),
        "last_error": sc.last_error,
        "connection_attempts": sc.connection_attempts,
        "rpcs": {
            "started": sc.rpcs.started,
            "succeeded": sc.rpcs.succeeded,
            "failed": sc.rpcs.failed,
            "in_flight": sc.rpcs.in_flight,
        },
    })
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A latency for a table: `0.41ms`, `12.3ms`, `1.20s`.
pub(crate) fn latency(d: Option<Duration>) -> String {
    match d {
        None => "-".to_owned(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2}ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(1) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2}s", d.as_secs_f64()),
    }
}

/// Prints a JSON value on one line.
pub(crate) fn print_json(value: &Value) {
    println!("{value}");
}
