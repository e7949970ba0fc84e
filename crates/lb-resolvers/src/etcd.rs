//! etcd discovery (feature `etcd`): a resolver for `etcd:///service` and a registrar
//! for servers, in the format of etcd's Go package `naming/endpoints`, so Go services
//! registered with it are found by our clients and the other way round.
//!
//! * Key `service/<anything>` (usually `service/host:port`), value JSON
//!   `{"Op":0,"Addr":"host:port","Metadata":...}`. Field names are matched without
//!   regard to case, as Go's `encoding/json` reads them. `Metadata` becomes the
//!   address attribute [`crate::Metadata`]; `Metadata.weight`, a positive integer or
//!   a string holding one (`"3"`), also becomes its [`lb_core::Weight`].
//! * The resolver lists the prefix `service/` in pages, all at one revision, then
//!   watches it from that revision and applies each event to what it knows. It
//!   publishes complete sets, at most one per
//!   [`EtcdResolverBuilder::with_update_delay`] (a burst goes out in a few). After a
//!   disconnect it resumes the watch from the last revision whose events it has
//!   applied (an event's, or a progress notification's); after a compaction, or when
//!   etcd's revision is below that point (a restored or rebuilt etcd), it lists
//!   again. Errors are reported, the last good set stays, and reconnects wait with
//!   jittered exponential backoff.
//! * Every resolver and registrar of a process (on one tokio runtime) that talks to the
//!   same endpoints shares one etcd client and its connections; each resolver has its
//!   own watch stream on them. Requests carry etcd's require-leader flag, so a member
//!   cut off from its cluster ends the watch instead of staying silently stale.
//! * The registrar puts its key under a lease, keeps the lease alive, and puts the key
//!   back if someone else deletes it while the lease lives. If the lease is lost (an
//!   etcd restart, a long pause) it registers again under a new lease. On
//!   [`EtcdRegistrar::deregister`] it deletes the key only if the key is still under
//!   its lease (a newer process registered with the same address keeps its entry),
//!   then revokes the lease. A registrar that dies leaves the key to expire with the
//!   lease's TTL.
//! * Secured etcd: [`EtcdOptions::with_tls`] (a CA to trust, and a client certificate
//!   for etcd's `--client-cert-auth`) and [`EtcdOptions::with_credentials`] (etcd's
//!   user and password authentication) apply to resolvers and registrars alike. A
//!   wrong password is an [`EtcdError::Auth`], a server certificate that cannot be
//!   verified an [`EtcdError::Tls`], both naming the endpoints; resolvers report them
//!   and keep retrying, keeping their last good set.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    PutOptions, TlsOptions, Txn, TxnOp, WatchClient, WatchOptions, WatchResponse,
};
use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, Target};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::EntryError;
use crate::backoff::Backoff;
use crate::watching::{
    DEFAULT_MAX_RETRY_INTERVAL, DEFAULT_UPDATE_DELAY, Entries, ErrorLog, Listed, Parsed, Publisher,
    SharedClients,
};

/// Keys per page when listing a service (each page is one etcd request).
const DEFAULT_PAGE_SIZE: u32 = 1000;

/// The largest etcd reply accepted, as etcd's Go client (`MaxCallRecvMsgSize` is
/// `math.MaxInt32`); tonic's default is 4 MiB.
const DEFAULT_MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

/// A list interrupted by compactions this many times in a row is reported as an error
/// (and retried after a backoff).
const MAX_COMPACTED_LISTS: u32 = 3;

/// Connection settings for etcd.
///
/// Build it with struct update syntax (`..EtcdOptions::default()`) or the `with_`
/// methods:
///
/// ```
/// use lb_resolvers::etcd::{EtcdOptions, EtcdTls};
///
/// let options = EtcdOptions::default()
///     .with_endpoints(["https://etcd-0.internal:2379"])
///     .with_tls(
///         EtcdTls::new("/etc/etcd/ca.pem")
///             .with_client_identity("/etc/etcd/client.pem", "/etc/etcd/client-key.pem"),
///     )
///     .with_credentials("greeter", "s3cret");
/// ```
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// etcd endpoints (`http://host:port`, or `https://host:port` with
    /// [`EtcdOptions::tls`]) for targets without an authority. Targets with one
    /// (`etcd://host:port/service`) use `https://` when `tls` is set.
    pub endpoints: Vec<String>,
    /// The first wait before reconnecting, re-listing or registering again after an
    /// error (default 1 s); each further wait is 1.6 times longer, up to 10 s (see
    /// [`EtcdResolverBuilder::with_max_retry_interval`]), each randomized by ±20% so
    /// that clients do not retry in lockstep.
    pub retry_interval: Duration,
    /// Connect and request timeout, and the HTTP/2 keepalive interval (default 5 s).
    pub timeout: Duration,
    /// TLS to etcd's client port (default `None`: plaintext). See
    /// [`EtcdOptions::with_tls`].
    pub tls: Option<EtcdTls>,
    /// A user and password for etcd's authentication (default `None`). See
    /// [`EtcdOptions::with_credentials`].
    pub credentials: Option<EtcdCredentials>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            retry_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            tls: None,
            credentials: None,
        }
    }
}

