//! What a channel is doing now, in the spirit of grpc-go's channelz:
//! [`crate::LbChannel::snapshot`] returns a [`ChannelSnapshot`].
//!
//! The counters behind it are kept where the work already happens: each subconn's
//! task updates its state, and each attempt's completion (which the channel tracks
//! anyway) adds to its subconn's counts, with relaxed atomics. Picks touch none of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_core::channelz::{self, CallCounts, ChannelData, Registration, Severity, Trace};
use lb_core::{Address, Code, ConnectivityState, SubConnId};

use crate::counters::Sharded;
use crate::metrics::ChannelMetrics;

/// A point-in-time view of one channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelSnapshot {
    /// The target the channel was built for.
    pub target: String,
    /// The channel's id in channelz (gRFC A14; `lb_server::admin` serves it);
    /// `None` with `Builder::channelz(false)`.
    pub channelz_id: Option<channelz::Id>,
    /// The policy serving RPCs.
    pub policy: String,
    /// The aggregate connectivity state.
    pub state: ConnectivityState,
    /// Pickers published so far (each change of the ready set, each weight update).
    pub picker_updates: u64,
    /// Calls under way (waiting for a pick, or in flight).
    pub calls_in_flight: u64,
    /// What the resolver said last.
    pub resolver: ResolverSnapshot,
    /// Every subconn the policy has now, by id.
    pub subconns: Vec<SubConnSnapshot>,
}

/// The resolver's side of a [`ChannelSnapshot`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ResolverSnapshot {
    /// The addresses of its last update, with their attributes.
    pub addresses: Vec<Address>,
    /// Updates received.
    pub updates: u64,
    /// Errors received.
    pub errors: u64,
    /// The last error, if the last thing it sent was an error.
    pub last_error: Option<String>,
    /// Time since its last update or error.
    pub since_last: Option<Duration>,
}

/// One subconn in a [`ChannelSnapshot`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubConnSnapshot {
    /// The subconn's id.
    pub id: SubConnId,
    /// Its id in channelz, as a subchannel; `None` with `Builder::channelz(false)`.
    pub channelz_id: Option<channelz::Id>,
    /// The address it connects to.
    pub address: Address,
    /// Its state now.
    pub state: ConnectivityState,
    /// How long it has been in that state.
    pub in_state_for: Duration,
    /// Why its last connection attempt failed or its connection was lost, if so.
    pub last_error: Option<String>,
    /// Connection attempts made.
    pub connection_attempts: u64,
    /// RPC attempts sent on it (counted when the channel's per-RPC counters are on:
    /// see `Builder::disable_metrics`).
    pub rpcs: RpcCounts,
}

/// RPC attempts on one subconn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RpcCounts {
    /// Sent.
    pub started: u64,
    /// Ended with `OK`.
    pub succeeded: u64,
    /// Ended with any other status (cancellations included).
    pub failed: u64,
    /// Sent and not ended.
    pub in_flight: u64,
}

/// One channel's counters, shared by its control task, subconn tasks and RPCs.
pub(crate) struct Stats {
    pub(crate) target: String,
    pub(crate) metrics: ChannelMetrics,
    epoch: Instant,
    subconns: Mutex<BTreeMap<SubConnId, Arc<SubConnStats>>>,
    resolver: Mutex<ResolverInfo>,
    /// Whether RPC attempts are counted (`Builder::disable_metrics` turns it off).
    pub(crate) count_rpcs: bool,
    /// Whether the channel is in channelz.
    pub(crate) channelz: bool,
    /// Whether calls, streams and messages are counted for channelz (channelz on,
    /// per-RPC counters on).
    pub(crate) count_channelz: bool,
    /// The channel's channelz trace.
    pub(crate) trace: Trace,
    /// Calls that ended, by outcome, and when the last one started (channelz ms).
    calls: Sharded<4>,
}

/// [`Stats::calls`]' fields.
const CALLS_SUCCEEDED: usize = 0;
const CALLS_FAILED: usize = 1;
const CALLS_LAST: usize = 2;
const CALLS_STARTED: usize = 3;

#[derive(Default)]
struct ResolverInfo {
    addresses: Vec<Address>,
    updates: u64,
    errors: u64,
    last_error: Option<String>,
    at: Option<Instant>,
}

