//! ZooKeeper discovery (feature `zookeeper`): a resolver for `zk:///service` and a
//! registrar for servers, in Apache Curator's service-discovery format, so Java
//! services registered with Curator are found by our clients. Needs ZooKeeper 3.6 or
//! later (persistent recursive watches).
//!
//! * Instances are children of `/<base>/<service>` (base `/services` by default), each
//!   holding Curator's `ServiceInstance` JSON: `name`, `id`, `address`, `port`,
//!   `sslPort`, `payload`, `enabled`, `registrationTimeUTC`, `serviceType`.
//!   `address:port` is the address (`sslPort` when there is no `port`); an instance
//!   with `"enabled": false` is not a target. `payload` becomes the attribute
//!   [`crate::Metadata`], and `payload.weight` (a positive integer, or a string
//!   holding one) the [`lb_core::Weight`].
//! * The resolver sets a persistent recursive watch on the service node, then lists
//!   the children and reads them all, pipelined. After that each event for a child
//!   (created, deleted, data changed) costs one read of that child; events for deeper
//!   nodes are ignored. Complete states go out at most once per
//!   [`ZkResolverBuilder::with_update_delay`] (a burst goes out in a few).
//! * A plain disconnect is reported and the set kept; the client reconnects within
//!   the session timeout, keeping its session, and the resolver then adds its watch
//!   again (zookeeper-client re-registers only one-shot watches) and lists again
//!   (events that happen while disconnected may be lost, ZOOKEEPER-4698).
//!   After session expiry it starts over with a new session, watch and list. A child
//!   that cannot be read (no such node any more, no permission) is skipped; errors
//!   are reported, the last good set stays, and retries wait with jittered
//!   exponential backoff.
//! * Every resolver of a process (on one tokio runtime) following the same ensemble
//!   with the same session timeout shares one ZooKeeper session; each adds its own
//!   watch to it.
//! * The registrar creates an ephemeral node `/<base>/<service>/<id>` under its own
//!   session. If the node exists under another session (an old process with the same
//!   id), it leaves it alone and creates its own once that one is gone. It creates
//!   its node again if someone else deletes it while its session lives, and under a
//!   new session after an expiry. Deregistering deletes the node only if this
//!   registrar's session owns it, then closes the session. A registrar that dies
//!   leaves its node to vanish with its session.
//! * Secured ZooKeeper: [`ZkOptions::with_digest`] authenticates sessions of resolvers
//!   and registrars (`addauth digest user:password`), and [`ZkOptions::with_acl`]
//!   protects the nodes a registrar creates ([`ZkAcl::CreatorAll`]: only sessions
//!   with the same digest may change them; optionally anyone may read them). A
//!   request an ACL refuses is a [`ZkError::NotAuthorized`] naming the ensemble.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, Target};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use zookeeper_client as zk;

use crate::EntryError;
use crate::backoff::Backoff;
use crate::watching::{
    DEFAULT_MAX_RETRY_INTERVAL, DEFAULT_UPDATE_DELAY, Entries, ErrorLog, Listed, Parsed, Publisher,
    SharedClients,
};

/// Reads in flight at once during a full list.
const PIPELINE: usize = 1024;

