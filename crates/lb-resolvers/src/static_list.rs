//! Fixed address lists: `static:///host1:port1,host2:port2`,
//! `passthrough:///host:port`, and Unix-domain sockets: `unix:///abs/path`,
//! `unix:relative/path`, `unix-abstract:name`.
//!
//! All resolve once, when built, and never change. Hostnames are passed through
//! as they are; the transport looks them up when it connects. A Unix target resolves
//! to one address, `unix:<path>` or `unix-abstract:<name>`, which the channel dials
//! as a Unix-domain socket (with `:authority` `localhost`, as grpc-go).

use std::sync::Arc;

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverState, Target};

use crate::Error;

/// Builds resolvers for `static:///a:1,b:2`: a comma-separated list of addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticResolverBuilder;

/// Builds resolvers for `passthrough:///host:port`: exactly one address.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassthroughResolverBuilder;

/// Builds resolvers for `unix:///abs/path` and `unix:relative/path` (or, as
/// [`UnixResolverBuilder::abstract_namespace`], for `unix-abstract:name`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixResolverBuilder {
    abstract_namespace: bool,
}

impl UnixResolverBuilder {
    /// The `unix-abstract` scheme: names in Linux's abstract socket namespace.
    pub fn abstract_namespace() -> Self {
        Self {
            abstract_namespace: true,
        }
    }
}

/// The resolver of the fixed schemes: it sent its one state when built.
pub struct FixedResolver {
    _state: ResolverState,
    _cc: Arc<dyn ClientConn>,
}

impl FixedResolver {
    /// A resolver that keeps `state` (the caller sends it, once).
    pub fn new(state: ResolverState, cc: Arc<dyn ClientConn>) -> Self {
        Self {
            _state: state,
            _cc: cc,
        }
    }
}

impl Resolver for FixedResolver {
    /// Nothing to do: the list cannot change (as grpc-go's passthrough resolver). The
    /// channel asks on every lost connection, so re-sending the same state would only
    /// churn the balancer.
    fn resolve_now(&self) {}
}

fn start(state: ResolverState, cc: Arc<dyn ClientConn>) -> Box<dyn Resolver> {
    cc.update_state(state.clone());
    Box::new(FixedResolver::new(state, cc))
}

/// Checks `addr` is `host:port` (IPv6 in brackets); the reason when it is not.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub(crate) fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let target = Target::parse("static:///check").map_err(|_| "internal")?;
    parse_host_port(&target, addr)
        .map(drop)
        .map_err(|e| match e {
            Error::BadAddress { reason, .. } | Error::BadUnixTarget { reason, .. } => reason,
        })
}

