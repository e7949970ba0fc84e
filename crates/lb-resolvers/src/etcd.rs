//! etcd discovery (feature `etcd`): a resolver for `etcd:///service` and a registrar
//! for servers, in the format of etcd's Go package `naming/endpoints`, so Go services
//! registered with it are found by our clients and the other way round.
//!
//! * Key `service/<anything>` (usually `service/host:port`), value JSON
//!   `{"Op":0,"Addr":"host:port","Metadata":...}`. `Metadata` becomes the address
//!   attribute [`crate::Metadata`]; a positive integer `Metadata.weight` also becomes
//!   its [`lb_core::Weight`].
//! * The resolver lists the prefix `service/`, then watches it from the listed
//!   revision, and sends the complete set after every change. After a disconnect it
//!   resumes the watch from the last revision it saw; after a compaction it lists
//!   again. Errors are reported and the last good set stays.
//! * The registrar puts its key with a lease, keeps the lease alive, puts it again
//!   under a new lease if the lease is lost (an etcd restart, a long pause), and
//!   deletes it on [`EtcdRegistrar::deregister`]. A registrar that dies leaves the key
//!   to expire with the lease's TTL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverState, Target};
use serde_json::Value;
use tokio::sync::oneshot;

/// Connection settings for etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// etcd endpoints (`http://host:port`) for targets without an authority.
    pub endpoints: Vec<String>,
    /// Wait this long before reconnecting or re-listing after an error (default 1 s).
    pub retry_interval: Duration,
    /// Connect and request timeout (default 5 s).
    pub timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            retry_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdOptions {
    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(self.timeout, self.timeout)
    }
}

/// An error talking to etcd.
#[derive(Debug, thiserror::Error)]
#[error("etcd ({what}): {source}")]
pub struct EtcdError {
    what: String,
    source: etcd_client::Error,
}

