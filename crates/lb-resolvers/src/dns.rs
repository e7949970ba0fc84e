//! `dns:///host:port` and `dns://dns-server:port/host:port` (feature `dns`), through
//! hickory-resolver.
//!
//! * A and AAAA records of `host`, each with `port` (default 443, as gRPC's).
//! * Names are looked up as the system does: a name with fewer dots than resolv.conf's
//!   `ndots` (a Kubernetes service `greeter`, a Docker service name) is tried with
//!   each domain of the `search` list, as grpc-go's resolver does; a name ending in
//!   `.` is absolute.
//! * No authority: the name servers of the system's resolver configuration
//!   ([`DnsOptions::resolv_conf`], `/etc/resolv.conf`). An authority `ip[:port]`
//!   (port 53 by default) asks that server only, still with the configuration's
//!   search list.
//! * An IP literal host is not looked up: it resolves to itself, once.
//! * The channel's default `:authority` is the target's endpoint (`svc:443`).
//! * Re-resolves on `resolve_now` (the channel asks whenever a connection is lost or
//!   fails), at most once per [`DnsOptions::min_resolve_interval`] (30 s, as
//!   grpc-go), and every [`DnsOptions::refresh_interval`]. After a failed lookup it
//!   retries every [`DnsOptions::error_retry_interval`] (5 s), however often it is
//!   asked; the channel keeps the last good addresses meanwhile.
//! * Service configs in DNS (gRFC A2), as grpc-go: with each lookup, the TXT records
//!   of `_grpc_config.<host>`; a record `grpc_config=[choices]` gives the service
//!   config of the first choice that matches this client ([`choose_service_config`]).
//!   A malformed record is an invalid service config (the channel keeps its previous
//!   one, gRFC A21); a failed TXT lookup keeps the last config found. Off with
//!   [`DnsOptions::service_config`] `false` (or the channel's
//!   `disable_resolver_service_config`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverState, Target};
use tokio::sync::Notify;

use crate::Error;

mod txt;
pub use txt::{
    CLIENT_LANGUAGE, Client, GRPC_CONFIG_ATTRIBUTE, GRPC_CONFIG_PREFIX, TxtConfigError,
    choose_service_config, find_grpc_config,
};

/// Timing and configuration of the DNS resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// The least time between two lookups caused by `resolve_now` (default 30 s).
    pub min_resolve_interval: Duration,
    /// Look up again this often even if nobody asks (default 5 min).
    pub refresh_interval: Duration,
    /// After a failed lookup, try again this soon (default 5 s).
    pub error_retry_interval: Duration,
    /// The port of a host given without one (default 443).
    pub default_port: u16,
    /// The resolver configuration to follow (default `/etc/resolv.conf`): its name
    /// servers (for targets without an authority), `search` list and `ndots`.
    pub resolv_conf: PathBuf,
    /// Look up service configs in `_grpc_config.<host>` TXT records (gRFC A2;
    /// default on, as in grpc-go).
    pub service_config: bool,
    /// The host name that `clientHostname` choices are matched against (default:
    /// this machine's, read when the resolver starts).
    pub client_hostname: Option<String>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            min_resolve_interval: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            error_retry_interval: Duration::from_secs(5),
            default_port: 443,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            service_config: true,
            client_hostname: None,
        }
    }
}

/// Builds resolvers for the `dns` scheme.
#[derive(Debug, Clone, Default)]
pub struct DnsResolverBuilder {
    options: DnsOptions,
}

impl DnsResolverBuilder {
    /// A builder with these timings.
    pub fn new(options: DnsOptions) -> Self {
        Self { options }
    }
}

/// A lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("DNS lookup of `{host}` failed: {reason}")]
pub struct DnsError {
    host: String,
    reason: String,
}

/// A running DNS resolver; dropping it stops its task.
pub struct DnsResolver {
    wake: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Resolver for DnsResolver {
    fn resolve_now(&self) {
        self.wake.notify_one();
    }
}

impl Drop for DnsResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port.
fn split_host_port<'a>(
    target: &Target,
    endpoint: &'a str,
    default_port: u16,
) -> Result<(&'a str, u16), Error> {
    let bad = |reason| Error::BadAddress {
        target: target.as_str().to_owned(),
        entry: endpoint.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (
                host,
                Some(
                    port.strip_prefix(':')
                        .ok_or_else(|| bad("expected `[ipv6]:port`"))?,
                ),
            ),
            None => return Err(bad("missing `]`")),
        }
    } else if endpoint.matches(':').count() > 1 {
        return Err(bad("an IPv6 host must be in brackets"));
    } else {
        match endpoint.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (endpoint, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok((host, port))
}

fn name_server(target: &Target) -> Result<Option<NameServerConfig>, Error> {
    let authority = target.authority();
    if authority.is_empty() {
        return Ok(None);
    }
    let bad = |reason| Error::BadAddress {
        target: target.as_str().to_owned(),
        entry: authority.to_owned(),
        reason,
    };
    let (ip, port) = match authority.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), sa.port()),
        Err(_) => (
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| bad("the DNS server must be an IP address, optionally with a port"))?,
            53,
        ),
    };
    let mut config = NameServerConfig::udp_and_tcp(ip);
    for c in &mut config.connections {
        c.port = port;
    }
    Ok(Some(config))
}

