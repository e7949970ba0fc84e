//! The four xDS resource types a gRPC client reads, decoded from their protobuf and
//! validated as grpc-go and C-core validate them (gRFC A27, A28, A37, A42, A44, A48,
//! A50, A52, A56, A58, A61). A resource they would reject is an error naming the
//! field ([`ResourceError`]), which the client NACKs; fields gRPC ignores are
//! ignored here too.

mod cluster;
mod endpoint;
mod listener;
pub(crate) mod route;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;

pub use cluster::{ClusterKind, ClusterUpdate, DEFAULT_MAX_REQUESTS, OutlierDetectionConfig};
pub use endpoint::{DropCategory, Endpoint, EndpointsUpdate, LocalityEndpoints};
pub use listener::{ListenerUpdate, RouteSource};
pub use route::{
    HashPolicy, HeaderMatch, HeaderMatcher, PathMatch, Route, RouteAction, RouteConfigUpdate,
    RouteMatch, VirtualHost, WeightedCluster,
};

/// The most clusters an aggregate cluster may nest (gRFC A37).
pub const MAX_AGGREGATE_DEPTH: usize = 16;

/// An xDS resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `Listener` (LDS).
    Listener,
    /// `RouteConfiguration` (RDS).
    RouteConfig,
    /// `Cluster` (CDS).
    Cluster,
    /// `ClusterLoadAssignment` (EDS).
    Endpoints,
}

impl ResourceType {
    /// Every type, in the order a client subscribes.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::RouteConfig,
        ResourceType::Cluster,
        ResourceType::Endpoints,
    ];

    /// The type URL on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfig => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoints => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
        }
    }

    /// The type of a type URL, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short name gRPC's metrics and CSDS use (`envoy.config.listener.v3.Listener`).
    pub fn short_name(self) -> &'static str {
        let url = self.type_url();
        url.rsplit('/').next().unwrap_or(url)
    }

    /// Whether a resource of this type missing from a response was deleted (state of
    /// the world: listeners and clusters are sent whole, routes and endpoints not).
    pub const fn all_in_each_response(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Listener => "listener",
            ResourceType::RouteConfig => "route configuration",
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoints => "endpoints",
        })
    }
}

/// A resource gRPC would reject: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ResourceError {
    /// The protobuf field path within the resource (`virtual_hosts[0].routes[2].route`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ResourceError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// This error with `prefix` before its field.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// A decoded, validated resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A listener.
    Listener(Arc<ListenerUpdate>),
    /// A route configuration.
    RouteConfig(Arc<RouteConfigUpdate>),
    /// A cluster.
    Cluster(Arc<ClusterUpdate>),
    /// A cluster's endpoints.
    Endpoints(Arc<EndpointsUpdate>),
}

impl Resource {
    /// Its type.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Resource::Listener(_) => ResourceType::Listener,
            Resource::RouteConfig(_) => ResourceType::RouteConfig,
            Resource::Cluster(_) => ResourceType::Cluster,
            Resource::Endpoints(_) => ResourceType::Endpoints,
        }
    }
}

/// One resource of a response, decoded: its name (when it could be read) and the
/// resource or why it is rejected.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The resource's name; `None` when not even that could be read.
    pub name: Option<String>,
    /// The resource, or why gRPC would reject it.
    pub result: Result<Resource, ResourceError>,
}

