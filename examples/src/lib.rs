//! Runnable examples for grpc-lb; see the `[[example]]` targets.
