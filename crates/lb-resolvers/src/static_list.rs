//! Fixed address lists: `static:///host1:port1,host2:port2` and
//! `passthrough:///host:port`.
//!
//! Both resolve once, when built, and never change. Hostnames are passed through
//! as they are; the transport looks them up when it connects.

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

/// The resolver of both schemes: it sends its one state again on `resolve_now`.
pub struct FixedResolver {
    state: ResolverState,
    cc: Arc<dyn ClientConn>,
}

impl FixedResolver {
    /// A resolver that sends `state` again on every `resolve_now` (the caller sends
    /// it the first time).
    pub fn new(state: ResolverState, cc: Arc<dyn ClientConn>) -> Self {
        Self { state, cc }
    }
}

impl Resolver for FixedResolver {
    fn resolve_now(&self) {
        self.cc.update_state(self.state.clone());
    }
}

fn start(state: ResolverState, cc: Arc<dyn ClientConn>) -> Box<dyn Resolver> {
    cc.update_state(state.clone());
    Box::new(FixedResolver { state, cc })
}

/// Checks `addr` is `host:port` (IPv6 in brackets); the reason when it is not.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
pub(crate) fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let target = Target::parse("static:///check").map_err(|_| "internal")?;
    parse_host_port(&target, addr)
        .map(drop)
        .map_err(|e| match e {
            Error::BadAddress { reason, .. } => reason,
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
        assert_eq!(states.len(), 2, "one state when built, one per resolve_now");
        assert_eq!(states[0], states[1]);
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