fn etcd_error(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> EtcdError {
    let what = what.into();
    move |source| EtcdError { what, source }
}

/// Parses one value in the `naming/endpoints` format. Errors say what is wrong.
pub fn parse_endpoint(value: &[u8]) -> Result<Address, String> {
    let json: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let obj = json.as_object().ok_or("not a JSON object")?;
    match obj.get("Op") {
        None => {}
        Some(op) if op.as_u64() == Some(0) => {}
        Some(op) => return Err(format!("`Op` is {op}, not 0 (Add)")),
    }
    let addr = obj
        .get("Addr")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("missing `Addr`")?;
    crate::static_list::check_host_port(addr)
        .map_err(|reason| format!("`Addr` {addr:?}: {reason}"))?;
    Ok(crate::watching::with_metadata(
        Address::new(addr),
        obj.get("Metadata"),
    ))
}

/// The value a registrar writes for `addr`.
pub fn endpoint_value(addr: &str, metadata: Option<&Value>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("Op".to_owned(), Value::from(0));
    obj.insert("Addr".to_owned(), Value::from(addr));
    obj.insert(
        "Metadata".to_owned(),
        metadata.cloned().unwrap_or(Value::Null),
    );
    Value::Object(obj).to_string()
}

/// Builds resolvers for `etcd:///service` (etcd from [`EtcdOptions::endpoints`]) and
/// `etcd://host:port,host:port/service`.
#[derive(Debug, Clone, Default)]
pub struct EtcdResolverBuilder {
    options: EtcdOptions,
}

impl EtcdResolverBuilder {
    /// A builder with these options.
    pub fn new(options: EtcdOptions) -> Self {
        Self { options }
    }
}

impl ResolverBuilder for EtcdResolverBuilder {
    fn scheme(&self) -> &str {
        "etcd"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let service = crate::watching::service_name(target)?;
        let mut options = self.options.clone();
        if !target.authority().is_empty() {
            options.endpoints = target
                .authority()
                .split(',')
                .map(|hp| format!("http://{hp}"))
                .collect();
        }
        crate::watching::spawn(target, watch_service(format!("{service}/"), options, cc))
    }
}

/// What the resolver knows: the entries by key, and the revision they are current at.
struct Known {
    entries: BTreeMap<String, Address>,
    revision: Option<i64>,
}

impl Known {
    fn apply_put(&mut self, key: &str, value: &[u8]) {
        match parse_endpoint(value) {
            Ok(address) => {
                self.entries.insert(key.to_owned(), address);
            }
            Err(reason) => {
                // A malformed entry is skipped; it never hides the good ones.
                tracing::warn!(%key, %reason, "skipping a malformed etcd entry");
                self.entries.remove(key);
            }
        }
    }

    fn state(&self) -> ResolverState {
        ResolverState::new(self.entries.values().cloned().collect())
    }
}

async fn watch_service(prefix: String, options: EtcdOptions, cc: Arc<dyn ClientConn>) {
    let mut known = Known {
        entries: BTreeMap::new(),
        revision: None,
    };
    loop {
        if let Err(e) = follow(&prefix, &options, &mut known, cc.as_ref()).await {
            tracing::warn!(%prefix, error = %e, "etcd resolver error; retrying");
            cc.report_error(Arc::new(e));
        }
        tokio::time::sleep(options.retry_interval).await;
    }
}

/// Connects, lists if needed, then follows the watch until something fails.
async fn follow(
    prefix: &str,
    options: &EtcdOptions,
    known: &mut Known,
    cc: &dyn ClientConn,
) -> Result<(), EtcdError> {
    let mut client = Client::connect(&options.endpoints, Some(options.connect_options()))
        .await
        .map_err(etcd_error(format!("connect to {:?}", options.endpoints)))?;
    loop {
        let revision = match known.revision {
            Some(r) => r,
            None => {
                let listed = client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(etcd_error(format!("list {prefix}")))?;
                known.entries.clear();
                for kv in listed.kvs() {
                    known.apply_put(&String::from_utf8_lossy(kv.key()), kv.value());
                }
                let r = listed.header().map_or(0, |h| h.revision());
                known.revision = Some(r);
                cc.update_state(known.state());
                r
            }
        };
        let watch_options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut stream = client
            .watch(prefix, Some(watch_options))
            .await
            .map_err(etcd_error(format!("watch {prefix}")))?;
        loop {
            let Some(response) = stream
                .message()
                .await
                .map_err(etcd_error(format!("watch {prefix}")))?
            else {
                return Err(EtcdError {
                    what: format!("watch {prefix}"),
                    source: etcd_client::Error::WatchError("the watch stream ended".to_owned()),
                });
            };
            if response.compact_revision() > 0 || response.canceled() {
                // Our revision was compacted away: list again.
                tracing::info!(%prefix, compacted = response.compact_revision(), "etcd watch canceled; listing again");
                known.revision = None;
                break;
            }
            if response.events().is_empty() {
                if let Some(h) = response.header() {
                    known.revision = Some(known.revision.unwrap_or(0).max(h.revision()));
                }
                continue; // created or progress notification
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Put => known.apply_put(&key, kv.value()),
                    EventType::Delete => {
                        known.entries.remove(&key);
                    }
                }
                known.revision = Some(kv.mod_revision());
            }
            cc.update_state(known.state());
        }
    }
}

/// A server's registration in etcd, kept alive in the background.
///
/// Dropping it without [`EtcdRegistrar::deregister`] stops the keep-alive, as if the
/// process died: the key expires with its lease.
pub struct EtcdRegistrar {
    key: String,
    keeper: crate::watching::Keeper,
}

impl EtcdRegistrar {
    /// Registers `addr` under `service/addr` with a lease of `ttl` and keeps it alive.
    /// Returns once the first registration is written; fails if etcd cannot be
    /// reached within the timeout.
    pub async fn register(
        options: EtcdOptions,
        service: &str,
        addr: &str,
        metadata: Option<Value>,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        let key = format!("{}/{addr}", service.trim_matches('/'));
        let value = endpoint_value(addr, metadata.as_ref());
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = Client::connect(&options.endpoints, Some(options.connect_options()))
            .await
            .map_err(etcd_error(format!("connect to {:?}", options.endpoints)))?;
        let lease = put_with_lease(&mut client, &key, &value, ttl).await?;
        let owned_key = key.clone();
        let keeper = crate::watching::Keeper::spawn(move |stopped| {
            keep_registered(client, owned_key, value, ttl, lease, options, stopped)
        });
        Ok(Self { key, keeper })
    }

