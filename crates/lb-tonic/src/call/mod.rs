//! The per-RPC path: pick a subconn from the current picker (no lock), wait when told
//! to, open an HTTP/2 stream on the subconn's connection, report the outcome. The
//! call's deadline bounds all of it, the response stream included.
//!
//! A call is one or more attempts (gRFC A6): transparent retries of attempts no server
//! processed, then the method's retry policy (one attempt after another, with
//! backoff) or hedging policy (attempts overlapping, the first answer wins). Each
//! attempt picks again. The call commits to an attempt when its response headers
//! arrive; after that nothing is retried.
//!
//! * `mod.rs`: the call and its attempts (retries, hedging, transparent retries).
//! * `pick.rs`: the pick, and waiting for the next picker.
//! * `retry.rs`: gRFC A6's decisions between attempts (codes, backoff, pushback).
//! * `replay.rs`: request bodies kept so that another attempt can send them again.
//! * `headers.rs`: the request headers each attempt sends.
//! * `body.rs`: the response body, bounded by the deadline, and the pick's
//!   completion callbacks.
//! * `timeout.rs`: the `grpc-timeout` header; `guard.rs`: the call's place in the
//!   channel's activity (idleness).
//!
//! The call path reads what the control task publishes (`crate::control::Core`) and
//! sends on the transport; neither of them uses it.

mod body;
mod guard;
mod headers;
mod pick;
mod replay;
mod retry;
mod timeout;

pub use body::ResponseBody;
pub(crate) use guard::CallGuard;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::uri::Uri;
use lb_core::error_chain;
use lb_core::routing::RpcInfo;
use lb_core::service_config::{HedgingPolicy, MethodConfig};
use lb_core::{Address, Attributes, ServiceConfig};
use tokio::time::Instant;
use tonic::body::Body;

use body::{Deadline, DoneGuard, ThrottleReport};
use headers::AttemptHeaders;
use pick::{PickError, pick};
use replay::{Cursor, Prefetched};
use retry::{Policy, Pushback};

use crate::control::Core;
use crate::throttle::Throttle;
use crate::transport::{self, ActiveStream, Connected, Held, NotOpened, Outgoing};

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

/// Response extension: which attempt of the call produced this response.
///
/// ```no_run
/// # async fn f(response: tonic::Response<()>) {
/// use lb_tonic::Attempt;
/// if let Some(a) = response.extensions().get::<Attempt>() {
///     println!("attempt {} (after {} transparent retries)", a.number, a.transparent_retries);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt, 2 for the first retry or hedge, and so on.
    pub number: u32,
    /// Times the call was sent again because a server never processed it
    /// (transparent retries), which are not counted in `number`.
    pub transparent_retries: u32,
}

