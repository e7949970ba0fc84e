//! The one error type of `lb-resolvers`.

/// What can go wrong when building a resolver. Messages name the target and the part
/// of it that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address in a target's endpoint is not `host:port`.
    #[error("target `{target}`: `{entry}` is not a `host:port` address: {reason}")]
    BadAddress {
        /// The whole target.
        target: String,
        /// The offending entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A `unix` or `unix-abstract` target that does not name a socket.
    #[error("target `{target}`: {reason}")]
    BadUnixTarget {
        /// The whole target.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}
