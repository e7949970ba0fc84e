//! `ring_hash` (gRFC A42, with A76's request hash header): a consistent-hash ring,
//! so that RPCs with the same key go to the same backend while it is up, and adding
//! or removing one of N backends moves only about 1/N of the keys.
//!
//! # The ring
//!
//! As grpc-go builds it: the addresses are sorted, each weighs its
//! [`lb_core::Weight`] (1 without one) over the sum, and the ring gets
//! `ceil(min(ceil(w_min × minRingSize) / w_min, maxRingSize))` entries, so that the
//! lightest address has a whole number of them. Address `a`'s `i`-th entry sits at
//! `xxHash64("a_i")` (seed 0). Given the same addresses, weights and sizes, a key
//! lands on the same backend as with a grpc-go client.
//!
//! # The request's hash
//!
//! With `requestHashHeader`, the hash of an RPC is the xxHash64 of that request
//! header's values (joined with `,` when repeated), so RPCs carrying the same value
//! stick to one backend. Without `requestHashHeader`, the hash the RPC's config
//! selector computed ([`lb_core::routing::RequestHash`], as an xDS route's hash
//! policy does, A42) is used. An RPC with neither gets a random hash (A76).
//!
//! # Picks and connections
//!
//! Subconns connect only when needed (A42): a pick lands on the first ring entry at
//! or after its hash and walks on past backends in `TRANSIENT_FAILURE`; the first
//! other one decides: `READY` is picked, `IDLE` is asked to connect and the RPC waits
//! for it, `CONNECTING` makes the RPC wait. A random-hash pick instead takes the
//! first `READY` backend on its walk, asking at most one `IDLE` one to connect when
//! none is connecting. A backend that failed counts as failing until it is `READY`
//! again and reconnects on its own after each backoff; when the policy is
//! `TRANSIENT_FAILURE` or `CONNECTING` with nothing connecting, the first idle
//! backend is connected, so the channel always tries something.
//!
//! The aggregate state follows A42: `READY` if any backend is; else
//! `TRANSIENT_FAILURE` if two or more failed; else `CONNECTING` if any is
//! connecting, or if one failed and there are others; else `IDLE` if any is idle;
//! else `TRANSIENT_FAILURE`.
//!
//! Config: `{"minRingSize": 1024, "maxRingSize": 4096, "requestHashHeader":
//! "x-user-id"}`, every field optional (those are the defaults, and no header). Sizes
//! above 8,388,608 or a minimum above the maximum are errors; the header must be a
//! valid metadata key (lower-cased here), and not a binary (`-bin`) one. Valid sizes
//! are then capped at 4,096, as grpc-go and C-core cap them by default, so that a
//! config maps keys as theirs does; [`RingHash::with_ring_size_cap`] raises the cap.

use std::sync::Arc;

use http::HeaderName;
use lb_core::base::{LastErrors, SubConnList};
use lb_core::routing::RequestHash;
use lb_core::{
    Balancer, BalancerBuilder, BuildOptions, ClientConn, ClientConnState, ConnectivityState, Error,
    FailPicker, LbConfig, Pick, PickInfo, PickResult, Picker, SharedError, Status, SubConn,
    SubConnOptions, SubConnState,
};
use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::config::Fields;

/// The policy's name in service configs.
pub const NAME: &str = "ring_hash";

/// The default `minRingSize`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// The default `maxRingSize`.
pub const DEFAULT_MAX_RING_SIZE: u64 = 4096;
/// The largest ring size a config may ask for (8 Mi entries, as grpc-go).
pub const RING_SIZE_UPPER_BOUND: u64 = 8 * 1024 * 1024;
/// The default cap on both ring sizes of a config, as grpc-go's (`GRPC_RING_HASH_CAP`)
/// and C-core's (`grpc.lb.ring_hash.ring_size_cap`): a config may ask for up to
/// [`RING_SIZE_UPPER_BOUND`], but gets at most this many entries unless the builder
/// is registered with a higher cap ([`RingHash::with_ring_size_cap`]).
pub const DEFAULT_RING_SIZE_CAP: u64 = 4096;

