//! gRPC service config (the JSON form of `grpc.service_config.ServiceConfig`).

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{BalancerRegistry, Code, Error, LbConfig};

/// A parsed, validated service config.
///
/// Holds the load-balancing policy choice, `healthCheckConfig`, `methodConfig`
/// (timeouts, `waitForReady`, `retryPolicy`, `hedgingPolicy`) and `retryThrottling`. Unknown fields are ignored, as gRPC does.
/// An invalid config is an [`Error::ServiceConfig`] naming the JSON path; a channel that
/// gets one keeps its previous config.
///
/// ```
/// use lb_core::{BalancerRegistry, ServiceConfig};
///
/// let registry = BalancerRegistry::new(); // no policies: none can be chosen
/// let cfg = ServiceConfig::parse(r#"{"methodConfig": [{"name": [{}], "timeout": "1.5s"}]}"#, &registry)?;
/// assert_eq!(cfg.method_config("/pkg.Svc/Get").unwrap().timeout, Some(std::time::Duration::from_millis(1500)));
///
/// let err = ServiceConfig::parse(r#"{"methodConfig": [{"name": [{}], "timeout": "soon"}]}"#, &registry).unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid service config at `methodConfig[0].timeout`: expected a duration such as "1.5s", got "soon""#);
/// # Ok::<(), lb_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServiceConfig {
    lb_policy: Option<LbPolicy>,
    health_check: Option<HealthCheckConfig>,
    method_configs: Vec<MethodConfig>,
    retry_throttling: Option<RetryThrottling>,
}

/// The load-balancing policy a service config chose.
#[derive(Clone, Debug)]
pub struct LbPolicy {
    /// The policy's registered name.
    pub name: String,
    /// Its config, as parsed by its builder.
    pub config: LbConfig,
}

/// `healthCheckConfig` (gRFC A17).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// The service name to ask the health service about (may be empty).
    pub service_name: String,
}

/// One entry of `methodConfig`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MethodConfig {
    /// The methods it applies to.
    pub names: Vec<MethodName>,
    /// `timeout`: the default deadline of these RPCs.
    pub timeout: Option<Duration>,
    /// `waitForReady`: whether these RPCs wait for a ready subconn instead of failing.
    pub wait_for_ready: Option<bool>,
    /// `retryPolicy` (gRFC A6).
    pub retry_policy: Option<RetryPolicy>,
    /// `hedgingPolicy` (gRFC A6); never set together with `retry_policy`.
    pub hedging_policy: Option<HedgingPolicy>,
}

/// A `name` entry of a method config: a service and method, a whole service, or (both
/// empty) every method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MethodName {
    /// `package.Service`, or empty for the default config.
    pub service: String,
    /// The method, or empty for every method of `service`.
    pub method: String,
}

/// The most attempts a retry or hedging policy may make, as gRPC's client-side cap:
/// larger `maxAttempts` are treated as this.
pub const MAX_ATTEMPTS: u32 = 5;

/// `hedgingPolicy`, validated as gRFC A6 requires.
#[derive(Clone, Debug, PartialEq)]
pub struct HedgingPolicy {
    /// Attempts in all, the original included: 2 to 5 (larger values are capped).
    pub max_attempts: u32,
    /// The delay between hedged attempts (`0s`, or unset: all at once).
    pub hedging_delay: Duration,
    /// Status codes after which the other attempts may still succeed; any other
    /// failure ends the call.
    pub non_fatal_status_codes: Vec<Code>,
}

/// `retryThrottling` (gRFC A6): a per-channel token bucket that stops retries and
/// hedges while too many RPCs fail. Counted in thousandths of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryThrottling {
    /// `maxTokens` × 1000 (the bucket starts full).
    pub max_tokens_milli: u32,
    /// `tokenRatio` × 1000: what each successful RPC adds back.
    pub token_ratio_milli: u32,
}

/// `retryPolicy`, validated as gRFC A6 requires.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, 2 to 5 (larger values are capped at 5).
    pub max_attempts: u32,
    /// The first backoff; positive.
    pub initial_backoff: Duration,
    /// The largest backoff; positive.
    pub max_backoff: Duration,
    /// The backoff growth factor; positive.
    pub backoff_multiplier: f64,
    /// The status codes that are retried; not empty.
    pub retryable_status_codes: Vec<Code>,
}

