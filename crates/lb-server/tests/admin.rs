//! The admin services against real tonic servers: an `LbChannel`'s channels,
//! subchannels, sockets and traces as `grpc.channelz.v1` serves them, and a server
//! counted through `ServerStats`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use lb_server::admin::proto::channel_connectivity_state::State;
use lb_server::admin::proto::channelz_client::ChannelzClient;
use lb_server::admin::proto::{self, address::Address as A};
use lb_server::admin::{self, ServerStats};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::pb::echo_server::EchoServer;
use lb_testkit::{Backend, EchoService};
use lb_tonic::LbChannel;

/// A tonic server with the admin services and an echo service, counted in channelz.
struct AdminServer {
    addr: SocketAddr,
    stats: ServerStats,
    echo: EchoService,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn admin_server() -> AdminServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = ServerStats::new();
    let incoming = stats.incoming(listener).unwrap();
    let echo = EchoService::new("admin");
    let router = tonic::transport::Server::builder()
        .layer(stats.layer())
        .add_routes(admin::services())
        .add_service(EchoServer::new(echo.clone()));
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    AdminServer {
        addr,
        stats,
        echo,
        task,
    }
}

fn channel_to(addr: SocketAddr) -> LbChannel {
    LbChannel::builder(format!("static:///{addr}"))
        .build()
        .unwrap()
}

