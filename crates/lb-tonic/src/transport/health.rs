//! Client-side health checking (gRFC A17): a `grpc.health.v1.Health/Watch` stream
//! on a subconn's own connection, whose answers decide whether the subconn counts as
//! `READY` for its policy.

use prost::Message;
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

use super::watch_stream::{Outbound, StreamEnd, server_stream};

/// What the health service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// `SERVING`.
    Serving,
    /// Anything else (`NOT_SERVING`, `SERVICE_UNKNOWN`, `UNKNOWN`): its name.
    NotServing(&'static str),
    /// The server has no health service: it counts as healthy (gRFC A17).
    Unimplemented,
    /// The stream failed or ended; the watch is started again after a backoff.
    Ended(String),
}

const PATH: &str = "/grpc.health.v1.Health/Watch";

/// Watches `service` on the connection of `sender`, sending each answer to `tx`, until
/// the stream ends (with [`Health::Ended`] or [`Health::Unimplemented`]) or nobody
/// listens any more.
/// `signals`: the connection's, when its open streams are counted (keepalive
/// without `while_idle` pings while this stream is open, as grpc-go does).
pub(crate) async fn watch(to: Outbound, service: String, tx: mpsc::UnboundedSender<Health>) {
    let request = HealthCheckRequest { service }.encode_to_vec();
    let end = server_stream(&to, PATH, &request, |message| {
        let health = match HealthCheckResponse::decode(message) {
            Ok(r) => match ServingStatus::try_from(r.status) {
                Ok(ServingStatus::Serving) => Health::Serving,
                Ok(other) => Health::NotServing(other.as_str_name()),
                Err(_) => Health::NotServing("UNKNOWN"),
            },
            Err(e) => return Err(format!("a malformed health answer: {e}")),
        };
        tx.send(health).map_err(|_| "nobody is watching".to_owned())
    })
    .await;
    let last = match end {
        StreamEnd::Status(tonic::Code::Unimplemented, _) => Health::Unimplemented,
        StreamEnd::Status(code, message) => Health::Ended(format!(
            "the health stream ended with {}: {message}",
            crate::grpc_message::code_name(code)
        )),
        StreamEnd::Failed(why) => Health::Ended(format!("the health stream: {why}")),
        StreamEnd::Stopped(why) => Health::Ended(why),
    };
    let _ = tx.send(last);
}
