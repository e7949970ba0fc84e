//! `RouteConfiguration` (RDS, or inline in a listener), as gRFC A28 reads it: virtual
//! hosts by domain, routes by path, headers and runtime fraction, each to a cluster or
//! weighted clusters, with a timeout (`max_stream_duration`), a retry policy (A44)
//! and hash policies (A42).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use lb_core::Code;
use lb_core::service_config::{MAX_ATTEMPTS, RetryPolicy};
use regex::Regex;

use super::{Decoded, Resource, ResourceError, decoded, duration, per_million};

/// A validated route configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteConfigUpdate {
    /// Its name.
    pub name: String,
    /// Its virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// A virtual host: the routes of some domains.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VirtualHost {
    /// Its name.
    pub name: String,
    /// The domains it serves: exact, `*.suffix`, `prefix.*` or `*`.
    pub domains: Vec<String>,
    /// Its routes, first match wins; routes gRPC ignores (query parameter matchers,
    /// `cluster_header`) are left out.
    pub routes: Vec<Route>,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Route {
    /// What RPCs it matches.
    pub matcher: RouteMatch,
    /// What it does with them.
    pub action: RouteAction,
}

/// What RPCs a route matches.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteMatch {
    /// The path matcher.
    pub path: PathMatch,
    /// `case_sensitive` (default true), for prefix and path matchers.
    pub case_sensitive: bool,
    /// Header matchers, all of which must match.
    pub headers: Vec<HeaderMatcher>,
    /// `runtime_fraction`'s default value in parts per million: the share of RPCs
    /// the route matches.
    pub fraction_per_million: Option<u32>,
}

/// A path matcher.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is this.
    Path(String),
    /// The whole path matches this RE2 regex.
    Regex(Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b))
            | (PathMatch::Path(a), PathMatch::Path(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// A header matcher.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HeaderMatcher {
    /// The header's name, lower case.
    pub name: String,
    /// `invert_match`.
    pub invert: bool,
    /// How its value is matched.
    pub kind: HeaderMatch,
}

/// How a header's value is matched.
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// Equal to this (ignoring ASCII case when the flag says so).
    Exact(String, bool),
    /// Starts with this.
    Prefix(String, bool),
    /// Ends with this.
    Suffix(String, bool),
    /// Contains this.
    Contains(String, bool),
    /// Matches this RE2 regex whole.
    Regex(Regex),
    /// An integer in `[start, end)`.
    Range(i64, i64),
    /// Present (`true`) or absent (`false`).
    Present(bool),
}

impl PartialEq for HeaderMatch {
    fn eq(&self, other: &Self) -> bool {
        use HeaderMatch::*;
        match (self, other) {
            (Exact(a, x), Exact(b, y))
            | (Prefix(a, x), Prefix(b, y))
            | (Suffix(a, x), Suffix(b, y))
            | (Contains(a, x), Contains(b, y)) => a == b && x == y,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Range(a, b), Range(c, d)) => a == c && b == d,
            (Present(a), Present(b)) => a == b,
            _ => false,
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Sends RPCs to a cluster chosen by weight.
    Forward {
        /// The clusters and their weights (a single cluster has weight 1).
        clusters: Vec<WeightedCluster>,
        /// The route's own timeout: `max_stream_duration`'s `grpc_timeout_header_max`
        /// or `max_stream_duration`; `Some(0)` means none; `None`, the listener's.
        timeout: Option<Duration>,
        /// The retry policy (the route's, else its virtual host's), A44.
        retry: Option<RetryPolicy>,
        /// Hash policies for `ring_hash` (A42).
        hash_policies: Vec<HashPolicy>,
    },
    /// An action a gRPC client does not take (redirect, direct response,
    /// non-forwarding): matching RPCs fail with `UNAVAILABLE` saying this.
    Fail(String),
}

/// One cluster of a route and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    /// The cluster.
    pub name: String,
    /// Its weight, at least 1.
    pub weight: u32,
}