impl ServiceConfig {
    /// Parses and validates `json`. `registry` decides which `loadBalancingConfig` entry
    /// wins (the first whose policy is registered) and parses that entry's config.
    pub fn parse(json: &str, registry: &BalancerRegistry) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::ServiceConfig {
            path: "$".to_owned(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let root = value
            .as_object()
            .ok_or_else(|| config_error("$", "expected a JSON object"))?;
        Ok(ServiceConfig {
            lb_policy: parse_lb_policy(root, registry)?,
            health_check: parse_health_check(root)?,
            method_configs: parse_method_configs(root)?,
            retry_throttling: parse_retry_throttling(root)?,
        })
    }

    /// A config that names `policy` and nothing else.
    pub fn with_policy(name: impl Into<String>, config: LbConfig) -> Self {
        Self {
            lb_policy: Some(LbPolicy {
                name: name.into(),
                config,
            }),
            ..Self::default()
        }
    }

    /// This config with its `loadBalancingConfig` replaced by `policy` (everything
    /// else kept).
    #[must_use]
    pub fn replace_policy(mut self, policy: LbPolicy) -> Self {
        self.lb_policy = Some(policy);
        self
    }

    /// The chosen policy, if the config names a registered one.
    pub fn lb_policy(&self) -> Option<&LbPolicy> {
        self.lb_policy.as_ref()
    }

    /// `healthCheckConfig`, if present.
    pub fn health_check(&self) -> Option<&HealthCheckConfig> {
        self.health_check.as_ref()
    }

    /// `retryThrottling`, if present.
    pub fn retry_throttling(&self) -> Option<RetryThrottling> {
        self.retry_throttling
    }

    /// Every `methodConfig` entry.
    pub fn method_configs(&self) -> &[MethodConfig] {
        &self.method_configs
    }

    /// The config for `path` (`/package.Service/Method`, leading slash optional): an
    /// exact method match first, then the service's, then the default (empty name).
    pub fn method_config(&self, path: &str) -> Option<&MethodConfig> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let find = |service: &str, method: &str| {
            self.method_configs.iter().find(|mc| {
                mc.names
                    .iter()
                    .any(|n| n.service == service && n.method == method)
            })
        };
        find(service, method)
            .or_else(|| find(service, ""))
            .or_else(|| find("", ""))
    }
}

/// The policy an unknown `loadBalancingPolicy` name falls back to, as in gRPC.
const PICK_FIRST: &str = "pick_first";

/// The largest duration protobuf's `Duration` can hold: 10,000 years of seconds.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;