/// ZooKeeper connection settings.
///
/// Build it with struct update syntax (`..ZkOptions::default()`) and the `with_`
/// methods:
///
/// ```
/// use lb_resolvers::zookeeper::{ZkAcl, ZkOptions};
///
/// let options = ZkOptions {
///     cluster: "10.0.0.7:2181,10.0.0.8:2181".to_owned(),
///     ..ZkOptions::default()
/// }
/// .with_digest("greeter", "s3cret")
/// .with_acl(ZkAcl::CreatorAll { world_read: true });
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ZkOptions {
    /// The connect string (`host:port,host:port`) for targets without an authority.
    pub cluster: String,
    /// The parent of every service node (default `/services`).
    pub base_path: String,
    /// The session timeout asked for (default 10 s).
    pub session_timeout: Duration,
    /// The first wait before reconnecting or registering again after an error
    /// (default 1 s); each further wait is 1.6 times longer, up to 10 s (see
    /// [`ZkResolverBuilder::with_max_retry_interval`]), each randomized by ±20% so
    /// that clients do not retry in lockstep.
    pub retry_interval: Duration,
    /// Digest credentials every session authenticates with (default `None`). See
    /// [`ZkOptions::with_digest`].
    pub digest: Option<ZkDigest>,
    /// The ACL of the nodes a registrar creates (default [`ZkAcl::Open`]). See
    /// [`ZkOptions::with_acl`].
    pub acl: ZkAcl,
}

impl Default for ZkOptions {
    fn default() -> Self {
        Self {
            cluster: "127.0.0.1:2181".to_owned(),
            base_path: "/services".to_owned(),
            session_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
            digest: None,
            acl: ZkAcl::Open,
        }
    }
}

/// A user and password for ZooKeeper's `digest` scheme. Its `Debug` output hides the
/// password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ZkDigest {
    /// The user (no `:` in it).
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for ZkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkDigest")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Who may do what with the nodes a registrar creates: its instance node, the service
/// node and missing parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ZkAcl {
    /// Anyone may do anything (`world:anyone:cdrwa`, ZooKeeper's `OPEN_ACL_UNSAFE`), as
    /// Curator does by default.
    #[default]
    Open,
    /// Only sessions authenticated with the registrar's digest may do anything with
    /// the instance and service nodes (`auth::cdrwa`, ZooKeeper's
    /// `CREATOR_ALL_ACL`); with `world_read`, anyone may also read them, so resolvers
    /// need no credentials. Parents above the service node that the registrar creates
    /// are readable by anyone and anyone may create children in them, so other
    /// services can register beside it. Needs [`ZkOptions::with_digest`].
    CreatorAll {
        /// Whether anyone may read the nodes (`world:anyone:r`).
        world_read: bool,
    },
}

impl ZkAcl {
    /// The ACL of the service and instance nodes.
    fn node_acl(self) -> Vec<zk::Acl> {
        match self {
            ZkAcl::Open => vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())],
            ZkAcl::CreatorAll { world_read } => {
                let mut acl = vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed())];
                if world_read {
                    acl.push(zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()));
                }
                acl
            }
        }
    }

    /// The ACL of the parents above the service node.
    fn parent_acl(self) -> Vec<zk::Acl> {
        match self {
            ZkAcl::Open => self.node_acl(),
            ZkAcl::CreatorAll { .. } => vec![
                zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
                zk::Acl::new(
                    zk::Permission::READ | zk::Permission::CREATE,
                    zk::AuthId::anyone(),
                ),
            ],
        }
    }
}

