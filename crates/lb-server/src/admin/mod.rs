//! gRPC's admin services for a tonic server, as grpc-go's `admin.Register`:
//! [`services`] returns them ready for `Server::add_routes`.
//!
//! Today that is channelz (`grpc.channelz.v1.Channelz`, gRFC A14): every
//! `lb_tonic::LbChannel` of the process with its subchannels, their connections and
//! recent events, and every server a [`ServerStats`] follows. CSDS (gRFC A40) joins
//! them once `grpc-lb` speaks xDS.
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

mod server;
mod service;

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
    tonic::service::Routes::new(proto::channelz_server::ChannelzServer::new(ChannelzService))
}
