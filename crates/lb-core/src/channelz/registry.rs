//! The process-wide table of channelz entities, by id.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use super::{
    ChannelData, ChannelSource, Id, ServerData, ServerSource, SocketData, SocketSource,
    SubchannelSource,
};

/// The page size when a request asks for none (`max_results` 0), as grpc-go's.
const DEFAULT_PAGE: usize = 100;

/// One page of a listing: ids in ascending order, and whether it is the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries, by ascending id.
    pub items: Vec<(Id, T)>,
    /// No entry with a higher id exists now.
    pub end: bool,
}

#[derive(Default)]
struct Tables {
    channels: BTreeMap<Id, Weak<dyn ChannelSource>>,
    subchannels: BTreeMap<Id, Weak<dyn SubchannelSource>>,
    sockets: BTreeMap<Id, Weak<dyn SocketSource>>,
    servers: BTreeMap<Id, Weak<dyn ServerSource>>,
    /// (server, socket): the connections each server accepted.
    server_sockets: BTreeSet<(Id, Id)>,
}

/// The registry (one per process: [`registry`]).
pub struct Registry {
    next: AtomicI64,
    tables: RwLock<Tables>,
}

/// The process's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        next: AtomicI64::new(1),
        tables: RwLock::default(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Subchannel,
    Socket,
    ServerSocket(Id),
    Server,
}

/// An entity's place in the registry: its id while it lives. Dropping it removes
/// the entity.
#[derive(Debug)]
pub struct Registration {
    id: Id,
    kind: Kind,
}

impl Registration {
    /// The entity's channelz id.
    pub fn id(&self) -> Id {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = registry().write();
        match self.kind {
            Kind::Channel => drop(t.channels.remove(&self.id)),
            Kind::Subchannel => drop(t.subchannels.remove(&self.id)),
            Kind::Socket => drop(t.sockets.remove(&self.id)),
            Kind::ServerSocket(server) => {
                t.sockets.remove(&self.id);
                t.server_sockets.remove(&(server, self.id));
            }
            Kind::Server => {
                t.servers.remove(&self.id);
                let ids: Vec<_> = t
                    .server_sockets
                    .range((self.id, 0)..=(self.id, Id::MAX))
                    .copied()
                    .collect();
                for key in ids {
                    t.server_sockets.remove(&key);
                }
            }
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.read();
        f.debug_struct("Registry")
            .field("channels", &t.channels.len())
            .field("subchannels", &t.subchannels.len())
            .field("sockets", &t.sockets.len())
            .field("servers", &t.servers.len())
            .finish()
    }
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next id; taken under the write lock, so that ids enter the tables in
    /// order and a reader paging from an id it has seen misses no later entry.
    fn id(&self, _tables: &mut Tables) -> Id {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a top-level channel.
    pub fn register_channel(&self, source: Weak<dyn ChannelSource>) -> Registration {
        let mut t = self.write();
        let id = self.id(&mut t);
        t.channels.insert(id, source);
        Registration {
            id,
            kind: Kind::Channel,
        }
    }

    /// Registers a subchannel.
    pub fn register_subchannel(&self, source: Weak<dyn SubchannelSource>) -> Registration {
        let mut t = self.write();
        let id = self.id(&mut t);
        t.subchannels.insert(id, source);
        Registration {
            id,
            kind: Kind::Subchannel,
        }
    }

    /// Registers a socket of a channel's subchannel, or a listening socket.
    pub fn register_socket(&self, source: Weak<dyn SocketSource>) -> Registration {
        let mut t = self.write();
        let id = self.id(&mut t);
        t.sockets.insert(id, source);
        Registration {
            id,
            kind: Kind::Socket,
        }
    }

    /// Registers a server.
    pub fn register_server(&self, source: Weak<dyn ServerSource>) -> Registration {
        let mut t = self.write();
        let id = self.id(&mut t);
        t.servers.insert(id, source);
        Registration {
            id,
            kind: Kind::Server,
        }
    }

    /// Registers a connection that server `server` accepted.
    pub fn register_server_socket(
        &self,
        server: Id,
        source: Weak<dyn SocketSource>,
    ) -> Registration {
        let mut t = self.write();
        let id = self.id(&mut t);
        t.sockets.insert(id, source);
        t.server_sockets.insert((server, id));
        Registration {
            id,
            kind: Kind::ServerSocket(server),
        }
    }

    /// Top-level channels with ids from `start`, at most `max` (0: a default page).
    pub fn top_channels(&self, start: Id, max: usize) -> Page<ChannelData> {
        let (live, end) = live_page(&self.read().channels, start, max);
        describe(live, end, |s| s.channel_data())
    }

    /// Servers with ids from `start`, at most `max` (0: a default page).
    pub fn servers(&self, start: Id, max: usize) -> Page<ServerData> {
        let (live, end) = live_page(&self.read().servers, start, max);
        describe(live, end, |s| s.server_data())
    }

    /// The sockets server `server` accepted, with ids from `start`; `None` if there
    /// is no such server.
    pub fn server_sockets(&self, server: Id, start: Id, max: usize) -> Option<Page<()>> {
        let t = self.read();
        t.servers.get(&server)?;
        let max = if max == 0 { DEFAULT_PAGE } else { max };
        let mut items = Vec::new();
        let mut range = t
            .server_sockets
            .range((server, start.max(0))..=(server, Id::MAX))
            .filter(|(_, socket)| t.sockets.get(socket).is_some_and(|w| w.strong_count() > 0));
        for &(_, socket) in range.by_ref() {
            items.push((socket, ()));
            if items.len() == max {
                break;
            }
        }
        let end = range.next().is_none();
        Some(Page { items, end })
    }

    /// One channel's data.
    pub fn channel(&self, id: Id) -> Option<ChannelData> {
        let source = self.read().channels.get(&id)?.upgrade()?;
        Some(source.channel_data())
    }

    /// One subchannel's data.
    pub fn subchannel(&self, id: Id) -> Option<ChannelData> {
        let source = self.read().subchannels.get(&id)?.upgrade()?;
        Some(source.subchannel_data())
    }

    /// One socket's data.
    pub fn socket(&self, id: Id) -> Option<SocketData> {
        let source = self.read().sockets.get(&id)?.upgrade()?;
        Some(source.socket_data())
    }

    /// One server's data.
    pub fn server(&self, id: Id) -> Option<ServerData> {
        let source = self.read().servers.get(&id)?.upgrade()?;
        Some(source.server_data())
    }
}

/// Up to `max` live entries of `table` from `start` (0: a default page), and
/// whether none is left after them. Called under the lock; the sources are
/// described (and dropped, which may unregister them) after it is released.
#[allow(clippy::type_complexity)]
fn live_page<S: ?Sized>(
    table: &BTreeMap<Id, Weak<S>>,
    start: Id,
    max: usize,
) -> (Vec<(Id, Arc<S>)>, bool) {
    let max = if max == 0 { DEFAULT_PAGE } else { max };
    let mut live = Vec::new();
    let mut range = table.range((Bound::Included(start.max(0)), Bound::Unbounded));
    for (id, weak) in range.by_ref() {
        if let Some(source) = weak.upgrade() {
            live.push((*id, source));
            if live.len() == max {
                break;
            }
        }
    }
    let end = !range.any(|(_, weak)| weak.strong_count() > 0);
    (live, end)
}

fn describe<S: ?Sized, T>(live: Vec<(Id, Arc<S>)>, end: bool, f: impl Fn(&S) -> T) -> Page<T> {
    Page {
        items: live
            .into_iter()
            .map(|(id, source)| (id, f(&source)))
            .collect(),
        end,
    }
}