/// A hash policy of a route (A42).
#[derive(Debug, Clone)]
pub enum HashPolicy {
    /// Hash a header's values (joined with `,`), rewritten by a regex first.
    Header {
        /// The header, lower case.
        name: String,
        /// `regex_rewrite`: the pattern and its substitution.
        rewrite: Option<(Regex, String)>,
        /// `terminal`: stop at this policy if it produced a hash.
        terminal: bool,
    },
    /// `filter_state` with key `io.grpc.channel_id`: a hash of the channel.
    ChannelId {
        /// `terminal`.
        terminal: bool,
    },
}

impl PartialEq for HashPolicy {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                HashPolicy::Header {
                    name: a,
                    rewrite: ra,
                    terminal: ta,
                },
                HashPolicy::Header {
                    name: b,
                    rewrite: rb,
                    terminal: tb,
                },
            ) => {
                a == b
                    && ta == tb
                    && ra.as_ref().map(|(r, s)| (r.as_str(), s))
                        == rb.as_ref().map(|(r, s)| (r.as_str(), s))
            }
            (HashPolicy::ChannelId { terminal: a }, HashPolicy::ChannelId { terminal: b }) => {
                a == b
            }
            _ => false,
        }
    }
}

pub(super) fn decode(bytes: &[u8]) -> Decoded {
    decoded(
        bytes,
        "RouteConfiguration",
        |r: &pb::RouteConfiguration| &r.name,
        |r| validate_config(r).map(|r| Resource::RouteConfig(Arc::new(r))),
    )
}

pub(super) fn validate_config(
    config: pb::RouteConfiguration,
) -> Result<RouteConfigUpdate, ResourceError> {
    let mut plugins = HashSet::new();
    for (i, p) in config.cluster_specifier_plugins.iter().enumerate() {
        let field = format!("cluster_specifier_plugins[{i}]");
        let extension = p
            .extension
            .as_ref()
            .ok_or_else(|| ResourceError::new(format!("{field}.extension"), "is required"))?;
        if !p.is_optional {
            let kind = extension
                .typed_config
                .as_ref()
                .map_or("", |a| a.type_url.as_str());
            return Err(ResourceError::new(
                format!("{field}.extension"),
                format!(
                    "{kind:?} is not supported (no cluster specifier plugin is) and the plugin is not optional"
                ),
            ));
        }
        if !plugins.insert(extension.name.clone()) {
            return Err(ResourceError::new(
                format!("{field}.extension.name"),
                format!("{:?} is declared twice", extension.name),
            ));
        }
    }
    let mut virtual_hosts = Vec::with_capacity(config.virtual_hosts.len());
    for (i, vh) in config.virtual_hosts.into_iter().enumerate() {
        virtual_hosts.push(
            virtual_host(vh, &plugins).map_err(|e| e.within(&format!("virtual_hosts[{i}]")))?,
        );
    }
    Ok(RouteConfigUpdate {
        name: config.name,
        virtual_hosts,
    })
}

fn virtual_host(
    vh: pb::VirtualHost,
    plugins: &HashSet<String>,
) -> Result<VirtualHost, ResourceError> {
    let vh_retry = match &vh.retry_policy {
        Some(p) => retry_policy(p).map_err(|e| e.within("retry_policy"))?,
        None => None,
    };
    let mut routes = Vec::new();
    for (i, r) in vh.routes.into_iter().enumerate() {
        if let Some(route) =
            route(r, vh_retry.as_ref(), plugins).map_err(|e| e.within(&format!("routes[{i}]")))?
        {
            routes.push(route);
        }
    }
    Ok(VirtualHost {
        name: vh.name,
        domains: vh
            .domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        routes,
    })
}