/// TLS settings for etcd's client port: the CA that signed etcd's server
/// certificate and, for etcd's `--client-cert-auth`, a client certificate and key.
/// All are PEM files, read when a client connects (a missing or unreadable file is an
/// [`EtcdError::TlsFile`] naming it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdTls {
    /// The CA certificate(s) to verify etcd's server certificate with (etcdctl's
    /// `--cacert`). Only these are trusted.
    pub ca_cert_path: PathBuf,
    /// The client certificate (etcdctl's `--cert`); set together with
    /// `client_key_path`.
    pub client_cert_path: Option<PathBuf>,
    /// The client certificate's private key (etcdctl's `--key`), PKCS#8, PKCS#1 or
    /// SEC1.
    pub client_key_path: Option<PathBuf>,
    /// The name to verify the server certificate against, when it is not the
    /// endpoint's host (e.g. endpoints given by IP address, a certificate for
    /// `etcd.internal`).
    pub domain: Option<String>,
}

impl EtcdTls {
    /// Trust the CA certificate(s) in `ca_cert_path`; no client certificate.
    pub fn new(ca_cert_path: impl Into<PathBuf>) -> Self {
        Self {
            ca_cert_path: ca_cert_path.into(),
            client_cert_path: None,
            client_key_path: None,
            domain: None,
        }
    }

