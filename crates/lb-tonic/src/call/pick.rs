//! The pick: ask the current picker (one atomic load, no lock) until it names a
//! connected subconn, waiting for the next picker when it queues (or fails, for
//! wait-for-ready RPCs).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use lb_core::{Address, Attributes, Callbacks, ConnectivityState, PickInfo, PickResult};

use super::body::DoneGuard;
use super::to_tonic;
use crate::control::{Core, panic_message};
use crate::transport::{Connected, Transport};

/// A subconn the pick named, connected.
pub(super) struct Picked {
    pub(super) connected: Arc<Connected>,
    pub(super) address: Address,
    pub(super) on_done: Callbacks,
}

/// Why a pick ended an attempt.
pub(super) struct PickError {
    pub(super) status: tonic::Status,
    /// The picker dropped the RPC (no retry applies).
    pub(super) dropped: bool,
}

impl From<tonic::Status> for PickError {
    fn from(status: tonic::Status) -> Self {
        Self {
            status,
            dropped: false,
        }
    }
}

/// Asks the current picker until it names a connected subconn, waiting for new
/// pickers when it queues (or fails, for wait-for-ready RPCs).
pub(super) async fn pick(
    core: &Core,
    method: &str,
    headers: &http::HeaderMap,
    attributes: Option<&Attributes>,
    wait_for_ready: bool,
) -> Result<Picked, PickError> {
    let mut info = PickInfo::new(method).with_headers(headers);
    if let Some(attributes) = attributes {
        info = info.with_attributes(attributes);
    }
    let mut waiter = None;
    loop {
        let failed = {
            let published = core.published.load();
            // A policy's picker must not take the caller down with it.
            let result = catch_unwind(AssertUnwindSafe(|| published.picker.pick(&info)));
            match result {
                Err(payload) => Some(PickError::from(tonic::Status::internal(format!(
                    "the picker of load-balancing policy `{}` panicked: {}",
                    published.policy,
                    panic_message(payload.as_ref())
                )))),
                Ok(PickResult::Pick(pick)) => {
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
                            if let Some(mut done) = DoneGuard::new(pick.on_done, None, None) {
                                done.finish(
                                    &lb_core::Status::unavailable(
                                        "the picked subconn is not connected",
                                    ),
                                    None,
                                );
                            }
                            None
                        }
                    }
                }
                Ok(result @ (PickResult::Queue | PickResult::Idle)) => {
                    if waiter.is_none() {
                        core.stats.metrics.pick_queued();
                    }
                    // An idle policy anywhere in the tree asks (`Idle`); an idle
                    // channel, or a policy that queues while it reports `Idle`,
                    // is asked all the same.
                    if matches!(result, PickResult::Idle)
                        || published.state == ConnectivityState::Idle
                    {
                        core.request_exit_idle();
                    }
                    None
                }
                Ok(PickResult::Fail(status)) => {
                    if wait_for_ready {
                        if waiter.is_none() {
                            core.stats.metrics.pick_queued();
                        }
                        None
                    } else {
                        core.stats.metrics.pick_failed();
                        Some(PickError::from(to_tonic(&status)))
                    }
                }
                Ok(PickResult::Drop(status)) => {
                    core.stats.metrics.pick_dropped();
                    Some(PickError {
                        status: to_tonic(&status),
                        dropped: true,
                    })
                }
            }
        };
        if let Some(error) = failed {
            // An RPC that fails at once must not let a caller's retry loop starve the
            // runtime: count it against the task's cooperative budget.
            tokio::task::coop::consume_budget().await;
            return Err(error);
        }
        match &mut waiter {
            // Subscribe, then pick once more: no publication can slip in between.
            None => waiter = Some(core.picker_version.subscribe()),
            Some(rx) => {
                if rx.changed().await.is_err() {
                    return Err(tonic::Status::cancelled("the channel is closing").into());
                }
            }
        }
    }
}