impl ZkOptions {
    /// Authenticate every session with ZooKeeper's `digest` scheme as `user` with
    /// `password` (`addauth digest user:password`). ZooKeeper accepts any digest; a
    /// wrong password shows when an ACL refuses a request, as a
    /// [`ZkError::NotAuthorized`].
    #[must_use]
    pub fn with_digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some(ZkDigest {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The ACL of the nodes a registrar creates (default [`ZkAcl::Open`]).
    #[must_use]
    pub fn with_acl(mut self, acl: ZkAcl) -> Self {
        self.acl = acl;
        self
    }

    /// Checks the settings: a digest user that is not empty and has no `:`, and an
    /// ACL that can be set with the credentials given.
    pub fn validate(&self) -> Result<(), ZkError> {
        if let Some(digest) = &self.digest
            && (digest.user.is_empty() || digest.user.contains(':'))
        {
            return Err(ZkError::InvalidSetting {
                setting: "digest",
                reason: format!(
                    "the user `{}` must be non-empty and without `:`",
                    digest.user
                ),
            });
        }
        if matches!(self.acl, ZkAcl::CreatorAll { .. }) && self.digest.is_none() {
            return Err(ZkError::InvalidSetting {
                setting: "acl",
                reason: "`CreatorAll` grants the creator's digest identity, and there is none: set `with_digest` too".to_owned(),
            });
        }
        Ok(())
    }

    /// Who the sessions are, for error messages.
    fn identity(&self) -> String {
        match &self.digest {
            Some(d) => format!("digest user `{}`", d.user),
            None => "an unauthenticated session".to_owned(),
        }
    }

    /// The error to report for `e`: a request an ACL refused becomes
    /// [`ZkError::NotAuthorized`], naming the ensemble and who asked.
    fn explain(&self, e: ZkError) -> ZkError {
        match e {
            ZkError::Request {
                what,
                source: source @ (zk::Error::NoAuth | zk::Error::AuthFailed),
            } => ZkError::NotAuthorized {
                cluster: self.cluster.clone(),
                identity: self.identity(),
                what,
                source,
            },
            e => e,
        }
    }

    /// What makes two option sets share a session: the ensemble, the session timeout
    /// and the digest (its password only as a hash).
    fn session_key(&self) -> String {
        let digest = self.digest.as_ref().map(|d| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            d.password.hash(&mut hasher);
            (d.user.clone(), hasher.finish())
        });
        format!("{}|{:?}|{:?}", self.cluster, self.session_timeout, digest)
    }

    fn service_path(&self, service: &str) -> String {
        format!(
            "{}/{}",
            self.base_path.trim_end_matches('/'),
            service.trim_matches('/')
        )
    }

    async fn connect(&self) -> Result<zk::Client, ZkError> {
        let mut connector = zk::Client::connector().with_session_timeout(self.session_timeout);
        if let Some(digest) = &self.digest {
            let auth = format!("{}:{}", digest.user, digest.password);
            connector = connector.with_auth("digest", auth.as_bytes());
        }
        connector
            .connect(&self.cluster)
            .await
            .map_err(zk_error(format!("connect to {}", self.cluster)))
    }
}

/// An error talking to ZooKeeper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZkError {
    /// A request failed.
    #[error("ZooKeeper ({what}): {source}")]
    Request {
        /// What was asked (`list /services/greeter`, `connect to host:port`).
        what: String,
        /// The client's error.
        source: zk::Error,
    },
    /// The connection to the ensemble was lost; the client is reconnecting and the
    /// session lives on until its timeout.
    #[error("ZooKeeper connection lost while following {path}; reconnecting")]
    Disconnected {
        /// The followed service node.
        path: String,
    },
    /// ZooKeeper refused a request: no ACL of the node grants it to this session's
    /// identity (a wrong digest password, no digest, or a user the ACL does not
    /// name).
    #[error(
        "ZooKeeper at {cluster} refused {what} to {identity} (wrong digest password, or no ACL grants it): {source}"
    )]
    NotAuthorized {
        /// The ensemble's connect string.
        cluster: String,
        /// Who asked (``digest user `name` `` or `an unauthenticated session`).
        identity: String,
        /// What was asked (`list /services/greeter`, `create /services/greeter/1`).
        what: String,
        /// The client's error.
        source: zk::Error,
    },
    /// A setting in [`ZkOptions`] cannot be used.
    #[error("ZooKeeper option `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting (`digest`, `acl`).
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The session ended (expired, closed, authentication failed): a new one follows.
    #[error("ZooKeeper session for {path} ended: {state}")]
    SessionEnded {
        /// The followed node.
        path: String,
        /// The session's last state.
        state: String,
    },
}

fn zk_error(what: impl Into<String>) -> impl FnOnce(zk::Error) -> ZkError {
    let what = what.into();
    move |source| ZkError::Request { what, source }
}

