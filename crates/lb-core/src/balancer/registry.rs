//! The registry of balancer builders, as a plain value.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::BalancerBuilder;
use crate::Error;

/// Balancer builders by policy name.
///
/// A value, not a global: each channel is given the registry it uses, and tests build
/// their own. `lb-policies` provides one with the built-in policies.
///
/// ```
/// use lb_core::BalancerRegistry;
///
/// let registry = BalancerRegistry::new();
/// assert!(registry.get("round_robin").is_none());
/// ```
#[derive(Clone, Default)]
pub struct BalancerRegistry {
    builders: HashMap<String, Arc<dyn BalancerBuilder>>,
}

impl BalancerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `builder` under its name, replacing any builder of the same name.
    pub fn register(&mut self, builder: impl BalancerBuilder) -> &mut Self {
        self.register_arc(Arc::new(builder))
    }

    /// Adds a shared builder under its name, replacing any builder of the same name.
    pub fn register_arc(&mut self, builder: Arc<dyn BalancerBuilder>) -> &mut Self {
        self.builders.insert(builder.name().to_owned(), builder);
        self
    }

    /// The builder registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn BalancerBuilder>> {
        self.builders.get(name)
    }

    /// The builder registered as `name`, or [`Error::UnknownPolicy`].
    pub fn require(&self, name: &str) -> Result<&Arc<dyn BalancerBuilder>, Error> {
        self.get(name).ok_or_else(|| Error::UnknownPolicy {
            name: name.to_owned(),
            registered: self.names().into_iter().map(str::to_owned).collect(),
        })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.builders.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for BalancerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BalancerRegistry")
            .field(&self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_registry_replaces_by_name_and_reports_unknown_names() {
        struct B(&'static str);
        impl BalancerBuilder for B {
            fn name(&self) -> &str {
                self.0
            }
            fn build(&self, _: &super::super::BuildOptions) -> Box<dyn super::super::Balancer> {
                unimplemented!("not built in this test")
            }
        }
        let mut r = BalancerRegistry::new();
        r.register(B("b")).register(B("a")).register(B("b"));
        assert_eq!(r.names(), ["a", "b"]);
        assert!(r.require("a").is_ok());
        assert_eq!(
            r.require("nope").err().unwrap().to_string(),
            "no load-balancing policy is registered as `nope`; registered: a, b"
        );
    }
}
