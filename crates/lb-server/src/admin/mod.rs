//! gRPC's admin services for a tonic server, as grpc-go's `admin.Register`:
//! [`services`] returns them ready for `Server::add_routes`.
//!
//! Channelz (`grpc.channelz.v1.Channelz`, gRFC A14): every `lb_tonic::LbChannel` of
//! the process with its subchannels, their connections and recent events, and every
//! server a [`ServerStats`] follows. With the `xds` feature, CSDS
//! (`envoy.service.status.v3.ClientStatusDiscoveryService`, gRFC A40): every xDS
//! resource the process's xDS clients hold, with its status.
//!
//! ```no_run
//! # async fn demo(
//! #     service: lb_testkit::pb::echo_server::EchoServer<lb_testkit::EchoService>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! tonic::transport::Server::builder()
//!     .add_routes(lb_server::admin::services())
//!     .add_service(service)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! `grpc-lb channelz 127.0.0.1:50051` prints what it serves.

#[cfg(feature = "xds")]
mod csds;
mod server;
mod service;

#[cfg(feature = "xds")]
pub use csds::CsdsService;
pub use server::{
    ChannelzLayer, Counted, CountedBody, Incoming, ServerStats, TrackedConnectInfo, TrackedIo,
};
pub use service::ChannelzService;

/// The generated `grpc.channelz.v1` messages, client and server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("grpc.channelz.v1");
}

/// The admin services, to add beside the application's:
/// `Server::builder().add_routes(lb_server::admin::services())`.
pub fn services() -> tonic::service::Routes {
    let routes =
        tonic::service::Routes::new(proto::channelz_server::ChannelzServer::new(ChannelzService));
    #[cfg(feature = "xds")]
    let routes = routes.add_service(
        envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer::new(CsdsService),
    );
    routes
}