/// The parsed config of `ring_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingHashConfig {
    /// The smallest ring.
    pub min_ring_size: u64,
    /// The largest ring.
    pub max_ring_size: u64,
    /// The request header whose value is hashed; `None`: random hashes.
    pub request_hash_header: Option<HeaderName>,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self {
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
            request_hash_header: None,
        }
    }
}

/// The `ring_hash` balancer builder.
///
/// ```
/// use lb_core::BalancerRegistry;
/// use lb_policies::RingHash;
///
/// // Rings of up to 65,536 entries for this channel's registry (4,096 by default).
/// let mut registry = lb_policies::registry();
/// registry.register(RingHash::with_ring_size_cap(65_536));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RingHash {
    ring_size_cap: u64,
}

impl Default for RingHash {
    fn default() -> Self {
        Self::new()
    }
}

impl RingHash {
    /// The builder with the default cap on ring sizes ([`DEFAULT_RING_SIZE_CAP`]).
    pub const fn new() -> Self {
        Self {
            ring_size_cap: DEFAULT_RING_SIZE_CAP,
        }
    }

    /// The builder with `cap` as the cap on `minRingSize` and `maxRingSize`
    /// (between 1 and [`RING_SIZE_UPPER_BOUND`]; values outside are brought inside),
    /// as C-core's channel argument `grpc.lb.ring_hash.ring_size_cap` sets it.
    /// Configs are still validated against the upper bound, then capped: a ring
    /// costs memory and time on the control task at every address change.
    pub const fn with_ring_size_cap(cap: u64) -> Self {
        let cap = if cap == 0 {
            1
        } else if cap > RING_SIZE_UPPER_BOUND {
            RING_SIZE_UPPER_BOUND
        } else {
            cap
        };
        Self { ring_size_cap: cap }
    }

    /// The cap on ring sizes.
    pub const fn ring_size_cap(&self) -> u64 {
        self.ring_size_cap
    }
}

impl BalancerBuilder for RingHash {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(RingHashBalancer {
            subconns: SubConnList::new(SubConnOptions::health_checked()),
            config: RingHashConfig::default(),
            ring: None,
            ring_of: Vec::new(),
            state: ConnectivityState::Idle,
            errors: LastErrors::default(),
        })
    }

    fn parse_config(&self, config: &serde_json::Value) -> Result<LbConfig, Error> {
        let f = Fields::of(NAME, config)?;
        let size = |key: &str, default: u64| -> Result<u64, Error> {
            let n = f.number_u64(key, default)?;
            if n > RING_SIZE_UPPER_BOUND {
                return Err(f.error(
                    key,
                    format!("must be at most {RING_SIZE_UPPER_BOUND}, got {n}"),
                ));
            }
            // 0 means the default, as in grpc-go's JSON.
            Ok(if n == 0 { default } else { n })
        };
        let min_ring_size = size("minRingSize", DEFAULT_MIN_RING_SIZE)?;
        let max_ring_size = size("maxRingSize", DEFAULT_MAX_RING_SIZE)?;
        if min_ring_size > max_ring_size {
            return Err(f.error(
                "minRingSize",
                format!("is {min_ring_size}, more than maxRingSize {max_ring_size}"),
            ));
        }
        // Validated against the bound, then capped, as grpc-go and C-core do.
        let min_ring_size = min_ring_size.min(self.ring_size_cap);
        let max_ring_size = max_ring_size.min(self.ring_size_cap);
        let request_hash_header = match f.string("requestHashHeader")? {
            None | Some("") => None,
            Some(h) => Some(header_name(h).map_err(|why| f.error("requestHashHeader", why))?),
        };
        Ok(LbConfig::new(RingHashConfig {
            min_ring_size,
            max_ring_size,
            request_hash_header,
        }))
    }
}

/// A76's rules for the header: a valid, non-binary metadata key, lower-cased.
fn header_name(raw: &str) -> Result<HeaderName, String> {
    let lower = raw.to_ascii_lowercase();
    if !lower
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{raw:?} is not a valid metadata key (letters, digits, '-', '_' and '.' only)"
        ));
    }
    if lower.ends_with("-bin") {
        return Err(format!(
            "{raw:?} is a binary header; its value cannot be hashed"
        ));
    }
    HeaderName::from_bytes(lower.as_bytes()).map_err(|e| format!("{raw:?}: {e}"))
}