    /// Present this client certificate and key (mutual TLS).
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert_path = Some(cert_path.into());
        self.client_key_path = Some(key_path.into());
        self
    }

    /// Verify the server certificate against `domain` instead of the endpoint's host.
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads and checks the files; the client's TLS settings.
    fn load(&self) -> Result<TlsOptions, EtcdError> {
        let ca = read_pem(&self.ca_cert_path, "CA certificate")?;
        let count = CertificateDer::pem_slice_iter(&ca)
            .filter(|c| c.is_ok())
            .count();
        if count == 0 {
            return Err(EtcdError::TlsFile {
                file: "CA certificate",
                path: self.ca_cert_path.clone(),
                reason: "no PEM certificate in it".to_owned(),
            });
        }
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        match (&self.client_cert_path, &self.client_key_path) {
            (None, None) => {}
            (Some(cert_path), Some(key_path)) => {
                let cert = read_pem(cert_path, "client certificate")?;
                if CertificateDer::pem_slice_iter(&cert).next().is_none() {
                    return Err(EtcdError::TlsFile {
                        file: "client certificate",
                        path: cert_path.clone(),
                        reason: "no PEM certificate in it".to_owned(),
                    });
                }
                let key = read_pem(key_path, "client key")?;
                if let Err(e) = PrivateKeyDer::from_pem_slice(&key) {
                    return Err(EtcdError::TlsFile {
                        file: "client key",
                        path: key_path.clone(),
                        reason: format!("no PEM private key in it ({e})"),
                    });
                }
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(EtcdError::InvalidSetting {
                    setting: "tls",
                    reason: "a client certificate needs its key and a key its certificate: set both `client_cert_path` and `client_key_path`, or neither".to_owned(),
                });
            }
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

fn read_pem(path: &Path, file: &'static str) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::TlsFile {
        file,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A user name and password for etcd's authentication. Its `Debug` output hides the
/// password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EtcdCredentials {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl EtcdOptions {
    /// Use these endpoints (`http://host:port`, `https://host:port` with TLS) for
    /// targets without an authority.
    #[must_use]
    pub fn with_endpoints<I>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Talk to etcd over TLS: trust `tls.ca_cert_path`, and present a client
    /// certificate if `tls` has one. Endpoints must then be `https://` (or have no
    /// scheme); a `http://` one is an [`EtcdError::InvalidSetting`].
    #[must_use]
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticate as `user` with `password` (etcd's `--user user:password`). The
    /// client gets a token when it connects and a new one when etcd expires it; a
    /// wrong password is an [`EtcdError::Auth`] naming the endpoints.
    #[must_use]
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(EtcdCredentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The client's settings; reads and checks the TLS files, checks the endpoints
    /// and credentials.
    fn connect_options(&self) -> Result<ConnectOptions, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(self.timeout, self.timeout)
            .with_require_leader(true);
        if self.endpoints.is_empty() {
            return Err(EtcdError::InvalidSetting {
                setting: "endpoints",
                reason: "no endpoint".to_owned(),
            });
        }
        for endpoint in &self.endpoints {
            let plaintext = endpoint.starts_with("http://");
            let secure = endpoint.starts_with("https://");
            if self.tls.is_some() && plaintext {
                return Err(EtcdError::InvalidSetting {
                    setting: "endpoints",
                    reason: format!(
                        "`{endpoint}` is plaintext but TLS is configured: use `https://`"
                    ),
                });
            }
            if self.tls.is_none() && secure {
                return Err(EtcdError::InvalidSetting {
                    setting: "endpoints",
                    reason: format!(
                        "`{endpoint}` needs TLS settings (the CA to trust): see `EtcdOptions::with_tls`"
                    ),
                });
            }
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.load()?);
        }
        if let Some(credentials) = &self.credentials {
            if credentials.user.is_empty() {
                return Err(EtcdError::InvalidSetting {
                    setting: "credentials",
                    reason: "the user name is empty".to_owned(),
                });
            }
            options = options
                .with_user(credentials.user.clone(), credentials.password.clone())
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }

    /// Checks what can be checked before connecting: the endpoints, the
    /// credentials, and that the TLS files can be read and hold what they should.
    pub fn validate(&self) -> Result<(), EtcdError> {
        self.connect_options().map(drop)
    }

    /// The endpoints, for error messages.
    fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }

    /// What makes two option sets share a client: the endpoints, the timeout, TLS and
    /// credentials (the password only as a hash).
    fn connection_key(&self) -> String {
        let mut endpoints = self.endpoints.clone();
        endpoints.sort();
        let credentials = self.credentials.as_ref().map(|c| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            c.password.hash(&mut hasher);
            (c.user.clone(), hasher.finish())
        });
        format!(
            "{}|{:?}|{:?}|{:?}",
            endpoints.join(","),
            self.timeout,
            self.tls,
            credentials
        )
    }
}

/// An error talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A request failed.
    #[error("etcd ({what}): {}", describe(error))]
    Request {
        /// What was asked (`list greeter/`, `watch greeter/`, `lease grant`).
        what: String,
        /// The client's error (in the message as one line: its gRPC code, message
        /// and causes).
        error: etcd_client::Error,
    },
    /// etcd canceled the watch for a reason other than compaction (a compacted
    /// revision makes the resolver list again and is not an error).
    #[error("etcd canceled the watch on `{prefix}`: {reason}")]
    WatchCanceled {
        /// The watched prefix.
        prefix: String,
        /// etcd's cancel reason.
        reason: String,
    },
    /// The watch stream ended without an error.
    #[error("the etcd watch stream on `{prefix}` ended")]
    WatchEnded {
        /// The watched prefix.
        prefix: String,
    },
    /// A list kept being interrupted by compactions.
    #[error("listing `{prefix}` was interrupted by {times} compactions in a row")]
    ListCompacted {
        /// The listed prefix.
        prefix: String,
        /// How many attempts failed.
        times: u32,
    },
    /// etcd's reply lacked its header (no revision to list or watch from).
    #[error("etcd's reply to `{what}` has no header")]
    NoHeader {
        /// What was asked.
        what: String,
    },
    /// etcd refused the credentials (wrong user or password), or the user may not do
    /// what was asked.
    #[error("etcd at {endpoints} refused {user} ({what}): {reason}")]
    Auth {
        /// The endpoints asked.
        endpoints: String,
        /// Who asked: ``user `name` `` or `an unauthenticated client`.
        user: String,
        /// What was asked.
        what: String,
        /// etcd's answer.
        reason: String,
        /// The client's error, if there was one (a canceled watch has none).
        error: Option<Box<etcd_client::Error>>,
    },
    /// etcd could not be reached: no connection, a connection closed (with mutual
    /// TLS, possibly etcd refusing the client certificate), or no answer in time.
    #[error("etcd at {endpoints} unreachable ({what}): {}", describe(error))]
    Unreachable {
        /// The endpoints asked.
        endpoints: String,
        /// What was asked.
        what: String,
        /// The client's error (in the message as one line).
        error: etcd_client::Error,
    },
    /// A TLS handshake with etcd failed: its certificate cannot be verified with the
    /// configured CA, or it refused our client certificate.
    #[error("TLS with etcd at {endpoints} failed: {reason}")]
    Tls {
        /// The endpoints asked.
        endpoints: String,
        /// What went wrong.
        reason: String,
    },
    /// A TLS file named in the options cannot be used.
    #[error("etcd TLS: cannot use the {file} file {}: {reason}", path.display())]
    TlsFile {
        /// Which file (`CA certificate`, `client certificate`, `client key`).
        file: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting in [`EtcdOptions`] cannot be used.
    #[error("etcd option `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting (`endpoints`, `tls`, `credentials`).
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The registration's lease is gone (expired or revoked).
    #[error("etcd lease {lease:x} for `{key}` lost: {reason}")]
    LeaseLost {
        /// The registered key.
        key: String,
        /// The lease.
        lease: i64,
        /// What showed it.
        reason: String,
    },
}

fn request_error(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> EtcdError {
    let what = what.into();
    move |error| EtcdError::Request { what, error }
}

/// Whether `e` is etcd's "required revision has been compacted".
fn is_compacted(e: &etcd_client::Error) -> bool {
    // gRPC's OUT_OF_RANGE (11) with etcd's `ErrCompacted` message.
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() as i32 == 11 && s.message().contains("required revision has been compacted"))
}

/// The fields of etcd's Go `endpoints.Update`, read as Go's `encoding/json` reads them:
/// names matched without regard to case, a later duplicate winning, `null` leaving a
/// string field unset.
#[derive(Default)]
struct GoUpdate {
    op: Option<Value>,
    addr: Option<Value>,
    metadata: Option<Value>,
}

impl<'de> Deserialize<'de> for GoUpdate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = GoUpdate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoUpdate, A::Error> {
                let mut update = GoUpdate::default();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if key.eq_ignore_ascii_case("op") {
                        if !value.is_null() {
                            update.op = Some(value);
                        }
                    } else if key.eq_ignore_ascii_case("addr") {
                        if !value.is_null() {
                            update.addr = Some(value);
                        }
                    } else if key.eq_ignore_ascii_case("metadata") {
                        update.metadata = Some(value);
                    }
                }
                Ok(update)
            }
        }
        d.deserialize_map(Fields)
    }
}

fn parse(value: &[u8]) -> Parsed {
    let mut note = None;
    let address = parse_with_note(value, &mut note).map(Some);
    Parsed { address, note }
}