impl Stats {
    /// Counters for the channel to `target`; `enabled: false` turns off per-RPC
    /// counting and metrics (states are still tracked).
    pub(crate) fn new(target: String, enabled: bool, channelz: bool) -> Self {
        Self {
            metrics: ChannelMetrics::new(&target, enabled),
            target,
            epoch: Instant::now(),
            subconns: Mutex::default(),
            resolver: Mutex::default(),
            count_rpcs: enabled,
            channelz,
            count_channelz: enabled && channelz,
            trace: Trace::default(),
            calls: Sharded::new(),
        }
    }

    /// A call started (counted only with channelz and the per-RPC counters on).
    #[inline]
    pub(crate) fn call_started(&self) {
        self.calls.add(CALLS_STARTED, 1);
        self.calls.set(CALLS_LAST, channelz::now_ms());
    }

    /// A call ended, with `OK` or not.
    #[inline]
    pub(crate) fn call_ended(&self, ok: bool) {
        self.calls
            .add(if ok { CALLS_SUCCEEDED } else { CALLS_FAILED }, 1);
    }

    /// The channel's data for channelz (calls are counted while channelz and the
    /// per-RPC counters are on).
    pub(crate) fn channel_data(&self, state: ConnectivityState) -> ChannelData {
        // Ended first: a call counted as ended is always counted as started.
        let succeeded = self.calls.sum(CALLS_SUCCEEDED);
        let failed = self.calls.sum(CALLS_FAILED);
        let started = self.calls.sum(CALLS_STARTED).max(succeeded + failed);
        let mut calls = CallCounts::new(started, succeeded, failed);
        calls.last_started = channelz::time_of(self.calls.max(CALLS_LAST));
        let mut data = ChannelData::default();
        data.target = self.target.clone();
        data.state = Some(state);
        data.calls = calls;
        data.trace = Some(self.trace.data());
        data.subchannels = self
            .subconns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|s| s.channelz_id())
            .collect();
        data
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A new subconn's counters, registered for snapshots until it shuts down.
    pub(crate) fn subconn(self: &Arc<Self>, id: SubConnId, address: Address) -> Arc<SubConnStats> {
        let stats = Arc::new_cyclic(|me: &std::sync::Weak<SubConnStats>| SubConnStats {
            channelz: self
                .channelz
                .then(|| channelz::registry().register_subchannel(me.clone())),
            trace: Trace::new(SUBCHANNEL_TRACE),
            sockets: Mutex::default(),
            id,
            address,
            channel: self.clone(),
            state: AtomicU8::new(index(ConnectivityState::Idle)),
            since_ms: AtomicU64::new(self.ms()),
            last_error: Mutex::default(),
            connection_attempts: AtomicU64::new(0),
            rpcs: Sharded::new(),
        });
        stats.trace.log(Severity::Info, "subchannel created");
        if let Some(id) = stats.channelz_id() {
            self.trace.log_subchannel(
                Severity::Info,
                format!("subchannel {id} created for {}", stats.address.addr()),
                id,
            );
        }
        self.subconns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, stats.clone());
        stats
    }

    fn forget(&self, id: SubConnId) {
        let removed = self
            .subconns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(s) = removed
            && let Some(id) = s.channelz_id()
        {
            self.trace.log_subchannel(
                Severity::Info,
                format!("subchannel {id} for {} removed", s.address.addr()),
                id,
            );
        }
    }

    pub(crate) fn resolver_update(&self, addresses: &[Address]) {
        self.metrics.resolver_update(addresses.len());
        let mut r = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
        if r.addresses != addresses || r.updates == 0 {
            self.trace.log(
                Severity::Info,
                format!("resolver update: {} addresses", addresses.len()),
            );
        }
        r.addresses = addresses.to_vec();
        r.updates += 1;
        r.last_error = None;
        r.at = Some(Instant::now());
    }

    pub(crate) fn resolver_error(&self, error: String) {
        self.metrics.resolver_error();
        let mut r = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
        r.errors += 1;
        self.trace
            .log(Severity::Error, format!("resolver error: {error}"));
        r.last_error = Some(error);
        r.at = Some(Instant::now());
    }

    pub(crate) fn resolver_snapshot(&self) -> ResolverSnapshot {
        let r = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
        ResolverSnapshot {
            addresses: r.addresses.clone(),
            updates: r.updates,
            errors: r.errors,
            last_error: r.last_error.clone(),
            since_last: r.at.map(|at| at.elapsed()),
        }
    }

    pub(crate) fn subconn_snapshots(&self) -> Vec<SubConnSnapshot> {
        let now = self.ms();
        self.subconns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|s| s.snapshot(now))
            .collect()
    }
}

