//! Between JSON and protobuf's `Struct`: node metadata goes out as one, custom
//! policies' configs come in as one.

use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Value};

/// The deepest nesting converted; deeper values become null (protobuf decoding
/// already stops at 100 levels).
const MAX_DEPTH: usize = 64;

/// A JSON object as a `Struct`.
pub(crate) fn to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v, 0)))
            .collect(),
    }
}

fn to_value(v: &Value, depth: usize) -> PbValue {
    let kind = match v {
        _ if depth > MAX_DEPTH => Kind::NullValue(0),
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(|v| to_value(v, depth + 1)).collect(),
        }),
        Value::Object(m) => Kind::StructValue(Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v, depth + 1)))
                .collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// A `Struct` as a JSON object.
pub(crate) fn from_struct(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v, 0)))
            .collect(),
    )
}

fn from_value(v: &PbValue, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match &v.kind {
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), from_value(v, depth + 1)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            Value::Array(l.values.iter().map(|v| from_value(v, depth + 1)).collect())
        }
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_round_trip_through_struct() {
        let v = serde_json::json!({"a": [1.5, "x", true, null, {"b": {}}]});
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(from_struct(&to_struct(m)), v);
    }
}