/// A route, or `None` for one gRPC ignores.
fn route(
    r: pb::Route,
    vh_retry: Option<&RetryPolicy>,
    plugins: &HashSet<String>,
) -> Result<Option<Route>, ResourceError> {
    use pb::route_match::PathSpecifier;
    let m = r
        .r#match
        .ok_or_else(|| ResourceError::new("match", "is required"))?;
    if !m.query_parameters.is_empty() {
        // gRPC has no query parameters: such a route never matches (A28).
        return Ok(None);
    }
    let path = match m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p),
        Some(PathSpecifier::Path(p)) => PathMatch::Path(p),
        Some(PathSpecifier::SafeRegex(re)) => PathMatch::Regex(regex(&re, "match.safe_regex")?),
        Some(_) => {
            return Err(ResourceError::new(
                "match.path_specifier",
                "is not one of prefix, path and safe_regex",
            ));
        }
        None => return Err(ResourceError::new("match.path_specifier", "is required")),
    };
    let case_sensitive = m.case_sensitive.is_none_or(|c| c.value);
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_matcher(h).map_err(|e| e.within(&format!("match.headers[{i}]")))?);
    }
    let fraction_per_million = m
        .runtime_fraction
        .as_ref()
        .map(|f| f.default_value.as_ref().map_or(Ok(0), per_million))
        .transpose()
        .map_err(|e| e.within("match.runtime_fraction.default_value"))?;
    let matcher = RouteMatch {
        path,
        case_sensitive,
        headers,
        fraction_per_million,
    };
    let action = match r.action {
        Some(pb::route::Action::Route(action)) => {
            match route_action(action, vh_retry, plugins).map_err(|e| e.within("route"))? {
                Some(action) => action,
                None => return Ok(None),
            }
        }
        Some(pb::route::Action::NonForwardingAction(_)) => {
            RouteAction::Fail("the matching route has a non-forwarding action".into())
        }
        Some(_) => RouteAction::Fail("the matching route's action is not supported".into()),
        None => RouteAction::Fail("the matching route has no action".into()),
    };
    Ok(Some(Route { matcher, action }))
}

fn route_action(
    action: pb::RouteAction,
    vh_retry: Option<&RetryPolicy>,
    plugins: &HashSet<String>,
) -> Result<Option<RouteAction>, ResourceError> {
    use pb::route_action::ClusterSpecifier;
    let clusters = match action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if name.is_empty() => {
            return Err(ResourceError::new("cluster", "must not be empty"));
        }
        Some(ClusterSpecifier::Cluster(name)) => vec![WeightedCluster { name, weight: 1 }],
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::with_capacity(w.clusters.len());
            let mut total: u64 = 0;
            for (i, c) in w.clusters.into_iter().enumerate() {
                let weight = c.weight.map_or(0, |w| w.value);
                if c.name.is_empty() {
                    return Err(ResourceError::new(
                        format!("weighted_clusters.clusters[{i}].name"),
                        "must not be empty",
                    ));
                }
                total += u64::from(weight);
                if weight > 0 {
                    clusters.push(WeightedCluster {
                        name: c.name,
                        weight,
                    });
                }
            }
            if total == 0 {
                return Err(ResourceError::new("weighted_clusters", "weights sum to 0"));
            }
            if total > u64::from(u32::MAX) {
                return Err(ResourceError::new(
                    "weighted_clusters",
                    format!("weights sum to {total}, more than {}", u32::MAX),
                ));
            }
            clusters
        }
        // A plugin must be declared by the route configuration; none is supported
        // here, so only optional ones are, and their routes are ignored (A28's RLS
        // rules).
        Some(ClusterSpecifier::ClusterSpecifierPlugin(name)) => {
            if !plugins.contains(&name) {
                return Err(ResourceError::new(
                    "cluster_specifier_plugin",
                    format!(
                        "{name:?} is not in the route configuration's cluster_specifier_plugins"
                    ),
                ));
            }
            return Ok(None);
        }
        // `cluster_header`, inline plugins, and none at all: gRPC ignores the route.
        Some(_) | None => return Ok(None),
    };
    let timeout = match &action.max_stream_duration {
        Some(m) => match (&m.grpc_timeout_header_max, &m.max_stream_duration) {
            (Some(d), _) => Some(duration(d, "max_stream_duration.grpc_timeout_header_max")?),
            (None, Some(d)) => Some(duration(d, "max_stream_duration.max_stream_duration")?),
            (None, None) => None,
        },
        None => None,
    };
    let retry = match &action.retry_policy {
        Some(p) => retry_policy(p).map_err(|e| e.within("retry_policy"))?,
        None => vh_retry.cloned(),
    };
    let mut hash_policies = Vec::new();
    for (i, h) in action.hash_policy.iter().enumerate() {
        use pb::route_action::hash_policy::PolicySpecifier;
        match &h.policy_specifier {
            Some(PolicySpecifier::Header(header)) => {
                let field = format!("hash_policy[{i}].header");
                let rewrite = match &header.regex_rewrite {
                    Some(r) => {
                        // No pattern compiles as the empty one, as grpc-go reads it.
                        let empty = RegexMatcher::default();
                        let pattern = r.pattern.as_ref().unwrap_or(&empty);
                        Some((
                            unanchored(pattern, &format!("{field}.regex_rewrite.pattern"))?,
                            r.substitution.clone(),
                        ))
                    }
                    None => None,
                };
                hash_policies.push(HashPolicy::Header {
                    name: header.header_name.to_ascii_lowercase(),
                    rewrite,
                    terminal: h.terminal,
                });
            }
            Some(PolicySpecifier::FilterState(f)) if f.key == "io.grpc.channel_id" => {
                hash_policies.push(HashPolicy::ChannelId {
                    terminal: h.terminal,
                });
            }
            // Cookies, connection properties, query parameters: nothing in gRPC.
            _ => {}
        }
    }
    Ok(Some(RouteAction::Forward {
        clusters,
        timeout,
        retry,
        hash_policies,
    }))
}

