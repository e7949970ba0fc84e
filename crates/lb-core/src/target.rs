//! Dial targets: `scheme://authority/endpoint`, as in gRPC's naming document.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A parsed dial target.
///
/// Accepted forms (gRPC naming document):
///
/// * `scheme://authority/endpoint`: `dns://8.8.8.8:53/example.com:443`
/// * `scheme:///endpoint` (empty authority): `dns:///example.com:443`, `etcd:///greeter`
/// * `scheme:endpoint` (no authority): `dns:example.com:443`, `unix:relative.sock`
///
/// A query string (`?key=value`) is split off the endpoint and kept in
/// [`Target::query`]. The endpoint is percent-decoded. A string with no scheme (`localhost:50051`,
/// `10.0.0.1:80`) is not a valid `Target` on its own: [`crate::ResolverRegistry::resolve`]
/// reads it with the default scheme, as grpc-go does.
///
/// ```
/// use lb_core::Target;
///
/// let t: Target = "dns://127.0.0.1:53/example.com:443".parse()?;
/// assert_eq!((t.scheme(), t.authority(), t.endpoint()), ("dns", "127.0.0.1:53", "example.com:443"));
///
/// let err = "etcd://".parse::<Target>().unwrap_err();
/// assert!(err.to_string().contains("etcd://"));
/// # Ok::<(), lb_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    original: String,
    scheme: String,
    authority: String,
    endpoint: String,
    query: Option<String>,
    /// Written as `scheme://authority/endpoint` (the endpoint is then a URL path).
    hierarchical: bool,
}

impl Target {
    /// Parses `target`; see the type's documentation for the accepted forms.
    pub fn parse(target: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::InvalidTarget {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        if target.is_empty() {
            return Err(fail("the target is empty"));
        }
        if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail(
                "the target contains whitespace or a control character",
            ));
        }
        let Some((scheme, rest)) = target.split_once(':') else {
            return Err(fail("no scheme (expected `scheme://authority/endpoint`)"));
        };
        if !is_valid_scheme(scheme) {
            return Err(fail(
                "the scheme must start with a letter and contain only letters, digits, `+`, `-` and `.`",
            ));
        }
        let hierarchical = rest.starts_with("//");
        let (authority, endpoint) = match rest.strip_prefix("//") {
            Some(hier) => match hier.split_once('/') {
                Some((authority, endpoint)) => (authority, endpoint),
                None => {
                    return Err(fail(
                        "no endpoint after the authority (expected `scheme://authority/endpoint`)",
                    ));
                }
            },
            None => ("", rest),
        };
        let (endpoint, query) = match endpoint.split_once('?') {
            Some((endpoint, query)) => (endpoint, Some(query.to_owned())),
            None => (endpoint, None),
        };
        if endpoint.is_empty() {
            return Err(fail("the endpoint is empty"));
        }
        let endpoint = percent_decode(endpoint).map_err(|reason| fail(&reason))?;
        Ok(Target {
            original: target.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            endpoint,
            query,
            hierarchical,
        })
    }

    /// The scheme, lower-cased: it selects the resolver.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority: for DNS the name server to ask; empty for most targets.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The endpoint, percent-decoded: what the resolver resolves (`host:port`, a
    /// service name, a list of addresses).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The query string after `?`, undecoded, if the target has one
    /// (`dns:///svc:443?x=1` has `x=1`). It is not part of [`Target::endpoint`].
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The endpoint as a path: with its leading `/` when the target was written
    /// `scheme://authority/path`, as is when written `scheme:path`. What path-like
    /// schemes read: `unix:///tmp/a.sock` is `/tmp/a.sock`, `unix:a.sock` is `a.sock`.
    pub fn path(&self) -> std::borrow::Cow<'_, str> {
        if self.hierarchical {
            std::borrow::Cow::Owned(format!("/{}", self.endpoint))
        } else {
            std::borrow::Cow::Borrowed(&self.endpoint)
        }
    }

    /// The target exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