/// Checks that `entry` is `host:port` (IPv6 hosts in brackets) with a numeric port.
pub(crate) fn parse_host_port(target: &Target, entry: &str) -> Result<Address, Error> {
    let bad = |reason| Error::BadAddress {
        target: target.as_str().to_owned(),
        entry: entry.to_owned(),
        reason,
    };
    let entry = entry.trim();
    if entry.contains(',') {
        return Err(bad(
            "one address expected (`static:///a:1,b:2` takes a list)",
        ));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("expected `[ipv6]:port`"))?;
        (host, port)
    } else {
        entry
            .rsplit_once(':')
            .ok_or_else(|| bad("missing `:port`"))?
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if !entry.starts_with('[') && host.contains(':') {
        return Err(bad("an IPv6 host must be in brackets"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    Ok(Address::new(entry))
}

impl ResolverBuilder for StaticResolverBuilder {
    fn scheme(&self) -> &str {
        "static"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let addresses = target
            .endpoint()
            .split(',')
            .map(|entry| parse_host_port(target, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(start(ResolverState::new(addresses), cc))
    }
}

impl ResolverBuilder for PassthroughResolverBuilder {
    fn scheme(&self) -> &str {
        "passthrough"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let address = parse_host_port(target, target.endpoint())?;
        Ok(start(ResolverState::new(vec![address]), cc))
    }

    /// The endpoint names the one host: it is the authority, as in grpc-go.
    fn authority(&self, target: &Target) -> Option<String> {
        Some(target.endpoint().to_owned())
    }
}

impl ResolverBuilder for UnixResolverBuilder {
    fn scheme(&self) -> &str {
        if self.abstract_namespace {
            "unix-abstract"
        } else {
            "unix"
        }
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let bad = |reason| Error::BadUnixTarget {
            target: target.as_str().to_owned(),
            reason,
        };
        if !target.authority().is_empty() {
            return Err(bad(
                "a Unix socket target takes no authority (`unix:///abs/path` or `unix:relative/path`)",
            )
            .into());
        }
        let path = target.path();
        if path.is_empty() || path == "/" {
            return Err(bad("no socket path").into());
        }
        let address = if self.abstract_namespace {
            format!("unix-abstract:{path}")
        } else {
            format!("unix:{path}")
        };
        Ok(start(ResolverState::new(vec![Address::new(address)]), cc))
    }

    /// Unix sockets have no host name: `localhost`, as grpc-go.
    fn authority(&self, _: &Target) -> Option<String> {
        Some("localhost".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Record(Mutex<Vec<ResolverState>>);

    impl ClientConn for Record {
        fn update_state(&self, state: ResolverState) {
            self.0.lock().unwrap().push(state);
        }
        fn report_error(&self, _: lb_core::SharedError) {}
    }

    fn addrs(builder: &dyn ResolverBuilder, target: &str) -> Result<Vec<String>, String> {
        let cc = Arc::new(Record::default());
        let target = Target::parse(target).unwrap();
        let resolver = builder
            .build(&target, cc.clone())
            .map_err(|e| e.to_string())?;
        resolver.resolve_now();
        let states = cc.0.lock().unwrap();
        assert_eq!(states.len(), 1, "one state when built, none on resolve_now");
        Ok(states[0]
            .addresses
            .iter()
            .map(|a| a.addr().to_owned())
            .collect())
    }

    #[test]
    fn static_lists_every_address() {
        assert_eq!(
            addrs(
                &StaticResolverBuilder,
                "static:///127.0.0.1:1,localhost:2,[::1]:3"
            )
            .unwrap(),
            ["127.0.0.1:1", "localhost:2", "[::1]:3"]
        );
    }

    #[test]
    fn passthrough_is_one_address() {
        assert_eq!(
            addrs(
                &PassthroughResolverBuilder,
                "passthrough:///example.com:443"
            )
            .unwrap(),
            ["example.com:443"]
        );
    }

    #[test]
    fn unix_targets_name_one_socket() {
        let unix = UnixResolverBuilder::default();
        let abs = UnixResolverBuilder::abstract_namespace();
        assert_eq!(
            addrs(&unix, "unix:///tmp/a.sock").unwrap(),
            ["unix:/tmp/a.sock"]
        );
        assert_eq!(
            addrs(&unix, "unix:/tmp/a.sock").unwrap(),
            ["unix:/tmp/a.sock"]
        );
        assert_eq!(
            addrs(&unix, "unix:rel/a.sock").unwrap(),
            ["unix:rel/a.sock"]
        );
        assert_eq!(
            addrs(&abs, "unix-abstract:grpc").unwrap(),
            ["unix-abstract:grpc"]
        );
        let t = Target::parse("unix:///tmp/a.sock").unwrap();
        assert_eq!(unix.authority(&t).as_deref(), Some("localhost"));
        let err = addrs(&unix, "unix://host/tmp/a.sock").unwrap_err();
        assert!(err.contains("takes no authority"), "{err}");
        assert!(err.contains("`unix://host/tmp/a.sock`"), "{err}");
    }

    #[test]
    fn passthrough_names_its_endpoint_as_the_authority_and_static_lists_do_not() {
        let t = Target::parse("passthrough:///svc.example.com:443").unwrap();
        assert_eq!(
            PassthroughResolverBuilder.authority(&t).as_deref(),
            Some("svc.example.com:443")
        );
        let t = Target::parse("static:///a:1,b:2").unwrap();
        assert_eq!(StaticResolverBuilder.authority(&t), None);
    }

    #[test]
    fn malformed_entries_are_errors_naming_the_entry() {
        let cases = [
            ("static:///127.0.0.1:1,nope", "`nope`", "missing `:port`"),
            ("static:///a:1,,b:2", "``", "missing `:port`"),
            ("static:///a:0", "`a:0`", "1 to 65535"),
            ("static:///a:x", "`a:x`", "1 to 65535"),
            ("static:///:80", "`:80`", "empty host"),
            ("static:///::1:80", "`::1:80`", "brackets"),
            ("static:///[::1]80", "`[::1]80`", "[ipv6]:port"),
            (
                "passthrough:///a:1,b:2",
                "`a:1,b:2`",
                "one address expected",
            ),
        ];
        for (target, entry, reason) in cases {
            let builder: &dyn ResolverBuilder = if target.starts_with("static") {
                &StaticResolverBuilder
            } else {
                &PassthroughResolverBuilder
            };
            let err = addrs(builder, target).unwrap_err();
            assert!(err.contains(entry), "{target}: {err}");
            assert!(err.contains(reason), "{target}: {err}");
            assert!(
                err.contains(&format!("target `{target}`")),
                "{target}: {err}"
            );
        }
    }
}
