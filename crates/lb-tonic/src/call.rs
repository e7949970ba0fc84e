//! The per-RPC path: pick a subconn from the current picker (no lock), wait when told
//! to, open an HTTP/2 stream on the subconn's connection, report the outcome. The
//! call's deadline bounds all of it, the response stream included.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use http::uri::Uri;
use lb_core::{Address, ConnectivityState, OnDone, PickInfo, PickResult};
use tokio::time::Instant;
use tonic::body::Body;

use crate::body::{Deadline, DoneGuard, ResponseBody};
use crate::control::{Core, panic_message};
use crate::frames::ActiveStream;
use crate::idle::CallGuard;
use crate::replay;
use crate::stream::{self, Held, NotOpened};
use crate::subconn::{Connected, Transport};
use crate::timeout;

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

/// RPCs that never reached a server (the stream could not be opened, the server
/// refused it, or it was above a GOAWAY's last stream id) are sent again on a fresh
/// pick this many times, as gRPC's transparent retry does.
const TRANSPARENT_RETRIES: usize = 3;

pub(crate) fn to_tonic(status: &lb_core::Status) -> tonic::Status {
    tonic::Status::new(
        tonic::Code::from_i32(status.code() as i32),
        status.message(),
    )
}

/// One RPC, start to response headers; the response body carries on from there.
pub(crate) async fn call(
    core: Arc<Core>,
    request: http::Request<Body>,
) -> Result<http::Response<ResponseBody>, tonic::Status> {
    let call = CallGuard::start(core);
    let core = call.core();
    let (wait_for_ready, method_timeout) = {
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
        .or(wait_for_ready)
        .unwrap_or(core.wait_for_ready);
    // The call's deadline: the smaller of the caller's `grpc-timeout` and the
    // method config's `timeout`.
    let timeout = match (timeout::parse(request.headers()), method_timeout) {
        (Some(h), Some(m)) => Some(h.min(m)),
        (h, m) => h.or(m),
    };
    let Some(timeout) = timeout else {
        return send(call, request, wait_for_ready, None).await;
    };
    let at = Instant::now() + timeout;
    let state = core.state.subscribe();
    match tokio::time::timeout_at(at, send(call, request, wait_for_ready, Some(at))).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "deadline of {timeout:?} exceeded before the response headers (channel state {})",
            *state.borrow()
        ))),
    }
}

async fn send(
    call: CallGuard,
    request: http::Request<Body>,
    wait_for_ready: bool,
    deadline: Option<Instant>,
) -> Result<http::Response<ResponseBody>, tonic::Status> {
    let core = call.core().clone();
    let (mut head, body) = request.into_parts();
    // A unary request's body is ready at once: keep it, so a stream the server never
    // processed can be sent again.
    let mut body = replay::prefetch(body).await?;
    let mut retries = 0;
    loop {
        let picked = pick(&core, head.uri.path(), &head.headers, wait_for_ready).await?;
        let mut done = picked.on_done.map(DoneGuard::new);
        if let Some(at) = deadline {
            // The server learns the time left: what the header said, less the wait.
            let left = at.saturating_duration_since(Instant::now());
            head.headers.insert("grpc-timeout", timeout::encode(left));
        }
        let request = h2_request(&head, &picked.connected)?;
        let Some(outgoing) = body.outgoing() else {
            return Err(tonic::Status::internal("the request body was already sent"));
        };
        let opened = match stream::open(&picked.connected.sender, request, outgoing).await {
            Ok(opened) => opened,
            Err(NotOpened {
                error,
                body: unsent,
            }) => {
                // Nothing reached the server: always safe to send elsewhere.
                body.hand_back(unsent);
                let status = transport_status(&picked.address, &error);
                report(&mut done, &status);
                if error.is_go_away() {
                    picked.connected.drain();
                }
                if retries == TRANSPARENT_RETRIES {
                    return Err(status);
                }
                retries += 1;
                tracing::debug!(addr = %picked.address, error = %status.message(), "retrying an RPC whose stream could not be opened");
                continue;
            }
        };
        let active = ActiveStream::new(
            picked
                .connected
                .count_streams
                .then_some(&picked.connected.signals),
        );
        match opened.response.await {
            Ok(response) => {
                let (mut parts, recv) = response.into_parts();
                let done = done.map(|d| d.with_headers(&parts.headers));
                parts.extensions.insert(ServedBy(picked.address.clone()));
                let deadline = deadline.map(|at| Deadline {
                    sleep: Box::pin(tokio::time::sleep_until(at)),
                    timeout: at.saturating_duration_since(Instant::now()),
                });
                let held = Held {
                    handle: opened.handle,
                    _active: active,
                };
                let body = ResponseBody::new(recv, held, deadline, done, picked.address, call);
                return Ok(http::Response::from_parts(parts, body));
            }
            Err(error) => {
                let status = transport_status(&picked.address, &error);
                report(&mut done, &status);
                let signals = &picked.connected.signals;
                if error.is_go_away() || signals.last_goaway().is_some() {
                    picked.connected.drain();
                }
                let unprocessed = stream::unprocessed(&error, opened.stream_id, signals);
                if unprocessed && body.is_replayable() && retries < TRANSPARENT_RETRIES {
                    retries += 1;
                    tracing::debug!(addr = %picked.address, stream = opened.stream_id, error = %status.message(), "retrying an RPC the server never processed");
                    continue;
                }
                return Err(status);
            }
        }
    }
}

/// Tells the pick's completion callback how the attempt failed.
fn report(done: &mut Option<DoneGuard>, status: &tonic::Status) {
    if let Some(d) = done {
        let code = lb_core::Code::from_i32(status.code() as i32).unwrap_or(lb_core::Code::Unknown);
        d.finish(&lb_core::Status::new(code, status.message()), None);
    }
}

/// The request head for h2: the URI with the connection's scheme and authority.
fn h2_request(
    head: &http::request::Parts,
    connected: &Connected,
) -> Result<http::Request<()>, tonic::Status> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(connected.scheme.clone());
    parts.authority = Some(connected.authority.clone());
    parts.path_and_query = head.uri.path_and_query().cloned();
    let uri = Uri::from_parts(parts)
        .map_err(|e| tonic::Status::internal(format!("bad request URI: {e}")))?;
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = head.headers.clone();
    Ok(request)
}

/// The status an RPC fails with when its stream failed.
fn transport_status(address: &Address, error: &h2::Error) -> tonic::Status {
    tonic::Status::new(
        stream::status_code(error),
        format!("{address}: {}", error_chain(error)),
    )
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
            // A policy's picker must not take the caller down with it.
            let result = catch_unwind(AssertUnwindSafe(|| published.picker.pick(&info))).map_err(
                |payload| {
                    tonic::Status::internal(format!(
                        "the picker of load-balancing policy `{}` panicked: {}",
                        published.policy,
                        panic_message(payload.as_ref())
                    ))
                },
            )?;
            match result {
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
                    return Err(tonic::Status::cancelled("the channel is closing"));
                }
            }
        }
    }
}

/// An error and its sources, `: `-separated ("stream error received: ...").
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
