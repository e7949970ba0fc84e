//! The registry of resolver builders, as a plain value.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::ResolverBuilder;
use crate::{Error, Target};

/// Resolver builders by scheme, plus the default scheme for targets without one.
#[derive(Clone)]
pub struct ResolverRegistry {
    builders: HashMap<String, Arc<dyn ResolverBuilder>>,
    default_scheme: String,
}

impl Default for ResolverRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ResolverRegistry {
    /// An empty registry whose default scheme is `dns`, as in gRPC.
    pub fn new() -> Self {
        Self {
            builders: HashMap::new(),
            default_scheme: "dns".to_owned(),
        }
    }

    /// Adds `builder` under its scheme, replacing any builder of the same scheme.
    pub fn register(&mut self, builder: impl ResolverBuilder) -> &mut Self {
        self.register_arc(Arc::new(builder))
    }

    /// Adds a shared builder under its scheme.
    pub fn register_arc(&mut self, builder: Arc<dyn ResolverBuilder>) -> &mut Self {
        self.builders
            .insert(builder.scheme().to_ascii_lowercase(), builder);
        self
    }

    /// Sets the scheme used for targets that have none (or an unregistered one).
    pub fn set_default_scheme(&mut self, scheme: impl Into<String>) -> &mut Self {
        self.default_scheme = scheme.into().to_ascii_lowercase();
        self
    }

    /// The default scheme.
    pub fn default_scheme(&self) -> &str {
        &self.default_scheme
    }

    /// The builder for `scheme`.
    pub fn get(&self, scheme: &str) -> Option<&Arc<dyn ResolverBuilder>> {
        self.builders.get(&scheme.to_ascii_lowercase())
    }

    /// Parses `target` and finds its resolver, as grpc-go does: a target whose scheme
    /// is registered uses it; any other string (no scheme, `host:port`, an unknown
    /// scheme) is read as `<default-scheme>:///<target>`.
    ///
    /// ```
    /// # use lb_core::ResolverRegistry;
    /// let registry = ResolverRegistry::new(); // nothing registered
    /// let err = registry.resolve("localhost:50051").err().unwrap();
    /// assert_eq!(err.to_string(), "no resolver is registered for scheme `dns` (target `localhost:50051`)");
    /// ```
    pub fn resolve(&self, target: &str) -> Result<(Target, Arc<dyn ResolverBuilder>), Error> {
        let parsed = Target::parse(target);
        if let Ok(t) = &parsed
            && let Some(builder) = self.get(t.scheme())
        {
            return Ok((t.clone(), builder.clone()));
        }
        // A registered scheme with a malformed rest (`static:///`) is the user's
        // mistake to hear about, not an endpoint of the default scheme.
        if let (Err(e), Some((scheme, _))) = (&parsed, target.split_once(':'))
            && self.get(scheme).is_some()
        {
            return Err(e.clone());
        }
        // Strings like `localhost:50051` parse with the scheme `localhost`, and
        // `10.0.0.1:80` not at all: both are endpoints for the default scheme.
        let fallback = Target::parse(&format!("{}:///{}", self.default_scheme, target));
        match (parsed, fallback) {
            (_, Ok(t)) => match self.get(t.scheme()) {
                Some(builder) => Ok((t, builder.clone())),
                None => Err(Error::UnknownScheme {
                    scheme: self.default_scheme.clone(),
                    target: target.to_owned(),
                }),
            },
            // Report the problem with what the user wrote, not with our rewrite.
            (Err(e), Err(_)) => Err(e),
            (Ok(t), Err(_)) => Err(Error::UnknownScheme {
                scheme: t.scheme().to_owned(),
                target: target.to_owned(),
            }),
        }
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.builders.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverRegistry")
            .field("schemes", &self.schemes())
            .field("default_scheme", &self.default_scheme)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::{BuildError, ClientConn, Resolver};

    struct Scheme(&'static str);
    struct Nop;
    impl Resolver for Nop {
        fn resolve_now(&self) {}
    }
    impl ResolverBuilder for Scheme {
        fn scheme(&self) -> &str {
            self.0
        }
        fn build(
            &self,
            _: &Target,
            _: Arc<dyn ClientConn>,
        ) -> Result<Box<dyn Resolver>, BuildError> {
            Ok(Box::new(Nop))
        }
    }

    fn registry() -> ResolverRegistry {
        let mut r = ResolverRegistry::new();
        r.register(Scheme("dns")).register(Scheme("etcd"));
        r
    }

    fn resolved(target: &str) -> (String, String) {
        let (t, b) = registry().resolve(target).unwrap();
        (b.scheme().to_owned(), t.endpoint().to_owned())
    }

    #[test]
    fn registered_schemes_are_used_and_everything_else_falls_back_to_the_default() {
        assert_eq!(resolved("etcd:///svc"), ("etcd".into(), "svc".into()));
        assert_eq!(resolved("dns:///a:1"), ("dns".into(), "a:1".into()));
        assert_eq!(
            resolved("localhost:50051"),
            ("dns".into(), "localhost:50051".into())
        );
        assert_eq!(
            resolved("127.0.0.1:50051"),
            ("dns".into(), "127.0.0.1:50051".into())
        );
        assert_eq!(
            resolved("example.com"),
            ("dns".into(), "example.com".into())
        );
        assert_eq!(
            resolved("zk:///svc"),
            ("dns".into(), "zk:///svc".into()),
            "an unregistered scheme is an endpoint of the default scheme, as in grpc-go"
        );
    }

    #[test]
    fn the_default_scheme_can_be_changed() {
        let mut r = registry();
        r.set_default_scheme("ETCD");
        let (t, b) = r.resolve("svc").unwrap();
        assert_eq!((b.scheme(), t.endpoint()), ("etcd", "svc"));
    }

    #[test]
    fn errors_name_the_target() {
        let err = ResolverRegistry::new()
            .resolve("etcd:///svc")
            .err()
            .unwrap();
        assert_eq!(
            err,
            Error::UnknownScheme {
                scheme: "dns".into(),
                target: "etcd:///svc".into()
            }
        );
        let err = registry().resolve("").err().unwrap();
        assert!(
            matches!(err, Error::InvalidTarget { ref target, .. } if target.is_empty()),
            "{err}"
        );
        let err = registry().resolve("dns:///a b").err().unwrap();
        assert!(err.to_string().contains("whitespace"), "{err}");
        // A registered scheme with a malformed rest is reported, not re-read.
        for bad in ["etcd:///", "etcd://", "ETCD:"] {
            let err = registry().resolve(bad).err().unwrap();
            assert!(
                matches!(err, Error::InvalidTarget { ref target, .. } if target == bad),
                "{bad}: {err}"
            );
        }
    }
}