/// Why an attempt that failed was never processed by a server application, which
/// lets it go again at once (gRFC A6's transparent retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unprocessed {
    /// A server may have processed it.
    No,
    /// It never left the client (no stream could be opened): it may go again, on
    /// another pick, as often as the deadline allows.
    NeverSent,
    /// It reached a server that did not process it (`REFUSED_STREAM`, or above a
    /// GOAWAY's last stream id): it may go again once.
    Refused,
}

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
    // A malformed `grpc-timeout` fails the call: it cannot be honoured, and sending
    // the RPC without its deadline would hide the caller's mistake.
    let header_timeout =
        timeout::parse(request.headers()).map_err(|e| tonic::Status::internal(e.to_string()))?;
    // The caller's deadline runs from here, through any wait below (as a Go
    // context's deadline is absolute).
    let caller = header_timeout.map(|timeout| CallDeadline {
        at: Instant::now() + timeout,
        timeout,
    });
    // Before the resolver first reports, its config (and config selector) is not
    // known yet: wait for it, within the caller's deadline.
    if !core.is_resolved() {
        // An idle channel has no resolver: this RPC brings it back.
        core.request_exit_idle();
        let resolved = core.resolved();
        match caller {
            Some(CallDeadline { at, timeout }) => {
                tokio::time::timeout_at(at, resolved).await.map_err(|_| {
                    tonic::Status::deadline_exceeded(format!(
                        "deadline of {timeout:?} exceeded while waiting for name resolution"
                    ))
                })?
            }
            None => resolved.await,
        }
    }
    // A resolver that has only failed so far gave no config: a wait-for-ready RPC
    // waits for one (its config selector may be what routes it), within the caller's
    // deadline; the others go on, and fail with the resolver's error.
    if !core.is_configured()
        && request
            .extensions()
            .get::<WaitForReady>()
            .map_or(core.wait_for_ready, |w| w.0)
    {
        let configured = core.configured();
        match caller {
            Some(CallDeadline { at, timeout }) => {
                tokio::time::timeout_at(at, configured).await.map_err(|_| {
                    tonic::Status::deadline_exceeded(format!(
                        "deadline of {timeout:?} exceeded while waiting for name resolution"
                    ))
                })?
            }
            None => configured.await,
        }
    }
    let (wait_for_ready, method_timeout, config, attributes) = {
        let config = core.config.load();
        // With a config selector (gRFC A31), it decides the method config and the
        // attributes the picks see; else the service config's method config applies.
        let selected = match &config.selector {
            None => None,
            Some(selector) => {
                let rpc = RpcInfo::new(request.uri().path(), request.headers());
                // A panicking selector fails this RPC, not the caller's task.
                let selected = catch_unwind(AssertUnwindSafe(|| selector.select(&rpc)))
                    .map_err(|_| tonic::Status::internal("the config selector panicked"))?;
                Some(selected.map_err(|s| to_tonic(&s))?)
            }
        };
        let mc = match &selected {
            Some(rpc) => rpc.method_config.as_deref(),
            None => config.service.method_config(request.uri().path()),
        };
        let wait_for_ready = request
            .extensions()
            .get::<WaitForReady>()
            .map(|w| w.0)
            .or(mc.and_then(|m| m.wait_for_ready))
            .unwrap_or(core.wait_for_ready);
        let method_timeout = mc.and_then(|m| m.timeout);
        // Only a method with a policy keeps its config (one reference count).
        let policied = core.retries
            && mc.is_some_and(|m| m.retry_policy.is_some() || m.hedging_policy.is_some());
        let kept = policied.then(|| match &selected {
            Some(rpc) => KeptConfig::Selected(rpc.method_config.clone()),
            None => KeptConfig::Service(config.service.clone()),
        });
        (
            wait_for_ready,
            method_timeout,
            kept,
            selected.map(|rpc| rpc.attributes),
        )
    };
    let attempts = AtomicU32::new(0);
    // The call's deadline: the sooner of the caller's and the method config's
    // `timeout` (which, as in grpc-go, runs from when the config is known).
    let deadline = match (caller, method_timeout) {
        (caller, None) => caller,
        (caller, Some(timeout)) => {
            let method = CallDeadline {
                at: Instant::now() + timeout,
                timeout,
            };
            Some(caller.filter(|c| c.at <= method.at).unwrap_or(method))
        }
    };
    let state = deadline.map(|_| core.state.subscribe());
    let run = Run {
        core: core.clone(),
        wait_for_ready,
        deadline,
        attempts: &attempts,
        transparent: AtomicU32::new(0),
        attributes,
    };
    let policied = config.is_some();
    let send = run.send(call, request, config);
    let (Some(CallDeadline { at, timeout }), Some(state)) = (deadline, state) else {
        return send.await;
    };
    match tokio::time::timeout_at(at, send).await {
        Ok(result) => result,
        Err(_) => {
            let made = attempts.load(Ordering::Relaxed);
            let attempts = match (made, policied) {
                (0, _) | (_, false) => String::new(),
                (1, true) => " after 1 attempt".to_owned(),
                (n, true) => format!(" after {n} attempts"),
            };
            Err(tonic::Status::deadline_exceeded(format!(
                "deadline of {timeout:?} exceeded{attempts} before the response headers (channel state {})",
                *state.borrow()
            )))
        }
    }
}

/// A call's deadline: when, and the timeout it came from.
#[derive(Debug, Clone, Copy)]
struct CallDeadline {
    at: Instant,
    timeout: std::time::Duration,
}

/// One call's attempts.
struct Run<'a> {
    core: Arc<Core>,
    wait_for_ready: bool,
    deadline: Option<CallDeadline>,
    /// Attempts made (transparent retries excluded), for the deadline's message.
    attempts: &'a AtomicU32,
    /// Transparent retries so far.
    transparent: AtomicU32,
    /// What the config selector gave this RPC's picks, if there is a selector.
    attributes: Option<Attributes>,
}

