//! The per-RPC path: pick a subconn from the current picker (no lock), wait when told
//! to, send on the subconn's HTTP/2 connection, report the outcome.

use std::sync::Arc;
use std::time::Duration;

use http::uri::Uri;
use lb_core::{Address, ConnectivityState, OnDone, PickInfo, PickResult};
use tonic::body::Body;

use crate::body::{DoneGuard, ResponseBody};
use crate::control::Core;
use crate::replay;
use crate::subconn::{Connected, Transport};

/// Request extension: whether this RPC waits for a ready subconn instead of failing
/// while the channel is in `TRANSIENT_FAILURE`. Overrides the service config's
/// `waitForReady` and the channel default.
///
/// ```
/// # use lb_tonic::WaitForReady;
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(WaitForReady(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

/// Response extension: the backend that served the RPC.
///
/// ```no_run
/// # async fn f(response: tonic::Response<()>) {
/// use lb_tonic::ServedBy;
/// let served_by = response.extensions().get::<ServedBy>().map(|s| s.0.addr().to_owned());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub Address);

/// Sends that never reached the server (the connection had just closed) are retried
/// on a fresh pick this many times, as gRPC's transparent retry does.
const TRANSPARENT_RETRIES: usize = 3;

pub(crate) fn to_tonic(status: &lb_core::Status) -> tonic::Status {
    tonic::Status::new(
        tonic::Code::from_i32(status.code() as i32),
        status.message(),
    )
}

/// One RPC, start to response headers.
pub(crate) async fn call(
    core: Arc<Core>,
    mut request: http::Request<Body>,
) -> Result<http::Response<ResponseBody>, tonic::Status> {
    let method_config = {
        let config = core.service_config.load();
        let mc = config.method_config(request.uri().path());
        (
            mc.and_then(|m| m.wait_for_ready),
            mc.and_then(|m| m.timeout),
        )
    };
    let wait_for_ready = request
        .extensions()
        .get::<WaitForReady>()
        .map(|w| w.0)
        .or(method_config.0)
        .unwrap_or(core.wait_for_ready);
    let timeout = match grpc_timeout(request.headers()) {
        Some(t) => Some(t),
        None => {
            let t = method_config.1;
            // Tell the server the deadline the method config set.
            if let Some(t) = t
                && let Ok(v) = http::HeaderValue::from_str(&format!("{}m", t.as_millis()))
            {
                request.headers_mut().insert("grpc-timeout", v);
            }
            t
        }
    };
    let attempt = send(&core, request, wait_for_ready);
    match timeout {
        None => attempt.await,
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "deadline of {t:?} exceeded before the response headers (channel state {})",
                *core.state.borrow()
            ))),
        },
    }
}

async fn send(
    core: &Core,
    request: http::Request<Body>,
    wait_for_ready: bool,
) -> Result<http::Response<ResponseBody>, tonic::Status> {
    let (head, body) = request.into_parts();
    // A unary request's body is ready at once: keep it, so a stream the server refuses
    // unprocessed can be sent again.
    let mut body = replay::prefetch(body).await?;
    let mut head = Some(head);
    let mut handed_back = None;
    let mut retries = 0;
    loop {
        let mut request = match handed_back.take() {
            Some(request) => request,
            None => {
                let parts = if body.is_replayable() {
                    head.as_ref().map(clone_head)
                } else {
                    head.take()
                };
                match (parts, body.body()) {
                    (Some(parts), Some(body)) => http::Request::from_parts(parts, body),
                    _ => return Err(tonic::Status::internal("the request was already sent")),
                }
            }
        };
        let picked = pick(
            core,
            request.uri().path(),
            request.headers(),
            wait_for_ready,
        )
        .await?;
        let mut done = picked.on_done.map(DoneGuard::new);
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(picked.connected.scheme.clone());
        parts.authority = Some(picked.connected.authority.clone());
        *request.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| tonic::Status::internal(format!("bad request URI: {e}")))?;
        let mut sender = picked.connected.sender.clone();
        match sender.try_send_request(request).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                let done = done.map(|d| d.with_headers(&head.headers));
                head.extensions.insert(ServedBy(picked.address));
                return Ok(http::Response::from_parts(
                    head,
                    ResponseBody::new(body, done),
                ));
            }
            Err(mut e) => {
                let unsent = e.take_message();
                let error = e.into_error();
                let status = tonic::Status::unavailable(format!(
                    "{}: {}",
                    picked.address,
                    error_chain(&error)
                ));
                if let Some(d) = &mut done {
                    d.finish(&lb_core::Status::unavailable(status.message()), None);
                }
                if is_goaway(&error) {
                    picked.connected.drain();
                }
                if retries == TRANSPARENT_RETRIES {
                    return Err(status);
                }
                retries += 1;
                if let Some(request) = unsent {
                    tracing::debug!(addr = %picked.address, error = %status.message(), "retrying a request that was not sent");
                    handed_back = Some(request);
                } else if body.is_replayable() && refused_unprocessed(&error) {
                    tracing::debug!(addr = %picked.address, error = %status.message(), "retrying a stream the server refused");
                } else {
                    return Err(status);
                }
            }
        }
    }
}