fn client(addr: SocketAddr) -> ChannelzClient<LbChannel> {
    ChannelzClient::new(channel_to(addr))
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn state(data: Option<&proto::ChannelData>) -> State {
    data.and_then(|d| d.state)
        .and_then(|s| State::try_from(s.state).ok())
        .unwrap_or(State::Unknown)
}

fn tcp(address: Option<&proto::Address>) -> Option<SocketAddr> {
    match address?.address.as_ref()? {
        A::TcpipAddress(t) => {
            let ip: [u8; 4] = t.ip_address.as_slice().try_into().ok()?;
            Some(SocketAddr::from((ip, u16::try_from(t.port).ok()?)))
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_with_a_dead_backend_shows_its_states_counts_sockets_and_trace() {
    within("the channelz walk", async {
        let a = Backend::start("a").await.unwrap();
        let b = Backend::start("b").await.unwrap();
        let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
        let target = format!("static:///{},{},{dead}", a.addr(), b.addr());
        let channel = LbChannel::builder(target.clone())
            .policy("round_robin")
            .build()
            .unwrap();
        let mut echo = EchoClient::new(channel.clone());
        // Wait until both live backends serve, then count 20 RPCs.
        loop {
            let snapshot = channel.snapshot();
            let ready = snapshot
                .subconns
                .iter()
                .filter(|s| s.state == lb_core::ConnectivityState::Ready)
                .count();
            if ready == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..20 {
            echo.unary_echo(EchoRequest::default()).await.unwrap();
        }
        a.service().set_failure(100, tonic::Code::Internal);
        b.service().set_failure(100, tonic::Code::Internal);
        for _ in 0..2 {
            echo.unary_echo(EchoRequest::default()).await.unwrap_err();
        }
        let id = channel.snapshot().channelz_id.unwrap();

        let server = admin_server().await;
        let mut cz = client(server.addr);
        let got = cz
            .get_channel(proto::GetChannelRequest { channel_id: id })
            .await
            .unwrap()
            .into_inner()
            .channel
            .unwrap();
        let data = got.data.as_ref().unwrap();
        assert_eq!(data.target, target);
        assert_eq!(state(Some(data)), State::Ready);
        assert_eq!(
            (data.calls_started, data.calls_succeeded, data.calls_failed),
            (22, 20, 2)
        );
        assert!(data.last_call_started_timestamp.is_some());
        let trace = data.trace.as_ref().unwrap();
        let events: Vec<&str> = trace
            .events
            .iter()
            .map(|e| e.description.as_str())
            .collect();
        assert!(
            events.iter().any(|e| e.starts_with("channel created")),
            "{events:?}"
        );
        assert!(
            events.contains(&"resolver update: 3 addresses"),
            "{events:?}"
        );
        assert!(events.contains(&"channel state: READY"), "{events:?}");
        let created: BTreeSet<i64> = trace
            .events
            .iter()
            .filter_map(|e| match &e.child_ref {
                Some(proto::channel_trace_event::ChildRef::SubchannelRef(r)) => {
                    Some(r.subchannel_id)
                }
                _ => None,
            })
            .collect();
        let refs: BTreeSet<i64> = got.subchannel_ref.iter().map(|r| r.subchannel_id).collect();
        assert_eq!(refs.len(), 3);
        assert_eq!(
            created, refs,
            "each subchannel's creation is traced with its ref"
        );

        let mut live_calls = 0;
        for sub_id in refs {
            let sub = cz
                .get_subchannel(proto::GetSubchannelRequest {
                    subchannel_id: sub_id,
                })
                .await
                .unwrap()
                .into_inner()
                .subchannel
                .unwrap();
            let data = sub.data.as_ref().unwrap();
            let events: Vec<_> = data.trace.as_ref().unwrap().events.iter().collect();
            if data.target == dead {
                assert_ne!(state(Some(data)), State::Ready);
                assert_eq!(data.calls_started, 0);
                assert!(sub.socket_ref.is_empty());
                assert!(
                    events
                        .iter()
                        .any(|e| e.description.starts_with("TRANSIENT_FAILURE: ")
                            && e.severity
                                == proto::channel_trace_event::Severity::CtWarning as i32),
                    "{events:?}"
                );
                continue;
            }
            assert_eq!(state(Some(data)), State::Ready, "{}", data.target);
            assert_eq!(data.calls_started, data.calls_succeeded + data.calls_failed);
            live_calls += data.calls_started;
            assert!(
                events.iter().any(|e| e.description == "READY"),
                "{events:?}"
            );
            assert_eq!(sub.socket_ref.len(), 1, "one connection");
            let socket = cz
                .get_socket(proto::GetSocketRequest {
                    socket_id: sub.socket_ref[0].socket_id,
                    summary: false,
                })
                .await
                .unwrap()
                .into_inner()
                .socket
                .unwrap();
            assert_eq!(
                tcp(socket.remote.as_ref()).unwrap().to_string(),
                data.target
            );
            let local = tcp(socket.local.as_ref()).unwrap();
            assert!(local.ip().is_loopback() && local.port() != 0);
            let sd = socket.data.unwrap();
            assert_eq!(sd.streams_started, data.calls_started);
            assert_eq!(
                sd.streams_succeeded, data.calls_started,
                "every stream got its trailers"
            );
            assert_eq!(sd.streams_failed, 0);
            // One request each; a reply for each success (a failure is trailers only).
            assert_eq!(sd.messages_sent, data.calls_started);
            assert_eq!(sd.messages_received, data.calls_succeeded);
            assert!(sd.last_message_sent_timestamp.is_some());
            assert!(sd.last_message_received_timestamp.is_some());
            assert!(sd.last_local_stream_created_timestamp.is_some());
        }
        assert_eq!(live_calls, 22);

        // Unknown ids are NOT_FOUND; a negative page size is named.
        let missing = cz
            .get_subchannel(proto::GetSubchannelRequest {
                subchannel_id: i64::MAX,
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let negative = cz
            .get_top_channels(proto::GetTopChannelsRequest {
                start_channel_id: 0,
                max_results: -1,
            })
            .await
            .unwrap_err();
        assert_eq!(negative.code(), tonic::Code::InvalidArgument);
        assert!(
            negative.message().contains("max_results"),
            "{}",
            negative.message()
        );
        channel.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_channel_and_its_subchannels_leave_channelz() {
    within("closing", async {
        let a = Backend::start("a").await.unwrap();
        let channel = channel_to(a.addr());
        EchoClient::new(channel.clone())
            .unary_echo(EchoRequest::default())
            .await
            .unwrap();
        let snapshot = channel.snapshot();
        let (id, sub) = (
            snapshot.channelz_id.unwrap(),
            snapshot.subconns[0].channelz_id.unwrap(),
        );
        let registry = lb_core::channelz::registry();
        assert!(registry.channel(id).is_some() && registry.subchannel(sub).is_some());
        channel.close();
        drop(channel);
        while registry.channel(id).is_some() || registry.subchannel(sub).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_counts_its_calls_and_connections() {
    within("the server's channelz", async {
        let server = admin_server().await;
        let channel = channel_to(server.addr);
        let mut echo = EchoClient::new(channel.clone());
        for _ in 0..5 {
            echo.unary_echo(EchoRequest::default()).await.unwrap();
        }
        server.echo.set_failure(100, tonic::Code::Unavailable);
        echo.unary_echo(EchoRequest::default()).await.unwrap_err();
        server.echo.set_failure(0, tonic::Code::Ok);

        let mut cz = client(server.addr);
        let mut found = None;
        let mut start = 0;
        loop {
            let page = cz
                .get_servers(proto::GetServersRequest {
                    start_server_id: start,
                    max_results: 1,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.server.len() <= 1);
            for s in &page.server {
                if s.r#ref.as_ref().unwrap().server_id == server.stats.id() {
                    found = Some(s.clone());
                }
            }
            if page.end {
                break;
            }
            start = page
                .server
                .last()
                .unwrap()
                .r#ref
                .as_ref()
                .unwrap()
                .server_id
                + 1;
        }
        let found = found.expect("the server is listed");
        let data = found.data.unwrap();
        // Six echo calls; this walk's own channelz calls are counted too.
        assert_eq!(data.calls_failed, 1);
        assert!(data.calls_succeeded >= 5, "{data:?}");
        assert!(data.calls_started >= 6);
        assert_eq!(found.listen_socket.len(), 1);
        let listen = cz
            .get_socket(proto::GetSocketRequest {
                socket_id: found.listen_socket[0].socket_id,
                summary: true,
            })
            .await
            .unwrap()
            .into_inner()
            .socket
            .unwrap();
        assert_eq!(tcp(listen.local.as_ref()), Some(server.addr));

        // Two connections: the echo channel's and channelz's.
        let sockets = cz
            .get_server_sockets(proto::GetServerSocketsRequest {
                server_id: server.stats.id(),
                start_socket_id: 0,
                max_results: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(sockets.end);
        assert_eq!(sockets.socket_ref.len(), 2);
        // The echo channel's connection, by its client-side address.
        let echo_sub = lb_core::channelz::registry()
            .subchannel(channel.snapshot().subconns[0].channelz_id.unwrap())
            .unwrap();
        let echo_local = match lb_core::channelz::registry()
            .socket(echo_sub.sockets[0])
            .unwrap()
            .local
        {
            Some(lb_core::channelz::SocketAddress::Tcp(a)) => a,
            other => panic!("{other:?}"),
        };
        let mut echo_streams = None;
        for r in &sockets.socket_ref {
            let s = cz
                .get_socket(proto::GetSocketRequest {
                    socket_id: r.socket_id,
                    summary: false,
                })
                .await
                .unwrap()
                .into_inner()
                .socket
                .unwrap();
            assert_eq!(tcp(s.local.as_ref()), Some(server.addr));
            let d = s.data.unwrap();
            assert!(d.last_remote_stream_created_timestamp.is_some());
            if tcp(s.remote.as_ref()) == Some(echo_local) {
                assert!(echo_streams.is_none(), "one socket per connection");
                echo_streams = Some((d.streams_started, d.streams_succeeded, d.streams_failed));
            }
        }
        // Trailers ended all six streams (the failure is a status, not a reset).
        assert_eq!(echo_streams, Some((6, 6, 0)));
        channel.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_messages_are_counted_whatever_their_framing() {
    within("streams", async {
        let a = Backend::start("a").await.unwrap();
        let channel = channel_to(a.addr());
        let mut echo = EchoClient::new(channel.clone());
        let mut replies = echo
            .server_stream(EchoRequest {
                message: "x".repeat(100_000),
                count: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        while replies.message().await.unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, 5);
        let requests = tokio_stream::iter((0..3).map(|i| EchoRequest {
            message: format!("m{i}"),
            ..Default::default()
        }));
        echo.client_stream(requests).await.unwrap();
        let snapshot = channel.snapshot();
        let sub = lb_core::channelz::registry()
            .subchannel(snapshot.subconns[0].channelz_id.unwrap())
            .unwrap();
        let socket = lb_core::channelz::registry()
            .socket(sub.sockets[0])
            .unwrap();
        // 100 kB replies span several data frames each.
        assert_eq!(socket.messages_received, 5 + 1);
        assert_eq!(socket.messages_sent, 1 + 3);
        assert_eq!(socket.streams_started, 2);
        assert_eq!(socket.streams_succeeded, 2);
        channel.close();
    })
    .await;
}