/// Whether a read failed because of the node (skip it) rather than the session or
/// connection (start over).
fn is_node_error(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::NoNode
            | zk::Error::NoAuth
            | zk::Error::UnmarshalError { .. }
            | zk::Error::MarshallingError
            | zk::Error::Unimplemented
            | zk::Error::BadArguments(_)
            | zk::Error::UnexpectedErrorCode(_)
    )
}

fn parse(data: &[u8]) -> Parsed {
    let mut note = None;
    let address = parse_with_note(data, &mut note);
    Parsed { address, note }
}

fn parse_with_note(
    data: &[u8],
    note: &mut Option<EntryError>,
) -> Result<Option<Address>, EntryError> {
    let json: Value =
        serde_json::from_slice(data).map_err(|e| EntryError::NotJson(e.to_string()))?;
    let obj = json.as_object().ok_or(EntryError::NotAnObject)?;
    // Curator's `enabled` (Jackson also reads the string "false").
    if matches!(obj.get("enabled"), Some(Value::Bool(false)))
        || obj.get("enabled").and_then(Value::as_str) == Some("false")
    {
        return Ok(None);
    }
    let host = match obj.get("address") {
        None | Some(Value::Null) => return Err(EntryError::Missing("address")),
        Some(Value::String(a)) if a.is_empty() => return Err(EntryError::Missing("address")),
        Some(Value::String(a)) => a.as_str(),
        Some(other) => {
            return Err(EntryError::BadField {
                field: "address",
                found: other.to_string(),
                want: "a host name or IP address",
            });
        }
    };
    let (field, port) = match (obj.get("port"), obj.get("sslPort")) {
        (Some(p), _) if !p.is_null() => ("port", p),
        (_, Some(p)) if !p.is_null() => ("sslPort", p),
        _ => return Err(EntryError::Missing("port")),
    };
    let port = port
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| EntryError::BadField {
            field,
            found: port.to_string(),
            want: "a port from 1 to 65535",
        })?;
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    crate::static_list::check_host_port(&addr).map_err(|reason| EntryError::BadAddress {
        address: addr.clone(),
        reason,
    })?;
    let (address, weight_note) =
        crate::watching::with_metadata(Address::new(addr), obj.get("payload"));
    *note = weight_note;
    Ok(Some(address))
}

/// Parses one Curator `ServiceInstance`: its address, or `None` for an instance
/// marked `"enabled": false`. Errors say what is wrong. An invalid `payload.weight`
/// is dropped with a warning (the address weighs 1).
pub fn parse_instance(data: &[u8]) -> Result<Option<Address>, EntryError> {
    let mut note = None;
    let address = parse_with_note(data, &mut note)?;
    if let (Some(note), Some(address)) = (note, &address) {
        tracing::warn!(addr = %address, reason = %note, "ignoring an invalid weight");
    }
    Ok(address)
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
        "enabled": true,
    })
    .to_string()
}

/// One ZooKeeper session, shared by every resolver of the process (on one tokio
/// runtime) that follows the same ensemble with the same session timeout. Made on
/// first use, and again after it expires.
struct ZkSession {
    options: ZkOptions,
    client: tokio::sync::Mutex<Option<zk::Client>>,
}

static SESSIONS: LazyLock<SharedClients<ZkSession>> = LazyLock::new(SharedClients::new);