/// The ring: sorted entry hashes and, for each, its address's position in the
/// balancer's subconn list.
#[derive(Debug)]
pub struct Ring {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// Builds the ring of `(hash key, weight)` pairs as grpc-go does; each entry's
    /// owner is the pair's position in `endpoints`. `endpoints` must not be empty.
    pub fn new(endpoints: &[(&str, u32)], min_ring_size: u64, max_ring_size: u64) -> Self {
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by(|&a, &b| endpoints[a].0.cmp(endpoints[b].0));
        let sum: f64 = endpoints.iter().map(|(_, w)| f64::from((*w).max(1))).sum();
        let normalized = |i: usize| f64::from(endpoints[i].1.max(1)) / sum;
        let min_weight = order.iter().map(|&i| normalized(i)).fold(1.0, f64::min);
        let scale =
            ((min_weight * min_ring_size as f64).ceil() / min_weight).min(max_ring_size as f64);
        let mut items: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = String::new();
        for &i in &order {
            target += scale * normalized(i);
            let mut n = 0u64;
            while current < target {
                key.clear();
                key.push_str(endpoints[i].0);
                key.push('_');
                key.push_str(&n.to_string());
                items.push((xxh64(key.as_bytes(), 0), i as u32));
                n += 1;
                current += 1.0;
            }
        }
        items.sort_by_key(|&(h, _)| h);
        Self {
            hashes: items.iter().map(|&(h, _)| h).collect(),
            owners: items.iter().map(|&(_, o)| o).collect(),
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The first entry at or after `hash`, wrapping around.
    #[inline]
    pub fn find(&self, hash: u64) -> usize {
        let i = self.hashes.partition_point(|&h| h < hash);
        if i == self.hashes.len() { 0 } else { i }
    }

    /// The owner of entry `i` (a position in the endpoint list it was built from).
    #[inline]
    pub fn owner(&self, i: usize) -> usize {
        self.owners[i % self.owners.len()] as usize
    }
}

struct RingHashBalancer {
    subconns: SubConnList,
    config: RingHashConfig,
    ring: Option<Arc<Ring>>,
    /// What the ring was built from: (address, weight) in list order, and sizes.
    ring_of: Vec<(String, u32)>,
    state: ConnectivityState,
    errors: LastErrors,
}

impl RingHashBalancer {
    fn failure_status(&self) -> Status {
        let status = self.errors.status("no backend is reachable");
        Status::new(status.code(), format!("ring_hash: {}", status.message()))
    }

    /// A42's aggregation of the (sticky) states.
    fn aggregate(&self) -> ConnectivityState {
        let (mut ready, mut connecting, mut idle, mut failed) = (0, 0, 0, 0);
        for e in self.subconns.entries() {
            match e.effective {
                ConnectivityState::Ready => ready += 1,
                ConnectivityState::Connecting => connecting += 1,
                ConnectivityState::Idle => idle += 1,
                ConnectivityState::TransientFailure => failed += 1,
                ConnectivityState::Shutdown => {}
            }
        }
        let n = self.subconns.entries().len();
        if ready > 0 {
            ConnectivityState::Ready
        } else if failed > 1 {
            ConnectivityState::TransientFailure
        } else if connecting > 0 || (failed == 1 && n > 1) {
            ConnectivityState::Connecting
        } else if idle > 0 {
            ConnectivityState::Idle
        } else {
            ConnectivityState::TransientFailure
        }
    }

    fn rebuild_ring(&mut self) {
        let of: Vec<(String, u32)> = self
            .subconns
            .entries()
            .iter()
            .map(|e| (e.address.addr().to_owned(), e.address.weight().get()))
            .collect();
        if self.ring.is_some() && of == self.ring_of {
            return;
        }
        self.ring = (!of.is_empty()).then(|| {
            let endpoints: Vec<(&str, u32)> = of.iter().map(|(a, w)| (a.as_str(), *w)).collect();
            Arc::new(Ring::new(
                &endpoints,
                self.config.min_ring_size,
                self.config.max_ring_size,
            ))
        });
        self.ring_of = of;
    }

    fn publish(&mut self, cc: &mut dyn ClientConn) {
        self.state = self.aggregate();
        let entries = self.subconns.entries();
        // Something must be trying: in TRANSIENT_FAILURE or CONNECTING with nothing
        // connecting, connect the first idle backend (in address order).
        if matches!(
            self.state,
            ConnectivityState::TransientFailure | ConnectivityState::Connecting
        ) && !entries
            .iter()
            .any(|e| e.effective == ConnectivityState::Connecting)
            && let Some(first_idle) = entries
                .iter()
                .filter(|e| e.effective == ConnectivityState::Idle)
                .min_by(|a, b| a.address.addr().cmp(b.address.addr()))
        {
            first_idle.subconn.connect();
        }
        let picker: Arc<dyn Picker> = match &self.ring {
            Some(ring) if !entries.is_empty() => Arc::new(RingHashPicker {
                ring: ring.clone(),
                entries: entries
                    .iter()
                    .map(|e| (e.subconn.clone(), e.effective))
                    .collect(),
                any_connecting: entries
                    .iter()
                    .any(|e| e.effective == ConnectivityState::Connecting),
                header: self.config.request_hash_header.clone(),
                failure: self.failure_status(),
            }),
            _ => Arc::new(FailPicker(self.failure_status())),
        };
        cc.update_state(self.state, picker);
    }
}

impl Balancer for RingHashBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(LbConfig::get::<RingHashConfig>)
            .cloned()
            .unwrap_or_default();
        let sizes_changed = config.min_ring_size != self.config.min_ring_size
            || config.max_ring_size != self.config.max_ring_size;
        self.config = config;
        if sizes_changed {
            self.ring = None;
        }
        if state.addresses.is_empty() {
            self.subconns.shutdown_all();
            self.ring = None;
            self.ring_of.clear();
            self.errors.resolver = Some(Arc::new(Error::no_addresses(&state.attributes)));
            self.publish(cc);
            return Err(Error::no_addresses(&state.attributes));
        }
        self.errors.resolver = None;
        // Subconns connect when a pick needs them.
        self.subconns.update(state.addresses, cc)?;
        self.rebuild_ring();
        self.publish(cc);
        Ok(())
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.errors.resolver = Some(error);
        if self.subconns.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.publish(cc);
        }
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        if state.state == ConnectivityState::Shutdown {
            return;
        }
        let Some((_, previous)) = self.subconns.record(subconn, state) else {
            return;
        };
        match state.state {
            ConnectivityState::TransientFailure => {
                cc.resolve_now();
                if let Some(error) = &state.error {
                    self.errors.connection = Some(error.clone());
                }
            }
            // A lost connection: the backend may have moved. It reconnects when a
            // pick lands on it.
            ConnectivityState::Idle if previous == ConnectivityState::Ready => cc.resolve_now(),
            // Backoff over after a failure: try again at once (sticky failure, A62).
            ConnectivityState::Idle if previous == ConnectivityState::TransientFailure => {
                subconn.connect();
            }
            _ => {}
        }
        self.publish(cc);
    }

    fn exit_idle(&mut self, _: &mut dyn ClientConn) {
        // Picks connect what they need.
    }

    fn close(&mut self, _: &mut dyn ClientConn) {
        self.subconns.shutdown_all();
    }
}