fn config_error(path: impl fmt::Display, reason: impl Into<String>) -> Error {
    Error::ServiceConfig {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn parse_lb_policy(
    root: &Map<String, Value>,
    registry: &BalancerRegistry,
) -> Result<Option<LbPolicy>, Error> {
    if let Some(list) = root.get("loadBalancingConfig") {
        let list = list
            .as_array()
            .ok_or_else(|| config_error("loadBalancingConfig", "expected an array"))?;
        if list.is_empty() {
            return Err(config_error(
                "loadBalancingConfig",
                "must name at least one policy",
            ));
        }
        let mut names = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let path = format!("loadBalancingConfig[{i}]");
            let (name, config) = match entry.as_object() {
                Some(obj) if obj.len() == 1 => obj.iter().next().ok_or_else(|| {
                    config_error(&path, "expected an object with exactly one policy name")
                })?,
                _ => {
                    return Err(config_error(
                        &path,
                        "expected an object with exactly one policy name",
                    ));
                }
            };
            if let Some(builder) = registry.get(name) {
                // The first registered policy wins; if its config is bad the whole
                // service config is bad (gRPC does not fall through to the next one).
                let config = builder.parse_config_in(config, registry)?;
                return Ok(Some(LbPolicy {
                    name: name.clone(),
                    config,
                }));
            }
            names.push(name.clone());
        }
        return Err(Error::NoSupportedPolicy {
            names,
            registered: registry.names().into_iter().map(str::to_owned).collect(),
        });
    }
    if let Some(policy) = root.get("loadBalancingPolicy") {
        // The deprecated form: `"loadBalancingPolicy": "round_robin"`, no config. The
        // proto enum's JSON spelling is `ROUND_ROBIN`, so names are matched without
        // regard to case; an unknown name means pick_first, as in grpc-go and C-core.
        let name = policy
            .as_str()
            .ok_or_else(|| config_error("loadBalancingPolicy", "expected a string"))?;
        let Some(builder) = registry
            .get(name)
            .or_else(|| registry.get(&name.to_ascii_lowercase()))
            .or_else(|| registry.get(PICK_FIRST))
        else {
            return Ok(None); // the channel's default policy
        };
        let config = builder.parse_config_in(&Value::Object(Map::new()), registry)?;
        return Ok(Some(LbPolicy {
            name: builder.name().to_owned(),
            config,
        }));
    }
    Ok(None)
}

fn parse_health_check(root: &Map<String, Value>) -> Result<Option<HealthCheckConfig>, Error> {
    let Some(hc) = root.get("healthCheckConfig") else {
        return Ok(None);
    };
    let hc = hc
        .as_object()
        .ok_or_else(|| config_error("healthCheckConfig", "expected an object"))?;
    let service_name = match hc.get("serviceName") {
        None => String::new(),
        Some(v) => v
            .as_str()
            .ok_or_else(|| config_error("healthCheckConfig.serviceName", "expected a string"))?
            .to_owned(),
    };
    Ok(Some(HealthCheckConfig { service_name }))
}

fn parse_method_configs(root: &Map<String, Value>) -> Result<Vec<MethodConfig>, Error> {
    let Some(list) = root.get("methodConfig") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| config_error("methodConfig", "expected an array"))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, mc) in list.iter().enumerate() {
        let path = format!("methodConfig[{i}]");
        let mc = mc
            .as_object()
            .ok_or_else(|| config_error(&path, "expected an object"))?;
        let names = parse_names(mc, &path)?;
        for (j, name) in names.iter().enumerate() {
            if !seen.insert(name.clone()) {
                return Err(config_error(
                    format!("{path}.name[{j}]"),
                    format!(
                        "duplicate method name (service {:?}, method {:?})",
                        name.service, name.method
                    ),
                ));
            }
        }
        let wait_for_ready = match mc.get("waitForReady") {
            None => None,
            Some(v) => Some(v.as_bool().ok_or_else(|| {
                config_error(format!("{path}.waitForReady"), "expected a boolean")
            })?),
        };
        let timeout = mc
            .get("timeout")
            .map(|v| parse_duration(v, &format!("{path}.timeout")))
            .transpose()?;
        let retry_policy = mc
            .get("retryPolicy")
            .map(|v| parse_retry_policy(v, &format!("{path}.retryPolicy")))
            .transpose()?;
        let hedging_policy = mc
            .get("hedgingPolicy")
            .map(|v| parse_hedging_policy(v, &format!("{path}.hedgingPolicy")))
            .transpose()?;
        if retry_policy.is_some() && hedging_policy.is_some() {
            return Err(config_error(
                format!("{path}.hedgingPolicy"),
                "a method config may have a retryPolicy or a hedgingPolicy, not both",
            ));
        }
        out.push(MethodConfig {
            names,
            timeout,
            wait_for_ready,
            retry_policy,
            hedging_policy,
        });
    }
    Ok(out)
}

fn parse_names(mc: &Map<String, Value>, path: &str) -> Result<Vec<MethodName>, Error> {
    let Some(names) = mc.get("name") else {
        return Ok(Vec::new());
    };
    let names = names
        .as_array()
        .ok_or_else(|| config_error(format!("{path}.name"), "expected an array"))?;
    names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let npath = format!("{path}.name[{j}]");
            let n = n
                .as_object()
                .ok_or_else(|| config_error(&npath, "expected an object"))?;
            let field = |key: &str| -> Result<String, Error> {
                match n.get(key) {
                    None => Ok(String::new()),
                    Some(v) => v
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| config_error(format!("{npath}.{key}"), "expected a string")),
                }
            };
            let name = MethodName {
                service: field("service")?,
                method: field("method")?,
            };
            if name.service.is_empty() && !name.method.is_empty() {
                return Err(config_error(
                    &npath,
                    "a method name needs a service (only the default config has neither)",
                ));
            }
            Ok(name)
        })
        .collect()
}