    /// The key this registrar owns.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Deletes the key and revokes the lease, then stops.
    pub async fn deregister(self) {
        self.keeper.stop().await;
    }
}

async fn put_with_lease(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, EtcdError> {
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(etcd_error("lease grant"))?
        .id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(etcd_error(format!("put {key}")))?;
    tracing::debug!(%key, lease, "registered in etcd");
    Ok(lease)
}

async fn keep_registered(
    mut client: Client,
    key: String,
    value: String,
    ttl: i64,
    mut lease: i64,
    options: EtcdOptions,
    mut stopped: oneshot::Receiver<()>,
) {
    let interval = Duration::from_secs(u64::try_from(ttl).unwrap_or(1).max(3) / 3);
    loop {
        let alive = keep_alive(&mut client, lease, interval);
        tokio::select! {
            _ = &mut stopped => break,
            reason = alive => tracing::warn!(%key, lease, %reason, "etcd lease lost; registering again"),
        }
        // Register again, under a new lease, until it works or we are stopped.
        loop {
            let again = async {
                let mut fresh =
                    Client::connect(&options.endpoints, Some(options.connect_options()))
                        .await
                        .map_err(etcd_error("reconnect"))?;
                let l = put_with_lease(&mut fresh, &key, &value, ttl).await?;
                Ok::<_, EtcdError>((fresh, l))
            };
            tokio::select! {
                _ = &mut stopped => return deregister(&mut client, &key, lease).await,
                result = again => match result {
                    Ok((fresh, l)) => {
                        client = fresh;
                        lease = l;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "etcd registration failed; retrying");
                        tokio::time::sleep(options.retry_interval).await;
                    }
                },
            }
        }
    }
    deregister(&mut client, &key, lease).await;
}

/// Keeps `lease` alive until that fails; returns why.
async fn keep_alive(client: &mut Client, lease: i64, interval: Duration) -> String {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return e.to_string(),
    };
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return e.to_string();
        }
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            Ok(Some(_)) => return "the lease expired".to_owned(),
            Ok(None) => return "the keep-alive stream ended".to_owned(),
            Err(e) => return e.to_string(),
        }
        tokio::time::sleep(interval).await;
    }
}

async fn deregister(client: &mut Client, key: &str, lease: i64) {
    if let Err(e) = client.delete(key, None).await {
        tracing::warn!(%key, error = %e, "could not delete the etcd key");
    }
    let _ = client.lease_revoke(lease).await;
    tracing::debug!(%key, "deregistered from etcd");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;

    #[test]
    fn parses_the_go_format_and_names_what_is_wrong() {
        let a =
            parse_endpoint(br#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"weight":3,"zone":"a"}}"#)
                .unwrap();
        assert_eq!(a.addr(), "10.0.0.1:80");
        assert_eq!(a.weight().get(), 3);
        assert_eq!(a.attributes().get::<Metadata>().unwrap().0["zone"], "a");
        let b = parse_endpoint(br#"{"Addr":"h:1"}"#).unwrap();
        assert_eq!(b.weight().get(), 1);
        for (bad, why) in [
            (&b"nope"[..], "not JSON"),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"Op":1,"Addr":"h:1"}"#, "not 0"),
            (br#"{"Op":0}"#, "missing `Addr`"),
            (br#"{"Addr":"no-port"}"#, "`Addr`"),
        ] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // An invalid weight is dropped, the address kept.
        let c = parse_endpoint(br#"{"Addr":"h:1","Metadata":{"weight":0}}"#).unwrap();
        assert_eq!(c.weight().get(), 1);
    }

    #[test]
    fn writes_what_it_reads() {
        let v = endpoint_value("10.0.0.1:80", Some(&serde_json::json!({"weight": 2})));
        let a = parse_endpoint(v.as_bytes()).unwrap();
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:80", 2));
    }
}