/// Picks along the ring.
pub struct RingHashPicker {
    ring: Arc<Ring>,
    /// Each address's subconn and (sticky) state, in list order.
    entries: Box<[(SubConn, ConnectivityState)]>,
    any_connecting: bool,
    header: Option<HeaderName>,
    failure: Status,
}

/// The hash of a request's values of `name`, joined with `,`: `None` without any.
#[inline]
pub fn request_hash(headers: &http::HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    let mut h = Xxh64::new(0);
    h.update(first.as_bytes());
    for v in std::iter::once(second).chain(values) {
        h.update(b",");
        h.update(v.as_bytes());
    }
    Some(h.digest())
}

impl Picker for RingHashPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        // A76: the configured header if any; else the hash the RPC's config
        // selector computed (an xDS route's hash policy, A42); else random.
        let keyed = match (&self.header, info.headers) {
            (Some(name), Some(headers)) => request_hash(headers, name),
            (Some(_), None) => None,
            (None, _) => info.attribute::<RequestHash>().map(|h| h.0),
        };
        let n = self.ring.len();
        let start = self.ring.find(keyed.unwrap_or_else(|| fastrand::u64(..)));
        if keyed.is_some() {
            for k in 0..n {
                let Some((subconn, state)) = self.entries.get(self.ring.owner(start + k)) else {
                    continue;
                };
                match state {
                    ConnectivityState::Ready => return PickResult::Pick(Pick::new(subconn)),
                    ConnectivityState::Idle => {
                        subconn.connect();
                        return PickResult::Queue;
                    }
                    ConnectivityState::Connecting => return PickResult::Queue,
                    ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {}
                }
            }
        } else {
            // A random hash (A76): the first ready backend; connect at most one
            // idle one on the way when none is connecting.
            let mut requested = self.any_connecting;
            for k in 0..n {
                let Some((subconn, state)) = self.entries.get(self.ring.owner(start + k)) else {
                    continue;
                };
                match state {
                    ConnectivityState::Ready => return PickResult::Pick(Pick::new(subconn)),
                    ConnectivityState::Idle if !requested => {
                        requested = true;
                        subconn.connect();
                    }
                    _ => {}
                }
            }
            if requested {
                return PickResult::Queue;
            }
        }
        PickResult::Fail(self.failure.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_follow_grpc_go() {
        // Equal weights: the minimum size, split evenly.
        let r = Ring::new(&[("a", 1), ("b", 1), ("c", 1)], 1024, 4096);
        assert_eq!(r.len(), 1026); // ceil(ceil(1/3 × 1024) / (1/3)) = 342 × 3
        // A light address scales the ring up so it gets whole entries:
        // ceil(1024 / 1001) = 2 entries for it, 2002 in all.
        let r = Ring::new(&[("a", 1), ("b", 1000)], 1024, 4096);
        assert_eq!(r.len(), 2002);
        let owned_by_a = (0..r.len()).filter(|&i| r.owner(i) == 0).count();
        assert_eq!(owned_by_a, 2);
        // ... up to the maximum.
        let r = Ring::new(&[("a", 1), ("b", 10_000)], 1024, 4096);
        assert_eq!(r.len(), 4096);
        let r = Ring::new(&[("a", 3), ("b", 3), ("c", 4)], 10, 10);
        assert_eq!(r.len(), 10);
    }

    #[test]
    fn entries_are_xxhash64_of_address_and_index() {
        let r = Ring::new(&[("10.0.0.1:80", 1)], 4, 4);
        let mut expected: Vec<u64> = (0..4)
            .map(|i| xxh64(format!("10.0.0.1:80_{i}").as_bytes(), 0))
            .collect();
        expected.sort_unstable();
        assert_eq!(&*r.hashes, expected.as_slice());
    }

    #[test]
    fn xxhash64_matches_the_reference() {
        // The reference vectors of xxHash64 (seed 0), which grpc-go's cespare/xxhash
        // produces too.
        assert_eq!(xxh64(b"", 0), 0xef46db3751d8e999);
        assert_eq!(xxh64(b"a", 0), 0xd24ec4f1a98c6e5b);
        assert_eq!(xxh64(b"abc", 0), 0x44bc2cf5ad770999);
    }

    #[test]
    fn find_wraps_around() {
        let r = Ring::new(&[("a", 1), ("b", 1)], 8, 8);
        assert_eq!(r.find(0), 0);
        assert_eq!(r.find(u64::MAX), 0);
        assert_eq!(r.find(r.hashes[3]), 3);
        assert_eq!(r.find(r.hashes[3] + 1), 4);
    }

    #[test]
    fn repeated_header_values_hash_as_joined() {
        let name = HeaderName::from_static("x-key");
        let mut h = http::HeaderMap::new();
        h.append(&name, "a".parse().unwrap());
        h.append(&name, "b".parse().unwrap());
        assert_eq!(request_hash(&h, &name), Some(xxh64(b"a,b", 0)));
        assert_eq!(request_hash(&http::HeaderMap::new(), &name), None);
    }

    #[test]
    fn header_names_follow_a76() {
        assert_eq!(header_name("X-User").unwrap().as_str(), "x-user");
        assert!(header_name("x-data-bin").unwrap_err().contains("binary"));
        assert!(header_name(":authority").is_err());
        assert!(header_name("bad key").is_err());
    }
}
