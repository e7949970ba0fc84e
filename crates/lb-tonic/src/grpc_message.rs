//! `grpc-message`, as it is on the wire: percent-encoded UTF-8 (the gRPC HTTP/2
//! protocol spec). What the channel reads of a status (for retries, completion
//! callbacks, health and ORCA streams) is decoded here, as tonic decodes what the
//! caller sees.

use std::borrow::Cow;

/// The `grpc-message` value decoded: `%XX` escapes become their bytes, and the
/// result is read as UTF-8 (invalid sequences replaced). A malformed escape (`%`
/// not followed by two hex digits) is kept as it is, as grpc-go does.
pub(crate) fn decode(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'%') {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).and_then(|&b| hex(b)),
                raw.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The message of `grpc-message` in `headers`, decoded; empty without one.
pub(crate) fn of(headers: &http::HeaderMap) -> String {
    headers
        .get("grpc-message")
        .map(|m| decode(m.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A gRPC code's canonical name (`NOT_FOUND`), for messages.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    lb_core::Code::from_i32(code as i32).map_or("UNKNOWN", lb_core::Code::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_kept() {
        assert_eq!(
            decode(b"service%20not%20registered"),
            "service not registered"
        );
        assert_eq!(decode(b"plain"), "plain");
        assert_eq!(decode(b"caf%C3%A9 100%"), "café 100%");
        assert_eq!(decode(b"%zz%4"), "%zz%4");
        assert_eq!(decode(b"%FF"), "\u{FFFD}");
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
