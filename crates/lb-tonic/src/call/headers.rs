//! The request headers each attempt sends. h2 takes a request's header map by value,
//! and most calls make one attempt: the caller's own map goes with the first attempt,
//! uncopied, and a compact copy (kept inline for the few headers a gRPC request
//! usually has) rebuilds a map for each later one.

use std::sync::{Mutex, PoisonError};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Headers kept without a heap allocation: `te`, `content-type` and a couple more
/// (a timeout, an encoding, a piece of metadata).
const INLINE: usize = 4;

/// A call's request headers, for its attempts.
pub(super) struct AttemptHeaders {
    /// The caller's map, until an attempt takes it.
    first: Mutex<Option<HeaderMap>>,
    copy: Kept,
}

/// The headers as name-value pairs, in order (a repeated name appears once per
/// value).
// Inline on purpose: the point is to keep the usual few headers off the heap.
#[allow(clippy::large_enum_variant)]
enum Kept {
    Inline {
        entries: [Option<(HeaderName, HeaderValue)>; INLINE],
    },
    Heap(Vec<(HeaderName, HeaderValue)>),
}

impl AttemptHeaders {
    pub(super) fn new(headers: HeaderMap) -> Self {
        let copy = if headers.len() <= INLINE {
            let mut entries: [Option<(HeaderName, HeaderValue)>; INLINE] = Default::default();
            for (slot, (name, value)) in entries.iter_mut().zip(headers.iter()) {
                *slot = Some((name.clone(), value.clone()));
            }
            Kept::Inline { entries }
        } else {
            Kept::Heap(
                headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            )
        };
        Self {
            first: Mutex::new(Some(headers)),
            copy,
        }
    }

    /// The headers for one attempt: the caller's map the first time, a map rebuilt
    /// from the copy after that.
    pub(super) fn take(&self) -> HeaderMap {
        let first = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| self.rebuild())
    }

    fn rebuild(&self) -> HeaderMap {
        let (inline, heap): (&[Option<(HeaderName, HeaderValue)>], &[_]) = match &self.copy {
            Kept::Inline { entries } => (entries, &[]),
            Kept::Heap(all) => (&[], all),
        };
        let pairs = inline.iter().flatten().chain(heap);
        let mut map = HeaderMap::with_capacity(pairs.clone().count());
        for (name, value) in pairs {
            map.append(name.clone(), value.clone());
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
        map.iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect()
    }

    #[test]
    fn every_attempt_sends_the_same_headers_repeated_names_included() {
        for headers in [
            map(&[]),
            map(&[("te", "trailers"), ("content-type", "application/grpc")]),
            // More than fit inline, and a name with two values.
            map(&[
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                ("x-a", "1"),
                ("x-a", "2"),
                ("x-b", "3"),
                ("grpc-timeout", "1S"),
            ]),
        ] {
            let expected = pairs(&headers);
            let kept = AttemptHeaders::new(headers);
            for attempt in 0..3 {
                assert_eq!(pairs(&kept.take()), expected, "attempt {attempt}");
            }
        }
    }
}
