//! Reading a policy's JSON config, with errors that name the JSON path of the field
//! at fault ([`lb_core::Error::lb_config`]).

use std::time::Duration;

use lb_core::Error;
use lb_core::service_config::duration_from_json;
use serde_json::{Map, Value};

/// The fields of one JSON object of a policy's config.
pub(crate) struct Fields<'a> {
    policy: &'static str,
    obj: &'a Map<String, Value>,
    /// The object's path (`""` for the config itself).
    prefix: String,
}

impl<'a> Fields<'a> {
    /// The config of `policy`, which must be an object.
    pub(crate) fn of(policy: &'static str, config: &'a Value) -> Result<Self, Error> {
        let obj = config
            .as_object()
            .ok_or_else(|| Error::lb_config(policy, "$", "expected a JSON object"))?;
        Ok(Self {
            policy,
            obj,
            prefix: String::new(),
        })
    }

    /// The path of `key` in this object.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// An error about `key`.
    pub(crate) fn error(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::lb_config(self.policy, self.path(key), reason)
    }

    /// The raw value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key)
    }

    /// A protobuf JSON duration (`"1.5s"`), or `default` when absent.
    pub(crate) fn duration(&self, key: &str, default: Duration) -> Result<Duration, Error> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(v) => duration_from_json(v).map_err(|reason| self.error(key, reason)),
        }
    }

    /// A non-negative integer of at most `max` (when given), or `default`.
    pub(crate) fn number(&self, key: &str, default: u32, max: Option<u32>) -> Result<u32, Error> {
        let Some(v) = self.obj.get(key) else {
            return Ok(default);
        };
        let n = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.error(key, format!("expected a non-negative integer, got {v}")))?;
        match max {
            Some(max) if n > max => Err(self.error(key, format!("must be at most {max}, got {n}"))),
            _ => Ok(n),
        }
    }

    /// A non-negative integer as a `u64`, or `default`.
    pub(crate) fn number_u64(&self, key: &str, default: u64) -> Result<u64, Error> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.error(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    /// A finite number of at least 0, or `default`.
    pub(crate) fn non_negative(&self, key: &str, default: f64) -> Result<f64, Error> {
        let Some(v) = self.obj.get(key) else {
            return Ok(default);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(self.error(key, format!("expected a number >= 0, got {v}"))),
        }
    }

    /// A boolean, or `default`.
    pub(crate) fn boolean(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(key, format!("expected true or false, got {v}"))),
        }
    }

    /// A string, if present.
    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(key, format!("expected a string, got {v}"))),
        }
    }

    /// An object whose every value is an object (children by name), as
    /// `(name, fields)` in name order; empty when absent or `null`.
    pub(crate) fn named_objects(&self, key: &str) -> Result<Vec<(&'a str, Fields<'a>)>, Error> {
        let map = match self.obj.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(self.error(key, "expected an object of named entries")),
        };
        let mut entries: Vec<(&str, Fields<'a>)> = Vec::with_capacity(map.len());
        for (name, value) in map {
            let path = format!("{}.{name}", self.path(key));
            match value {
                Value::Object(obj) => entries.push((
                    name.as_str(),
                    Fields {
                        policy: self.policy,
                        obj,
                        prefix: path,
                    },
                )),
                _ => return Err(Error::lb_config(self.policy, path, "expected an object")),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(b.0));
        Ok(entries)
    }

    /// A nested object, if present (and not `null`).
    pub(crate) fn object(&self, key: &str) -> Result<Option<Fields<'a>>, Error> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(Fields {
                policy: self.policy,
                obj,
                prefix: self.path(key),
            })),
            Some(_) => Err(self.error(key, "expected an object")),
        }
    }
}