fn is_valid_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn percent_decode(s: &str) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape at byte {i} of the endpoint"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the percent-decoded endpoint is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(t: &str) -> (String, String, String) {
        let t = Target::parse(t).unwrap();
        (t.scheme.clone(), t.authority.clone(), t.endpoint.clone())
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn parses_the_forms_of_the_naming_document() {
        assert_eq!(parts("dns:///foo.com:443"), s("dns", "", "foo.com:443"));
        assert_eq!(
            parts("dns://8.8.8.8:53/foo.com:443"),
            s("dns", "8.8.8.8:53", "foo.com:443")
        );
        assert_eq!(parts("dns:foo.com:443"), s("dns", "", "foo.com:443"));
        assert_eq!(parts("etcd:///greeter"), s("etcd", "", "greeter"));
        assert_eq!(
            parts("static:///127.0.0.1:1,127.0.0.1:2"),
            s("static", "", "127.0.0.1:1,127.0.0.1:2")
        );
        assert_eq!(parts("unix:///tmp/a.sock"), s("unix", "", "tmp/a.sock"));
        assert_eq!(parts("zk:///a/b"), s("zk", "", "a/b"));
        assert_eq!(parts("DNS:///x:1").0, "dns", "schemes are case-insensitive");
        assert_eq!(parts("passthrough:///[::1]:50051").2, "[::1]:50051");
    }

    #[test]
    fn query_strings_are_split_off_the_endpoint() {
        let t = Target::parse("dns:///svc.example.com:443?lb=x&y=1").unwrap();
        assert_eq!(t.endpoint(), "svc.example.com:443");
        assert_eq!(t.query(), Some("lb=x&y=1"));
        let t = Target::parse("etcd:///greeter").unwrap();
        assert_eq!(t.query(), None);
        let err = Target::parse("dns:///?x=1").unwrap_err();
        assert!(err.to_string().contains("endpoint is empty"), "{err}");
    }

    #[test]
    fn paths_keep_their_leading_slash_in_the_hierarchical_form() {
        assert_eq!(
            Target::parse("unix:///tmp/a.sock").unwrap().path(),
            "/tmp/a.sock"
        );
        assert_eq!(Target::parse("unix:a.sock").unwrap().path(), "a.sock");
        assert_eq!(Target::parse("unix:/abs.sock").unwrap().path(), "/abs.sock");
        assert_eq!(Target::parse("unix-abstract:name").unwrap().path(), "name");
    }

    #[test]
    fn percent_decodes_the_endpoint() {
        assert_eq!(parts("etcd:///my%20service").2, "my service");
        assert_eq!(parts("etcd:///a%2Fb").2, "a/b");
    }

    #[test]
    fn keeps_the_original() {
        let t = Target::parse("dns:///a:1").unwrap();
        assert_eq!(t.as_str(), "dns:///a:1");
        assert_eq!(t.to_string(), "dns:///a:1");
    }

    #[test]
    fn malformed_targets_are_rejected_with_the_reason_and_the_target() {
        let cases = [
            ("", "empty"),
            ("localhost", "no scheme"),
            ("dns://", "no endpoint after the authority"),
            ("dns://authority-only", "no endpoint after the authority"),
            ("dns:///", "endpoint is empty"),
            ("dns:", "endpoint is empty"),
            ("1dns:///x", "scheme must start with a letter"),
            (":///x", "scheme must start with a letter"),
            ("dns:///a b", "whitespace"),
            ("dns:///a%zz", "bad percent-escape"),
            ("dns:///a%2", "bad percent-escape"),
            ("dns:///%ff", "not UTF-8"),
        ];
        for (input, reason) in cases {
            let err = Target::parse(input).unwrap_err();
            let Error::InvalidTarget {
                target,
                reason: got,
            } = &err
            else {
                panic!("{input:?}: wrong error {err:?}");
            };
            assert_eq!(target, input);
            assert!(
                got.contains(reason),
                "{input:?}: {got:?} should mention {reason:?}"
            );
            assert!(err.to_string().contains(&format!("`{input}`")));
        }
    }
}
