//! The `grpc-lb` channel: load-balanced HTTP/2 subconns behind a `tower::Service`
//! that generated tonic clients use unchanged. Built on `lb-core` and, for its
//! default policy, `lb-policies`.