/// A copy of a request head, for sending the request again.
fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    *request.extensions_mut() = head.extensions.clone();
    request.into_parts().0
}

fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// Whether the peer sent GOAWAY on this connection.
fn is_goaway(error: &hyper::Error) -> bool {
    h2_error(error).is_some_and(|e| e.is_go_away() && e.is_remote())
}

/// Whether the server refused the stream before processing it: `REFUSED_STREAM`
/// (RFC 9113 section 8.7 guarantees no processing).
///
/// A GOAWAY error is not enough: h2 gives streams above the GOAWAY's last stream id
/// (unprocessed) and streams cut off when the connection closes later (possibly
/// processed) the same error, and resending a processed RPC could run it twice.
fn refused_unprocessed(error: &hyper::Error) -> bool {
    h2_error(error).is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

struct Picked {
    connected: Arc<Connected>,
    address: Address,
    on_done: Option<Arc<dyn OnDone>>,
}

/// Asks the current picker until it names a connected subconn, waiting for new
/// pickers when it queues (or fails, for wait-for-ready RPCs).
async fn pick(
    core: &Core,
    method: &str,
    headers: &http::HeaderMap,
    wait_for_ready: bool,
) -> Result<Picked, tonic::Status> {
    let info = PickInfo::new(method).with_headers(headers);
    let mut waiter = None;
    loop {
        {
            let published = core.published.load();
            match published.picker.pick(&info) {
                PickResult::Pick(pick) => {
                    let connected = pick
                        .subconn
                        .handle::<Transport>()
                        .and_then(Transport::connected);
                    match connected {
                        Some(connected) => {
                            return Ok(Picked {
                                connected,
                                address: pick.subconn.address().clone(),
                                on_done: pick.on_done,
                            });
                        }
                        // The picker is a moment behind a connection that just closed:
                        // the next picker will not name it.
                        None => {
                            if let Some(on_done) = pick.on_done {
                                DoneGuard::new(on_done).finish(
                                    &lb_core::Status::unavailable(
                                        "the picked subconn is not connected",
                                    ),
                                    None,
                                );
                            }
                        }
                    }
                }
                PickResult::Queue => {
                    if published.state == ConnectivityState::Idle {
                        core.request_exit_idle();
                    }
                }
                PickResult::Fail(status) => {
                    if !wait_for_ready {
                        return Err(to_tonic(&status));
                    }
                }
                PickResult::Drop(status) => return Err(to_tonic(&status)),
            }
        }
        match &mut waiter {
            // Subscribe, then pick once more: no publication can slip in between.
            None => waiter = Some(core.picker_version.subscribe()),
            Some(rx) => {
                if rx.changed().await.is_err() {
                    return Err(tonic::Status::unavailable("the channel was shut down"));
                }
            }
        }
    }
}

/// An error and its sources, `: `-separated ("http2 error: stream error received: ...").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(t("99999999S"), Some(Duration::from_secs(99_999_999)));
        for bad in ["", "S", "1", "1x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
