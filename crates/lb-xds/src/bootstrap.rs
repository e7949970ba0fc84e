//! The xDS bootstrap (gRFC A27, A65): which management server to ask, with which
//! credentials, and who this client is.
//!
//! Read as grpc-go and C-core read it: from the file `GRPC_XDS_BOOTSTRAP` names, or
//! the JSON in `GRPC_XDS_BOOTSTRAP_CONFIG` ([`Bootstrap::from_env`]), or given
//! directly ([`Bootstrap::parse`]).
//!
//! ```
//! use lb_xds::Bootstrap;
//!
//! let bootstrap = Bootstrap::parse(r#"{
//!   "xds_servers": [{"server_uri": "127.0.0.1:18000",
//!                    "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
//!                    "server_features": ["xds_v3"]}],
//!   "node": {"id": "client-1", "locality": {"zone": "z1"}}
//! }"#)?;
//! // The first usable credentials win: `google_default` is not one.
//! assert_eq!(bootstrap.servers[0].creds, lb_xds::ChannelCreds::Insecure);
//! assert_eq!(bootstrap.node.id, "client-1");
//!
//! let bad = Bootstrap::parse(r#"{"xds_servers": [{"server_uri": ""}]}"#).unwrap_err();
//! assert_eq!(bad.to_string(), "xDS bootstrap: xds_servers[0].server_uri: must not be empty");
//! # Ok::<(), lb_xds::BootstrapError>(())
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// The environment variable naming a bootstrap file.
pub const BOOTSTRAP_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// The environment variable holding the bootstrap JSON itself.
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// A bootstrap that could not be read or is not valid; names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xDS bootstrap: {field}: {reason}")]
pub struct BootstrapError {
    /// The JSON path of the field (`xds_servers[0].channel_creds`), or where the
    /// bootstrap came from when it could not be read at all.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl BootstrapError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A parsed, validated bootstrap.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Bootstrap {
    /// The management servers, in order; this client talks to the first.
    pub servers: Vec<XdsServer>,
    /// Who this client is, sent on every ADS stream.
    pub node: Node,
    /// `client_default_listener_resource_name_template`: the listener name of an
    /// `xds:///name` target, with `%s` replaced by `name` (default `%s`).
    pub listener_name_template: String,
    /// The JSON it was parsed from, canonical: two bootstraps with the same value
    /// share one [`crate::XdsClient`].
    pub(crate) key: String,
}

/// One `xds_servers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsServer {
    /// `server_uri`: a gRPC target (`host:port`, or with a scheme).
    pub uri: String,
    /// The first usable `channel_creds` entry.
    pub creds: ChannelCreds,
    /// `server_features` has `ignore_resource_deletion` (gRFC A53): a listener or
    /// cluster missing from a response is kept instead of deleted.
    pub ignore_resource_deletion: bool,
}

/// Channel credentials for a management server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelCreds {
    /// `{"type": "insecure"}`: plaintext HTTP/2.
    Insecure,
    /// `{"type": "tls", "config": {...}}` (gRFC A65).
    Tls(TlsCreds),
}

/// The config of `tls` channel credentials (gRFC A65): PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsCreds {
    /// `ca_certificate_file`: the roots that verify the server (the system's when
    /// absent).
    pub ca_certificate_file: Option<PathBuf>,
    /// `certificate_file`: this client's certificate chain, for mutual TLS.
    pub certificate_file: Option<PathBuf>,
    /// `private_key_file`: its key; given exactly when `certificate_file` is.
    pub private_key_file: Option<PathBuf>,
    /// `refresh_interval`: how often the files are read again (default 10 min).
    pub refresh_interval: Duration,
}

/// The `node` of the bootstrap: this client, as the management server sees it.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Node {
    /// `id`.
    pub id: String,
    /// `cluster`.
    pub cluster: String,
    /// `locality`.
    pub locality: Locality,
    /// `metadata`, any JSON object.
    pub metadata: Map<String, Value>,
}

/// Where something runs: a region, a zone in it, a sub-zone in that.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Locality {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

impl Bootstrap {
    /// The bootstrap of this process, as gRPC finds it: the file `GRPC_XDS_BOOTSTRAP`
    /// names, else the JSON in `GRPC_XDS_BOOTSTRAP_CONFIG`.
    pub fn from_env() -> Result<Self, BootstrapError> {
        if let Some(path) = std::env::var_os(BOOTSTRAP_ENV).filter(|p| !p.is_empty()) {
            let json = std::fs::read_to_string(&path).map_err(|e| {
                BootstrapError::new(
                    BOOTSTRAP_ENV,
                    format!("cannot read {}: {e}", PathBuf::from(&path).display()),
                )
            })?;
            return Self::parse(&json);
        }
        match std::env::var(BOOTSTRAP_CONFIG_ENV) {
            Ok(json) if !json.is_empty() => Self::parse(&json),
            _ => Err(BootstrapError::new(
                BOOTSTRAP_ENV,
                format!("neither {BOOTSTRAP_ENV} nor {BOOTSTRAP_CONFIG_ENV} is set"),
            )),
        }
    }