fn parse_with_note(value: &[u8], note: &mut Option<EntryError>) -> Result<Address, EntryError> {
    let json: Value =
        serde_json::from_slice(value).map_err(|e| EntryError::NotJson(e.to_string()))?;
    if !json.is_object() {
        return Err(EntryError::NotAnObject);
    }
    let update: GoUpdate =
        serde_json::from_value(json).map_err(|e| EntryError::NotJson(e.to_string()))?;
    match &update.op {
        None => {}
        Some(op) if op.as_u64() == Some(0) => {}
        Some(op) => {
            return Err(EntryError::BadField {
                field: "Op",
                found: op.to_string(),
                want: "0 (Add)",
            });
        }
    }
    let addr = match &update.addr {
        None => return Err(EntryError::Missing("Addr")),
        Some(Value::String(a)) if a.is_empty() => return Err(EntryError::Missing("Addr")),
        Some(Value::String(a)) => a.as_str(),
        Some(other) => {
            return Err(EntryError::BadField {
                field: "Addr",
                found: other.to_string(),
                want: "a `host:port` string",
            });
        }
    };
    crate::static_list::check_host_port(addr).map_err(|reason| EntryError::BadAddress {
        address: addr.to_owned(),
        reason,
    })?;
    let (address, weight_note) =
        crate::watching::with_metadata(Address::new(addr), update.metadata.as_ref());
    *note = weight_note;
    Ok(address)
}

