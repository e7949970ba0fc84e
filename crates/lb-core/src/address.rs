//! Resolved addresses.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::{AttributeValue, Attributes, Weight};

/// One backend address produced by a resolver: a `host:port` string plus attributes
/// (a [`Weight`], registry metadata, anything a resolver wants a policy to see).
///
/// Cheap to clone. Two addresses are equal when both the string and the attributes
/// are; policies that key connections by endpoint use [`Address::addr`].
#[derive(Clone)]
pub struct Address {
    addr: Arc<str>,
    attributes: Attributes,
}

impl Address {
    /// An address with no attributes. `addr` is usually `ip:port` or `host:port`.
    pub fn new(addr: impl Into<Arc<str>>) -> Self {
        Self {
            addr: addr.into(),
            attributes: Attributes::new(),
        }
    }

    /// The address string.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The address as a socket address, if it is a literal `ip:port`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }

    /// The attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.attributes
    }

    /// This address with `value` added to its attributes.
    #[must_use]
    pub fn with_attribute<T: AttributeValue>(mut self, value: T) -> Self {
        self.attributes = self.attributes.with(value);
        self
    }

    /// This address with its attributes replaced.
    #[must_use]
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// The per-address [`Authority`] override, if the resolver set one.
    pub fn authority(&self) -> Option<&str> {
        self.attributes.get::<Authority>().map(|a| &*a.0)
    }

    /// The address's [`Weight`], or the default weight 1 when it carries none.
    pub fn weight(&self) -> Weight {
        self.attributes.get::<Weight>().copied().unwrap_or_default()
    }
}

/// Address attribute: the `:authority` (and TLS server name) of connections to this
/// address, overriding the channel's default, as grpc-go's `Address.ServerName` does.
///
/// ```
/// use lb_core::{Address, Authority};
///
/// let a = Address::new("10.0.0.7:443").with_attribute(Authority::new("shard-7.example.com"));
/// assert_eq!(a.authority(), Some("shard-7.example.com"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority(pub Arc<str>);

impl Authority {
    /// An authority (`host` or `host:port`).
    pub fn new(authority: impl Into<Arc<str>>) -> Self {
        Self(authority.into())
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && self.attributes == other.attributes
    }
}

impl Eq for Address {}

impl Hash for Address {
    // Equal addresses have equal strings, so hashing the string alone is consistent.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attributes.is_empty() {
            write!(f, "Address({})", self.addr)
        } else {
            write!(f, "Address({} {:?})", self.addr, self.attributes)
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::new(addr.to_string())
    }
}

impl From<&str> for Address {
    fn from(addr: &str) -> Self {
        Address::new(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_defaults_to_one_and_reads_the_attribute() {
        let a = Address::new("127.0.0.1:1");
        assert_eq!(a.weight().get(), 1);
        let b = a.clone().with_attribute(Weight::new(7).unwrap());
        assert_eq!(b.weight().get(), 7);
        assert_ne!(a, b, "attributes take part in equality");
        assert_eq!(a.addr(), b.addr());
    }

    #[test]
    fn socket_addr_parses_literals_only() {
        assert!(Address::new("127.0.0.1:80").socket_addr().is_some());
        assert!(Address::new("[::1]:80").socket_addr().is_some());
        assert!(Address::new("localhost:80").socket_addr().is_none());
    }
}