impl ResolverBuilder for DnsResolverBuilder {
    fn scheme(&self) -> &str {
        "dns"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let (host, port) = split_host_port(target, target.endpoint(), self.options.default_port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let state = ResolverState::new(vec![Address::from(SocketAddr::new(ip, port))]);
            cc.update_state(state.clone());
            return Ok(Box::new(crate::FixedResolver::new(state, cc)));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| format!("the dns resolver for `{target}` needs a tokio runtime"))?;
        let (config, options) = resolver_config(target, &self.options)?;
        let resolver: TokioResolver =
            Hickory::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .map_err(|e| format!("starting the DNS resolver for `{target}`: {e}"))?;
        let wake = Arc::new(Notify::new());
        let mut options = self.options.clone();
        // Not asked for when the channel would not read it (as grpc-go).
        options.service_config &= cc.wants_service_config();
        let task = runtime.spawn(run(
            resolver,
            host.to_owned(),
            port,
            options,
            wake.clone(),
            cc,
        ));
        Ok(Box::new(DnsResolver {
            wake,
            task: task.abort_handle(),
        }))
    }

    /// The target names one host: its endpoint is the authority, as in grpc-go.
    fn authority(&self, target: &Target) -> Option<String> {
        Some(target.endpoint().to_owned())
    }
}

/// The name servers, search list and options for `target`: the resolv.conf file's,
/// with the target's authority (if any) as the only name server.
fn resolver_config(
    target: &Target,
    options: &DnsOptions,
) -> Result<(ResolverConfig, ResolverOpts), BuildError> {
    let from_file = std::fs::read(&options.resolv_conf)
        .map_err(|e| e.to_string())
        .and_then(|data| {
            hickory_resolver::system_conf::parse_resolv_conf(data).map_err(|e| e.to_string())
        });
    match (name_server(target)?, from_file) {
        (Some(server), Ok((file, opts))) => Ok((
            ResolverConfig::from_parts(
                file.domain().cloned(),
                file.search().to_vec(),
                vec![server],
            ),
            opts,
        )),
        // No usable file: the given server alone, no search list.
        (Some(server), Err(_)) => Ok((
            ResolverConfig::from_parts(None, Vec::new(), vec![server]),
            ResolverOpts::default(),
        )),
        (None, Ok(config)) => Ok(config),
        (None, Err(e)) => Err(format!(
            "reading the DNS configuration {}: {e}",
            options.resolv_conf.display()
        )
        .into()),
    }
}

async fn run(
    resolver: TokioResolver,
    host: String,
    port: u16,
    options: DnsOptions,
    wake: Arc<Notify>,
    cc: Arc<dyn ClientConn>,
) {
    let client = match &options.client_hostname {
        Some(name) => Client::new(Some(name.clone())),
        None => Client::this_host(),
    };
    // The last service config the TXT records gave: kept when a TXT lookup fails.
    let mut last_config = ConfigFound::None;
    loop {
        let looked_up = Instant::now();
        // As the system resolver does: a short name goes through the search list.
        // The TXT record is looked up meanwhile.
        let (ips, found) = lookup(&resolver, &host, &client, options.service_config).await;
        let next = match ips {
            Ok(ips) => {
                let addresses: Vec<Address> = ips
                    .iter()
                    .map(|ip| Address::from(SocketAddr::new(ip, port)))
                    .collect();
                tracing::debug!(%host, addresses = addresses.len(), "DNS resolved");
                if addresses.is_empty() {
                    cc.report_error(Arc::new(DnsError {
                        host: host.clone(),
                        reason: "no A or AAAA records".to_owned(),
                    }));
                    options.error_retry_interval
                } else {
                    let mut state = ResolverState::new(addresses);
                    if options.service_config {
                        if let Some(found) = found {
                            last_config = found;
                        }
                        state = last_config.apply(state);
                    }
                    cc.update_state(state);
                    options.refresh_interval
                }
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "DNS lookup failed");
                cc.report_error(Arc::new(DnsError {
                    host: host.clone(),
                    reason: e.to_string(),
                }));
                options.error_retry_interval
            }
        };
        let scheduled = looked_up + next;
        tokio::select! {
            () = tokio::time::sleep_until(scheduled.into()) => {}
            () = wake.notified() => {
                // Rate-limited: a resolve_now within the interval waits for its end,
                // but never past the lookup already scheduled (a retry after an
                // error comes on the error interval however often the channel asks).
                let earliest = (looked_up + options.min_resolve_interval).min(scheduled);
                tokio::time::sleep_until(earliest.into()).await;
            }
        }
    }
}

/// How long the addresses wait for a TXT lookup still under way when they are
/// found: past that, they go out with the last config found.
const TXT_GRACE: Duration = Duration::from_secs(1);