/// Reads a protobuf JSON duration (`"1.5s"`, `".5s"`, `"3s"`) for a policy's own
/// config: `Err` says what is wrong, for [`Error::lb_config`]. The rules are the
/// service config's: at most 9 fractional digits, within ±315,576,000,000 s, not
/// negative.
///
/// ```
/// use std::time::Duration;
/// use lb_core::service_config::duration_from_json;
///
/// assert_eq!(duration_from_json(&serde_json::json!("0.25s")), Ok(Duration::from_millis(250)));
/// assert!(duration_from_json(&serde_json::json!(10)).is_err());
/// ```
pub fn duration_from_json(value: &Value) -> Result<Duration, String> {
    parse_duration(value, "").map_err(|e| match e {
        Error::ServiceConfig { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Parses a protobuf JSON duration: decimal seconds with an `s` suffix (`"1.5s"`,
/// `".5s"`, `"3s"`; at most 9 fractional digits, and a `.` must be followed by one),
/// within protobuf's range of ±315,576,000,000 s. Every duration of a service config
/// is a span of time to wait, so a negative one is an error too.
pub(crate) fn parse_duration(v: &Value, path: &str) -> Result<Duration, Error> {
    let bad = || {
        config_error(
            path,
            format!("expected a duration such as \"1.5s\", got {v}"),
        )
    };
    let s = v.as_str().ok_or_else(bad)?;
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let (negative, secs) = match secs.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, secs),
    };
    let (whole, frac) = match secs.split_once('.') {
        Some((whole, frac)) if !frac.is_empty() => (whole, frac),
        Some(_) => return Err(bad()), // "1.s"
        None => (secs, ""),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| out_of_range(path, s))?
    };
    if whole > MAX_DURATION_SECONDS {
        return Err(out_of_range(path, s));
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    let duration = Duration::new(whole, nanos);
    if negative && !duration.is_zero() {
        return Err(config_error(path, format!("must not be negative, got {v}")));
    }
    Ok(duration)
}

fn out_of_range(path: &str, s: &str) -> Error {
    config_error(
        path,
        format!("{s:?} is out of range (at most {MAX_DURATION_SECONDS} seconds)"),
    )
}

/// `maxAttempts` of a retry or hedging policy: at least 2, capped at 5 (gRFC A6).
fn max_attempts(obj: &Map<String, Value>, path: &str) -> Result<u32, Error> {
    let n = required(obj, path, "maxAttempts")?
        .as_u64()
        .filter(|&n| n >= 2)
        .ok_or_else(|| {
            config_error(
                format!("{path}.maxAttempts"),
                "expected an integer of at least 2",
            )
        })?;
    Ok(u32::try_from(n.min(u64::from(MAX_ATTEMPTS))).unwrap_or(MAX_ATTEMPTS))
}

fn required<'a>(obj: &'a Map<String, Value>, path: &str, key: &str) -> Result<&'a Value, Error> {
    obj.get(key)
        .ok_or_else(|| config_error(format!("{path}.{key}"), "is required"))
}

/// A non-empty list of status codes, by name (`"UNAVAILABLE"`) or number.
fn status_codes(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Vec<Code>, Error> {
    let codes = required(obj, path, key)?
        .as_array()
        .ok_or_else(|| config_error(format!("{path}.{key}"), "expected an array"))?;
    if codes.is_empty() {
        return Err(config_error(format!("{path}.{key}"), "must not be empty"));
    }
    codes
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let code = match c {
                Value::String(name) => Code::from_name(name),
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .and_then(Code::from_i32),
                _ => None,
            };
            code.ok_or_else(|| {
                config_error(
                    format!("{path}.{key}[{k}]"),
                    format!("not a gRPC status code: {c}"),
                )
            })
        })
        .collect()
}

