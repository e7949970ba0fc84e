//! Connectivity states and the one place their legal transitions are defined.

use std::fmt;

/// The connectivity state of a subconn, and the aggregate state a balancer reports
/// for the whole channel.
///
/// A subconn starts `Idle` and only leaves it when asked to connect. Its legal moves
/// are checked by [`ConnectivityState::can_transition_to`] and enforced by
/// [`StateTracker`]; the channel's aggregate state is whatever the balancer publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectivityState {
    /// Not connected and not trying to be; waits for [`crate::SubConn::connect`].
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected; RPCs can be sent.
    Ready,
    /// The last attempt failed; the subconn waits out its backoff.
    TransientFailure,
    /// Closed for good. No further transition is possible.
    Shutdown,
}

impl ConnectivityState {
    /// All states, in declaration order.
    pub const ALL: [ConnectivityState; 5] = [
        ConnectivityState::Idle,
        ConnectivityState::Connecting,
        ConnectivityState::Ready,
        ConnectivityState::TransientFailure,
        ConnectivityState::Shutdown,
    ];

    /// Whether a subconn may move from `self` to `next`.
    ///
    /// The machine follows gRPC's subchannel semantics (grpc-go 1.64, gRFC A62):
    ///
    /// | from | to |
    /// |---|---|
    /// | Idle | Connecting, Shutdown |
    /// | Connecting | Ready, TransientFailure, Shutdown |
    /// | Ready | Idle (the connection closed), TransientFailure (its health check failed), Shutdown |
    /// | TransientFailure | Idle (backoff over), Connecting (retrying at once), Ready (its health check passes again), Shutdown |
    /// | Shutdown | nothing |
    ///
    /// Staying in the same state is not a transition and is rejected too.
    pub const fn can_transition_to(self, next: ConnectivityState) -> bool {
        use ConnectivityState::*;
        matches!(
            (self, next),
            (Idle, Connecting)
                | (Connecting, Ready)
                | (Connecting, TransientFailure)
                | (Ready, Idle)
                | (Ready, TransientFailure)
                | (TransientFailure, Idle)
                | (TransientFailure, Connecting)
                | (TransientFailure, Ready)
                | (Idle | Connecting | Ready | TransientFailure, Shutdown)
        )
    }

    /// The gRPC name of the state (`IDLE`, `CONNECTING`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectivityState::Idle => "IDLE",
            ConnectivityState::Connecting => "CONNECTING",
            ConnectivityState::Ready => "READY",
            ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
            ConnectivityState::Shutdown => "SHUTDOWN",
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move the state machine does not allow ([`ConnectivityState::can_transition_to`]);
/// it converts into [`crate::Error::IllegalTransition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal connectivity state transition {from} -> {to}")]
pub struct IllegalTransition {
    /// The state the subconn was in.
    pub from: ConnectivityState,
    /// The state that was asked for.
    pub to: ConnectivityState,
}

/// The state of one subconn, guarded by the transition rules.
///
/// Transports keep one per subconn and move it only through [`StateTracker::transition`],
/// so an illegal move is reported as an [`IllegalTransition`] instead of silently
/// overwriting the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTracker {
    state: ConnectivityState,
}

impl Default for StateTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl StateTracker {
    /// A tracker in the initial `Idle` state.
    pub const fn new() -> Self {
        Self {
            state: ConnectivityState::Idle,
        }
    }

    /// The current state.
    pub const fn get(&self) -> ConnectivityState {
        self.state
    }

    /// Moves to `next` if the move is legal and returns the previous state; otherwise
    /// leaves the state unchanged and returns the [`IllegalTransition`].
    pub fn transition(
        &mut self,
        next: ConnectivityState,
    ) -> Result<ConnectivityState, IllegalTransition> {
        if self.state.can_transition_to(next) {
            Ok(std::mem::replace(&mut self.state, next))
        } else {
            Err(IllegalTransition {
                from: self.state,
                to: next,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::*;
    use super::*;

    const LEGAL: &[(ConnectivityState, ConnectivityState)] = &[
        (Idle, Connecting),
        (Idle, Shutdown),
        (Connecting, Ready),
        (Connecting, TransientFailure),
        (Connecting, Shutdown),
        (Ready, Idle),
        (Ready, TransientFailure),
        (Ready, Shutdown),
        (TransientFailure, Idle),
        (TransientFailure, Connecting),
        (TransientFailure, Ready),
        (TransientFailure, Shutdown),
    ];

    #[test]
    fn every_legal_transition_is_accepted() {
        for &(from, to) in LEGAL {
            assert!(from.can_transition_to(to), "{from} -> {to} should be legal");
            let mut t = StateTracker { state: from };
            assert_eq!(t.transition(to), Ok(from));
            assert_eq!(t.get(), to);
        }
    }

    #[test]
    fn every_other_transition_is_rejected_and_keeps_the_state() {
        let mut rejected = 0;
        for from in ConnectivityState::ALL {
            for to in ConnectivityState::ALL {
                if LEGAL.contains(&(from, to)) {
                    continue;
                }
                rejected += 1;
                assert!(
                    !from.can_transition_to(to),
                    "{from} -> {to} should be illegal"
                );
                let mut t = StateTracker { state: from };
                let err = t.transition(to).unwrap_err();
                assert_eq!(err, IllegalTransition { from, to });
                assert_eq!(
                    err.to_string(),
                    format!("illegal connectivity state transition {from} -> {to}")
                );
                assert_eq!(
                    t.get(),
                    from,
                    "a rejected transition must not change the state"
                );
            }
        }
        // 25 pairs in all, 12 legal.
        assert_eq!(rejected, 13);
    }

    #[test]
    fn a_tracker_starts_idle_and_shutdown_is_terminal() {
        let mut t = StateTracker::new();
        assert_eq!(t.get(), Idle);
        t.transition(Shutdown).unwrap();
        for to in ConnectivityState::ALL {
            assert!(t.transition(to).is_err());
        }
    }

    #[test]
    fn names_follow_grpc() {
        let names: Vec<_> = ConnectivityState::ALL
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "IDLE",
                "CONNECTING",
                "READY",
                "TRANSIENT_FAILURE",
                "SHUTDOWN"
            ]
        );
    }
}
