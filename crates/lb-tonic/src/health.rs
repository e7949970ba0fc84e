//! Client-side health checking (gRFC A17): a `grpc.health.v1.Health/Watch` stream
//! on a subconn's own connection, whose answers decide whether the subconn counts as
//! `READY` for its policy.

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, Scheme};
use prost::Message;
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::replay::Chunks;
use crate::stream::{self, Outgoing};

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
pub(crate) async fn watch(
    sender: SendRequest<Bytes>,
    scheme: Scheme,
    authority: Authority,
    service: String,
    tx: mpsc::UnboundedSender<Health>,
) {
    let last = watch_until_end(&sender, scheme, authority, service, &tx).await;
    let _ = tx.send(last);
}

async fn watch_until_end(
    sender: &SendRequest<Bytes>,
    scheme: Scheme,
    authority: Authority,
    service: String,
    tx: &mpsc::UnboundedSender<Health>,
) -> Health {
    let uri = match http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(PATH)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => return Health::Ended(format!("bad health-check URI: {e}")),
    };
    let mut head = http::Request::new(());
    *head.method_mut() = http::Method::POST;
    *head.uri_mut() = uri;
    let headers = head.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let message = HealthCheckRequest { service }.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);
    let body = Outgoing::Complete {
        data: Chunks::One(frame.freeze()),
        trailers: None,
    };
    let opened = match stream::open(sender, head, body).await {
        Ok(opened) => opened,
        Err(not) => {
            return Health::Ended(format!("could not open the health stream: {}", not.error));
        }
    };
    let _handle = opened.handle; // resets the stream when the watch ends
    let response = match opened.response.await {
        Ok(r) => r,
        Err(e) => return Health::Ended(format!("the health stream failed: {e}")),
    };
    let (parts, mut recv) = response.into_parts();
    if let Some(status) = grpc_status(&parts.headers) {
        return ended(status, &parts.headers);
    }
    let mut buffer = BytesMut::new();
    loop {
        match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                buffer.extend_from_slice(&data);
                while let Some(message) = next_message(&mut buffer) {
                    let health = match HealthCheckResponse::decode(message) {
                        Ok(r) => match ServingStatus::try_from(r.status) {
                            Ok(ServingStatus::Serving) => Health::Serving,
                            Ok(other) => Health::NotServing(other.as_str_name()),
                            Err(_) => Health::NotServing("UNKNOWN"),
                        },
                        Err(e) => {
                            return Health::Ended(format!("a malformed health answer: {e}"));
                        }
                    };
                    if tx.send(health).is_err() {
                        return Health::Ended("nobody is watching".to_owned());
                    }
                }
            }
            Some(Err(e)) => return Health::Ended(format!("the health stream failed: {e}")),
            None => break,
        }
    }
    match std::future::poll_fn(|cx| recv.poll_trailers(cx)).await {
        Ok(Some(trailers)) => match grpc_status(&trailers) {
            Some(status) => ended(status, &trailers),
            None => Health::Ended("the health stream ended without a status".to_owned()),
        },
        Ok(None) => Health::Ended("the health stream ended without a status".to_owned()),
        Err(e) => Health::Ended(format!("the health stream failed: {e}")),
    }
}

/// One whole gRPC message off the front of `buffer`, if it holds one.
fn next_message(buffer: &mut BytesMut) -> Option<Bytes> {
    let header = buffer.get(..5)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    buffer.advance(5);
    Some(buffer.split_to(len).freeze())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn ended(status: i32, headers: &http::HeaderMap) -> Health {
    if status == tonic::Code::Unimplemented as i32 {
        return Health::Unimplemented;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Health::Ended(format!(
        "the health stream ended with {:?}: {message}",
        tonic::Code::from_i32(status)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_their_length_prefix() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0, 0, 0, 0, 2, 8, 1, 0, 0, 0]);
        assert_eq!(next_message(&mut buffer).unwrap().as_ref(), [8, 1]);
        assert!(next_message(&mut buffer).is_none(), "half a header");
        buffer.extend_from_slice(&[0, 2, 8, 2]);
        assert_eq!(next_message(&mut buffer).unwrap().as_ref(), [8, 2]);
        assert!(buffer.is_empty());
    }
}
