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
    /// Schemes known to exist but not registered, and what would add them.
    missing: HashMap<String, String>,
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
            missing: HashMap::new(),
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

    /// Notes that `scheme` exists but is not registered here, and what would add
    /// it ("the `zookeeper` feature of grpc-lb"): an [`Error::UnknownScheme`] for it
    /// says so. A registry built with some resolvers left out (by cargo features)
    /// notes them.
    pub fn note_missing(&mut self, scheme: impl Into<String>, how: impl Into<String>) -> &mut Self {
        self.missing
            .insert(scheme.into().to_ascii_lowercase(), how.into());
        self
    }

    /// Sets the scheme used for targets that have none.
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

    /// Parses `target` and finds its resolver. A target whose scheme is registered
    /// uses it; a string with no scheme (`localhost:50051`, `10.0.0.1:80`,
    /// `example.com`) is read as `<default-scheme>:///<target>`, as grpc-go does.
    /// Unlike grpc-go, a target that is written with a scheme (`name:/…` or
    /// `name://…`) whose resolver is not registered is an
    /// [`Error::UnknownScheme`] that lists the registered schemes and says what
    /// would add this one, rather than a lookup of the whole string in DNS.
    ///
    /// ```
    /// # use lb_core::ResolverRegistry;
    /// let registry = ResolverRegistry::new(); // nothing registered
    /// let err = registry.resolve("localhost:50051").err().unwrap();
    /// assert_eq!(err.to_string(), "no resolver is registered for scheme `dns` (target `localhost:50051`); registered: none");
    /// ```
    pub fn resolve(&self, target: &str) -> Result<(Target, Arc<dyn ResolverBuilder>), Error> {
        let parsed = Target::parse(target);
        if let Ok(t) = &parsed
            && let Some(builder) = self.get(t.scheme())
        {
            return Ok((t.clone(), builder.clone()));
        }
        if let Some((scheme, rest)) = target.split_once(':') {
            // A registered scheme with a malformed rest (`static:///`) is the user's
            // mistake to hear about, not an endpoint of the default scheme.
            if let Err(e) = &parsed
                && self.get(scheme).is_some()
            {
                return Err(e.clone());
            }
            // `stattic:///a:1`, `zk://host/svc`, `http://host:80`: a scheme. So is a
            // known scheme left out of this build, slashes or not (`dns:host:443`),
            // unless what follows is a port (`zk:2181`: a host named `zk`).
            let missing = self.missing.contains_key(&scheme.to_ascii_lowercase())
                && !rest.bytes().all(|b| b.is_ascii_digit());
            if (rest.starts_with('/') && is_scheme(scheme)) || missing {
                return Err(self.unknown_scheme(scheme, target));
            }
        }
        // Strings like `localhost:50051` parse with the scheme `localhost`, and
        // `10.0.0.1:80` not at all: both are endpoints for the default scheme.
        let fallback = Target::parse(&format!("{}:///{}", self.default_scheme, target));
        match (parsed, fallback) {
            (_, Ok(t)) => match self.get(t.scheme()) {
                Some(builder) => Ok((t, builder.clone())),
                None => Err(self.unknown_scheme(&self.default_scheme, target)),
            },
            // Report the problem with what the user wrote, not with our rewrite.
            (Err(e), Err(_)) => Err(e),
            (Ok(t), Err(_)) => Err(self.unknown_scheme(t.scheme(), target)),
        }
    }

    fn unknown_scheme(&self, scheme: &str, target: &str) -> Error {
        let lower = scheme.to_ascii_lowercase();
        let registered: Vec<String> = self.schemes().into_iter().map(str::to_owned).collect();
        let hint = if let Some(how) = self.missing.get(&lower) {
            Some(format!("`{lower}` needs {how}"))
        } else if matches!(lower.as_str(), "http" | "https" | "grpc" | "grpcs") {
            Some(format!(
                "a gRPC target names a resolver, not a URL scheme: `dns:///host:port` (or \
                 `host:port`), or `static:///host1:port,host2:port`; `{lower}` is not one"
            ))
        } else {
            crate::closest(&lower, registered.iter().map(String::as_str))
                .map(|c| format!("did you mean `{c}`?"))
        };
        Error::UnknownScheme {
            scheme: scheme.to_owned(),
            target: target.to_owned(),
            registered,
            hint,
        }
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.builders.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// RFC 3986's scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverRegistry")
            .field("schemes", &self.schemes())
            .field("default_scheme", &self.default_scheme)
            .field("missing", &self.missing)
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
        resolved_in(&registry(), target)
    }

    fn resolved_in(registry: &ResolverRegistry, target: &str) -> (String, String) {
        let (t, b) = registry.resolve(target).unwrap();
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
            resolved("myhost:443"),
            ("dns".into(), "myhost:443".into()),
            "no slash after the colon: a host and port"
        );
    }

    #[test]
    fn an_unregistered_scheme_is_an_error_that_says_what_would_work() {
        let mut r = registry();
        r.note_missing("zk", "the `zookeeper` feature");
        let message = |target: &str| r.resolve(target).err().unwrap().to_string();
        assert_eq!(
            r.resolve("stattic:///a:1").err().unwrap(),
            Error::UnknownScheme {
                scheme: "stattic".into(),
                target: "stattic:///a:1".into(),
                registered: vec!["dns".into(), "etcd".into()],
                hint: None,
            }
        );
        assert_eq!(
            message("zk://127.0.0.1:2181/svc"),
            "no resolver is registered for scheme `zk` (target `zk://127.0.0.1:2181/svc`); \
             registered: dns, etcd; `zk` needs the `zookeeper` feature"
        );
        assert!(message("http://127.0.0.1:50051").contains("`dns:///host:port`"));
        assert!(message("HTTPS://a:443").contains("not a URL scheme"));
        assert!(message("etc:///svc").ends_with("did you mean `etcd`?"));
        // A known scheme left out of the build, written without slashes.
        assert!(message("zk:svc").contains("`zk` needs the `zookeeper` feature"));
        assert_eq!(resolved_in(&r, "zk:2181"), ("dns".into(), "zk:2181".into()));
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
                scheme: "etcd".into(),
                target: "etcd:///svc".into(),
                registered: vec![],
                hint: None,
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