/// The status codes A44 lets a retry policy name in `retry_on`.
fn retry_code(name: &str) -> Option<Code> {
    Some(match name.trim() {
        "cancelled" => Code::Cancelled,
        "deadline-exceeded" => Code::DeadlineExceeded,
        "internal" => Code::Internal,
        "resource-exhausted" => Code::ResourceExhausted,
        "unavailable" => Code::Unavailable,
        _ => return None,
    })
}

/// A retry policy as A44: `None` when it names no code gRPC retries.
fn retry_policy(p: &pb::RetryPolicy) -> Result<Option<RetryPolicy>, ResourceError> {
    let codes: Vec<Code> = p
        .retry_on
        .split(',')
        .filter_map(|c| retry_code(&c.to_ascii_lowercase()))
        .collect();
    let retries = p.num_retries.map_or(1, |n| n.value);
    if retries == 0 {
        return Err(ResourceError::new("num_retries", "must be at least 1"));
    }
    let (mut base, mut max) = (Duration::from_millis(25), Duration::from_millis(250));
    if let Some(b) = &p.retry_back_off {
        let given = b
            .base_interval
            .as_ref()
            .ok_or_else(|| ResourceError::new("retry_back_off.base_interval", "is required"))?;
        base = duration(given, "retry_back_off.base_interval")?;
        if base.is_zero() {
            return Err(ResourceError::new(
                "retry_back_off.base_interval",
                "must be greater than 0",
            ));
        }
        max = match &b.max_interval {
            Some(m) => duration(m, "retry_back_off.max_interval")?,
            None => base.saturating_mul(10),
        };
        if max.is_zero() {
            return Err(ResourceError::new(
                "retry_back_off.max_interval",
                "must be greater than 0",
            ));
        }
        // A maximum under the base: every backoff is the maximum.
        base = base.min(max);
    }
    if codes.is_empty() {
        return Ok(None);
    }
    Ok(Some(RetryPolicy {
        max_attempts: retries.saturating_add(1).min(MAX_ATTEMPTS),
        initial_backoff: base,
        max_backoff: max,
        backoff_multiplier: 2.0,
        retryable_status_codes: codes,
    }))
}