/// The method config a call with a retry or hedging policy keeps for its attempts.
enum KeptConfig {
    /// The service config's, found again by the method's path.
    Service(Arc<ServiceConfig>),
    /// The one the config selector chose.
    Selected(Option<Arc<MethodConfig>>),
}

impl KeptConfig {
    fn method_config(&self, path: &str) -> Option<&MethodConfig> {
        match self {
            KeptConfig::Service(config) => config.method_config(path),
            KeptConfig::Selected(config) => config.as_deref(),
        }
    }
}

/// An attempt's response head, before the call decides what to do with it.
struct Answered {
    parts: http::response::Parts,
    recv: h2::RecvStream,
    held: Held,
    done: Option<DoneGuard>,
    address: Address,
}

/// How one attempt ended.
enum Outcome {
    /// Response headers: the call commits to this attempt.
    Headers(Answered),
    /// It failed: a trailers-only response (`answer`), a non-gRPC response, a stream
    /// error, or a failed pick. `unprocessed`: whether and how no server application
    /// saw it (it may go again at once).
    Failed {
        status: tonic::Status,
        pushback: Pushback,
        unprocessed: Unprocessed,
        /// A pick dropped it (load shedding): no retry.
        dropped: bool,
        answer: Option<Answered>,
    },
}

impl Outcome {
    fn failed(status: tonic::Status, unprocessed: Unprocessed) -> Self {
        Outcome::Failed {
            status,
            pushback: Pushback::None,
            unprocessed,
            dropped: false,
            answer: None,
        }
    }
}

/// The request, as every attempt sends it.
struct Request {
    /// The head, its headers taken out into `headers`.
    head: http::request::Parts,
    headers: AttemptHeaders,
    body: Prefetched,
}

