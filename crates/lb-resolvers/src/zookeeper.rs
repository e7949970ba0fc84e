//! ZooKeeper discovery (feature `zookeeper`): a resolver for `zk:///service` and a
//! registrar for servers, in Apache Curator's service-discovery format, so Java
//! services registered with Curator are found by our clients.
//!
//! * Instances are children of `/<base>/<service>` (base `/services` by default), each
//!   holding Curator's `ServiceInstance` JSON: `name`, `id`, `address`, `port`,
//!   `payload`, `registrationTimeUTC`, `serviceType`. `address:port` is the address;
//!   `payload` becomes the attribute [`crate::Metadata`], and a positive integer
//!   `payload.weight` the [`lb_core::Weight`].
//! * The resolver sets a persistent recursive watch on the service node, lists and
//!   reads the children, and does so again on every change. After connection loss or
//!   session expiry it starts over with a new session, watch and list (a restarted
//!   server may have forgotten the watch). Errors are reported; the last good set
//!   stays.
//! * The registrar creates an ephemeral node `/<base>/<service>/<id>` and creates it
//!   again under a new session after expiry; deregistering deletes it. A registrar
//!   that dies leaves the node to vanish with its session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverState, Target};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use zookeeper_client as zk;

/// ZooKeeper connection settings.
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// The connect string (`host:port,host:port`) for targets without an authority.
    pub cluster: String,
    /// The parent of every service node (default `/services`).
    pub base_path: String,
    /// The session timeout asked for (default 10 s).
    pub session_timeout: Duration,
    /// Wait this long before reconnecting after an error (default 1 s).
    pub retry_interval: Duration,
}

impl Default for ZkOptions {
    fn default() -> Self {
        Self {
            cluster: "127.0.0.1:2181".to_owned(),
            base_path: "/services".to_owned(),
            session_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl ZkOptions {
    fn service_path(&self, service: &str) -> String {
        format!(
            "{}/{}",
            self.base_path.trim_end_matches('/'),
            service.trim_matches('/')
        )
    }

    async fn connect(&self) -> Result<zk::Client, ZkError> {
        zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .connect(&self.cluster)
            .await
            .map_err(zk_error(format!("connect to {}", self.cluster)))
    }
}

/// An error talking to ZooKeeper.
#[derive(Debug, thiserror::Error)]
#[error("ZooKeeper ({what}): {source}")]
pub struct ZkError {
    what: String,
    source: zk::Error,
}

fn zk_error(what: impl Into<String>) -> impl FnOnce(zk::Error) -> ZkError {
    let what = what.into();
    move |source| ZkError { what, source }
}

/// Parses one Curator `ServiceInstance`. Errors say what is wrong.
pub fn parse_instance(data: &[u8]) -> Result<Address, String> {
    let json: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let obj = json.as_object().ok_or("not a JSON object")?;
    let host = obj
        .get("address")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("missing `address`")?;
    let port = obj
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or("missing or invalid `port`")?;
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    crate::static_list::check_host_port(&addr).map_err(|reason| format!("{addr:?}: {reason}"))?;
    Ok(crate::watching::with_metadata(
        Address::new(addr),
        obj.get("payload"),
    ))
}

/// The Curator `ServiceInstance` a registrar writes.
pub fn instance_json(
    service: &str,
    id: &str,
    host: &str,
    port: u16,
    payload: Option<&Value>,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "name": service,
        "id": id,
        "address": host,
        "port": port,
        "sslPort": null,
        "payload": payload.cloned().unwrap_or(Value::Null),
        "registrationTimeUTC": now,
        "serviceType": "DYNAMIC",
        "uriSpec": null,
    })
    .to_string()
}

/// Builds resolvers for `zk:///service` and `zk://host:port,host:port/service`.
#[derive(Debug, Clone, Default)]
pub struct ZkResolverBuilder {
    options: ZkOptions,
}

impl ZkResolverBuilder {
    /// A builder with these options.
    pub fn new(options: ZkOptions) -> Self {
        Self { options }
    }
}

impl ResolverBuilder for ZkResolverBuilder {
    fn scheme(&self) -> &str {
        "zk"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let service = crate::watching::service_name(target)?;
        let mut options = self.options.clone();
        if !target.authority().is_empty() {
            options.cluster = target.authority().to_owned();
        }
        let path = options.service_path(service);
        crate::watching::spawn(target, watch_service(path, options, cc))
    }
}

async fn watch_service(path: String, options: ZkOptions, cc: Arc<dyn ClientConn>) {
    loop {
        if let Err(e) = follow(&path, &options, cc.as_ref()).await {
            tracing::warn!(%path, error = %e, "ZooKeeper resolver error; retrying");
            cc.report_error(Arc::new(e));
        }
        tokio::time::sleep(options.retry_interval).await;
    }
}

/// One session: watch, list, and list again on every change, until the session ends.
async fn follow(path: &str, options: &ZkOptions, cc: &dyn ClientConn) -> Result<(), ZkError> {
    let client = options.connect().await?;
    // Watch first, then list: no change can fall between the two.
    let mut watcher = client
        .watch(path, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(zk_error(format!("watch {path}")))?;
    let mut last: Option<Vec<Address>> = None;
    loop {
        // Any failure starts over with a new session (see below).
        let addresses = list(&client, path).await?;
        if last.as_ref() != Some(&addresses) {
            cc.update_state(ResolverState::new(addresses.clone()));
            last = Some(addresses);
        }
        let event = watcher.changed().await;
        if event.event_type == zk::EventType::Session
            && (event.session_state == zk::SessionState::Disconnected
                || event.session_state.is_terminated())
        {
            // The watch may not survive the reconnect (a restarted server forgets it),
            // so start over: a new session, a new watch, a fresh list.
            return Err(ZkError {
                what: format!("session for {path}"),
                source: match event.session_state {
                    zk::SessionState::Disconnected => zk::Error::ConnectionLoss,
                    zk::SessionState::Closed => zk::Error::ClientClosed,
                    _ => zk::Error::SessionExpired,
                },
            });
        }
    }
}

/// The instances under `path` (empty when the node does not exist yet).
async fn list(client: &zk::Client, path: &str) -> Result<Vec<Address>, ZkError> {
    let children = match client.list_children(path).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(zk_error(format!("list {path}"))(e)),
    };
    let mut found = BTreeMap::new();
    for child in children {
        let child_path = format!("{path}/{child}");
        match client.get_data(&child_path).await {
            Ok((data, _)) => match parse_instance(&data) {
                Ok(address) => {
                    found.insert(child, address);
                }
                Err(reason) => {
                    tracing::warn!(node = %child_path, %reason, "skipping a malformed ZooKeeper entry")
                }
            },
            Err(zk::Error::NoNode) => {} // gone meanwhile
            Err(e) => return Err(zk_error(format!("read {child_path}"))(e)),
        }
    }
    Ok(found.into_values().collect())
}

/// A server's ephemeral registration in ZooKeeper.
///
/// Dropping it without [`ZkRegistrar::deregister`] acts like a dead process: the node
/// vanishes when the session expires.
pub struct ZkRegistrar {
    path: String,
    keeper: crate::watching::Keeper,
}

impl ZkRegistrar {
    /// Registers `host:port` as instance `id` of `service` (creating the parent nodes
    /// when missing). Returns once the node exists.
    pub async fn register(
        options: ZkOptions,
        service: &str,
        id: &str,
        host: &str,
        port: u16,
        payload: Option<Value>,
    ) -> Result<Self, ZkError> {
        let service_path = options.service_path(service);
        let path = format!("{service_path}/{id}");
        let data = instance_json(service.trim_matches('/'), id, host, port, payload.as_ref());
        let client = options.connect().await?;
        create(&client, &service_path, &path, &data).await?;
        let owned_path = path.clone();
        let keeper = crate::watching::Keeper::spawn(move |stopped| {
            keep_registered(client, service_path, owned_path, data, options, stopped)
        });
        Ok(Self { path, keeper })
    }