fn parse_retry_policy(v: &Value, path: &str) -> Result<RetryPolicy, Error> {
    let obj = v
        .as_object()
        .ok_or_else(|| config_error(path, "expected an object"))?;
    let max_attempts = max_attempts(obj, path)?;
    let positive = |key: &str| -> Result<Duration, Error> {
        let kpath = format!("{path}.{key}");
        let d = parse_duration(required(obj, path, key)?, &kpath)?;
        if d.is_zero() {
            return Err(config_error(kpath, "must be greater than zero"));
        }
        Ok(d)
    };
    let initial_backoff = positive("initialBackoff")?;
    let max_backoff = positive("maxBackoff")?;
    let backoff_multiplier = required(obj, path, "backoffMultiplier")?
        .as_f64()
        .filter(|m| m.is_finite() && *m > 0.0)
        .ok_or_else(|| {
            config_error(
                format!("{path}.backoffMultiplier"),
                "expected a number greater than zero",
            )
        })?;
    Ok(RetryPolicy {
        max_attempts,
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        retryable_status_codes: status_codes(obj, path, "retryableStatusCodes")?,
    })
}

fn parse_hedging_policy(v: &Value, path: &str) -> Result<HedgingPolicy, Error> {
    let obj = v
        .as_object()
        .ok_or_else(|| config_error(path, "expected an object"))?;
    let max_attempts = max_attempts(obj, path)?;
    let hedging_delay = obj
        .get("hedgingDelay")
        .map(|d| parse_duration(d, &format!("{path}.hedgingDelay")))
        .transpose()?
        .unwrap_or(Duration::ZERO);
    // Optional in grpc-go and C-core: no non-fatal code means every failure is fatal.
    let non_fatal_status_codes = match obj.get("nonFatalStatusCodes") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.is_empty() => Vec::new(),
        Some(_) => status_codes(obj, path, "nonFatalStatusCodes")?,
    };
    Ok(HedgingPolicy {
        max_attempts,
        hedging_delay,
        non_fatal_status_codes,
    })
}