// The deprecated matchers are still on the wire, and gRPC still reads them.
#[allow(deprecated)]
fn header_matcher(h: &pb::HeaderMatcher) -> Result<HeaderMatcher, ResourceError> {
    use pb::header_matcher::HeaderMatchSpecifier as S;
    let kind = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => HeaderMatch::Exact(s.clone(), false),
        Some(S::SafeRegexMatch(re)) => HeaderMatch::Regex(regex(re, "safe_regex_match")?),
        // A range whose start is past its end matches nothing, as in grpc-go.
        Some(S::RangeMatch(r)) => HeaderMatch::Range(r.start, r.end),
        Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(S::PrefixMatch(s)) => HeaderMatch::Prefix(non_empty(s, "prefix_match")?, false),
        Some(S::SuffixMatch(s)) => HeaderMatch::Suffix(non_empty(s, "suffix_match")?, false),
        Some(S::ContainsMatch(s)) => HeaderMatch::Contains(non_empty(s, "contains_match")?, false),
        Some(S::StringMatch(m)) => string_match(m, "string_match")?,
        None => return Err(ResourceError::new("header_match_specifier", "is required")),
    };
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        invert: h.invert_match,
        kind,
    })
}

/// A prefix, suffix or substring to match: empty ones are invalid (as grpc-go's
/// `StringMatcherFromProto`).
fn non_empty(s: &str, field: &str) -> Result<String, ResourceError> {
    if s.is_empty() {
        return Err(ResourceError::new(field, "must not be empty"));
    }
    Ok(s.to_owned())
}

fn string_match(m: &StringMatcher, field: &str) -> Result<HeaderMatch, ResourceError> {
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => HeaderMatch::Exact(s.clone(), ic),
        Some(MatchPattern::Prefix(s)) => {
            HeaderMatch::Prefix(non_empty(s, &format!("{field}.prefix"))?, ic)
        }
        Some(MatchPattern::Suffix(s)) => {
            HeaderMatch::Suffix(non_empty(s, &format!("{field}.suffix"))?, ic)
        }
        Some(MatchPattern::Contains(s)) => {
            HeaderMatch::Contains(non_empty(s, &format!("{field}.contains"))?, ic)
        }
        Some(MatchPattern::SafeRegex(re)) => {
            HeaderMatch::Regex(regex(re, &format!("{field}.safe_regex"))?)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(ResourceError::new(
                format!("{field}.custom"),
                "is not supported",
            ));
        }
        None => {
            return Err(ResourceError::new(
                format!("{field}.match_pattern"),
                "is required",
            ));
        }
    })
}

/// The most a compiled regex may take, so that a hostile pattern cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regex that must match a whole string.
fn regex(re: &RegexMatcher, field: &str) -> Result<Regex, ResourceError> {
    regex::RegexBuilder::new(&format!("^(?:{})$", re.regex))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ResourceError::new(field, format!("invalid regex {:?}: {e}", re.regex)))
}

fn unanchored(re: &RegexMatcher, field: &str) -> Result<Regex, ResourceError> {
    regex::RegexBuilder::new(&re.regex)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ResourceError::new(field, format!("invalid regex {:?}: {e}", re.regex)))
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn starts(value: &str, prefix: &str, ignore_case: bool) -> bool {
    value.len() >= prefix.len()
        && value.is_char_boundary(prefix.len())
        && eq(&value[..prefix.len()], prefix, ignore_case)
}

fn ends(value: &str, suffix: &str, ignore_case: bool) -> bool {
    let at = value.len().wrapping_sub(suffix.len());
    value.len() >= suffix.len()
        && value.is_char_boundary(at)
        && eq(&value[at..], suffix, ignore_case)
}

impl RouteMatch {
    /// Whether an RPC on `path` with `headers` matches, given a random draw in
    /// `[0, 1_000_000)` for the runtime fraction.
    pub fn matches(&self, path: &str, headers: &http::HeaderMap, draw: u32) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts(path, p, !self.case_sensitive),
            PathMatch::Path(p) => eq(path, p, !self.case_sensitive),
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(headers))
            && self.fraction_per_million.is_none_or(|f| draw < f)
    }
}

/// A header's value as gRPC's matchers see it: binary headers never, `content-type`
/// always `application/grpc`, repeated values joined with `,`.
/// Borrowed unless the header is repeated: a route match allocates nothing for
/// the usual single-valued header.
pub(crate) fn header_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    if name.ends_with("-bin") {
        return None;
    }
    if name == "content-type" {
        return Some(Cow::Borrowed("application/grpc"));
    }
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = format!("{first},{second}");
    for v in values {
        joined.push(',');
        joined.push_str(v);
    }
    Some(Cow::Owned(joined))
}

