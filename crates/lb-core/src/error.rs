//! The one error type of `lb-core`.

use std::sync::Arc;

use crate::{ConnectivityState, IllegalTransition};

/// An error from any reporter outside this crate (a resolver, a transport), shared
/// cheaply between the channel, the balancer and the pickers it publishes.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its sources, `: `-separated ("stream error received: connection
/// reset"); a source whose text the message already ends with is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
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

/// Everything that can go wrong in `lb-core`. Each message names the input that was
/// wrong: the target, the JSON path in a service config, the policy, the transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subconn was moved between two states that the connectivity state machine
    /// does not connect (see [`ConnectivityState::can_transition_to`]).
    #[error("illegal connectivity state transition {from} -> {to}")]
    IllegalTransition {
        /// The state the subconn was in.
        from: ConnectivityState,
        /// The state that was asked for.
        to: ConnectivityState,
    },

    /// A target string could not be parsed.
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget {
        /// The target exactly as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No resolver is registered for the target's scheme, nor for the default scheme.
    #[error("no resolver is registered for scheme `{scheme}` (target `{target}`)")]
    UnknownScheme {
        /// The scheme that was looked up.
        scheme: String,
        /// The target it came from.
        target: String,
    },

    /// A service config is not valid JSON or does not follow gRPC's service config schema.
    #[error("invalid service config at `{path}`: {reason}")]
    ServiceConfig {
        /// A JSON path into the config, such as `methodConfig[0].timeout`.
        path: String,
        /// What is wrong there.
        reason: String,
    },

    /// A policy's own configuration (an entry of `loadBalancingConfig`) was rejected by
    /// its builder's `parse_config`.
    #[error("invalid config for load-balancing policy `{policy}` at `{path}`: {reason}")]
    LbConfig {
        /// The policy name.
        policy: String,
        /// A JSON path inside the policy's config object (`$` for the object itself).
        path: String,
        /// What is wrong there.
        reason: String,
    },

    /// None of the policies listed in a `loadBalancingConfig` is registered.
    #[error("no registered load-balancing policy among {names:?}")]
    NoSupportedPolicy {
        /// The names that were listed, in order.
        names: Vec<String>,
    },

    /// A policy was asked for by a name no builder is registered under.
    #[error("no load-balancing policy is registered as `{0}`")]
    UnknownPolicy(String),

    /// The channel is shutting down; no new subconns can be created.
    #[error("the channel is shut down")]
    Shutdown,

    /// The resolver produced an empty address list.
    #[error("the resolver produced no addresses")]
    NoAddresses,
}

impl From<IllegalTransition> for Error {
    fn from(e: IllegalTransition) -> Self {
        Error::IllegalTransition {
            from: e.from,
            to: e.to,
        }
    }
}

impl Error {
    /// Shorthand for [`Error::LbConfig`], for use in [`crate::BalancerBuilder::parse_config`].
    pub fn lb_config(
        policy: impl Into<String>,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::LbConfig {
            policy: policy.into(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_illegal_transition_keeps_its_states_as_an_error() {
        use ConnectivityState::{Idle, Ready};
        let e = Error::from(IllegalTransition {
            from: Idle,
            to: Ready,
        });
        assert_eq!(
            e,
            Error::IllegalTransition {
                from: Idle,
                to: Ready
            }
        );
        assert_eq!(
            e.to_string(),
            "illegal connectivity state transition IDLE -> READY"
        );
    }
}
