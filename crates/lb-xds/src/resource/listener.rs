//! `Listener` (LDS), as a client reads it (gRFC A27, A39): an `api_listener` holding
//! an `HttpConnectionManager` whose routes come from RDS or inline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter::ConfigType,
};

use super::{Decoded, Resource, ResourceError, RouteConfigUpdate, ads_or_self, decoded, duration};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// A validated client listener.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ListenerUpdate {
    /// Where its routes come from.
    pub route: RouteSource,
    /// `common_http_protocol_options.max_stream_duration`: the RPC timeout of routes
    /// that set none (`None`: no limit).
    pub max_stream_duration: Option<Duration>,
    /// The names of its HTTP filters, the router last.
    pub http_filters: Vec<String>,
}

/// Where a listener's route configuration comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// An RDS resource of this name.
    Rds(String),
    /// Inline in the listener.
    Inline(Arc<RouteConfigUpdate>),
}

pub(super) fn decode(bytes: &[u8]) -> Decoded {
    decoded(bytes, "Listener", |l: &Listener| &l.name, validate)
}

fn validate(listener: Listener) -> Result<Resource, ResourceError> {
    let api = listener
        .api_listener
        .and_then(|a| a.api_listener)
        .ok_or_else(|| {
            ResourceError::new("api_listener", "is required (a client listener has one)")
        })?;
    let hcm: HttpConnectionManager = super::unpack(&api, HCM, "api_listener.api_listener")?;
    validate_hcm(hcm)
        .map_err(|e| e.within("api_listener.api_listener"))
        .map(|l| Resource::Listener(Arc::new(l)))
}

fn validate_hcm(hcm: HttpConnectionManager) -> Result<ListenerUpdate, ResourceError> {
    // gRFC A41: a client does not see client addresses to trust or detect.
    if hcm.xff_num_trusted_hops != 0 {
        return Err(ResourceError::new("xff_num_trusted_hops", "must be 0"));
    }
    if !hcm.original_ip_detection_extensions.is_empty() {
        return Err(ResourceError::new(
            "original_ip_detection_extensions",
            "must be empty",
        ));
    }
    let route = match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            ads_or_self(rds.config_source.as_ref(), "rds.config_source")?;
            if rds.route_config_name.is_empty() {
                return Err(ResourceError::new(
                    "rds.route_config_name",
                    "must not be empty",
                ));
            }
            RouteSource::Rds(rds.route_config_name)
        }
        Some(RouteSpecifier::RouteConfig(config)) => RouteSource::Inline(Arc::new(
            super::route::validate_config(config).map_err(|e| e.within("route_config"))?,
        )),
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ResourceError::new("scoped_routes", "is not supported"));
        }
        None => {
            return Err(ResourceError::new(
                "route_specifier",
                "one of rds or route_config is required",
            ));
        }
    };
    let max_stream_duration = match hcm
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.max_stream_duration.as_ref())
    {
        Some(d) => Some(duration(
            d,
            "common_http_protocol_options.max_stream_duration",
        )?)
        .filter(|d| !d.is_zero()),
        None => None,
    };
    let mut names = HashSet::new();
    let mut http_filters = Vec::new();
    let mut router_at = None;
    for (i, filter) in hcm.http_filters.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        if filter.name.is_empty() {
            return Err(ResourceError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if !names.insert(filter.name.as_str()) {
            return Err(ResourceError::new(
                format!("{field}.name"),
                format!("{:?} is used twice", filter.name),
            ));
        }
        if let Some(at) = router_at {
            return Err(ResourceError::new(
                field,
                format!("follows the router (http_filters[{at}]), which must be last"),
            ));
        }
        match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == ROUTER => {
                router_at = Some(i);
                http_filters.push(filter.name.clone());
            }
            // Filters this client does not run: an optional one is skipped, as gRPC
            // skips it; any other fails the listener.
            _ if filter.is_optional => {}
            Some(ConfigType::TypedConfig(any)) => {
                return Err(ResourceError::new(
                    format!("{field}.typed_config"),
                    format!("unsupported filter type {:?}", any.type_url),
                ));
            }
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(ResourceError::new(
                    format!("{field}.config_discovery"),
                    "is not supported",
                ));
            }
            None => {
                return Err(ResourceError::new(
                    format!("{field}.typed_config"),
                    "is required",
                ));
            }
        }
    }
    if router_at.is_none() {
        return Err(ResourceError::new(
            "http_filters",
            "no router filter (envoy.extensions.filters.http.router.v3.Router): it must be last",
        ));
    }
    Ok(ListenerUpdate {
        route,
        max_stream_duration,
        http_filters,
    })
}