fn parse_retry_throttling(root: &Map<String, Value>) -> Result<Option<RetryThrottling>, Error> {
    let Some(v) = root.get("retryThrottling") else {
        return Ok(None);
    };
    let path = "retryThrottling";
    let obj = v
        .as_object()
        .ok_or_else(|| config_error(path, "expected an object"))?;
    // An integer (gRFC A6: `maxTokens` is an int in (0, 1000]); `10.0` is one too.
    let max_tokens = required(obj, path, "maxTokens")?
        .as_f64()
        .filter(|t| t.is_finite() && t.fract() == 0.0 && *t > 0.0 && *t <= 1000.0)
        .ok_or_else(|| {
            config_error(
                "retryThrottling.maxTokens",
                "expected an integer greater than 0 and at most 1000",
            )
        })?;
    let token_ratio = required(obj, path, "tokenRatio")?
        .as_f64()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| {
            config_error(
                "retryThrottling.tokenRatio",
                "expected a number greater than zero",
            )
        })?;
    // Tokens are counted in thousandths: three decimal places, as gRFC A6 says.
    let milli = |x: f64| (x * 1000.0).round() as u32;
    if milli(token_ratio) == 0 {
        return Err(config_error(
            "retryThrottling.tokenRatio",
            "must be at least 0.001 (three decimal places are kept)",
        ));
    }
    Ok(Some(RetryThrottling {
        max_tokens_milli: milli(max_tokens),
        token_ratio_milli: milli(token_ratio),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Balancer, BalancerBuilder, BuildOptions};

    /// A policy whose config must be `{"n": <u64>}`.
    struct Counted(&'static str);
    impl BalancerBuilder for Counted {
        fn name(&self) -> &str {
            self.0
        }
        fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
            unimplemented!("not built in these tests")
        }
        fn parse_config(&self, config: &Value) -> Result<LbConfig, Error> {
            let n = config
                .get("n")
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::lb_config(self.0, "n", "expected an integer"))?;
            Ok(LbConfig::new(n))
        }
    }

    fn registry() -> BalancerRegistry {
        let mut r = BalancerRegistry::new();
        r.register(Counted("a")).register(Counted("b"));
        r
    }

    fn parse(json: &str) -> Result<ServiceConfig, Error> {
        ServiceConfig::parse(json, &registry())
    }

    fn err_at(json: &str) -> (String, String) {
        match parse(json).unwrap_err() {
            Error::ServiceConfig { path, reason } => (path, reason),
            other => panic!("{json}: unexpected error {other:?}"),
        }
    }

    #[test]
    fn the_first_registered_policy_wins_and_gets_its_config() {
        let cfg = parse(
            r#"{"loadBalancingConfig": [{"unknown": {}}, {"b": {"n": 2}}, {"a": {"n": 1}}]}"#,
        )
        .unwrap();
        let lb = cfg.lb_policy().unwrap();
        assert_eq!(lb.name, "b");
        assert_eq!(lb.config.get::<u64>(), Some(&2));
    }

    #[test]
    fn the_chosen_policys_bad_config_is_an_error_naming_the_policy_and_path() {
        let err =
            parse(r#"{"loadBalancingConfig": [{"a": {"n": "x"}}, {"b": {"n": 2}}]}"#).unwrap_err();
        assert_eq!(err, Error::lb_config("a", "n", "expected an integer"));
        assert_eq!(
            err.to_string(),
            "invalid config for load-balancing policy `a` at `n`: expected an integer"
        );
    }

    #[test]
    fn no_registered_policy_is_an_error_listing_them() {
        let err = parse(r#"{"loadBalancingConfig": [{"x": {}}, {"bb": {}}]}"#).unwrap_err();
        let registered: Vec<String> = registry().names().into_iter().map(Into::into).collect();
        assert_eq!(
            err,
            Error::NoSupportedPolicy {
                names: vec!["x".into(), "bb".into()],
                registered: registered.clone(),
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "no registered load-balancing policy among `x`, `bb`; registered: {}",
                registered.join(", ")
            )
        );
    }

    #[test]
    fn deprecated_load_balancing_policy_is_accepted() {
        let mut r = BalancerRegistry::new();
        struct Plain;
        impl BalancerBuilder for Plain {
            fn name(&self) -> &str {
                "plain"
            }
            fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
                unimplemented!("not built")
            }
        }
        r.register(Plain);
        let cfg = ServiceConfig::parse(r#"{"loadBalancingPolicy": "plain"}"#, &r).unwrap();
        assert_eq!(cfg.lb_policy().unwrap().name, "plain");
        // The proto enum's JSON spelling.
        let cfg = ServiceConfig::parse(r#"{"loadBalancingPolicy": "PLAIN"}"#, &r).unwrap();
        assert_eq!(cfg.lb_policy().unwrap().name, "plain");
        // An unknown name is the default policy, not an invalid config.
        let cfg = ServiceConfig::parse(r#"{"loadBalancingPolicy": "nope"}"#, &r).unwrap();
        assert!(cfg.lb_policy().is_none());
        let err = ServiceConfig::parse(r#"{"loadBalancingPolicy": 1}"#, &r).unwrap_err();
        assert!(err.to_string().contains("`loadBalancingPolicy`"), "{err}");
    }

    #[test]
    fn an_unknown_load_balancing_policy_falls_back_to_pick_first() {
        struct Named(&'static str);
        impl BalancerBuilder for Named {
            fn name(&self) -> &str {
                self.0
            }
            fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
                unimplemented!("not built")
            }
        }
        let mut r = BalancerRegistry::new();
        r.register(Named("pick_first"))
            .register(Named("round_robin"));
        let name = |json: &str| {
            ServiceConfig::parse(json, &r)
                .unwrap()
                .lb_policy()
                .map(|p| p.name.clone())
        };
        assert_eq!(
            name(r#"{"loadBalancingPolicy": "ROUND_ROBIN"}"#).as_deref(),
            Some("round_robin")
        );
        assert_eq!(
            name(r#"{"loadBalancingPolicy": "no_such_policy"}"#).as_deref(),
            Some("pick_first")
        );
        let err = ServiceConfig::parse(r#"{"loadBalancingConfig": []}"#, &r).unwrap_err();
        assert!(
            err.to_string()
                .contains("`loadBalancingConfig`: must name at least one policy"),
            "{err}"
        );
    }

    #[test]
    fn empty_config_has_nothing() {
        let cfg = parse("{}").unwrap();
        assert!(cfg.lb_policy().is_none());
        assert!(cfg.health_check().is_none());
        assert!(cfg.method_config("/a.B/C").is_none());
    }

    #[test]
    fn health_check_config() {
        let cfg = parse(r#"{"healthCheckConfig": {"serviceName": "greeter"}}"#).unwrap();
        assert_eq!(cfg.health_check().unwrap().service_name, "greeter");
        assert_eq!(
            err_at(r#"{"healthCheckConfig": {"serviceName": 1}}"#).0,
            "healthCheckConfig.serviceName"
        );
    }

    #[test]
    fn method_configs_match_exact_then_service_then_default() {
        let cfg = parse(
            r#"{"methodConfig": [
                {"name": [{}], "timeout": "10s"},
                {"name": [{"service": "pkg.Svc"}], "waitForReady": true},
                {"name": [{"service": "pkg.Svc", "method": "Get"}], "timeout": "0.25s",
                 "retryPolicy": {"maxAttempts": 9, "initialBackoff": "0.1s", "maxBackoff": "1s",
                                 "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 4]}}
            ]}"#,
        )
        .unwrap();
        let get = cfg.method_config("/pkg.Svc/Get").unwrap();
        assert_eq!(get.timeout, Some(Duration::from_millis(250)));
        let retry = get.retry_policy.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 5, "maxAttempts is capped at 5");
        assert_eq!(
            retry.retryable_status_codes,
            [Code::Unavailable, Code::DeadlineExceeded]
        );
        assert_eq!(
            cfg.method_config("pkg.Svc/Put").unwrap().wait_for_ready,
            Some(true)
        );
        assert_eq!(
            cfg.method_config("/other.Svc/X").unwrap().timeout,
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn hedging_policies_and_retry_throttling() {
        let cfg = parse(
            r#"{"methodConfig": [{"name": [{"service": "a.B"}],
                 "hedgingPolicy": {"maxAttempts": 7, "hedgingDelay": "0.05s",
                                   "nonFatalStatusCodes": ["UNAVAILABLE", 13]}},
                {"name": [{"service": "a.C"}], "hedgingPolicy": {"maxAttempts": 2}}],
                "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#,
        )
        .unwrap();
        let h = cfg
            .method_config("/a.B/M")
            .unwrap()
            .hedging_policy
            .clone()
            .unwrap();
        assert_eq!(h.max_attempts, 5, "capped at 5");
        assert_eq!(h.hedging_delay, Duration::from_millis(50));
        assert_eq!(
            h.non_fatal_status_codes,
            [Code::Unavailable, Code::Internal]
        );
        let h = cfg
            .method_config("/a.C/M")
            .unwrap()
            .hedging_policy
            .clone()
            .unwrap();
        assert_eq!(h.hedging_delay, Duration::ZERO, "unset: all at once");
        assert!(h.non_fatal_status_codes.is_empty());
        assert_eq!(
            cfg.retry_throttling(),
            Some(RetryThrottling {
                max_tokens_milli: 10_000,
                token_ratio_milli: 100
            })
        );
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(&Value::String(s.into()), "p").unwrap();
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("1s"), Duration::from_secs(1));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("3.5s"), Duration::from_millis(3500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("-0s"), Duration::ZERO);
        assert_eq!(ok("315576000000s"), Duration::from_secs(315_576_000_000));
        assert_eq!(ok("200000s"), Duration::from_secs(200_000));
        for bad in [
            "1",
            "s",
            ".s",
            "1.s",
            "-1s",
            "--1s",
            "315576000001s",
            "99999999999999999999999s",
            "1.0000000001s",
            "1.2.3s",
            "1ms",
            "1 s",
        ] {
            assert!(
                parse_duration(&Value::String(bad.into()), "p").is_err(),
                "{bad}"
            );
        }
        assert!(parse_duration(&Value::from(1), "p").is_err());
    }

    #[test]
    fn malformed_configs_name_the_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("[]", "$", "expected a JSON object"),
            ("{", "$", "not valid JSON"),
            (
                r#"{"loadBalancingConfig": {}}"#,
                "loadBalancingConfig",
                "expected an array",
            ),
            (
                r#"{"loadBalancingConfig": [{"a": {"n": 1}, "b": {}}]}"#,
                "loadBalancingConfig[0]",
                "exactly one",
            ),
            (
                r#"{"loadBalancingConfig": ["a"]}"#,
                "loadBalancingConfig[0]",
                "exactly one",
            ),
            (
                r#"{"methodConfig": {}}"#,
                "methodConfig",
                "expected an array",
            ),
            (
                r#"{"methodConfig": [1]}"#,
                "methodConfig[0]",
                "expected an object",
            ),
            (
                r#"{"methodConfig": [{"name": [{"method": "Get"}]}]}"#,
                "methodConfig[0].name[0]",
                "needs a service",
            ),
            (
                r#"{"methodConfig": [{"name": [{"service": 1}]}]}"#,
                "methodConfig[0].name[0].service",
                "expected a string",
            ),
            (
                r#"{"methodConfig": [{"name": [{}]}, {"name": [{}]}]}"#,
                "methodConfig[1].name[0]",
                "duplicate",
            ),
            (
                r#"{"methodConfig": [{"waitForReady": "yes"}]}"#,
                "methodConfig[0].waitForReady",
                "boolean",
            ),
            (
                r#"{"methodConfig": [{"timeout": 5}]}"#,
                "methodConfig[0].timeout",
                "duration",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {}}]}"#,
                "methodConfig[0].retryPolicy.maxAttempts",
                "required",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 1}}]}"#,
                "methodConfig[0].retryPolicy.maxAttempts",
                "at least 2",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "0s"}}]}"#,
                "methodConfig[0].retryPolicy.initialBackoff",
                "greater than zero",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 0}}]}"#,
                "methodConfig[0].retryPolicy.backoffMultiplier",
                "greater than zero",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": []}}]}"#,
                "methodConfig[0].retryPolicy.retryableStatusCodes",
                "must not be empty",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["NOPE"]}}]}"#,
                "methodConfig[0].retryPolicy.retryableStatusCodes[0]",
                "not a gRPC status code",
            ),
            (
                r#"{"healthCheckConfig": 1}"#,
                "healthCheckConfig",
                "expected an object",
            ),
            (
                r#"{"methodConfig": [{"retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
                                      "hedgingPolicy": {"maxAttempts": 2}}]}"#,
                "methodConfig[0].hedgingPolicy",
                "not both",
            ),
            (
                r#"{"methodConfig": [{"hedgingPolicy": {"maxAttempts": 1}}]}"#,
                "methodConfig[0].hedgingPolicy.maxAttempts",
                "at least 2",
            ),
            (
                r#"{"methodConfig": [{"hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "-1s"}}]}"#,
                "methodConfig[0].hedgingPolicy.hedgingDelay",
                "negative",
            ),
            (
                r#"{"methodConfig": [{"hedgingPolicy": {"maxAttempts": 3, "nonFatalStatusCodes": ["SOON"]}}]}"#,
                "methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]",
                "not a gRPC status code",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#,
                "retryThrottling.maxTokens",
                "greater than 0",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 5000, "tokenRatio": 1}}"#,
                "retryThrottling.maxTokens",
                "at most 1000",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10.5, "tokenRatio": 1}}"#,
                "retryThrottling.maxTokens",
                "integer",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10}}"#,
                "retryThrottling.tokenRatio",
                "required",
            ),
            (
                r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.0001}}"#,
                "retryThrottling.tokenRatio",
                "0.001",
            ),
        ];
        for (json, path, reason) in cases {
            let (got_path, got_reason) = err_at(json);
            assert_eq!(&got_path, path, "{json}");
            assert!(
                got_reason.contains(reason),
                "{json}: {got_reason:?} should mention {reason:?}"
            );
        }
    }
}
