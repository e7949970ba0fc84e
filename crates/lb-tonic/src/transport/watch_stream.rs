//! The server streams a subconn opens on its own connection, outside any RPC of the
//! application: the health watch (gRFC A17) and ORCA's out-of-band load reports.
//! Both send one request message and read a stream of answers until it ends.

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, Scheme};

use std::sync::Arc;

use super::frames::{ActiveStream, ConnSignals};
use super::stream::{self, Chunks, NoBody, Outgoing};

/// Where a subconn's own streams go: its connection, as RPCs address it.
#[derive(Clone)]
pub(crate) struct Outbound {
    pub(crate) sender: SendRequest<Bytes>,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// The connection's signals when its open streams are counted (keepalive
    /// without `while_idle`): the stream counts as one while it is open.
    pub(crate) signals: Option<Arc<ConnSignals>>,
    /// The channel's `user-agent`, as every request of the connection carries.
    pub(crate) user_agent: http::HeaderValue,
}

/// How a stream ended.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// The server ended it with this gRPC status code and message.
    Status(tonic::Code, String),
    /// The stream failed, or could not be opened.
    Failed(String),
    /// The consumer of the answers stopped it.
    Stopped(String),
}

/// Opens `path` on `to`'s connection with `request` (a serialized message) and
/// hands every answer to `each` until the stream ends, or until `each` returns an
/// error (the reason to stop). The stream is reset when this returns or is dropped.
pub(crate) async fn server_stream(
    to: &Outbound,
    path: &str,
    request: &[u8],
    mut each: impl FnMut(Bytes) -> Result<(), String>,
) -> StreamEnd {
    let uri = match http::Uri::builder()
        .scheme(to.scheme.clone())
        .authority(to.authority.clone())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => return StreamEnd::Failed(format!("bad URI for {path}: {e}")),
    };
    let mut head = http::Request::new(());
    *head.method_mut() = http::Method::POST;
    *head.uri_mut() = uri;
    let headers = head.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(http::header::USER_AGENT, to.user_agent.clone());
    let mut frame = BytesMut::with_capacity(5 + request.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(
        &u32::try_from(request.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(request);
    let body = Outgoing::<NoBody>::Complete {
        data: Chunks::One(frame.freeze()),
        trailers: None,
    };
    let opened = match stream::open(&to.sender, head, body, None).await {
        Ok(opened) => opened,
        Err(not) => return StreamEnd::Failed(format!("could not open the stream: {}", not.error)),
    };
    let _handle = opened.handle; // resets the stream when this returns
    let _active = ActiveStream::new(to.signals.as_ref());
    let response = match opened.response.await {
        Ok(r) => r,
        Err(e) => return StreamEnd::Failed(format!("the stream failed: {e}")),
    };
    let (parts, mut recv) = response.into_parts();
    if let Some(end) = status_of(&parts.headers) {
        return end; // trailers-only
    }
    let mut buffer = BytesMut::new();
    loop {
        match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                buffer.extend_from_slice(&data);
                while let Some(message) = next_message(&mut buffer) {
                    if let Err(why) = each(message) {
                        return StreamEnd::Stopped(why);
                    }
                }
            }
            Some(Err(e)) => return StreamEnd::Failed(format!("the stream failed: {e}")),
            None => break,
        }
    }
    match std::future::poll_fn(|cx| recv.poll_trailers(cx)).await {
        Ok(trailers) => trailers
            .as_ref()
            .and_then(status_of)
            .unwrap_or_else(|| StreamEnd::Failed("the stream ended without a status".to_owned())),
        Err(e) => StreamEnd::Failed(format!("the stream failed: {e}")),
    }
}

/// One whole gRPC message off the front of `buffer`, if it holds one.
fn next_message(buffer: &mut BytesMut) -> Option<Bytes> {
    let header = buffer.get(..5)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    buffer.advance(5);
    Some(buffer.split_to(len).freeze())
}

fn status_of(headers: &http::HeaderMap) -> Option<StreamEnd> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = crate::grpc_message::of(headers);
    Some(StreamEnd::Status(tonic::Code::from_i32(code), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_their_length_prefix() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0, 0, 0, 0, 2, 8, 1, 0, 0, 0]);
        assert_eq!(next_message(&mut buffer).unwrap().as_ref(), [8, 1]);
        assert!(next_message(&mut buffer).is_none(), "half a header");
        buffer.extend_from_slice(&[0, 2, 8, 2]);
        assert_eq!(next_message(&mut buffer).unwrap().as_ref(), [8, 2]);
        assert!(buffer.is_empty());
    }
}