/// The wrapper a server may put around each resource.
const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Decodes one resource of a response for `ty` (unwrapping a
/// `envoy.service.discovery.v3.Resource` wrapper).
pub fn decode(ty: ResourceType, any: &Any) -> Decoded {
    let mut any = any.clone();
    if any.type_url == RESOURCE_WRAPPER {
        match envoy_types::pb::envoy::service::discovery::v3::Resource::decode(&any.value[..]) {
            Ok(wrapper) => match wrapper.resource {
                Some(inner) => any = inner,
                None => {
                    return Decoded {
                        name: Some(wrapper.name),
                        result: Err(ResourceError::new("resource", "is required")),
                    };
                }
            },
            Err(e) => {
                return Decoded {
                    name: None,
                    result: Err(ResourceError::new("", format!("not a Resource: {e}"))),
                };
            }
        }
    }
    if any.type_url != ty.type_url() {
        return Decoded {
            name: None,
            result: Err(ResourceError::new(
                "type_url",
                format!("{:?} in a response for {}", any.type_url, ty.type_url()),
            )),
        };
    }
    let bytes = &any.value[..];
    match ty {
        ResourceType::Listener => listener::decode(bytes),
        ResourceType::RouteConfig => route::decode(bytes),
        ResourceType::Cluster => cluster::decode(bytes),
        ResourceType::Endpoints => endpoint::decode(bytes),
    }
}

/// A decoded resource with its name, or a message that did not decode.
pub(crate) fn decoded<M: Message + Default>(
    bytes: &[u8],
    what: &str,
    name: impl FnOnce(&M) -> &str,
    validate: impl FnOnce(M) -> Result<Resource, ResourceError>,
) -> Decoded {
    match M::decode(bytes) {
        Err(e) => Decoded {
            name: None,
            result: Err(ResourceError::new("", format!("not a valid {what}: {e}"))),
        },
        Ok(message) => {
            let name = name(&message).to_owned();
            if name.is_empty() {
                return Decoded {
                    name: None,
                    result: Err(ResourceError::new("name", format!("a {what} needs a name"))),
                };
            }
            Decoded {
                name: Some(name),
                result: validate(message),
            }
        }
    }
}

/// A protobuf `Duration`, validated (non-negative, nanos in range, at most 10,000
/// years).
pub(crate) fn duration(d: &PbDuration, field: &str) -> Result<Duration, ResourceError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ResourceError::new(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 || d.seconds > 315_576_000_000 {
        return Err(ResourceError::new(field, "out of range"));
    }
    Ok(Duration::new(
        d.seconds.unsigned_abs(),
        d.nanos.unsigned_abs(),
    ))
}

/// An `Any` holding `M`, decoded, or an error naming `field`.
pub(crate) fn unpack<M: Message + Default>(
    any: &Any,
    type_url: &str,
    field: &str,
) -> Result<M, ResourceError> {
    if any.type_url != type_url {
        return Err(ResourceError::new(
            field,
            format!("expected {type_url}, got {:?}", any.type_url),
        ));
    }
    M::decode(&any.value[..])
        .map_err(|e| ResourceError::new(field, format!("not a valid {type_url}: {e}")))
}

/// A `FractionalPercent` as parts per million (capped at a million); an unknown
/// denominator is an error.
pub(crate) fn per_million(
    f: &envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> Result<u32, ResourceError> {
    let scale = match f.denominator {
        0 => 10_000,
        1 => 100,
        2 => 1,
        other => {
            return Err(ResourceError::new(
                "denominator",
                format!("unknown value {other}"),
            ));
        }
    };
    Ok(f.numerator.saturating_mul(scale).min(1_000_000))
}

/// A `ConfigSource` must point at the ADS stream (`ads`) or this server (`self`).
pub(crate) fn ads_or_self(
    source: Option<&envoy_types::pb::envoy::config::core::v3::ConfigSource>,
    field: &str,
) -> Result<(), ResourceError> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_)) => Ok(()),
        None if source.is_none() => Err(ResourceError::new(field, "is required")),
        _ => Err(ResourceError::new(field, "must be ads or self")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for ty in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(ty.type_url()), Some(ty));
        }
        assert_eq!(
            ResourceType::Cluster.short_name(),
            "envoy.config.cluster.v3.Cluster"
        );
    }

    #[test]
    fn a_resource_of_the_wrong_type_is_rejected_without_a_name() {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().to_owned(),
            value: vec![],
        };
        let d = decode(ResourceType::Listener, &any);
        assert!(d.name.is_none());
        assert_eq!(d.result.unwrap_err().field, "type_url");
    }
}
