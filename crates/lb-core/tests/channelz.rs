//! The channelz registry: ids, paging, and entities that leave when dropped.

use std::sync::{Arc, Weak};

use lb_core::channelz::{
    self, ChannelData, ChannelSource, Registration, ServerData, ServerSource, SocketData,
    SocketSource,
};

struct Channel {
    target: String,
    reg: Option<Registration>,
}

impl ChannelSource for Channel {
    fn channel_data(&self) -> ChannelData {
        let mut d = ChannelData::default();
        d.target = self.target.clone();
        d
    }
}

fn channel(target: &str) -> Arc<Channel> {
    Arc::new_cyclic(|me: &Weak<Channel>| Channel {
        target: target.to_owned(),
        reg: Some(channelz::registry().register_channel(me.clone())),
    })
}

fn id(c: &Arc<Channel>) -> channelz::Id {
    c.reg.as_ref().map(Registration::id).unwrap_or_default()
}

#[test]
fn paging_returns_each_live_channel_once_in_id_order() {
    let channels: Vec<_> = (0..250).map(|i| channel(&format!("paging-{i}"))).collect();
    // Drop every tenth: they must not show up, nor count as "more".
    let kept: Vec<_> = channels
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, c)| c)
        .collect();
    let mut seen = Vec::new();
    let mut start = 0;
    let mut pages = 0;
    loop {
        let page = channelz::registry().top_channels(start, 7);
        pages += 1;
        assert!(page.items.len() <= 7);
        for (id, data) in &page.items {
            if data.target.starts_with("paging-") {
                seen.push(*id);
            }
        }
        if page.end {
            break;
        }
        start = page.items.last().map_or(start, |(id, _)| id + 1);
        assert!(pages < 1000, "paging does not end");
    }
    let want: Vec<_> = kept.iter().map(id).collect();
    assert_eq!(seen, want);
}

#[test]
fn a_dropped_channel_leaves_the_registry() {
    let c = channel("dropped");
    let i = id(&c);
    assert_eq!(
        channelz::registry().channel(i).map(|d| d.target),
        Some("dropped".to_owned())
    );
    drop(c);
    assert!(channelz::registry().channel(i).is_none());
    assert!(channelz::registry().subchannel(i).is_none());
}

struct Server(Option<Registration>);
impl ServerSource for Server {
    fn server_data(&self) -> ServerData {
        ServerData::default()
    }
}
struct Socket(Option<Registration>);
impl SocketSource for Socket {
    fn socket_data(&self) -> SocketData {
        SocketData::default()
    }
}

#[test]
fn server_sockets_page_and_leave_with_their_connection() {
    let server = Arc::new_cyclic(|me: &Weak<Server>| {
        Server(Some(channelz::registry().register_server(me.clone())))
    });
    let server_id = server.0.as_ref().map(Registration::id).unwrap_or_default();
    let sockets: Vec<_> = (0..25)
        .map(|_| {
            Arc::new_cyclic(|me: &Weak<Socket>| {
                Socket(Some(
                    channelz::registry().register_server_socket(server_id, me.clone()),
                ))
            })
        })
        .collect();
    let ids: Vec<_> = sockets
        .iter()
        .map(|s| s.0.as_ref().map(Registration::id).unwrap_or_default())
        .collect();
    let first = channelz::registry()
        .server_sockets(server_id, 0, 10)
        .expect("the server");
    assert_eq!(first.items.len(), 10);
    assert!(!first.end);
    let mut all: Vec<_> = first.items.iter().map(|(id, ())| *id).collect();
    let mut start = all[9] + 1;
    loop {
        let page = channelz::registry()
            .server_sockets(server_id, start, 10)
            .expect("the server");
        all.extend(page.items.iter().map(|(id, ())| *id));
        if page.end {
            break;
        }
        start = all[all.len() - 1] + 1;
    }
    assert_eq!(all, ids);
    assert!(channelz::registry().socket(ids[3]).is_some());
    drop(sockets);
    let after = channelz::registry()
        .server_sockets(server_id, 0, 0)
        .expect("the server");
    assert!(after.items.is_empty() && after.end);
    assert!(channelz::registry().socket(ids[3]).is_none());
    drop(server);
    assert!(
        channelz::registry()
            .server_sockets(server_id, 0, 0)
            .is_none()
    );
}
