//! Address hierarchies, as grpc-go's `hierarchy` package: each address carries the
//! path of child names that leads to the leaf policy that should get it, and each
//! parent hands its children their share, one level off the path.
//!
//! ```
//! use lb_core::Address;
//! use lb_core::hierarchy::{group, path, with_path};
//!
//! // A resolver (xDS, say) tags each endpoint: priority, then locality.
//! let a = with_path(Address::new("10.0.0.1:80"), ["p0", "zone-a"]);
//! let b = with_path(Address::new("10.0.0.2:80"), ["p0", "zone-b"]);
//! let c = with_path(Address::new("10.0.1.1:80"), ["p1", "zone-c"]);
//!
//! // The priority parent splits by the first name...
//! let by_priority = group(vec![a, b, c]);
//! assert_eq!(by_priority["p0"].len(), 2);
//! // ...and each child sees the rest of the path.
//! assert_eq!(path(&by_priority["p1"][0]), ["zone-c"]);
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use crate::Address;

/// The attribute that holds an address's path of child names, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyPath(pub Arc<[String]>);

/// `address` with `path` as its hierarchy (replacing any it had).
pub fn with_path<S: Into<String>>(address: Address, path: impl IntoIterator<Item = S>) -> Address {
    let path: Arc<[String]> = path.into_iter().map(Into::into).collect();
    address.with_attribute(HierarchyPath(path))
}

/// The path of child names `address` carries (empty without one).
pub fn path(address: &Address) -> &[String] {
    address
        .attributes()
        .get::<HierarchyPath>()
        .map_or(&[], |p| &p.0[..])
}

/// Splits `addresses` by the first name of their paths, each keeping the rest of
/// its path: what a parent hands each of its children. Addresses without a path
/// are left out, as grpc-go's `hierarchy.Group` leaves them.
pub fn group(addresses: Vec<Address>) -> HashMap<String, Vec<Address>> {
    let mut groups: HashMap<String, Vec<Address>> = HashMap::new();
    for address in addresses {
        let Some((first, rest)) = path(&address).split_first() else {
            continue;
        };
        let first = first.clone();
        let rest: Arc<[String]> = rest.into();
        let address = address.with_attribute(HierarchyPath(rest));
        groups.entry(first).or_default().push(address);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_peel_one_level_and_drop_addresses_without_a_path() {
        let a = with_path(Address::new("a:1"), ["x", "y", "z"]);
        let b = with_path(Address::new("b:1"), ["x"]);
        let none = Address::new("c:1");
        let groups = group(vec![a, b, none]);
        assert_eq!(groups.len(), 1);
        let x = &groups["x"];
        assert_eq!(path(&x[0]), ["y", "z"]);
        assert!(path(&x[1]).is_empty());
        // The next level down: `b` has no path left, so it goes nowhere.
        let next = group(x.clone());
        assert_eq!(next["y"].len(), 1);
        assert_eq!(path(&next["y"][0]), ["z"]);
        assert!(!next.contains_key(""));
    }
}