impl Request {
    /// The body for attempt `id`, if it can still be sent (a streaming body whose call
    /// committed to another attempt cannot).
    fn outgoing(&self, id: u32) -> Option<Outgoing<Cursor>> {
        match &self.body {
            Prefetched::Complete { data, trailers, .. } => Some(Outgoing::Complete {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            Prefetched::Streaming(recorder) => recorder.cursor(id).map(Outgoing::Piped),
        }
    }

    /// Whether another attempt may replay the body (gRFC A6: not once the call has
    /// committed, nor for a body the buffer had no room for).
    fn replayable(&self) -> bool {
        match &self.body {
            Prefetched::Complete { reservation, .. } => reservation.is_some(),
            Prefetched::Streaming(recorder) => recorder.owner().is_none(),
        }
    }

    /// The call commits to attempt `id`: its body need not be kept for others.
    fn commit(&self, id: u32) {
        if let Prefetched::Streaming(recorder) = &self.body {
            recorder.commit(id);
        }
    }

    /// Whether the call has committed to an attempt other than `id` (which was then
    /// cancelled, not failed).
    fn owner_is_other_than(&self, id: u32) -> bool {
        match &self.body {
            Prefetched::Complete { .. } => false,
            Prefetched::Streaming(recorder) => recorder.owner().is_some_and(|o| o != id),
        }
    }
}

impl Run<'_> {
    async fn send(
        self,
        call: CallGuard,
        request: http::Request<Body>,
        config: Option<KeptConfig>,
    ) -> Result<http::Response<ResponseBody>, tonic::Status> {
        let (mut head, body) = request.into_parts();
        let headers = AttemptHeaders::new(std::mem::take(&mut head.headers));
        let method_config = config
            .as_ref()
            .and_then(|c| c.method_config(head.uri.path()));
        let policy = match method_config {
            Some(mc) => match (&mc.retry_policy, &mc.hedging_policy) {
                (Some(r), _) => Policy::Retry(r),
                (None, Some(h)) => Policy::Hedge(h),
                (None, None) => Policy::None,
            },
            None => Policy::None,
        };
        let throttle = self.core.throttle.load_full();
        // A unary request's body is ready at once and kept whole; a stream is
        // recorded as it is sent, so that another attempt can replay it.
        let body = replay::prefetch(body, &self.core.budget).await?;
        let mut request = Request {
            head,
            headers,
            body,
        };
        let (answer, number) = match policy {
            Policy::Hedge(h) => Box::pin(self.hedge(&request, h, throttle.as_deref())).await?,
            _ => self.retry(&request, policy, throttle.as_deref()).await?,
        };
        // The request's extensions (tonic's carry the method) are not needed any
        // more: their map, emptied, holds the response's.
        let mut extensions = std::mem::take(&mut request.head.extensions);
        extensions.clear();
        Ok(self.respond(answer, number, call, policy, throttle, extensions))
    }

    /// Attempts one after another: transparent retries, and the retry policy's.
    async fn retry(
        &self,
        request: &Request,
        policy: Policy<'_>,
        throttle: Option<&Throttle>,
    ) -> Result<(Answered, u32), tonic::Status> {
        let mut number = 0;
        let mut backoff_step = 0;
        loop {
            self.attempts.store(number + 1, Ordering::Relaxed);
            let id = number + self.transparent.load(Ordering::Relaxed);
            let Some(outgoing) = request.outgoing(id) else {
                return Err(tonic::Status::internal(
                    "the request body can no longer be sent",
                ));
            };
            let outcome = self.attempt(request, outgoing, number).await;
            let (status, pushback, unprocessed, dropped, answer) = match outcome {
                Outcome::Headers(answer) => {
                    request.commit(id);
                    return Ok((answer, number + 1));
                }
                Outcome::Failed {
                    status,
                    pushback,
                    unprocessed,
                    dropped,
                    answer,
                } => (status, pushback, unprocessed, dropped, answer),
            };
            if status.code() == tonic::Code::Ok
                && let Some(answer) = answer
            {
                return Ok((answer, number + 1)); // trailers-only success
            }
            let first = number == 0 && self.transparent.load(Ordering::Relaxed) == 0;
            if self.transparent_retry(request, unprocessed, first) {
                tracing::debug!(error = %status.message(), ?unprocessed, "resending an RPC no server processed");
                // An attempt that never left fails at once: let the runtime run
                // between tries (the next pick waits for a new picker if need be).
                tokio::task::coop::consume_budget().await;
                continue;
            }
            let retryable = policy.retryable(status.code()) && !dropped;
            if let Some(t) = throttle
                && (retryable || pushback == Pushback::Stop)
            {
                t.failure();
            }
            let again = retryable
                && pushback != Pushback::Stop
                && number + 1 < policy.max_attempts()
                && throttle.is_none_or(Throttle::allows)
                && request.replayable();
            let (true, Policy::Retry(retry)) = (again, policy) else {
                return finish(status, answer, number + 1);
            };
            let delay = match pushback {
                Pushback::After(d) => {
                    // gRFC A6: after a pushback the backoff starts over.
                    backoff_step = 0;
                    d
                }
                _ => {
                    backoff_step += 1;
                    retry::backoff(retry, backoff_step)
                }
            };
            tracing::debug!(attempt = number + 1, code = ?status.code(), ?delay, "retrying");
            drop(answer);
            tokio::time::sleep(delay).await;
            number += 1;
        }
    }

    /// Hedging: the next attempt goes out after `hedgingDelay` unless one has
    /// answered; the first response headers win and the others are cancelled.
    async fn hedge(
        &self,
        request: &Request,
        policy: &HedgingPolicy,
        throttle: Option<&Throttle>,
    ) -> Result<(Answered, u32), tonic::Status> {
        let as_policy = Policy::Hedge(policy);
        let mut running = FuturesUnordered::new();
        let mut started: u32 = 0;
        let mut next_at = Instant::now();
        let mut stop = false;
        let mut last_failure: Option<(tonic::Status, Option<Answered>)> = None;
        let mut ids: u32 = 0;
        loop {
            // The first attempt always goes; later ones only while the body can be
            // replayed.
            let can_start =
                !stop && started < policy.max_attempts && (started == 0 || request.replayable());
            tokio::select! {
                Some((id, number, outcome)) = running.next(), if !running.is_empty() => {
                    match outcome {
                        Outcome::Headers(answer) => {
                            request.commit(id);
                            drop(running); // cancels every other attempt
                            return Ok((answer, number + 1));
                        }
                        Outcome::Failed { status, pushback, unprocessed, dropped, answer } => {
                            if status.code() == tonic::Code::Ok && let Some(answer) = answer {
                                drop(running);
                                return Ok((answer, number + 1));
                            }
                            if request.owner_is_other_than(id) {
                                // Cancelled because the call committed elsewhere.
                            } else if self.transparent_retry(
                                request,
                                unprocessed,
                                started == 1 && self.transparent.load(Ordering::Relaxed) == 0,
                            ) {
                                ids += 1;
                                if let Some(outgoing) = request.outgoing(ids) {
                                    running.push(self.numbered(request, outgoing, ids, number));
                                }
                            } else {
                                let non_fatal = as_policy.retryable(status.code()) && !dropped;
                                if let Some(t) = throttle
                                    && (non_fatal || pushback == Pushback::Stop)
                                {
                                    t.failure();
                                }
                                if !non_fatal {
                                    // A fatal status ends the call; the others are cancelled.
                                    drop(running);
                                    return finish(status, answer, number + 1);
                                }
                                match pushback {
                                    Pushback::Stop => stop = true,
                                    Pushback::After(d) => next_at = Instant::now() + d,
                                    // Non-fatal: the next hedge goes at once.
                                    Pushback::None => next_at = Instant::now(),
                                }
                                last_failure = Some((status, answer));
                            }
                        }
                    }
                    if running.is_empty() && (stop || started >= policy.max_attempts || !request.replayable()) {
                        let (status, answer) = last_failure.take().unwrap_or_else(|| {
                            (tonic::Status::unavailable("every hedged attempt was cancelled"), None)
                        });
                        return finish(status, answer, started);
                    }
                }
                () = tokio::time::sleep_until(next_at), if can_start => {
                    if started > 0 && throttle.is_some_and(|t| !t.allows()) {
                        // Throttled: no more hedges; what is out may still answer.
                        stop = true;
                        if running.is_empty() {
                            let (status, answer) = last_failure.take().unwrap_or_else(|| {
                                (tonic::Status::unavailable("hedging is throttled"), None)
                            });
                            return finish(status, answer, started);
                        }
                        continue;
                    }
                    let id = if started == 0 { 0 } else { ids + 1 };
                    ids = id;
                    let Some(outgoing) = request.outgoing(id) else {
                        stop = true;
                        continue;
                    };
                    running.push(self.numbered(request, outgoing, id, started));
                    started += 1;
                    self.attempts.store(started, Ordering::Relaxed);
                    next_at = Instant::now() + policy.hedging_delay;
                }
            }
        }
    }

    /// Whether an attempt no server processed may go again at once (and counts it),
    /// as grpc-go decides: one that never left the client, always (the deadline
    /// bounds the call); one a server refused, only if it was the call's very first
    /// (`first`: no retry, hedge or transparent retry before it), so once at most.
    fn transparent_retry(&self, request: &Request, unprocessed: Unprocessed, first: bool) -> bool {
        let replayable = match &request.body {
            // Held for the whole call, within the buffer or not.
            Prefetched::Complete { .. } => true,
            Prefetched::Streaming(recorder) => recorder.owner().is_none(),
        };
        let allowed = replayable
            && match unprocessed {
                Unprocessed::No => false,
                Unprocessed::NeverSent => true,
                Unprocessed::Refused => first,
            };
        if allowed {
            self.transparent.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// An attempt that reports its cursor id and number with its outcome.
    async fn numbered(
        &self,
        request: &Request,
        outgoing: Outgoing<Cursor>,
        id: u32,
        number: u32,
    ) -> (u32, u32, Outcome) {
        (id, number, self.attempt(request, outgoing, number).await)
    }

    /// One attempt: pick a subconn, open a stream, wait for the response head.
    async fn attempt(
        &self,
        request: &Request,
        outgoing: Outgoing<Cursor>,
        previous: u32,
    ) -> Outcome {
        let core = &self.core;
        let head = &request.head;
        let headers = request.headers.take();
        let picked = match pick(
            core,
            head.uri.path(),
            &headers,
            self.attributes.as_ref(),
            self.wait_for_ready,
        )
        .await
        {
            Ok(picked) => picked,
            Err(PickError { status, dropped }) => {
                return Outcome::Failed {
                    status,
                    pushback: Pushback::None,
                    unprocessed: Unprocessed::No,
                    dropped,
                    answer: None,
                };
            }
        };
        let mut done = DoneGuard::new(
            picked.on_done,
            picked.connected.load_watch.per_call(),
            picked.connected.stats.clone(),
        );
        let h2_head = match h2_request(
            head,
            headers,
            &picked.connected,
            previous,
            self.deadline.map(|d| d.at),
            &self.core.transport.user_agent,
        ) {
            Ok(h) => h,
            Err(status) => return Outcome::failed(status, Unprocessed::No),
        };
        let opened = match transport::open(
            &picked.connected.sender,
            h2_head,
            outgoing,
            done.as_ref().and_then(DoneGuard::message_counts),
        )
        .await
        {
            Ok(opened) => opened,
            Err(NotOpened { error }) => {
                // Nothing reached the server. A connection that cannot open a stream
                // (closing, gone, or out of stream ids) takes no more RPCs.
                let status = transport_status(&picked.address, &error);
                report(&mut done, &status);
                if error.is_go_away() || error.is_io() || transport::is_local(&error) {
                    picked.connected.drain();
                }
                return Outcome::failed(status, Unprocessed::NeverSent);
            }
        };
        if let Some(done) = &mut done {
            done.stream_opened();
        }
        if opened.stream_id > core.transport.drain_after_stream_id.saturating_sub(2) {
            // The next id would pass grpc-go's limit: new RPCs go to a new connection
            // while this one finishes what it has.
            tracing::debug!(addr = %picked.address, stream_id = opened.stream_id, "the connection is running out of stream ids; draining it");
            picked.connected.drain();
        }
        let active = ActiveStream::new(
            picked
                .connected
                .count_streams
                .then_some(&picked.connected.signals),
        );
        match opened.response.await {
            Ok(response) => {
                let (parts, recv) = response.into_parts();
                if let Some(status) = non_grpc_status(&parts) {
                    // Not a gRPC answer (a proxy's 503, an HTML page): the stream is
                    // over and the call not committed, as grpc-go treats it.
                    let mut handle = opened.handle;
                    handle.cancel();
                    drop(recv);
                    report(&mut done, &status);
                    return Outcome::failed(status, Unprocessed::No);
                }
                let done = done.map(|d| d.with_headers(&parts.headers));
                let answer = Answered {
                    recv,
                    held: Held {
                        handle: opened.handle,
                        _active: active,
                    },
                    done,
                    address: picked.address,
                    parts,
                };
                match trailers_only_status(&answer.parts.headers) {
                    None => Outcome::Headers(answer),
                    Some(status) => Outcome::Failed {
                        pushback: retry::pushback(Some(&answer.parts.headers)),
                        status,
                        unprocessed: Unprocessed::No,
                        dropped: false,
                        answer: Some(answer),
                    },
                }
            }
            Err(error) => {
                let status = transport_status(&picked.address, &error);
                report(&mut done, &status);
                let signals = &picked.connected.signals;
                if error.is_go_away() || signals.last_goaway().is_some() {
                    picked.connected.drain();
                }
                let unprocessed = if transport::unprocessed(&error, opened.stream_id, signals) {
                    Unprocessed::Refused
                } else {
                    Unprocessed::No
                };
                Outcome::failed(status, unprocessed)
            }
        }
    }

    /// The committed attempt's response, with its deadline, extensions and the
    /// throttle's success count.
    fn respond(
        &self,
        answer: Answered,
        number: u32,
        call: CallGuard,
        policy: Policy<'_>,
        throttle: Option<Arc<Throttle>>,
        mut extensions: http::Extensions,
    ) -> http::Response<ResponseBody> {
        let Answered {
            mut parts,
            recv,
            held,
            done,
            address,
        } = answer;
        extensions.extend(std::mem::take(&mut parts.extensions));
        parts.extensions = extensions;
        parts.extensions.insert(ServedBy(address.clone()));
        parts.extensions.insert(Attempt {
            number,
            transparent_retries: self.transparent.load(Ordering::Relaxed),
        });
        let deadline = self.deadline.map(|d| Deadline {
            sleep: Box::pin(tokio::time::sleep_until(d.at)),
            timeout: d.timeout,
            started: d.at.checked_sub(d.timeout).unwrap_or(d.at),
        });
        // The throttle counts the call's end: a trailers-only answer now (its failure,
        // if retryable, was counted when it was judged), else at the trailers.
        let trailers_only = body::code_from(&parts.headers);
        let mut call = call;
        if let Some(code) = trailers_only {
            call.ended(code == lb_core::Code::Ok);
        }
        let report = match (throttle, trailers_only) {
            (Some(t), Some(code)) => {
                if code == lb_core::Code::Ok {
                    t.success();
                }
                None
            }
            (Some(t), None) => Some(ThrottleReport {
                throttle: t,
                failures: policy.code_mask(),
            }),
            (None, _) => None,
        };
        let body = ResponseBody::new(recv, held, deadline, done, address, call, report);
        http::Response::from_parts(parts, body)
    }
}

/// The call's end after its last attempt failed: the trailers-only response as the
/// server sent it (tonic reads its status, details and metadata), or the status.
fn finish(
    status: tonic::Status,
    answer: Option<Answered>,
    number: u32,
) -> Result<(Answered, u32), tonic::Status> {
    match answer {
        Some(answer) => Ok((answer, number)),
        None => Err(status),
    }
}

/// The status of a response that is not gRPC's (gRPC over HTTP/2: `:status` 200 and
/// an `application/grpc` content type), as grpc-go maps it: the HTTP status decides
/// the code (502, 503, 504 and 429 are `UNAVAILABLE`), and the message says what was
/// wrong.
fn non_grpc_status(parts: &http::response::Parts) -> Option<tonic::Status> {
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let grpc_content = content_type.as_deref().is_some_and(is_grpc_content_type);
    if parts.status == http::StatusCode::OK && grpc_content {
        return None;
    }
    let mut errors = Vec::with_capacity(2);
    if parts.status != http::StatusCode::OK {
        errors.push(format!(
            "unexpected HTTP status code received from server: {} ({})",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("unknown")
        ));
    }
    match &content_type {
        None => errors.push("malformed header: missing HTTP content-type".to_owned()),
        Some(t) if !grpc_content => {
            errors.push(format!("transport: received unexpected content-type {t:?}"));
        }
        Some(_) => {}
    }
    let code = match parts.status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    Some(tonic::Status::new(code, errors.join("; ")))
}

/// `application/grpc`, alone or with a `+subtype` or `;parameters`.
fn is_grpc_content_type(value: &str) -> bool {
    const GRPC: &str = "application/grpc";
    value
        .get(..GRPC.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(GRPC))
        && matches!(value.as_bytes().get(GRPC.len()), None | Some(b'+' | b';'))
}

/// The status of a trailers-only response (its headers carry `grpc-status`).
fn trailers_only_status(headers: &http::HeaderMap) -> Option<tonic::Status> {
    headers.get("grpc-status")?;
    tonic::Status::from_header_map(headers)
}

/// Tells the pick's completion callback how the attempt failed.
fn report(done: &mut Option<DoneGuard>, status: &tonic::Status) {
    if let Some(d) = done {
        let code = lb_core::Code::from_i32(status.code() as i32).unwrap_or(lb_core::Code::Unknown);
        d.finish(&lb_core::Status::new(code, status.message()), None);
    }
}

/// The request head for h2: the URI with the connection's scheme and authority, the
/// attempt's headers with the channel's user agent, the time left, and the attempt
/// count.
fn h2_request(
    head: &http::request::Parts,
    mut headers: http::HeaderMap,
    connected: &Connected,
    previous: u32,
    deadline: Option<Instant>,
    user_agent: &http::HeaderValue,
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
    // The channel's user agent, after the request's own if it has one (as tonic's).
    let agent = match headers.get(http::header::USER_AGENT) {
        None => user_agent.clone(),
        Some(own) => {
            let mut both = own.as_bytes().to_vec();
            both.push(b' ');
            both.extend_from_slice(user_agent.as_bytes());
            http::HeaderValue::from_bytes(&both).unwrap_or_else(|_| user_agent.clone())
        }
    };
    headers.insert(http::header::USER_AGENT, agent);
    if let Some(at) = deadline {
        // The server learns the time left: what the header said, less the wait.
        let left = at.saturating_duration_since(Instant::now());
        headers.insert("grpc-timeout", timeout::encode(left));
    }
    if previous > 0 {
        headers.insert(
            "grpc-previous-rpc-attempts",
            http::HeaderValue::from(previous),
        );
    }
    *request.headers_mut() = headers;
    Ok(request)
}

/// The status an RPC fails with when its stream failed.
fn transport_status(address: &Address, error: &h2::Error) -> tonic::Status {
    tonic::Status::new(
        transport::status_code(error),
        format!("{address}: {}", error_chain(error)),
    )
}