/// Looks up `host`'s addresses and, when `with_config`, its service config, at the
/// same time; the config is `None` when its lookup failed or was too slow (keep the
/// last one).
async fn lookup(
    resolver: &TokioResolver,
    host: &str,
    client: &Client,
    with_config: bool,
) -> (
    Result<hickory_resolver::lookup_ip::LookupIp, hickory_resolver::net::NetError>,
    Option<ConfigFound>,
) {
    let mut ip = std::pin::pin!(resolver.lookup_ip(host));
    if !with_config {
        return (ip.await, None);
    }
    let mut txt = std::pin::pin!(service_config(resolver, host, client));
    let mut found = None;
    let ips = loop {
        tokio::select! {
            ips = &mut ip => break ips,
            config = &mut txt, if found.is_none() => found = Some(config),
        }
    };
    let config = match found {
        Some(config) => config,
        None => tokio::time::timeout(TXT_GRACE, txt).await.ok().flatten(),
    };
    (ips, config)
}

/// What the TXT records of `_grpc_config.<host>` said.
#[derive(Debug, Clone)]
enum ConfigFound {
    /// No `grpc_config` record, or no choice for this client.
    None,
    /// The chosen service config (JSON).
    Config(String),
    /// A malformed record.
    Invalid(Arc<TxtConfigError>),
}

impl ConfigFound {
    fn apply(&self, state: ResolverState) -> ResolverState {
        match self {
            ConfigFound::None => state,
            ConfigFound::Config(json) => state.with_service_config(json.clone()),
            ConfigFound::Invalid(error) => state.with_service_config_error(error.clone()),
        }
    }
}

/// Whether a lookup error says the records do not exist (`NXDOMAIN`, or `NOERROR`
/// with no answer), rather than that the lookup failed.
fn absent(error: &hickory_resolver::net::NetError) -> bool {
    use hickory_resolver::net::{DnsError, NetError};
    use hickory_resolver::proto::op::ResponseCode;
    matches!(
        error,
        NetError::Dns(DnsError::NoRecordsFound(no))
            if matches!(no.response_code, ResponseCode::NXDomain | ResponseCode::NoError)
    )
}

/// Looks up the service config of `host` (gRFC A2); `None` when the lookup failed
/// for a reason other than the name or record not existing (keep the last one).
async fn service_config(
    resolver: &TokioResolver,
    host: &str,
    client: &Client,
) -> Option<ConfigFound> {
    let name = format!("{GRPC_CONFIG_PREFIX}{host}");
    let records: Vec<Vec<Box<[u8]>>> = match resolver.txt_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => Some(txt.txt_data.to_vec()),
                _ => None,
            })
            .collect(),
        // The name does not exist, or has no TXT record: no service config. A
        // failure (SERVFAIL, a timeout) says nothing: the last config stands.
        Err(e) if absent(&e) => Vec::new(),
        Err(e) => {
            tracing::warn!(%name, error = %e, "the TXT lookup for a service config failed; keeping the last one");
            return None;
        }
    };
    let Some(value) = find_grpc_config(&records) else {
        return Some(ConfigFound::None);
    };
    Some(
        match choose_service_config(&value, client, || fastrand::u32(1..=100)) {
            Ok(Some(json)) => ConfigFound::Config(json),
            Ok(None) => ConfigFound::None,
            Err(error) => {
                tracing::warn!(%name, %error, "ignoring a malformed service config in DNS");
                ConfigFound::Invalid(Arc::new(error))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(endpoint: &str) -> Result<(String, u16), String> {
        let target = Target::parse(&format!("dns:///{endpoint}")).unwrap();
        split_host_port(&target, target.endpoint(), 443)
            .map(|(h, p)| (h.to_owned(), p))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            split("example.com:50051").unwrap(),
            ("example.com".into(), 50051)
        );
        assert_eq!(split("example.com").unwrap(), ("example.com".into(), 443));
        assert_eq!(split("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(split("[::1]").unwrap(), ("::1".into(), 443));
        for (bad, why) in [
            ("example.com:0", "1 to 65535"),
            ("example.com:http", "1 to 65535"),
            (":80", "empty host"),
            ("::1:80", "brackets"),
            ("[::1", "missing `]`"),
            ("[::1]x", "[ipv6]:port"),
        ] {
            let err = split(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_authority_must_be_an_ip() {
        let t = Target::parse("dns://ns.example:53/a:1").unwrap();
        assert!(
            name_server(&t)
                .unwrap_err()
                .to_string()
                .contains("must be an IP")
        );
        let t = Target::parse("dns://127.0.0.1:5353/a:1").unwrap();
        let ns = name_server(&t).unwrap().unwrap();
        assert!(ns.connections.iter().all(|c| c.port == 5353));
        let t = Target::parse("dns://127.0.0.1/a:1").unwrap();
        assert!(
            name_server(&t)
                .unwrap()
                .unwrap()
                .connections
                .iter()
                .all(|c| c.port == 53)
        );
    }
}