    /// The instance's node.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Deletes the node and closes the session.
    pub async fn deregister(self) {
        self.keeper.stop().await;
    }
}

async fn create(client: &zk::Client, parent: &str, path: &str, data: &str) -> Result<(), ZkError> {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    match client.mkdir(parent, &persistent).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => return Err(zk_error(format!("create {parent}"))(e)),
    }
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match client.create(path, data.as_bytes(), &ephemeral).await {
        Ok(_) => {}
        // Left over from our previous session, still expiring: replace it.
        Err(zk::Error::NodeExists) => {
            let _ = client.delete(path, None).await;
            client
                .create(path, data.as_bytes(), &ephemeral)
                .await
                .map_err(zk_error(format!("create {path}")))?;
        }
        Err(e) => return Err(zk_error(format!("create {path}"))(e)),
    }
    tracing::debug!(%path, "registered in ZooKeeper");
    Ok(())
}

async fn keep_registered(
    mut client: zk::Client,
    parent: String,
    path: String,
    data: String,
    options: ZkOptions,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let mut states = client.state_watcher();
        let expired = async {
            loop {
                if states.changed().await.is_terminated() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            () = expired => tracing::warn!(%path, "ZooKeeper session ended; registering again"),
        }
        loop {
            let again = async {
                let fresh = options.connect().await?;
                create(&fresh, &parent, &path, &data).await?;
                Ok::<_, ZkError>(fresh)
            };
            tokio::select! {
                _ = &mut stopped => return,
                result = again => match result {
                    Ok(fresh) => {
                        client = fresh;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "ZooKeeper registration failed; retrying");
                        tokio::time::sleep(options.retry_interval).await;
                    }
                },
            }
        }
    }
    if let Err(e) = client.delete(&path, None).await {
        tracing::warn!(%path, error = %e, "could not delete the ZooKeeper node");
    }
    tracing::debug!(%path, "deregistered from ZooKeeper");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;

    #[test]
    fn parses_curator_instances_and_names_what_is_wrong() {
        let a = parse_instance(
            br#"{"name":"greeter","id":"1","address":"10.0.0.1","port":8080,"payload":{"weight":2,"dc":"x"},"registrationTimeUTC":1,"serviceType":"DYNAMIC"}"#,
        )
        .unwrap();
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:8080", 2));
        assert_eq!(a.attributes().get::<Metadata>().unwrap().0["dc"], "x");
        assert_eq!(
            parse_instance(br#"{"address":"::1","port":1}"#)
                .unwrap()
                .addr(),
            "[::1]:1"
        );
        for (bad, why) in [
            (&b"x"[..], "not JSON"),
            (br#"1"#, "not a JSON object"),
            (br#"{"port":1}"#, "missing `address`"),
            (br#"{"address":"h"}"#, "`port`"),
            (br#"{"address":"h","port":70000}"#, "`port`"),
        ] {
            assert!(parse_instance(bad).unwrap_err().contains(why), "{why}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let data = instance_json(
            "greeter",
            "id1",
            "127.0.0.1",
            9000,
            Some(&json!({"weight": 5})),
        );
        let a = parse_instance(data.as_bytes()).unwrap();
        assert_eq!((a.addr(), a.weight().get()), ("127.0.0.1:9000", 5));
        let v: Value = serde_json::from_str(&data).unwrap();
        for field in [
            "name",
            "id",
            "address",
            "port",
            "payload",
            "registrationTimeUTC",
            "serviceType",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
