//! The channel's metrics, through the `metrics` facade (feature `metrics`, on by
//! default): the application installs a recorder (Prometheus, OpenTelemetry, ...) or
//! none. Handles are registered once per channel, so recording costs one call on a
//! handle, and nothing is allocated per RPC. Names and labels are documented in
//! `docs/channel.md`.

/// The names of the channel's metrics (labels in each item's doc; every metric also
/// has `grpc.target`).
pub mod names {
    /// Counter: attempts that ended, by `grpc.status`.
    pub const ATTEMPTS: &str = "grpc_lb.channel.attempts";
    /// Counter: picks that did not pick a subconn, by `result` (`queued`, `failed`,
    /// `dropped`).
    pub const PICKS: &str = "grpc_lb.channel.picks_not_served";
    /// Counter: subconn state changes, by `state`.
    pub const STATE_CHANGES: &str = "grpc_lb.subconn.state_changes";
    /// Counter: connection attempts that ended, by `outcome` (`succeeded`, `failed`).
    pub const CONNECTION_ATTEMPTS: &str = "grpc_lb.subconn.connection_attempts";
    /// Counter: resolver updates.
    pub const RESOLVER_UPDATES: &str = "grpc_lb.resolver.updates";
    /// Counter: resolver errors.
    pub const RESOLVER_ERRORS: &str = "grpc_lb.resolver.errors";
    /// Gauge: addresses in the resolver's last update.
    pub const RESOLVER_ADDRESSES: &str = "grpc_lb.resolver.addresses";
}

#[cfg(feature = "metrics")]
mod imp {
    use super::names;
    use lb_core::{Code, ConnectivityState};
    use metrics::{Counter, Gauge};

    /// One channel's metric handles.
    pub(crate) struct ChannelMetrics {
        attempts: Vec<Counter>,
        picks_queued: Counter,
        picks_failed: Counter,
        picks_dropped: Counter,
        state_changes: Vec<Counter>,
        connect_succeeded: Counter,
        connect_failed: Counter,
        resolver_updates: Counter,
        resolver_errors: Counter,
        resolver_addresses: Gauge,
    }

    impl ChannelMetrics {
        /// Handles labelled with `target`; noop handles when `enabled` is false.
        pub(crate) fn new(target: &str, enabled: bool) -> Self {
            let counter = |name: &'static str, labels: &[(&'static str, String)]| {
                if !enabled {
                    return Counter::noop();
                }
                let mut all = vec![("grpc.target", target.to_owned())];
                all.extend(labels.iter().cloned());
                metrics::counter!(name, &all)
            };
            Self {
                attempts: (0..=16)
                    .map(|c| {
                        let code = Code::from_i32(c).map_or("UNKNOWN", Code::name);
                        counter(names::ATTEMPTS, &[("grpc.status", code.to_owned())])
                    })
                    .collect(),
                picks_queued: counter(names::PICKS, &[("result", "queued".into())]),
                picks_failed: counter(names::PICKS, &[("result", "failed".into())]),
                picks_dropped: counter(names::PICKS, &[("result", "dropped".into())]),
                state_changes: ConnectivityState::ALL
                    .iter()
                    .map(|s| counter(names::STATE_CHANGES, &[("state", s.as_str().into())]))
                    .collect(),
                connect_succeeded: counter(
                    names::CONNECTION_ATTEMPTS,
                    &[("outcome", "succeeded".into())],
                ),
                connect_failed: counter(
                    names::CONNECTION_ATTEMPTS,
                    &[("outcome", "failed".into())],
                ),
                resolver_updates: counter(names::RESOLVER_UPDATES, &[]),
                resolver_errors: counter(names::RESOLVER_ERRORS, &[]),
                resolver_addresses: if enabled {
                    metrics::gauge!(names::RESOLVER_ADDRESSES, "grpc.target" => target.to_owned())
                } else {
                    Gauge::noop()
                },
            }
        }

        #[inline]
        pub(crate) fn attempt(&self, code: Code) {
            if let Some(c) = self.attempts.get(code as usize) {
                c.increment(1);
            }
        }

        pub(crate) fn pick_queued(&self) {
            self.picks_queued.increment(1);
        }

        pub(crate) fn pick_failed(&self) {
            self.picks_failed.increment(1);
        }

        pub(crate) fn pick_dropped(&self) {
            self.picks_dropped.increment(1);
        }

        /// A subconn entered the state at `index` in `ConnectivityState::ALL`.
        pub(crate) fn state_change(&self, index: usize) {
            if let Some(c) = self.state_changes.get(index) {
                c.increment(1);
            }
        }

        pub(crate) fn connection_attempt(&self, succeeded: bool) {
            if succeeded {
                self.connect_succeeded.increment(1);
            } else {
                self.connect_failed.increment(1);
            }
        }

        pub(crate) fn resolver_update(&self, addresses: usize) {
            self.resolver_updates.increment(1);
            self.resolver_addresses.set(addresses as f64);
        }

        pub(crate) fn resolver_error(&self) {
            self.resolver_errors.increment(1);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use lb_core::Code;

    /// Without the `metrics` feature: nothing is recorded.
    pub(crate) struct ChannelMetrics;

    impl ChannelMetrics {
        pub(crate) fn new(_: &str, _: bool) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn attempt(&self, _: Code) {}
        pub(crate) fn pick_queued(&self) {}
        pub(crate) fn pick_failed(&self) {}
        pub(crate) fn pick_dropped(&self) {}
        pub(crate) fn state_change(&self, _: usize) {}
        pub(crate) fn connection_attempt(&self, _: bool) {}
        pub(crate) fn resolver_update(&self, _: usize) {}
        pub(crate) fn resolver_error(&self) {}
    }
}

pub(crate) use imp::ChannelMetrics;