impl ZkSession {
    fn shared(runtime: &tokio::runtime::Handle, options: &ZkOptions) -> Arc<Self> {
        SESSIONS.get(runtime, &options.session_key(), || Self {
            options: options.clone(),
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The live session's client; a new session if there is none or it ended.
    async fn client(&self) -> Result<zk::Client, ZkError> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref().filter(|c| !c.state().is_terminated()) {
            return Ok(c.clone());
        }
        *client = None;
        let fresh = self.options.connect().await?;
        tracing::debug!(session = %fresh.session_id(), cluster = %self.options.cluster, "new ZooKeeper session");
        *client = Some(fresh.clone());
        Ok(fresh)
    }
}

/// Builds resolvers for `zk:///service` and `zk://host:port,host:port/service`.
#[derive(Debug, Clone)]
pub struct ZkResolverBuilder {
    options: ZkOptions,
    update_delay: Duration,
    max_retry_interval: Duration,
}

impl Default for ZkResolverBuilder {
    fn default() -> Self {
        Self::new(ZkOptions::default())
    }
}

impl ZkResolverBuilder {
    /// A builder with these options.
    pub fn new(options: ZkOptions) -> Self {
        Self {
            options,
            update_delay: DEFAULT_UPDATE_DELAY,
            max_retry_interval: DEFAULT_MAX_RETRY_INTERVAL,
        }
    }

    /// Complete states go out at most once per `delay` (default 5 ms): a change after
    /// a quiet spell at once, changes arriving within `delay` of the last state
    /// together when `delay` has passed. A burst of registrations thus makes a few
    /// picker rebuilds, not one each, and a lone registration waits for nothing. `Duration::ZERO` publishes after each
    /// batch of events read. A full list is published at once.
    #[must_use]
    pub fn with_update_delay(mut self, delay: Duration) -> Self {
        self.update_delay = delay;
        self
    }

    /// The longest wait between retries (default 10 s).
    #[must_use]
    pub fn with_max_retry_interval(mut self, max: Duration) -> Self {
        self.max_retry_interval = max;
        self
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
        let runtime = crate::watching::runtime(target)?;
        let mut options = self.options.clone();
        if !target.authority().is_empty() {
            options.cluster = target.authority().to_owned();
        }
        // A setting that cannot work fails the build, naming it.
        options.validate()?;
        let path = options.service_path(service);
        let follower = Follower {
            session: ZkSession::shared(&runtime, &options),
            entries: Entries::new("ZooKeeper node"),
            publisher: Publisher::new(cc, self.update_delay).with_note(
                "child",
                "children",
                format!("of `{path}` in ZooKeeper at {}", options.cluster),
            ),
            backoff: Backoff::new(options.retry_interval, self.max_retry_interval),
            log: ErrorLog::new(format!("ZooKeeper resolver for {path}")),
            path,
        };
        Ok(crate::watching::spawn(&runtime, follower.run()))
    }
}

/// One resolver's watch of one service node.
struct Follower {
    path: String,
    session: Arc<ZkSession>,
    /// By child name.
    entries: Entries,
    publisher: Publisher,
    backoff: Backoff,
    log: ErrorLog,
}

/// What a session event asks of the follower.
enum SessionStep {
    Carry,
    Relist,
    End(ZkError),
}

impl Follower {
    async fn run(mut self) {
        loop {
            let e = self.follow().await;
            self.error(e);
            self.backoff.wait().await;
        }
    }

    fn error(&mut self, e: ZkError) {
        let e = self.session.options.explain(e);
        self.log.error(&e);
        self.publisher.flush(&mut self.entries);
        self.publisher.report(Arc::new(e));
    }

    /// Watches, lists, then applies events until the session ends or a request fails.
    async fn follow(&mut self) -> ZkError {
        let client = match self.session.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut watcher = match self.watch_and_list(&client).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        self.backoff.connected();
        self.log.recovered();
        let mut pending: Option<zk::WatchedEvent> = None;
        loop {
            let event = match pending.take() {
                Some(e) => e,
                None => tokio::select! {
                    biased;
                    e = watcher.changed() => e,
                    () = self.publisher.due() => {
                        self.publisher.flush(&mut self.entries);
                        continue;
                    }
                },
            };
            if event.event_type == zk::EventType::Session {
                // After a terminal state the watcher must not be polled again.
                match self.on_session(&event) {
                    SessionStep::Carry => continue,
                    SessionStep::End(e) => return e,
                    SessionStep::Relist => {
                        // Back on the same session. zookeeper-client 0.11 re-sends
                        // only one-shot watches on reconnect, not persistent ones,
                        // and events during the disconnect may be lost anyway
                        // (ZOOKEEPER-4698): add the watch again, then list.
                        watcher = match self.watch_and_list(&client).await {
                            Ok(w) => w,
                            Err(e) => return e,
                        };
                        self.log.recovered();
                        continue;
                    }
                }
            }
            // A node event: read its child, with every other child whose event is
            // already queued, in one pipelined batch.
            let mut children = BTreeSet::new();
            self.note(&event, &mut children);
            while children.len() < PIPELINE {
                match watcher.changed().now_or_never() {
                    Some(e) if e.event_type == zk::EventType::Session => {
                        pending = Some(e);
                        break;
                    }
                    Some(e) => self.note(&e, &mut children),
                    None => break,
                }
            }
            if let Err(e) = self.read(&client, children).await {
                return e;
            }
            self.publisher.changed(&mut self.entries);
        }
    }

    /// Sets the persistent recursive watch, then lists: watching first, no change can
    /// fall between the two.
    async fn watch_and_list(
        &mut self,
        client: &zk::Client,
    ) -> Result<zk::PersistentWatcher, ZkError> {
        let watcher = client
            .watch(&self.path, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(zk_error(format!("watch {}", self.path)))?;
        self.list(client).await?;
        Ok(watcher)
    }

    fn on_session(&mut self, event: &zk::WatchedEvent) -> SessionStep {
        match event.session_state {
            zk::SessionState::Disconnected => {
                // The client reconnects by itself within the session timeout, keeping
                // the session and its watches: report, keep the set, wait.
                self.error(ZkError::Disconnected {
                    path: self.path.clone(),
                });
                SessionStep::Carry
            }
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                SessionStep::Relist
            }
            state => SessionStep::End(ZkError::SessionEnded {
                path: self.path.clone(),
                state: format!("{state:?}"),
            }),
        }
    }

    /// Adds the child an event is about, if it is a direct child of the service node.
    fn note(&self, event: &zk::WatchedEvent, children: &mut BTreeSet<String>) {
        if event.event_type == zk::EventType::Session {
            return;
        }
        let Some(child) = event
            .path
            .strip_prefix(self.path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return; // the service node itself: its children have events of their own
        };
        if !child.is_empty() && !child.contains('/') {
            children.insert(child.to_owned());
        }
    }

    /// Reads `children` (pipelined) and applies what they hold now.
    async fn read(
        &mut self,
        client: &zk::Client,
        children: BTreeSet<String>,
    ) -> Result<(), ZkError> {
        let reads: Vec<_> = children
            .into_iter()
            .map(|child| {
                let read = client.get_data(&format!("{}/{child}", self.path));
                (child, read)
            })
            .collect();
        for (child, read) in reads {
            match read.await {
                Ok((data, _)) => self.entries.put(&child, &data, parse),
                Err(zk::Error::NoNode) => self.entries.remove(&child),
                Err(e) if is_node_error(&e) => self.entries.unreadable(&child, &e.to_string()),
                Err(e) => return Err(zk_error(format!("read {}/{child}", self.path))(e)),
            }
        }
        self.backoff.succeeded();
        Ok(())
    }

    /// Lists the children and reads them all (pipelined); publishes.
    async fn list(&mut self, client: &zk::Client) -> Result<(), ZkError> {
        let children = match client.list_children(&self.path).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(zk_error(format!("list {}", self.path))(e)),
        };
        let mut listed = Vec::with_capacity(children.len());
        for window in children.chunks(PIPELINE) {
            let reads: Vec<_> = window
                .iter()
                .map(|child| client.get_data(&format!("{}/{child}", self.path)))
                .collect();
            for (child, read) in window.iter().zip(reads) {
                match read.await {
                    Ok((data, _)) => listed.push(Listed::Data(child.clone(), data)),
                    Err(zk::Error::NoNode) => {} // deleted between the list and the read
                    Err(e) if is_node_error(&e) => {
                        listed.push(Listed::Unreadable(child.clone(), e.to_string()));
                    }
                    Err(e) => {
                        return Err(zk_error(format!("read {}/{child}", self.path))(e));
                    }
                }
            }
        }
        self.entries.replace(listed, parse);
        self.publisher.listed(&mut self.entries);
        Ok(())
    }
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
    /// when missing). Returns once the node exists: ours, or another session's with
    /// the same id, which this registrar replaces by its own once it is gone.
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
        options.validate()?;
        let client = options.connect().await?;
        let node = Node {
            backoff: Backoff::new(options.retry_interval, DEFAULT_MAX_RETRY_INTERVAL),
            log: ErrorLog::new(format!("ZooKeeper registration {path}")),
            parent: service_path,
            path: path.clone(),
            data,
            options,
        };
        node.ensure(&client)
            .await
            .map_err(|e| node.options.explain(e))?;
        let keeper = crate::watching::Keeper::spawn(move |stopped| node.keep(client, stopped));
        Ok(Self { path, keeper })
    }