    /// Parses and validates bootstrap JSON.
    pub fn parse(json: &str) -> Result<Self, BootstrapError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| BootstrapError::new("$", format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Validates a bootstrap already parsed as JSON.
    pub fn from_value(value: &Value) -> Result<Self, BootstrapError> {
        let root = object(value, "$")?;
        let servers = match root.get("xds_servers") {
            None => return Err(BootstrapError::new("xds_servers", "is required")),
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(BootstrapError::new("xds_servers", "must not be empty"));
            }
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, s)| server(s, &format!("xds_servers[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(BootstrapError::new("xds_servers", "expected a list")),
        };
        let node = match root.get("node") {
            None => Node::default(),
            Some(v) => node(v)?,
        };
        let listener_name_template =
            match root.get("client_default_listener_resource_name_template") {
                None => "%s".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => {
                    return Err(BootstrapError::new(
                        "client_default_listener_resource_name_template",
                        "expected a string",
                    ));
                }
            };
        if let Some(authorities) = root.get("authorities") {
            match authorities.as_object() {
                Some(map) if map.is_empty() => {}
                Some(_) => {
                    return Err(BootstrapError::new(
                        "authorities",
                        "xDS federation (gRFC A47) is not supported: remove the authorities",
                    ));
                }
                None => return Err(BootstrapError::new("authorities", "expected an object")),
            }
        }
        Ok(Self {
            servers,
            node,
            listener_name_template,
            key: value.to_string(),
        })
    }

    /// A bootstrap for one insecure management server at `uri` with node id `node_id`:
    /// what tests and simple deployments need.
    pub fn insecure(uri: impl Into<String>, node_id: impl Into<String>) -> Self {
        let uri = uri.into();
        let node = Node {
            id: node_id.into(),
            ..Node::default()
        };
        let key = serde_json::json!({
            "xds_servers": [{"server_uri": uri, "channel_creds": [{"type": "insecure"}]}],
            "node": {"id": node.id},
        })
        .to_string();
        Self {
            servers: vec![XdsServer {
                uri,
                creds: ChannelCreds::Insecure,
                ignore_resource_deletion: false,
            }],
            node,
            listener_name_template: "%s".to_owned(),
            key,
        }
    }

    /// The listener resource name of an `xds:///name` target.
    pub fn listener_name(&self, name: &str) -> String {
        self.listener_name_template.replace("%s", name)
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, BootstrapError> {
    value
        .as_object()
        .ok_or_else(|| BootstrapError::new(path, "expected a JSON object"))
}

fn string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String, BootstrapError> {
    match obj.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BootstrapError::new(
            format!("{path}.{key}"),
            "expected a string",
        )),
    }
}

fn server(value: &Value, path: &str) -> Result<XdsServer, BootstrapError> {
    let obj = object(value, path)?;
    let uri = match obj.get("server_uri") {
        None => {
            return Err(BootstrapError::new(
                format!("{path}.server_uri"),
                "is required",
            ));
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(BootstrapError::new(
                format!("{path}.server_uri"),
                "must not be empty",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(BootstrapError::new(
                format!("{path}.server_uri"),
                "expected a string",
            ));
        }
    };
    let creds_path = format!("{path}.channel_creds");
    let list = match obj.get("channel_creds") {
        None => return Err(BootstrapError::new(creds_path, "is required")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(BootstrapError::new(creds_path, "expected a list")),
    };
    let mut creds = None;
    for (i, entry) in list.iter().enumerate() {
        let entry_path = format!("{creds_path}[{i}]");
        let entry = object(entry, &entry_path)?;
        let kind = match entry.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => {
                return Err(BootstrapError::new(
                    format!("{entry_path}.type"),
                    "is required and must be a string",
                ));
            }
        };
        // The first type this client supports wins, as in grpc-go; the others are
        // not even read.
        match kind {
            "insecure" => creds = Some(ChannelCreds::Insecure),
            "tls" => creds = Some(ChannelCreds::Tls(tls(entry.get("config"), &entry_path)?)),
            _ => continue,
        }
        break;
    }
    let creds = creds.ok_or_else(|| {
        BootstrapError::new(
            format!("{path}.channel_creds"),
            "no supported type (this client supports \"insecure\" and \"tls\")",
        )
    })?;
    let mut ignore_resource_deletion = false;
    match obj.get("server_features") {
        None => {}
        Some(Value::Array(features)) => {
            for (i, feature) in features.iter().enumerate() {
                match feature.as_str() {
                    Some("ignore_resource_deletion") => ignore_resource_deletion = true,
                    // Other features (`xds_v3`, newer ones) are for other clients.
                    Some(_) => {}
                    None => {
                        return Err(BootstrapError::new(
                            format!("{path}.server_features[{i}]"),
                            "expected a string",
                        ));
                    }
                }
            }
        }
        Some(_) => {
            return Err(BootstrapError::new(
                format!("{path}.server_features"),
                "expected a list",
            ));
        }
    }
    Ok(XdsServer {
        uri,
        creds,
        ignore_resource_deletion,
    })
}

fn tls(config: Option<&Value>, path: &str) -> Result<TlsCreds, BootstrapError> {
    let path = format!("{path}.config");
    let mut creds = TlsCreds {
        refresh_interval: Duration::from_secs(600),
        ..TlsCreds::default()
    };
    let Some(config) = config else {
        return Ok(creds);
    };
    let obj = object(config, &path)?;
    let file = |key: &str| -> Result<Option<PathBuf>, BootstrapError> {
        let s = string(obj, key, &path)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    };
    creds.ca_certificate_file = file("ca_certificate_file")?;
    creds.certificate_file = file("certificate_file")?;
    creds.private_key_file = file("private_key_file")?;
    if creds.certificate_file.is_some() != creds.private_key_file.is_some() {
        return Err(BootstrapError::new(
            path,
            "certificate_file and private_key_file must be given together",
        ));
    }
    if let Some(v) = obj.get("refresh_interval") {
        creds.refresh_interval = lb_core::service_config::duration_from_json(v)
            .map_err(|reason| BootstrapError::new(format!("{path}.refresh_interval"), reason))?;
    }
    Ok(creds)
}

fn node(value: &Value) -> Result<Node, BootstrapError> {
    let obj = object(value, "node")?;
    let locality = match obj.get("locality") {
        None => Locality::default(),
        Some(v) => {
            let l = object(v, "node.locality")?;
            Locality {
                region: string(l, "region", "node.locality")?,
                zone: string(l, "zone", "node.locality")?,
                sub_zone: string(l, "sub_zone", "node.locality")?,
            }
        }
    };
    let metadata = match obj.get("metadata") {
        None => Map::new(),
        Some(v) => object(v, "node.metadata")?.clone(),
    };
    Ok(Node {
        id: string(obj, "id", "node")?,
        cluster: string(obj, "cluster", "node")?,
        locality,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bootstraps_name_their_field() {
        let cases = [
            ("[]", "$"),
            ("{}", "xds_servers"),
            (r#"{"xds_servers": {}}"#, "xds_servers"),
            (r#"{"xds_servers": []}"#, "xds_servers"),
            (r#"{"xds_servers": [7]}"#, "xds_servers[0]"),
            (r#"{"xds_servers": [{}]}"#, "xds_servers[0].server_uri"),
            (
                r#"{"xds_servers": [{"server_uri": "a:1"}]}"#,
                "xds_servers[0].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": []}]}"#,
                "xds_servers[0].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"}]}]}"#,
                "xds_servers[0].channel_creds",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{}]}]}"#,
                "xds_servers[0].channel_creds[0].type",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {"certificate_file": "c.pem"}}]}]}"#,
                "xds_servers[0].channel_creds[0].config",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {"refresh_interval": "soon"}}]}]}"#,
                "xds_servers[0].channel_creds[0].config.refresh_interval",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}], "server_features": [1]}]}"#,
                "xds_servers[0].server_features[0]",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "node": {"id": 5}}"#,
                "node.id",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "node": {"locality": []}}"#,
                "node.locality",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "authorities": {"a": {}}}"#,
                "authorities",
            ),
        ];
        for (json, field) in cases {
            let error = Bootstrap::parse(json).expect_err(json);
            assert_eq!(error.field, field, "{json}: {error}");
        }
    }

    #[test]
    fn a_full_bootstrap_is_read() {
        let b = Bootstrap::parse(
            r#"{"xds_servers": [{"server_uri": "xds.example:443",
                  "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": "/ca.pem",
                     "certificate_file": "/c.pem", "private_key_file": "/k.pem", "refresh_interval": "60s"}}],
                  "server_features": ["xds_v3", "ignore_resource_deletion"]}],
                "node": {"id": "n", "cluster": "c", "locality": {"region": "r", "zone": "z", "sub_zone": "s"},
                         "metadata": {"k": [1]}},
                "client_default_listener_resource_name_template": "lds/%s"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let server = &b.servers[0];
        assert!(server.ignore_resource_deletion);
        let ChannelCreds::Tls(tls) = &server.creds else {
            panic!("not tls: {:?}", server.creds);
        };
        assert_eq!(tls.refresh_interval, Duration::from_secs(60));
        assert_eq!(tls.ca_certificate_file.as_deref(), Some("/ca.pem".as_ref()));
        assert_eq!(b.node.locality.to_string(), "r/z/s");
        assert_eq!(b.listener_name("svc"), "lds/svc");
        assert_eq!(b.node.metadata["k"], serde_json::json!([1]));
    }
}