impl HeaderMatcher {
    /// Whether `headers` match.
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        let value = header_value(headers, &self.name);
        let matched = match (&self.kind, value.as_deref()) {
            (HeaderMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => return false,
            (HeaderMatch::Exact(s, ic), Some(v)) => eq(v, s, *ic),
            (HeaderMatch::Prefix(s, ic), Some(v)) => starts(v, s, *ic),
            (HeaderMatch::Suffix(s, ic), Some(v)) => ends(v, s, *ic),
            (HeaderMatch::Contains(s, ic), Some(v)) => {
                if *ic {
                    v.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    v.contains(s.as_str())
                }
            }
            (HeaderMatch::Regex(re), Some(v)) => re.is_match(v),
            (HeaderMatch::Range(start, end), Some(v)) => {
                v.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
        };
        matched != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(kind: HeaderMatch, invert: bool) -> HeaderMatcher {
        HeaderMatcher {
            name: "x".into(),
            invert,
            kind,
        }
    }

    #[test]
    fn header_matchers_follow_grpc() {
        let mut h = http::HeaderMap::new();
        h.append("x", http::HeaderValue::from_static("Abc"));
        h.append("x", http::HeaderValue::from_static("12"));
        assert!(matcher(HeaderMatch::Exact("Abc,12".into(), false), false).matches(&h));
        assert!(matcher(HeaderMatch::Prefix("abc".into(), true), false).matches(&h));
        assert!(!matcher(HeaderMatch::Prefix("abc".into(), false), false).matches(&h));
        assert!(matcher(HeaderMatch::Suffix(",12".into(), false), false).matches(&h));
        assert!(matcher(HeaderMatch::Contains("C,1".into(), true), false).matches(&h));
        assert!(matcher(HeaderMatch::Present(false), true).matches(&h));
        let mut n = http::HeaderMap::new();
        n.insert("x", http::HeaderValue::from_static("-5"));
        assert!(matcher(HeaderMatch::Range(-10, 0), false).matches(&n));
        assert!(!matcher(HeaderMatch::Range(-5, -5), false).matches(&n));
        // A missing header fails every matcher but `present: false`, inverted or not.
        let none = http::HeaderMap::new();
        assert!(!matcher(HeaderMatch::Exact("a".into(), false), true).matches(&none));
        assert!(matcher(HeaderMatch::Present(false), false).matches(&none));
        // Multi-byte values do not split a character.
        let mut u = http::HeaderMap::new();
        u.insert("x", http::HeaderValue::from_static("ab"));
        assert!(!matcher(HeaderMatch::Suffix("abc".into(), false), false).matches(&u));
    }

    #[test]
    fn paths_match_by_case_and_regex() {
        let h = http::HeaderMap::new();
        let m = |path, case_sensitive| RouteMatch {
            path,
            case_sensitive,
            headers: vec![],
            fraction_per_million: None,
        };
        assert!(m(PathMatch::Prefix("/Echo.".into()), false).matches("/echo.E/M", &h, 0));
        assert!(!m(PathMatch::Prefix("/Echo.".into()), true).matches("/echo.E/M", &h, 0));
        let re = regex(
            &RegexMatcher {
                regex: "/echo\\..*/Unary.*".into(),
                engine_type: None,
            },
            "f",
        )
        .unwrap();
        assert!(m(PathMatch::Regex(re.clone()), true).matches("/echo.E/UnaryEcho", &h, 0));
        assert!(!m(PathMatch::Regex(re), true).matches("/x/echo.E/UnaryEcho", &h, 0));
        let mut f = m(PathMatch::Prefix(String::new()), true);
        f.fraction_per_million = Some(250_000);
        assert!(f.matches("/a/b", &h, 249_999));
        assert!(!f.matches("/a/b", &h, 250_000));
    }
}