    /// The instance's node.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Deletes the node if this registrar's session owns it and closes the session.
    pub async fn deregister(self) {
        self.keeper.stop().await;
    }
}

/// A registrar's node and how to keep it.
struct Node {
    options: ZkOptions,
    parent: String,
    path: String,
    data: String,
    backoff: Backoff,
    log: ErrorLog,
}

impl Node {
    /// Creates the node unless it exists (ours, or another session's), and the
    /// service node and its parents if missing, with the configured ACLs.
    async fn ensure(&self, client: &zk::Client) -> Result<(), ZkError> {
        let node_acl = self.options.acl.node_acl();
        let parent_acl = self.options.acl.parent_acl();
        let above = self.parent.rsplit_once('/').map_or("", |(above, _)| above);
        if !above.is_empty() {
            let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&parent_acl));
            match client.mkdir(above, &persistent).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_error(format!("create {above}"))(e)),
            }
        }
        let service = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&node_acl));
        match client.create(&self.parent, &[], &service).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(zk_error(format!("create {}", self.parent))(e)),
        }
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&node_acl));
        match client
            .create(&self.path, self.data.as_bytes(), &ephemeral)
            .await
        {
            Ok(_) => tracing::debug!(path = %self.path, "registered in ZooKeeper"),
            Err(zk::Error::NodeExists) => {
                // Ours from an earlier attempt, or another process's with our id:
                // never delete it; `keep` takes over once it is gone.
                tracing::debug!(path = %self.path, "the node exists; watching it");
            }
            Err(e) => return Err(zk_error(format!("create {}", self.path))(e)),
        }
        Ok(())
    }

    async fn keep(mut self, mut client: zk::Client, mut stopped: oneshot::Receiver<()>) {
        self.backoff.connected();
        loop {
            let watched = tokio::select! {
                _ = &mut stopped => return self.deregister(&client).await,
                w = client.check_and_watch_stat(&self.path) => w,
            };
            let failed = match watched {
                Ok((None, _)) => {
                    // Gone (deleted by someone else, or the old owner left) while our
                    // session lives: create it again.
                    match self.ensure(&client).await {
                        Ok(()) => {
                            tracing::info!(path = %self.path, "our ZooKeeper node was missing; created it again");
                            continue;
                        }
                        Err(e) => Some(e),
                    }
                }
                Ok((Some(stat), watcher)) => {
                    if stat.ephemeral_owner != client.session_id().0 {
                        tracing::info!(path = %self.path, owner = %zk::SessionId(stat.ephemeral_owner), "the node belongs to another session; waiting for it to go");
                    }
                    let event = tokio::select! {
                        _ = &mut stopped => return self.deregister(&client).await,
                        e = watcher.changed() => e,
                    };
                    if event.event_type == zk::EventType::Session
                        && event.session_state.is_terminated()
                    {
                        Some(ZkError::SessionEnded {
                            path: self.path.clone(),
                            state: format!("{:?}", event.session_state),
                        })
                    } else {
                        self.log.recovered();
                        None // deleted or changed: look again
                    }
                }
                Err(e) => Some(zk_error(format!("watch {}", self.path))(e)),
            };
            let Some(e) = failed else { continue };
            let e = self.options.explain(e);
            self.log.error(&e);
            tokio::select! {
                _ = &mut stopped => return self.deregister(&client).await,
                () = self.backoff.wait() => {}
            }
            if client.state().is_terminated() {
                // The session is gone, and with it our node: a new session, a new node.
                let fresh = tokio::select! {
                    _ = &mut stopped => return,
                    r = self.options.connect() => r,
                };
                match fresh {
                    Ok(c) => {
                        client = c;
                        self.backoff.connected();
                    }
                    Err(e) => self.log.error(&e),
                }
            }
        }
    }

    /// Deletes the node if our session owns it; dropping the client then closes the
    /// session.
    async fn deregister(&self, client: &zk::Client) {
        match client.check_stat(&self.path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                if let Err(e) = client.delete(&self.path, Some(stat.version)).await {
                    tracing::warn!(path = %self.path, error = %e, "could not delete the ZooKeeper node");
                }
            }
            Ok(Some(_)) => {
                tracing::info!(path = %self.path, "the node belongs to another session; left in place");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "could not read the ZooKeeper node; closing the session removes it if it is ours");
            }
        }
        tracing::debug!(path = %self.path, "deregistered from ZooKeeper");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;

    fn addr(data: &[u8]) -> Address {
        parse_instance(data).unwrap().unwrap()
    }

    #[test]
    fn parses_curator_instances_and_names_what_is_wrong() {
        let a = addr(
            br#"{"name":"greeter","id":"1","address":"10.0.0.1","port":8080,"payload":{"weight":2,"dc":"x"},"registrationTimeUTC":1,"serviceType":"DYNAMIC"}"#,
        );
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:8080", 2));
        assert_eq!(a.attributes().get::<Metadata>().unwrap().0["dc"], "x");
        assert_eq!(addr(br#"{"address":"::1","port":1}"#).addr(), "[::1]:1");
        for (bad, why) in [
            (&b"x"[..], "not JSON"),
            (br#"1"#, "not a JSON object"),
            (br#"{"port":1}"#, "missing `address`"),
            (br#"{"address":7,"port":1}"#, "`address` is 7"),
            (br#"{"address":"h"}"#, "missing `port`"),
            (br#"{"address":"h","port":70000}"#, "`port` is 70000"),
            (
                br#"{"address":"h","port":null,"sslPort":0}"#,
                "`sslPort` is 0",
            ),
        ] {
            let err = parse_instance(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn reads_ssl_only_instances_string_weights_and_skips_disabled_ones() {
        let a =
            addr(br#"{"address":"10.0.0.1","port":null,"sslPort":8443,"payload":{"weight":"4"}}"#);
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:8443", 4));
        // Both: the plaintext port.
        assert_eq!(
            addr(br#"{"address":"h","port":80,"sslPort":443}"#).addr(),
            "h:80"
        );
        assert!(
            parse_instance(br#"{"address":"h","port":80,"enabled":false}"#)
                .unwrap()
                .is_none()
        );
        assert!(
            parse_instance(br#"{"address":"h","port":80,"enabled":"false"}"#)
                .unwrap()
                .is_none()
        );
        assert!(
            parse_instance(br#"{"address":"h","port":80,"enabled":true}"#)
                .unwrap()
                .is_some()
        );
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
        let a = addr(data.as_bytes());
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
            "enabled",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