/// Events a subchannel's trace keeps.
const SUBCHANNEL_TRACE: usize = 32;

/// One subconn's counters.
pub(crate) struct SubConnStats {
    channelz: Option<Registration>,
    trace: Trace,
    /// Its sockets' channelz ids: the connection, and draining ones.
    sockets: Mutex<Vec<channelz::Id>>,
    id: SubConnId,
    address: Address,
    channel: Arc<Stats>,
    state: AtomicU8,
    since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    connection_attempts: AtomicU64,
    /// Attempts sent on it, by outcome, and when the last one started.
    rpcs: Sharded<4>,
}

/// [`SubConnStats::rpcs`]' fields.
const RPCS_STARTED: usize = 0;
const RPCS_SUCCEEDED: usize = 1;
const RPCS_FAILED: usize = 2;
const RPCS_LAST: usize = 3;

fn index(state: ConnectivityState) -> u8 {
    ConnectivityState::ALL
        .iter()
        .position(|s| *s == state)
        .map_or(0, |i| i as u8)
}

impl SubConnStats {
    /// The subconn moved to `state`; `error` says why, when it failed. A subconn
    /// that shuts down leaves the snapshots.
    pub(crate) fn state(&self, state: ConnectivityState, error: Option<String>) {
        let now = index(state);
        let previous = self.state.swap(now, Ordering::Relaxed);
        self.since_ms.store(self.channel.ms(), Ordering::Relaxed);
        let metrics = &self.channel.metrics;
        metrics.state_change(usize::from(now));
        match &error {
            Some(e) => self
                .trace
                .log(Severity::Warning, format!("{}: {e}", state.as_str())),
            None => self.trace.log(Severity::Info, state.as_str()),
        }
        match state {
            ConnectivityState::Connecting => {
                self.connection_attempts.fetch_add(1, Ordering::Relaxed);
            }
            ConnectivityState::Ready | ConnectivityState::TransientFailure
                if previous == index(ConnectivityState::Connecting) =>
            {
                metrics.connection_attempt(state == ConnectivityState::Ready);
            }
            ConnectivityState::Shutdown => {
                self.channel.forget(self.id);
                return;
            }
            _ => {}
        }
        if error.is_some() || state == ConnectivityState::Ready {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = error;
        }
    }

    /// Whether RPC attempts on the subconn are counted.
    pub(crate) fn counts_rpcs(&self) -> bool {
        self.channel.count_rpcs
    }

    /// Its channelz id, when the channel is in channelz.
    pub(crate) fn channelz_id(&self) -> Option<channelz::Id> {
        self.channelz.as_ref().map(Registration::id)
    }

    /// A socket of the subconn's appeared or went away.
    pub(crate) fn socket(&self, id: channelz::Id, open: bool) {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        if open {
            sockets.push(id);
        } else {
            sockets.retain(|s| *s != id);
        }
    }

    /// An RPC attempt was sent on the subconn at `now_ms` (channelz ms; 0 when
    /// channelz does not count).
    #[inline]
    pub(crate) fn started(&self, now_ms: u64) {
        self.rpcs.add(RPCS_STARTED, 1);
        if now_ms != 0 {
            self.rpcs.set(RPCS_LAST, now_ms);
        }
    }

    /// An attempt sent on the subconn ended with `code`.
    #[inline]
    pub(crate) fn ended(&self, code: Code) {
        self.channel.metrics.attempt(code);
        self.rpcs.add(
            if code == Code::Ok {
                RPCS_SUCCEEDED
            } else {
                RPCS_FAILED
            },
            1,
        );
    }

