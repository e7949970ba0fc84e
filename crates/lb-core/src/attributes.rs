//! Typed, immutable, cheaply cloned attributes for addresses and resolver states.

use std::any::{Any, TypeId};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

/// A value that can be stored in [`Attributes`]: any `'static` type that is
/// `Send + Sync + Debug + PartialEq`. Implemented for all such types.
pub trait AttributeValue: Any + Send + Sync + fmt::Debug {
    /// `self` as `&dyn Any`, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// Equality across the type erasure: `false` when `other` has another type.
    fn dyn_eq(&self, other: &dyn AttributeValue) -> bool;
}

impl<T: Any + Send + Sync + fmt::Debug + PartialEq> AttributeValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn dyn_eq(&self, other: &dyn AttributeValue) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// A set of values keyed by their type, as `http::Extensions` is, but immutable and
/// cheap to clone (one reference count), so it can ride on every [`crate::Address`].
///
/// Each type is its own key: define a newtype per attribute (as [`Weight`] is) so
/// independent crates never collide.
///
/// ```
/// use lb_core::{Attributes, Weight};
///
/// #[derive(Debug, PartialEq)]
/// struct Zone(&'static str);
///
/// let attrs = Attributes::new().with(Zone("eu-1")).with(Weight::new(3).unwrap());
/// assert_eq!(attrs.get::<Zone>(), Some(&Zone("eu-1")));
/// assert_eq!(attrs.get::<Weight>().map(|w| w.get()), Some(3));
/// let copy = attrs.clone(); // one reference count, no allocation
/// assert_eq!(copy, attrs);
/// ```
#[derive(Clone, Default)]
pub struct Attributes {
    // Few attributes per address: a small vector beats a map. `None` costs nothing.
    entries: Option<Arc<[Entry]>>,
}

type Entry = (TypeId, Arc<dyn AttributeValue>);

impl Attributes {
    /// An empty set.
    pub const fn new() -> Self {
        Self { entries: None }
    }

    fn entries(&self) -> &[Entry] {
        self.entries.as_deref().unwrap_or(&[])
    }

    /// A copy of this set with `value` added, replacing any value of the same type.
    #[must_use]
    pub fn with<T: AttributeValue>(&self, value: T) -> Self {
        let key = TypeId::of::<T>();
        let mut entries: Vec<_> = self
            .entries()
            .iter()
            .filter(|(k, _)| *k != key)
            .cloned()
            .collect();
        entries.push((key, Arc::new(value)));
        Self {
            entries: Some(entries.into()),
        }
    }

    /// The value of type `T`, if present.
    pub fn get<T: AttributeValue>(&self) -> Option<&T> {
        let key = TypeId::of::<T>();
        self.entries()
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_any().downcast_ref::<T>())
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.entries(), other.entries());
        a.len() == b.len()
            && a.iter()
                .all(|(key, value)| b.iter().any(|(k, v)| k == key && value.dyn_eq(v.as_ref())))
    }
}

impl Eq for Attributes {}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.entries().iter().map(|(_, v)| v))
            .finish()
    }
}

/// The weight of an address for weighted policies; always at least 1.
///
/// Resolvers set it from registry metadata; an address without one has weight 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Weight(NonZeroU32);

impl Weight {
    /// The weight of an address that carries none.
    pub const DEFAULT: Weight = Weight(NonZeroU32::MIN);

    /// A weight, or `None` for zero (a zero weight is not a weight: remove the address
    /// instead).
    pub const fn new(weight: u32) -> Option<Self> {
        match NonZeroU32::new(weight) {
            Some(w) => Some(Weight(w)),
            None => None,
        }
    }

    /// The weight as a number, at least 1.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Zone(String);

    #[test]
    fn with_replaces_values_of_the_same_type_and_keeps_the_original() {
        let a = Attributes::new().with(Zone("a".into()));
        let b = a.with(Zone("b".into())).with(Weight::new(2).unwrap());
        assert_eq!(a.get::<Zone>(), Some(&Zone("a".into())));
        assert_eq!(a.len(), 1);
        assert_eq!(b.get::<Zone>(), Some(&Zone("b".into())));
        assert_eq!(b.get::<Weight>().map(|w| w.get()), Some(2));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn equality_ignores_insertion_order_and_compares_values() {
        let w = Weight::new(5).unwrap();
        let a = Attributes::new().with(Zone("z".into())).with(w);
        let b = Attributes::new().with(w).with(Zone("z".into()));
        assert_eq!(a, b);
        assert_ne!(a, b.with(Zone("other".into())));
        assert_ne!(a, Attributes::new().with(w));
        assert_eq!(Attributes::new(), Attributes::default());
        assert!(Attributes::new().is_empty());
    }

    #[test]
    fn weight_zero_is_not_a_weight() {
        assert_eq!(Weight::new(0), None);
        assert_eq!(Weight::default().get(), 1);
        assert_eq!(Weight::new(u32::MAX).map(Weight::get), Some(u32::MAX));
    }

    #[test]
    fn debug_lists_values() {
        let a = Attributes::new().with(Zone("eu".into()));
        assert_eq!(format!("{a:?}"), r#"{Zone("eu")}"#);
    }
}
