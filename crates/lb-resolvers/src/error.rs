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

/// Why one registry entry (an etcd value, a ZooKeeper node's data) is not an address.
/// The resolver skips such an entry with a warning that names its key; it never hides
/// the good ones.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The value is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// The value is JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// A required field is missing, null or empty.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A field has a value of the wrong kind or out of range.
    #[error("`{field}` is {found}, want {want}")]
    BadField {
        /// The field, as the format names it (`Op`, `port`, `weight`).
        field: &'static str,
        /// The value found, as JSON.
        found: String,
        /// What the field must hold.
        want: &'static str,
    },
    /// The address the entry names is not `host:port`.
    #[error("{address:?} is not a `host:port` address: {reason}")]
    BadAddress {
        /// The address as written (or as put together from host and port).
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}
