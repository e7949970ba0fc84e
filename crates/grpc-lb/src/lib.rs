//! Client-side load balancing and service discovery for gRPC in Rust: the facade that
//! re-exports the `grpc-lb` crates.
