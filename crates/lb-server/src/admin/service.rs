//! `grpc.channelz.v1.Channelz` over `lb_core`'s process-wide registry.

use lb_core::ConnectivityState;
use lb_core::channelz::{self, ChannelData, Id, Severity, SocketAddress, SocketData, TraceData};
use tonic::{Request, Response, Status};

use super::proto::{self, channelz_server::Channelz};

/// The channelz service: every channel, subchannel, socket and server of this
/// process that is registered in [`lb_core::channelz::registry`] (`lb_tonic`'s
/// channels are; servers are through [`super::ServerStats`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelzService;

fn page_size(max_results: i64) -> Result<usize, Status> {
    usize::try_from(max_results).map_err(|_| {
        Status::invalid_argument(format!(
            "max_results must not be negative (got {max_results})"
        ))
    })
}

/// The entity the registry found, or NOT_FOUND naming what was asked for.
fn found<T>(entity: Option<T>, what: &str, id: Id) -> Result<T, Status> {
    entity.ok_or_else(|| Status::not_found(format!("no {what} with id {id}")))
}

fn state(state: Option<ConnectivityState>) -> proto::ChannelConnectivityState {
    use proto::channel_connectivity_state::State;
    let state = match state {
        None => State::Unknown,
        Some(ConnectivityState::Idle) => State::Idle,
        Some(ConnectivityState::Connecting) => State::Connecting,
        Some(ConnectivityState::Ready) => State::Ready,
        Some(ConnectivityState::TransientFailure) => State::TransientFailure,
        Some(ConnectivityState::Shutdown) => State::Shutdown,
    };
    proto::ChannelConnectivityState {
        state: state as i32,
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn trace(trace: TraceData) -> proto::ChannelTrace {
    use proto::channel_trace_event::{ChildRef, Severity as S};
    proto::ChannelTrace {
        num_events_logged: count(trace.events_logged),
        creation_timestamp: Some(trace.created.into()),
        events: trace
            .events
            .into_iter()
            .map(|e| proto::ChannelTraceEvent {
                description: e.description,
                severity: match e.severity {
                    Severity::Info => S::CtInfo,
                    Severity::Warning => S::CtWarning,
                    Severity::Error => S::CtError,
                    _ => S::CtUnknown,
                } as i32,
                timestamp: Some(e.at.into()),
                child_ref: match (e.subchannel, e.channel) {
                    (Some(id), _) => Some(ChildRef::SubchannelRef(subchannel_ref(id))),
                    (None, Some(id)) => Some(ChildRef::ChannelRef(channel_ref(id, String::new()))),
                    (None, None) => None,
                },
            })
            .collect(),
    }
}

fn channel_ref(id: Id, name: String) -> proto::ChannelRef {
    proto::ChannelRef {
        channel_id: id,
        name,
    }
}

fn subchannel_ref(id: Id) -> proto::SubchannelRef {
    proto::SubchannelRef {
        subchannel_id: id,
        name: String::new(),
    }
}

fn socket_ref(id: Id) -> proto::SocketRef {
    proto::SocketRef {
        socket_id: id,
        name: String::new(),
    }
}

fn channel_data(data: &mut ChannelData) -> proto::ChannelData {
    proto::ChannelData {
        state: Some(state(data.state)),
        target: std::mem::take(&mut data.target),
        trace: data.trace.take().map(trace),
        calls_started: count(data.calls.started),
        calls_succeeded: count(data.calls.succeeded),
        calls_failed: count(data.calls.failed),
        last_call_started_timestamp: data.calls.last_started.map(Into::into),
    }
}

/// A channel as channelz shows it.
pub(super) fn channel(id: Id, mut data: ChannelData) -> proto::Channel {
    proto::Channel {
        r#ref: Some(channel_ref(id, data.target.clone())),
        data: Some(channel_data(&mut data)),
        channel_ref: data
            .channels
            .iter()
            .map(|id| channel_ref(*id, String::new()))
            .collect(),
        subchannel_ref: data
            .subchannels
            .iter()
            .map(|id| subchannel_ref(*id))
            .collect(),
        socket_ref: data.sockets.iter().map(|id| socket_ref(*id)).collect(),
    }
}

fn subchannel(id: Id, mut data: ChannelData) -> proto::Subchannel {
    proto::Subchannel {
        r#ref: Some(proto::SubchannelRef {
            subchannel_id: id,
            name: data.target.clone(),
        }),
        data: Some(channel_data(&mut data)),
        channel_ref: data
            .channels
            .iter()
            .map(|id| channel_ref(*id, String::new()))
            .collect(),
        subchannel_ref: data
            .subchannels
            .iter()
            .map(|id| subchannel_ref(*id))
            .collect(),
        socket_ref: data.sockets.iter().map(|id| socket_ref(*id)).collect(),
    }
}

fn address(address: SocketAddress) -> proto::Address {
    use proto::address::{Address as A, OtherAddress, TcpIpAddress, UdsAddress};
    let address = match address {
        SocketAddress::Tcp(a) => A::TcpipAddress(TcpIpAddress {
            ip_address: match a.ip() {
                std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
                std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
            },
            port: i32::from(a.port()),
        }),
        SocketAddress::Unix(filename) => A::UdsAddress(UdsAddress { filename }),
        SocketAddress::Other(name) => A::OtherAddress(OtherAddress { name, value: None }),
        other => A::OtherAddress(OtherAddress {
            name: format!("{other:?}"),
            value: None,
        }),
    };
    proto::Address {
        address: Some(address),
    }
}