/// Parses one value in the `naming/endpoints` format (field names in any case, as Go
/// reads them). Errors say what is wrong. An invalid `Metadata.weight` is dropped with
/// a warning (the address weighs 1).
pub fn parse_endpoint(value: &[u8]) -> Result<Address, EntryError> {
    let mut note = None;
    let address = parse_with_note(value, &mut note)?;
    if let Some(note) = note {
        tracing::warn!(addr = %address, reason = %note, "ignoring an invalid weight");
    }
    Ok(address)
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

/// One etcd client, shared by every resolver and registrar of the process (on one
/// tokio runtime) that uses the same endpoints and timeout. Made on first use; its
/// connections reconnect by themselves.
struct EtcdConnection {
    options: EtcdOptions,
    client: tokio::sync::Mutex<Option<Client>>,
}

static CONNECTIONS: LazyLock<SharedClients<EtcdConnection>> = LazyLock::new(SharedClients::new);

impl EtcdConnection {
    fn shared(runtime: &tokio::runtime::Handle, options: &EtcdOptions) -> Arc<Self> {
        CONNECTIONS.get(runtime, &options.connection_key(), || Self {
            options: options.clone(),
            client: tokio::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<Client, EtcdError> {
        let mut client = self.client.lock().await;
        if let Some(c) = &*client {
            return Ok(c.clone());
        }
        let options = self.options.connect_options()?;
        let fresh = Client::connect(&self.options.endpoints, Some(options))
            .await
            .map_err(request_error(format!(
                "connect to {}",
                self.options.endpoint_list()
            )))?;
        *client = Some(fresh.clone());
        Ok(fresh)
    }

    /// The error to report for `e`, naming the endpoints: a refusal of our
    /// credentials or permissions becomes [`EtcdError::Auth`]; a failure to connect
    /// caused by TLS (a certificate, an alert) [`EtcdError::Tls`]; another failure to
    /// reach etcd [`EtcdError::Unreachable`]. A stale token is renewed on the way.
    async fn explain(&self, e: EtcdError) -> EtcdError {
        // A token etcd no longer knows (it restarted, or the token expired): the
        // client's own refresh covers unary requests, not streams (a watch is
        // canceled, a keep-alive fails). Log in again; if that fails, that is the
        // error.
        if self.options.credentials.is_some() && e.to_string().contains("invalid auth token") {
            let client = self.client.lock().await.clone();
            if let Some(client) = client
                && let Err(source) = client.refresh_token().await
            {
                let reason = auth_failure(&source).unwrap_or_else(|| source.to_string());
                return self.auth_error("authenticate".to_owned(), reason, Some(source));
            }
        }
        match e {
            EtcdError::Request {
                what,
                error: source,
            } => {
                if let Some(reason) = auth_failure(&source) {
                    return self.auth_error(what, reason, Some(source));
                }
                if self.options.tls.is_some()
                    && let Some(reason) = tls_failure(&source)
                {
                    return EtcdError::Tls {
                        endpoints: self.options.endpoint_list(),
                        reason: self.tls_hint(reason),
                    };
                }
                if unreachable(&source) {
                    return EtcdError::Unreachable {
                        endpoints: self.options.endpoint_list(),
                        what,
                        error: source,
                    };
                }
                EtcdError::Request {
                    what,
                    error: source,
                }
            }
            EtcdError::WatchCanceled { prefix, reason } => match auth_reason(&reason) {
                Some(why) => self.auth_error(format!("watch {prefix}"), why, None),
                None => EtcdError::WatchCanceled { prefix, reason },
            },
            e => e,
        }
    }

    fn auth_error(
        &self,
        what: String,
        reason: String,
        source: Option<etcd_client::Error>,
    ) -> EtcdError {
        EtcdError::Auth {
            endpoints: self.options.endpoint_list(),
            user: match &self.options.credentials {
                Some(c) => format!("user `{}`", c.user),
                None => "an unauthenticated client".to_owned(),
            },
            what,
            reason,
            error: source.map(Box::new),
        }
    }

    /// Says which side a TLS failure is about.
    fn tls_hint(&self, reason: String) -> String {
        let ca = self
            .options
            .tls
            .as_ref()
            .map(|t| t.ca_cert_path.display().to_string())
            .unwrap_or_default();
        if reason.contains("invalid peer certificate") {
            format!("its certificate cannot be verified with the CA in {ca}: {reason}")
        } else if reason.contains("alert") {
            format!(
                "etcd refused the handshake (is a client certificate it trusts configured?): {reason}"
            )
        } else {
            reason
        }
    }
}

/// What etcd says of a refusal of the client's credentials or permissions, if
/// `message` is one.
fn auth_reason(message: &str) -> Option<String> {
    [
        "authentication failed",
        "invalid auth token",
        "user name is empty",
        "user name not found",
        "authentication is not enabled",
        "permission denied",
    ]
    .iter()
    .any(|m| message.contains(m))
    .then(|| {
        let message = message.rsplit("desc = ").next().unwrap_or(message);
        message.trim_start_matches("etcdserver: ").to_owned()
    })
}

/// `e` in one line: for a gRPC status, its code's name, its message and the causes
/// under it ("UNAVAILABLE: tcp connect error: Connection refused (os error 111)"),
/// not the status's debug dump.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let code = lb_core::Code::from_i32(status.code() as i32)
                .map_or("UNKNOWN", lb_core::Code::name);
            let mut out = format!("{code}: {}", status.message());
            let mut next = std::error::Error::source(status);
            while let Some(cause) = next {
                let text = cause.to_string();
                // tonic repeats a message at several levels: say each once.
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                next = cause.source();
            }
            out
        }
        etcd_client::Error::TransportError(error) => lb_core::error_chain(error),
        other => other.to_string(),
    }
}

/// etcd's message when `e` is a refusal of the client's credentials or permissions.
fn auth_failure(e: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    // gRPC's UNAUTHENTICATED (16) and PERMISSION_DENIED (7).
    auth_reason(status.message())
        .or_else(|| matches!(status.code() as i32, 16 | 7).then(|| status.message().to_owned()))
}

/// Whether `e` says etcd could not be reached (no connection, a connection closed,
/// no answer in time) rather than that it answered with an error.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // CANCELLED (1) and UNKNOWN (2) from the transport, DEADLINE_EXCEEDED (4),
        // UNAVAILABLE (14).
        etcd_client::Error::GRpcStatus(s) => match s.code() as i32 {
            4 | 14 => true,
            1 | 2 => std::error::Error::source(s).is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// The TLS part of a failure to reach etcd (a certificate etcd's or ours fails to
/// verify, a TLS alert), if `e` is one.
fn tls_failure(e: &etcd_client::Error) -> Option<String> {
    let mut messages = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(status) => {
            messages.push(status.message().to_owned());
            Some(status)
        }
        etcd_client::Error::TransportError(e) => Some(e),
        _ => None,
    };
    while let Some(e) = next {
        messages.push(e.to_string());
        next = e.source();
    }
    // The innermost message that is about TLS.
    messages.into_iter().rev().find(|m| {
        let m = m.to_ascii_lowercase();
        ["certificate", "alert", "tls", "handshake"]
            .iter()
            .any(|w| m.contains(w))
    })
}

/// Builds resolvers for `etcd:///service` (etcd from [`EtcdOptions::endpoints`]) and
/// `etcd://host:port,host:port/service`.
#[derive(Debug, Clone)]
pub struct EtcdResolverBuilder {
    options: EtcdOptions,
    update_delay: Duration,
    page_size: u32,
    max_retry_interval: Duration,
    max_message_size: usize,
}

impl Default for EtcdResolverBuilder {
    fn default() -> Self {
        Self::new(EtcdOptions::default())
    }
}

impl EtcdResolverBuilder {
    /// A builder with these options.
    pub fn new(options: EtcdOptions) -> Self {
        Self {
            options,
            update_delay: DEFAULT_UPDATE_DELAY,
            page_size: DEFAULT_PAGE_SIZE,
            max_retry_interval: DEFAULT_MAX_RETRY_INTERVAL,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// Complete states go out at most once per `delay` (default 5 ms): a change after
    /// a quiet spell at once, changes arriving within `delay` of the last state
    /// together when `delay` has passed. A burst of registrations thus makes a few
    /// picker rebuilds, not one each, and a lone registration waits for nothing. `Duration::ZERO` publishes after every
    /// watch response. The first list is published at once.
    #[must_use]
    pub fn with_update_delay(mut self, delay: Duration) -> Self {
        self.update_delay = delay;
        self
    }

    /// Keys per list request (default 1,000; at least 1). A service's keys are listed
    /// in pages at one revision, so no reply grows with the service.
    #[must_use]
    pub fn with_page_size(mut self, keys: u32) -> Self {
        self.page_size = keys.max(1);
        self
    }

    /// The longest wait between retries (default 10 s).
    #[must_use]
    pub fn with_max_retry_interval(mut self, max: Duration) -> Self {
        self.max_retry_interval = max;
        self
    }

    /// The largest etcd reply accepted, in bytes (default `i32::MAX`, as etcd's Go
    /// client; tonic's own default of 4 MiB would fail a watch catching up on a large
    /// backlog).
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
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
        let runtime = crate::watching::runtime(target)?;
        let mut options = self.options.clone();
        if !target.authority().is_empty() {
            let scheme = if options.tls.is_some() {
                "https"
            } else {
                "http"
            };
            options.endpoints = target
                .authority()
                .split(',')
                .map(|hp| format!("{scheme}://{hp}"))
                .collect();
        }
        // A setting that cannot work fails the build, naming it.
        options.validate()?;
        let prefix = format!("{service}/");
        let follower = Follower {
            range_end: prefix_end(prefix.as_bytes()),
            connection: EtcdConnection::shared(&runtime, &options),
            page_size: i64::from(self.page_size),
            max_message_size: self.max_message_size,
            entries: Entries::new("etcd key"),
            resume: None,
            cluster_id: None,
            progressed: false,
            publisher: Publisher::new(cc, self.update_delay).with_note(
                "key",
                "keys",
                format!(
                    "under `{prefix}` in etcd at {}",
                    options.endpoints.join(",")
                ),
            ),
            backoff: Backoff::new(options.retry_interval, self.max_retry_interval),
            log: ErrorLog::new(format!("etcd resolver for {prefix}")),
            prefix,
        };
        Ok(crate::watching::spawn(&runtime, follower.run()))
    }
}

/// The end of the key range of everything under `prefix` (etcd's `GetPrefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// What to do with one watch response.
#[derive(Debug, PartialEq)]
enum Step {
    /// Apply its events (if any) and carry on.
    Apply,
    /// The watch was created; nothing to apply.
    Created,
    /// A progress notification: everything up to this revision has been delivered.
    Progress(i64),
    /// List again: the revision we resume from is gone (compacted), or etcd is behind
    /// it (a restored or rebuilt registry).
    Relist(&'static str),
    /// The watch was canceled for another reason: an error.
    Canceled(String),
}

/// Decides what `response` means for a watch resuming after `resume` on the cluster
/// `cluster_id` (`None`: not known yet).
fn classify(response: &WatchResponse, resume: i64, cluster_id: Option<u64>) -> Step {
    if response.compact_revision() > 0 {
        return Step::Relist("compacted");
    }
    if response.canceled() {
        let reason = response.cancel_reason();
        return Step::Canceled(if reason.is_empty() {
            "no reason given".to_owned()
        } else {
            reason.to_owned()
        });
    }
    if let Some(header) = response.header() {
        if cluster_id.is_some_and(|id| id != header.cluster_id()) {
            return Step::Relist("etcd's cluster id changed");
        }
        if header.revision() < resume {
            return Step::Relist("etcd's revision went back");
        }
    }
    if !response.events().is_empty() {
        return Step::Apply;
    }
    if response.created() {
        // The header of the creation response carries the store's current revision,
        // but the events between our start revision and it may still be on their
        // way: it is no resume point.
        return Step::Created;
    }
    match response.header() {
        Some(h) if h.revision() > 0 => Step::Progress(h.revision()),
        _ => Step::Created,
    }
}

/// One resolver's watch of one service.
struct Follower {
    prefix: String,
    range_end: Vec<u8>,
    connection: Arc<EtcdConnection>,
    page_size: i64,
    max_message_size: usize,
    entries: Entries,
    /// The last revision whose events are all applied: the watch resumes after it.
    /// `None`: list first.
    resume: Option<i64>,
    cluster_id: Option<u64>,
    /// Whether the current watch has delivered events or progress.
    progressed: bool,
    publisher: Publisher,
    backoff: Backoff,
    log: ErrorLog,
}

impl Follower {
    async fn run(mut self) {
        loop {
            let e = self.follow().await;
            let e = self.connection.explain(e).await;
            self.log.error(&e);
            // What arrived before the error goes out now, not after the backoff.
            self.publisher.flush(&mut self.entries);
            self.publisher.report(Arc::new(e));
            self.backoff.wait().await;
        }
    }

    /// Lists if needed, then follows the watch until something fails.
    async fn follow(&mut self) -> EtcdError {
        let client = match self.connection.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(self.max_message_size);
        let mut watcher = client
            .watch_client()
            .max_decoding_message_size(self.max_message_size);
        let mut relists = 0;
        loop {
            let resume = match self.resume {
                Some(r) => r,
                None => match self.list(&mut kv).await {
                    Ok(r) => r,
                    Err(e) => return e,
                },
            };
            self.progressed = false;
            match self.watch(&mut watcher, resume).await {
                Ok(reason) => {
                    relists = if self.progressed { 1 } else { relists + 1 };
                    tracing::info!(prefix = %self.prefix, reason, "listing etcd again");
                    self.resume = None;
                    if relists > 1 {
                        // Relisting and losing the watch again at once: do not spin.
                        self.backoff.wait().await;
                    }
                }
                Err(e) => return e,
            }
        }
    }

    /// Lists the prefix in pages at one revision; publishes; returns the revision.
    async fn list(&mut self, kv: &mut KvClient) -> Result<i64, EtcdError> {
        let mut compacted = 0;
        loop {
            match self.list_once(kv).await {
                Ok((listed, revision, cluster_id)) => {
                    self.entries.replace(listed, parse);
                    self.resume = Some(revision);
                    self.cluster_id = Some(cluster_id);
                    self.publisher.listed(&mut self.entries);
                    self.backoff.connected();
                    self.log.recovered();
                    return Ok(revision);
                }
                Err(EtcdError::Request { error, .. }) if is_compacted(&error) => {
                    compacted += 1;
                    tracing::info!(prefix = %self.prefix, "a compaction interrupted the list; listing again");
                    if compacted >= MAX_COMPACTED_LISTS {
                        return Err(EtcdError::ListCompacted {
                            prefix: self.prefix.clone(),
                            times: compacted,
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn list_once(&self, kv: &mut KvClient) -> Result<(Vec<Listed>, i64, u64), EtcdError> {
        let what = format!("list {}", self.prefix);
        let mut start = self.prefix.as_bytes().to_vec();
        let mut at: Option<(i64, u64)> = None;
        let mut listed = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(self.range_end.clone())
                .with_limit(self.page_size);
            if let Some((revision, _)) = at {
                options = options.with_revision(revision);
            }
            let page = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(request_error(what.clone()))?;
            if at.is_none() {
                let header = page
                    .header()
                    .ok_or_else(|| EtcdError::NoHeader { what: what.clone() })?;
                at = Some((header.revision(), header.cluster_id()));
            }
            for kv in page.kvs() {
                listed.push(Listed::Data(
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                ));
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        let (revision, cluster_id) = at.ok_or(EtcdError::NoHeader { what })?;
        Ok((listed, revision, cluster_id))
    }

    /// Watches from `resume + 1`. Returns why to list again, or the error that ended
    /// the watch.
    async fn watch(
        &mut self,
        watcher: &mut WatchClient,
        resume: i64,
    ) -> Result<&'static str, EtcdError> {
        let what = format!("watch {}", self.prefix);
        let options = WatchOptions::new()
            .with_range(self.range_end.clone())
            .with_start_revision(resume + 1)
            .with_progress_notify();
        let mut stream = watcher
            .watch(self.prefix.clone(), Some(options))
            .await
            .map_err(request_error(what.clone()))?;
        loop {
            let response = tokio::select! {
                biased;
                r = stream.message() => r.map_err(request_error(what.clone()))?,
                () = self.publisher.due() => {
                    self.publisher.flush(&mut self.entries);
                    continue;
                }
            };
            let Some(response) = response else {
                return Err(EtcdError::WatchEnded {
                    prefix: self.prefix.clone(),
                });
            };
            let resume = self.resume.unwrap_or(resume);
            match classify(&response, resume, self.cluster_id) {
                Step::Relist(reason) => {
                    if reason != "compacted" {
                        tracing::warn!(
                            prefix = %self.prefix,
                            resume,
                            revision = response.header().map_or(0, |h| h.revision()),
                            reason,
                            "etcd is behind the revision the resolver resumes from (restored or rebuilt?)"
                        );
                    }
                    self.publisher.flush(&mut self.entries);
                    return Ok(reason);
                }
                Step::Canceled(reason) => {
                    return Err(EtcdError::WatchCanceled {
                        prefix: self.prefix.clone(),
                        reason,
                    });
                }
                Step::Created => {
                    self.backoff.connected();
                    self.log.recovered();
                    self.publisher.recovered(&mut self.entries);
                }
                Step::Progress(revision) => {
                    self.resume = Some(resume.max(revision));
                    self.progressed = true;
                    self.backoff.succeeded();
                }
                Step::Apply => {
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        // A deleted key's record has version 0 (etcd's mvcc contract);
                        // reading it so also avoids a panic in `Event::event_type` on
                        // an event type this client does not know.
                        if kv.version() == 0 {
                            self.entries.remove(&key);
                        } else {
                            self.entries.put(&key, kv.value(), parse);
                        }
                        self.resume = Some(self.resume.unwrap_or(resume).max(kv.mod_revision()));
                    }
                    self.publisher.changed(&mut self.entries);
                    self.progressed = true;
                    self.backoff.succeeded();
                    self.log.recovered();
                }
            }
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
    ///
    /// If the key exists (another process registered the same address), this one
    /// takes it over: the key is put under this registrar's lease.
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
        let runtime = tokio::runtime::Handle::current();
        options.validate()?;
        let connection = EtcdConnection::shared(&runtime, &options);
        let first = match connection.client().await {
            Ok(mut client) => put_with_lease(&mut client, &key, &value, ttl)
                .await
                .map(|lease| (client, lease)),
            Err(e) => Err(e),
        };
        let (client, lease) = match first {
            Ok(first) => first,
            Err(e) => return Err(connection.explain(e).await),
        };
        let registration = Registration {
            connection,
            key: key.clone(),
            value,
            ttl,
            backoff: Backoff::new(options.retry_interval, DEFAULT_MAX_RETRY_INTERVAL),
            log: ErrorLog::new(format!("etcd registration {key}")),
        };
        let keeper = crate::watching::Keeper::spawn(move |stopped| {
            registration.keep(client, lease, stopped)
        });
        Ok(Self { key, keeper })
    }

    /// The key this registrar owns.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Deletes the key if it is still under this registrar's lease, revokes the lease,
    /// then stops.
    pub async fn deregister(self) {
        self.keeper.stop().await;
    }
}

/// A lease and the revision of the put that attached our key to it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    revision: i64,
}

async fn put_with_lease(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<Lease, EtcdError> {
    let id = client
        .lease_grant(ttl, None)
        .await
        .map_err(request_error("lease grant"))?
        .id();
    let put = client
        .put(key, value, Some(PutOptions::new().with_lease(id)))
        .await
        .map_err(request_error(format!("put {key}")))?;
    let revision = put.header().map_or(0, |h| h.revision());
    tracing::debug!(%key, lease = id, "registered in etcd");
    Ok(Lease { id, revision })
}

struct Registration {
    /// Held so that resolvers of this process share the client; explains errors.
    connection: Arc<EtcdConnection>,
    key: String,
    value: String,
    ttl: i64,
    backoff: Backoff,
    log: ErrorLog,
}

impl Registration {
    async fn keep(mut self, mut client: Client, first: Lease, mut stopped: oneshot::Receiver<()>) {
        let mut lease = first;
        self.backoff.connected();
        loop {
            tokio::select! {
                _ = &mut stopped => return self.deregister(&mut client, lease).await,
                e = self.hold(&mut client, lease) => {
                    let e = self.connection.explain(e).await;
                    self.log.error(&e);
                }
            }
            // The lease is lost (or cannot be kept): register again under a new one,
            // after a backoff, until it works or we are stopped. The wait also covers
            // a lease that fails right after a successful grant and put.
            loop {
                tokio::select! {
                    _ = &mut stopped => return self.deregister(&mut client, lease).await,
                    () = self.backoff.wait() => {}
                }
                tokio::select! {
                    _ = &mut stopped => return self.deregister(&mut client, lease).await,
                    r = put_with_lease(&mut client, &self.key, &self.value, self.ttl) => match r {
                        Ok(l) => {
                            lease = l;
                            self.backoff.connected();
                            self.log.recovered();
                            break;
                        }
                        Err(e) => {
                            let e = self.connection.explain(e).await;
                            self.log.error(&e);
                        }
                    },
                }
            }
        }
    }

    /// Keeps `lease` alive and our key in place until that fails; returns why.
    async fn hold(&mut self, client: &mut Client, lease: Lease) -> EtcdError {
        let lost = |reason: String| EtcdError::LeaseLost {
            key: self.key.clone(),
            lease: lease.id,
            reason,
        };
        let (mut keeper, mut responses) = match client.lease_keep_alive(lease.id).await {
            Ok(k) => k,
            Err(e) => return request_error("lease keep-alive")(e),
        };
        let mut watch = match client
            .watch(
                self.key.clone(),
                Some(WatchOptions::new().with_start_revision(lease.revision + 1)),
            )
            .await
        {
            Ok(w) => w,
            Err(e) => return request_error(format!("watch {}", self.key))(e),
        };
        let period = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1).max(3) / 3);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return request_error("lease keep-alive")(e);
                    }
                }
                r = responses.message() => match r {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return lost("the lease expired".to_owned()),
                    Ok(None) => return lost("the keep-alive stream ended".to_owned()),
                    Err(e) => return request_error("lease keep-alive")(e),
                },
                w = watch.message() => match w {
                    Ok(Some(w)) => {
                        if w.canceled() {
                            return EtcdError::WatchCanceled { prefix: self.key.clone(), reason: w.cancel_reason().to_owned() };
                        }
                        for event in w.events() {
                            let Some(kv) = event.kv() else { continue };
                            if kv.version() == 0 {
                                if let Err(e) = self.restore(client, lease).await {
                                    return e;
                                }
                            } else if kv.lease() != lease.id {
                                tracing::info!(key = %self.key, "another registration took over the key; it is kept as is");
                            }
                        }
                    }
                    Ok(None) => return EtcdError::WatchEnded { prefix: self.key.clone() },
                    Err(e) => return request_error(format!("watch {}", self.key))(e),
                },
            }
        }
    }

    /// Puts our key back under `lease` if it is absent (someone else deleted it while
    /// our lease lives).
    async fn restore(&self, client: &mut Client, lease: Lease) -> Result<(), EtcdError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.as_str(),
                self.value.as_str(),
                Some(PutOptions::new().with_lease(lease.id)),
            )]);
        let done = client
            .txn(txn)
            .await
            .map_err(request_error(format!("restore {}", self.key)))?;
        if done.succeeded() {
            tracing::info!(key = %self.key, "our etcd key was deleted while our lease lives; put it back");
        }
        Ok(())
    }

    /// Deletes our key if it is still under `lease`, then revokes the lease.
    async fn deregister(&self, client: &mut Client, lease: Lease) {
        let txn = Txn::new()
            .when([Compare::lease(
                self.key.as_str(),
                CompareOp::Equal,
                lease.id,
            )])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        match client.txn(txn).await {
            Ok(r) if r.succeeded() => {}
            Ok(_) => {
                tracing::info!(key = %self.key, "the key is not under our lease (another registration owns it); left in place");
            }
            Err(e) => tracing::warn!(key = %self.key, error = %e, "could not delete the etcd key"),
        }
        if let Err(e) = client.lease_revoke(lease.id).await {
            tracing::debug!(key = %self.key, error = %e, "could not revoke the etcd lease");
        }
        tracing::debug!(key = %self.key, "deregistered from etcd");
    }
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
            (br#"{"Op":1,"Addr":"h:1"}"#, "`Op` is 1"),
            (br#"{"Op":"add","Addr":"h:1"}"#, "`Op`"),
            (br#"{"Op":0}"#, "missing `Addr`"),
            (br#"{"Addr":""}"#, "missing `Addr`"),
            (br#"{"Addr":7}"#, "`Addr` is 7"),
            (br#"{"Addr":"no-port"}"#, "\"no-port\""),
        ] {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        // An invalid weight is dropped, the address kept.
        let c = parse_endpoint(br#"{"Addr":"h:1","Metadata":{"weight":0}}"#).unwrap();
        assert_eq!(c.weight().get(), 1);
    }

    #[test]
    fn reads_field_names_in_any_case_and_string_weights_as_go_services_write_them() {
        let a =
            parse_endpoint(br#"{"op":0,"addr":"10.0.0.1:80","metadata":{"weight":"3"}}"#).unwrap();
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:80", 3));
        let b = parse_endpoint(br#"{"OP":0,"ADDR":"10.0.0.2:80"}"#).unwrap();
        assert_eq!(b.addr(), "10.0.0.2:80");
        // As in Go: a later duplicate wins, and null leaves a string field unset.
        let c = parse_endpoint(br#"{"Addr":"a:1","addr":"b:2","ADDR":null}"#).unwrap();
        assert_eq!(c.addr(), "b:2");
    }

    #[test]
    fn writes_what_it_reads() {
        let v = endpoint_value("10.0.0.1:80", Some(&serde_json::json!({"weight": 2})));
        let a = parse_endpoint(v.as_bytes()).unwrap();
        assert_eq!((a.addr(), a.weight().get()), ("10.0.0.1:80", 2));
    }

    #[test]
    fn the_prefix_range_ends_after_every_key_under_it() {
        assert_eq!(prefix_end(b"svc/"), b"svc0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