    fn snapshot(&self, now_ms: u64) -> SubConnSnapshot {
        let state = ConnectivityState::ALL
            .get(usize::from(self.state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(ConnectivityState::Idle);
        // Ended first: an attempt counted as ended is always counted as started.
        let succeeded = self.rpcs.sum(RPCS_SUCCEEDED);
        let failed = self.rpcs.sum(RPCS_FAILED);
        let started = self.rpcs.sum(RPCS_STARTED).max(succeeded + failed);
        SubConnSnapshot {
            id: self.id,
            channelz_id: self.channelz_id(),
            address: self.address.clone(),
            state,
            in_state_for: Duration::from_millis(
                now_ms.saturating_sub(self.since_ms.load(Ordering::Relaxed)),
            ),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            connection_attempts: self.connection_attempts.load(Ordering::Relaxed),
            rpcs: RpcCounts {
                started,
                succeeded,
                failed,
                in_flight: started - succeeded - failed,
            },
        }
    }
}

impl channelz::SubchannelSource for SubConnStats {
    fn subchannel_data(&self) -> ChannelData {
        let snapshot = self.snapshot(self.channel.ms());
        let mut calls = CallCounts::new(
            snapshot.rpcs.started,
            snapshot.rpcs.succeeded,
            snapshot.rpcs.failed,
        );
        calls.last_started = channelz::time_of(self.rpcs.max(RPCS_LAST));
        let mut data = ChannelData::default();
        data.target = self.address.addr().to_owned();
        data.state = Some(snapshot.state);
        data.calls = calls;
        data.trace = Some(self.trace.data());
        data.sockets = self
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        data
    }
}

/// One connection's counters: a channelz socket of its subconn.
pub(crate) struct SocketStats {
    channelz: Option<Registration>,
    /// Streams and messages are counted (channelz and per-RPC counters on).
    counts: bool,
    subconn: Arc<SubConnStats>,
    local: Option<channelz::SocketAddress>,
    remote: Option<channelz::SocketAddress>,
    tls: Option<channelz::TlsData>,
    /// Streams and messages, with their last times (channelz ms).
    streams: Sharded<8>,
    keepalives_sent: AtomicU64,
}

/// [`SocketStats::streams`]' fields.
const STREAMS_STARTED: usize = 0;
const STREAMS_SUCCEEDED: usize = 1;
const STREAMS_FAILED: usize = 2;
const STREAMS_LAST: usize = 3;
const MESSAGES_SENT: usize = 4;
const MESSAGES_RECEIVED: usize = 5;
const MESSAGES_LAST_SENT: usize = 6;
const MESSAGES_LAST_RECEIVED: usize = 7;

impl SocketStats {
    /// Registers a connection of `subconn` between `local` and `remote`, over `tls`
    /// if it is a TLS session.
    pub(crate) fn new(
        subconn: Arc<SubConnStats>,
        local: Option<channelz::SocketAddress>,
        remote: Option<channelz::SocketAddress>,
        tls: Option<channelz::TlsData>,
    ) -> Arc<Self> {
        let channel = &subconn.channel;
        let (registered, counts) = (channel.channelz, channel.count_channelz);
        let socket = Arc::new_cyclic(|me: &std::sync::Weak<SocketStats>| SocketStats {
            channelz: registered.then(|| channelz::registry().register_socket(me.clone())),
            counts,
            subconn,
            local,
            remote,
            tls,
            streams: Sharded::new(),
            keepalives_sent: AtomicU64::new(0),
        });
        if let Some(r) = &socket.channelz {
            socket.subconn.socket(r.id(), true);
        }
        socket
    }

    /// An attempt was picked for this connection: counted on its subconn. Returns
    /// when (channelz ms; 0 when channelz does not count), for
    /// [`SocketStats::stream_opened`].
    #[inline]
    pub(crate) fn attempt_started(&self) -> u64 {
        let now = if self.counts { channelz::now_ms() } else { 0 };
        self.subconn.started(now);
        now
    }

    /// The attempt's stream opened, at `at` (from [`SocketStats::attempt_started`]).
    #[inline]
    pub(crate) fn stream_opened(&self, at: u64) {
        if self.counts {
            self.streams.add(STREAMS_STARTED, 1);
            self.streams.set(STREAMS_LAST, at);
        }
    }

    /// Whether messages are worth counting.
    #[inline]
    pub(crate) fn counts_messages(&self) -> bool {
        self.counts
    }

    /// The attempt ended with `code`; `stream`: `None` if its stream never opened,
    /// else whether the server ended it (end of stream received) rather than a reset
    /// or a drop.
    #[inline]
    pub(crate) fn ended(&self, code: Code, stream: Option<bool>) {
        if let Some(eos) = stream.filter(|_| self.counts) {
            self.streams.add(
                if eos {
                    STREAMS_SUCCEEDED
                } else {
                    STREAMS_FAILED
                },
                1,
            );
        }
        self.subconn.ended(code);
    }

    /// `n` whole gRPC messages went out at `at_ms` (channelz ms).
    #[inline]
    pub(crate) fn messages_sent(&self, n: u64, at_ms: u64) {
        self.streams.add(MESSAGES_SENT, n);
        self.streams.set(MESSAGES_LAST_SENT, at_ms);
    }

    /// `n` whole gRPC messages came in.
    #[inline]
    pub(crate) fn messages_received(&self, n: u64) {
        self.streams.add(MESSAGES_RECEIVED, n);
        self.streams.set(MESSAGES_LAST_RECEIVED, channelz::now_ms());
    }

    /// A keepalive ping went out.
    pub(crate) fn keepalive_sent(&self) {
        self.keepalives_sent.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for SocketStats {
    fn drop(&mut self) {
        if let Some(r) = &self.channelz {
            self.subconn.socket(r.id(), false);
        }
    }
}

impl channelz::SocketSource for SocketStats {
    fn socket_data(&self) -> channelz::SocketData {
        let mut data = channelz::SocketData::default();
        data.local = self.local.clone();
        data.remote = self.remote.clone();
        data.tls = self.tls.clone();
        let dialled = self.subconn.address.addr();
        if !matches!(&self.remote, Some(channelz::SocketAddress::Tcp(a)) if a.to_string() == dialled)
        {
            data.remote_name = dialled.to_owned();
        }
        let s = &self.streams;
        // Ended first: a stream counted as ended is always counted as started.
        data.streams_succeeded = s.sum(STREAMS_SUCCEEDED);
        data.streams_failed = s.sum(STREAMS_FAILED);
        data.streams_started = s
            .sum(STREAMS_STARTED)
            .max(data.streams_succeeded + data.streams_failed);
        data.keepalives_sent = self.keepalives_sent.load(Ordering::Relaxed);
        data.last_local_stream_created = channelz::time_of(s.max(STREAMS_LAST));
        data.messages_sent = s.sum(MESSAGES_SENT);
        data.messages_received = s.sum(MESSAGES_RECEIVED);
        data.last_message_sent = channelz::time_of(s.max(MESSAGES_LAST_SENT));
        data.last_message_received = channelz::time_of(s.max(MESSAGES_LAST_RECEIVED));
        data
    }
}

/// Counts whole gRPC messages (a 5-byte prefix, flag and big-endian length, then
/// the payload) in a stream's data, whatever the chunks' boundaries.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MessageCount {
    /// Prefix bytes seen of the current message (5: in its payload).
    prefix_seen: u8,
    length: [u8; 4],
    /// Payload bytes still to come.
    remaining: u32,
}

impl MessageCount {
    /// Takes the next chunk; returns how many messages it completed.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut completed = 0;
        while !data.is_empty() {
            if self.prefix_seen < 5 {
                let byte = data[0];
                data = &data[1..];
                if self.prefix_seen > 0 {
                    self.length[usize::from(self.prefix_seen) - 1] = byte;
                }
                self.prefix_seen += 1;
                if self.prefix_seen == 5 {
                    self.remaining = u32::from_be_bytes(self.length);
                    if self.remaining == 0 {
                        completed += 1;
                        self.prefix_seen = 0;
                    }
                }
                continue;
            }
            let take = data.len().min(self.remaining as usize);
            data = &data[take..];
            self.remaining -= take as u32;
            if self.remaining == 0 {
                completed += 1;
                self.prefix_seen = 0;
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::MessageCount;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn counts_messages_across_any_chunking() {
        let mut all = Vec::new();
        for len in [0, 1, 5, 300, 0, 70_000] {
            all.extend(message(len));
        }
        for chunk in [1, 2, 3, 5, 7, 64, 1000, all.len()] {
            let mut count = MessageCount::default();
            let total: u64 = all.chunks(chunk).map(|c| count.feed(c)).sum();
            assert_eq!(total, 6, "chunks of {chunk}");
        }
        let mut count = MessageCount::default();
        assert_eq!(
            count.feed(&all[..all.len() - 1]),
            5,
            "the last one is not whole"
        );
        assert_eq!(count.feed(&all[all.len() - 1..]), 1);
    }
}
