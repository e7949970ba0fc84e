//! The `grpc-timeout` header: at most 8 digits and a unit (gRPC over HTTP/2).

use std::time::Duration;

use http::HeaderValue;

/// The largest value the header's 8 digits hold.
const MAX_VALUE: u128 = 99_999_999;

/// A `grpc-timeout` header that does not follow gRPC over HTTP/2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed grpc-timeout header {value:?}: {reason}")]
pub(crate) struct BadTimeout {
    /// The value, as sent (lossily, if not text).
    pub(crate) value: String,
    /// What is wrong with it.
    pub(crate) reason: &'static str,
}

/// Reads a `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
/// `Ok(None)` without one.
pub(crate) fn parse(headers: &http::HeaderMap) -> Result<Option<Duration>, BadTimeout> {
    let Some(raw) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = |reason| BadTimeout {
        value: String::from_utf8_lossy(raw.as_bytes()).into_owned(),
        reason,
    };
    let value = raw
        .to_str()
        .map_err(|_| bad("expected ASCII digits and a unit"))?;
    if value.len() < 2 {
        return Err(bad("expected 1 to 8 digits and a unit (H, M, S, m, u, n)"));
    }
    if value.len() > 9 {
        return Err(bad("more than 8 digits"));
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the value before the unit must be digits only"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("the value before the unit must be digits only"))?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad("the unit must be one of H, M, S, m, u, n")),
    }))
}

/// Encodes `timeout` as grpc-go does: the finest unit whose value fits in 8 digits,
/// rounded up, so `200000s` becomes `200000S` and `1.5ms` becomes `1500000n`.
pub(crate) fn encode(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    if nanos == 0 {
        return HeaderValue::from_static("0n");
    }
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let mut value = 0;
    let mut unit = 'H';
    for (per, u) in units {
        value = nanos.div_ceil(per);
        unit = u;
        if value <= MAX_VALUE {
            break;
        }
    }
    // Beyond 99,999,999 hours (11,000 years): as long a timeout as the header holds.
    let value = value.min(MAX_VALUE);
    HeaderValue::from_str(&format!("{value}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(v: &str) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
        parse(&h).ok().flatten()
    }

    #[test]
    fn units() {
        assert_eq!(parsed("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parsed("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parsed("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parsed("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parsed("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parsed("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parsed("99999999S"), Some(Duration::from_secs(99_999_999)));
        for (bad, why) in [
            ("", "1 to 8 digits"),
            ("S", "1 to 8 digits"),
            ("1", "1 to 8 digits"),
            ("1x", "unit"),
            ("123456789S", "more than 8"),
            ("-1S", "digits only"),
            ("1.5S", "digits only"),
            ("+1S", "digits only"),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            let err = parse(&h).unwrap_err();
            assert!(err.reason.contains(why), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(parse(&http::HeaderMap::new()), Ok(None));
    }

    #[test]
    fn the_header_parser_survives_100_000_mutated_values() {
        use lb_core::test_util::sweep::{Mutator, sweep};
        let mut inputs = Mutator::new(
            0x6e0,
            &[
                "1H",
                "2M",
                "3S",
                "250m",
                "7u",
                "9n",
                "99999999S",
                "0n",
                "12345678m",
            ],
        );
        let report = sweep(
            "grpc-timeout",
            100_000,
            || inputs.next_input(),
            |bytes| {
                // Only what can be a header value reaches the parser.
                let Ok(value) = HeaderValue::from_bytes(bytes) else {
                    return Ok(None);
                };
                let mut headers = http::HeaderMap::new();
                headers.insert("grpc-timeout", value);
                parse(&headers)
            },
            |bytes, e| {
                // The message quotes the value and says what is wrong.
                let quoted = format!("{:?}", String::from_utf8_lossy(bytes));
                if e.to_string().contains(&quoted) && !e.reason.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{e} does not quote {quoted}"))
                }
            },
        );
        assert!(report.accepted > 1_000, "{report}");
    }

    #[test]
    fn encoding_picks_the_finest_unit_that_fits_and_rounds_up() {
        let e = |d: Duration| encode(d).to_str().unwrap().to_owned();
        assert_eq!(e(Duration::ZERO), "0n");
        assert_eq!(e(Duration::from_nanos(1)), "1n");
        assert_eq!(e(Duration::from_micros(1500)), "1500000n");
        assert_eq!(e(Duration::from_millis(250)), "250000u");
        assert_eq!(e(Duration::from_secs(1)), "1000000u");
        assert_eq!(e(Duration::from_secs(200_000)), "200000S");
        assert_eq!(e(Duration::from_secs(100_000_000)), "1666667M");
        assert_eq!(
            e(Duration::from_nanos(100_000_001)),
            "100001u",
            "rounded up"
        );
        assert_eq!(e(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(99_999_999),
            Duration::from_millis(12_345),
            Duration::from_secs(3 * 24 * 3600),
            Duration::from_secs(315_576_000_000),
        ] {
            let v = e(d);
            assert!(v.len() <= 9, "{v}");
            let back = parsed(&v).unwrap();
            assert!(back >= d, "{v} decodes to {back:?}, below {d:?}");
        }
    }
}
