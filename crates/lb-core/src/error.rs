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
/// wrong: the target, the JSON path in a service config, the policy, the transition,
/// and lists what would have been valid. `Debug` prints the same one line as
/// `Display`, so that `main` returning one says what to fix.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
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

    /// No resolver is registered for the target's scheme (`stattic:///…`), or, for
    /// a target without one, for the default scheme.
    #[error(
        "no resolver is registered for scheme `{scheme}` (target `{target}`); registered: {}{}",
        list(registered),
        hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default()
    )]
    UnknownScheme {
        /// The scheme that was looked up.
        scheme: String,
        /// The target it came from.
        target: String,
        /// The schemes that are registered, sorted.
        registered: Vec<String>,
        /// What would make the scheme work: the feature that adds its resolver, a
        /// close registered scheme, or how gRPC targets are written.
        hint: Option<String>,
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
    #[error(
        "no registered load-balancing policy among {}; registered: {}{}",
        quoted(names),
        list(registered),
        did_you_mean(names, registered)
    )]
    NoSupportedPolicy {
        /// The names that were listed, in order.
        names: Vec<String>,
        /// The registered policies, sorted.
        registered: Vec<String>,
    },

    /// A policy was asked for by a name no builder is registered under.
    #[error(
        "no load-balancing policy is registered as `{name}`; registered: {}{}",
        list(registered),
        did_you_mean(std::slice::from_ref(name), registered)
    )]
    UnknownPolicy {
        /// The name asked for.
        name: String,
        /// The registered policies, sorted.
        registered: Vec<String>,
    },

    /// The channel is shutting down; no new subconns can be created.
    #[error("the channel is shut down")]
    Shutdown,

    /// The resolver produced an empty address list; `note` is what the resolver
    /// said about it ([`crate::ResolutionNote`]: the etcd prefix or the ZooKeeper
    /// path it watched, the DNS name it looked up).
    #[error(
        "the resolver produced no addresses{}",
        note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
    )]
    NoAddresses {
        /// What the resolver said about the empty list.
        note: Option<String>,
    },
}

/// What a resolver says about its result, for the errors it leads to: "no keys
/// under `greeter/` in etcd at http://127.0.0.1:2379", "no children of
/// `/services/greeter` in ZooKeeper", "no A or AAAA records for `svc.local`" (gRPC
/// C-core's resolution note). A state attribute ([`crate::ResolverState::with_note`]), so
/// that it reaches every policy of a tree; [`Error::no_addresses`] puts it in
/// the error a policy returns for an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolutionNote(pub String);

/// `a, b, c`, or `none` for an empty list.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `` `a`, `b` ``.
fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

/// `; did you mean `x`?` for the first of `names` close to one of `known`.
fn did_you_mean(names: &[String], known: &[String]) -> String {
    names
        .iter()
        .find_map(|n| closest(n, known.iter().map(String::as_str)))
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// The candidate closest to `name` by edit distance, if it is a likely typo of it:
/// one edit for names of 3 to 5 characters, two for longer ones, none for shorter;
/// ASCII case is ignored.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let limit = match lower.chars().count() {
        0..=2 => return None,
        3..=5 => 1,
        _ => 2,
    };
    candidates
        .into_iter()
        .filter(|&c| c != name)
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
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
    /// [`Error::NoAddresses`] with the resolver's note from a state's attributes
    /// ([`ResolutionNote`]), if it left one.
    pub fn no_addresses(attributes: &crate::Attributes) -> Self {
        Error::NoAddresses {
            note: attributes.get::<ResolutionNote>().map(|n| n.0.clone()),
        }
    }

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

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let known = ["round_robin", "pick_first", "static", "dns", "etcd"];
        let closest = |name| closest(name, known);
        assert_eq!(closest("round_robbin"), Some("round_robin"));
        assert_eq!(closest("ROUND_ROBIN"), Some("round_robin"), "case only");
        assert_eq!(closest("stattic"), Some("static"));
        assert_eq!(closest("etc"), Some("etcd"));
        assert_eq!(closest("round_robin"), None, "the name itself");
        assert_eq!(closest("zk"), None, "too short to guess");
        assert_eq!(closest("least_request"), None);
        assert_eq!(closest(""), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }
}