fn socket(id: Id, data: SocketData, summary: bool) -> proto::Socket {
    let ts = |t: Option<std::time::SystemTime>| t.map(Into::into);
    proto::Socket {
        r#ref: Some(proto::SocketRef {
            socket_id: id,
            name: data.remote_name.clone(),
        }),
        data: Some(proto::SocketData {
            streams_started: count(data.streams_started),
            streams_succeeded: count(data.streams_succeeded),
            streams_failed: count(data.streams_failed),
            messages_sent: count(data.messages_sent),
            messages_received: count(data.messages_received),
            keep_alives_sent: count(data.keepalives_sent),
            last_local_stream_created_timestamp: ts(data.last_local_stream_created),
            last_remote_stream_created_timestamp: ts(data.last_remote_stream_created),
            last_message_sent_timestamp: ts(data.last_message_sent),
            last_message_received_timestamp: ts(data.last_message_received),
            local_flow_control_window: data.local_flow_control_window,
            remote_flow_control_window: data.remote_flow_control_window,
            option: Vec::new(),
        }),
        local: data.local.map(address),
        remote: data.remote.map(address),
        // A summary is the counters alone.
        security: data.tls.filter(|_| !summary).map(|tls| proto::Security {
            model: Some(proto::security::Model::Tls(proto::security::Tls {
                cipher_suite: Some(if tls.cipher_suite.starts_with("TLS_") {
                    proto::security::tls::CipherSuite::StandardName(tls.cipher_suite)
                } else {
                    proto::security::tls::CipherSuite::OtherName(tls.cipher_suite)
                }),
                local_certificate: tls.local_certificate,
                remote_certificate: tls.remote_certificate,
            })),
        }),
        remote_name: data.remote_name,
    }
}

fn server(id: Id, data: channelz::ServerData) -> proto::Server {
    proto::Server {
        r#ref: Some(proto::ServerRef {
            server_id: id,
            name: String::new(),
        }),
        data: Some(proto::ServerData {
            trace: data.trace.map(trace),
            calls_started: count(data.calls.started),
            calls_succeeded: count(data.calls.succeeded),
            calls_failed: count(data.calls.failed),
            last_call_started_timestamp: data.calls.last_started.map(Into::into),
        }),
        listen_socket: data
            .listen_sockets
            .iter()
            .map(|id| socket_ref(*id))
            .collect(),
    }
}

#[tonic::async_trait]
impl Channelz for ChannelzService {
    async fn get_top_channels(
        &self,
        request: Request<proto::GetTopChannelsRequest>,
    ) -> Result<Response<proto::GetTopChannelsResponse>, Status> {
        let r = request.into_inner();
        let page = channelz::registry().top_channels(r.start_channel_id, page_size(r.max_results)?);
        Ok(Response::new(proto::GetTopChannelsResponse {
            channel: page
                .items
                .into_iter()
                .map(|(id, data)| channel(id, data))
                .collect(),
            end: page.end,
        }))
    }

    async fn get_servers(
        &self,
        request: Request<proto::GetServersRequest>,
    ) -> Result<Response<proto::GetServersResponse>, Status> {
        let r = request.into_inner();
        let page = channelz::registry().servers(r.start_server_id, page_size(r.max_results)?);
        Ok(Response::new(proto::GetServersResponse {
            server: page
                .items
                .into_iter()
                .map(|(id, data)| server(id, data))
                .collect(),
            end: page.end,
        }))
    }

    async fn get_server(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<Response<proto::GetServerResponse>, Status> {
        let id = request.into_inner().server_id;
        let data = found(channelz::registry().server(id), "server", id)?;
        Ok(Response::new(proto::GetServerResponse {
            server: Some(server(id, data)),
        }))
    }

    async fn get_server_sockets(
        &self,
        request: Request<proto::GetServerSocketsRequest>,
    ) -> Result<Response<proto::GetServerSocketsResponse>, Status> {
        let r = request.into_inner();
        let page = found(
            channelz::registry().server_sockets(
                r.server_id,
                r.start_socket_id,
                page_size(r.max_results)?,
            ),
            "server",
            r.server_id,
        )?;
        Ok(Response::new(proto::GetServerSocketsResponse {
            socket_ref: page
                .items
                .into_iter()
                .map(|(id, ())| socket_ref(id))
                .collect(),
            end: page.end,
        }))
    }

    async fn get_channel(
        &self,
        request: Request<proto::GetChannelRequest>,
    ) -> Result<Response<proto::GetChannelResponse>, Status> {
        let id = request.into_inner().channel_id;
        let data = found(channelz::registry().channel(id), "channel", id)?;
        Ok(Response::new(proto::GetChannelResponse {
            channel: Some(channel(id, data)),
        }))
    }

    async fn get_subchannel(
        &self,
        request: Request<proto::GetSubchannelRequest>,
    ) -> Result<Response<proto::GetSubchannelResponse>, Status> {
        let id = request.into_inner().subchannel_id;
        let data = found(channelz::registry().subchannel(id), "subchannel", id)?;
        Ok(Response::new(proto::GetSubchannelResponse {
            subchannel: Some(subchannel(id, data)),
        }))
    }

    async fn get_socket(
        &self,
        request: Request<proto::GetSocketRequest>,
    ) -> Result<Response<proto::GetSocketResponse>, Status> {
        let r = request.into_inner();
        let data = found(
            channelz::registry().socket(r.socket_id),
            "socket",
            r.socket_id,
        )?;
        Ok(Response::new(proto::GetSocketResponse {
            socket: Some(socket(r.socket_id, data, r.summary)),
        }))
    }
}
