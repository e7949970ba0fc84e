//! What the registry resolvers (etcd, ZooKeeper) share: a resolver that is a
//! background watch task; the entries it knows, each parsed (and warned about) once
//! per change; publishing coalesced complete states; rate-limited error logs; the
//! registrar's keeper task; and one registry client per process.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverState, SharedError, Target, Weight};
use serde_json::Value;

use crate::{EntryError, Metadata};

/// How long a registry resolver waits, by default, after the first unpublished change
/// before it publishes: changes arriving meanwhile go out in the same
/// [`ResolverState`].
pub(crate) const DEFAULT_UPDATE_DELAY: Duration = Duration::from_millis(5);

/// The longest wait between reconnect attempts, by default (the first wait is the
/// options' `retry_interval`, each further one 1.6 times longer, each jittered).
pub(crate) const DEFAULT_MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Repeated registry errors are logged at most once per this interval (each is still
/// reported to the channel).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A resolver whose work is one background task that watches a registry. The
/// watch keeps the set current, so `resolve_now` has nothing to do; dropping it stops
/// the task.
pub(crate) struct WatchingResolver {
    task: tokio::task::AbortHandle,
}

impl Resolver for WatchingResolver {
    fn resolve_now(&self) {}
}

impl Drop for WatchingResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service name of `target` (its endpoint without slashes), or an error naming
/// the target.
pub(crate) fn service_name(target: &Target) -> Result<&str, BuildError> {
    let service = target.endpoint().trim_matches('/');
    if service.is_empty() {
        return Err(format!("target `{target}`: empty service name").into());
    }
    Ok(service)
}

/// The current tokio runtime, or an error naming the target.
pub(crate) fn runtime(target: &Target) -> Result<tokio::runtime::Handle, BuildError> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| format!("the resolver for `{target}` needs a tokio runtime").into())
}

/// Starts `watch` on `runtime` as the resolver's task.
pub(crate) fn spawn<F>(runtime: &tokio::runtime::Handle, watch: F) -> Box<dyn Resolver>
where
    F: Future<Output = ()> + Send + 'static,
{
    Box::new(WatchingResolver {
        task: runtime.spawn(watch).abort_handle(),
    })
}

/// `address` with registry `metadata` as its [`Metadata`] attribute and, when
/// `metadata.weight` is an integer from 1 to 2^32-1 (or a string holding one, as Go
/// services often write it), its [`Weight`]. An invalid weight is returned as a note:
/// the address keeps the default weight 1.
pub(crate) fn with_metadata(
    mut address: Address,
    metadata: Option<&Value>,
) -> (Address, Option<EntryError>) {
    let Some(metadata) = metadata.filter(|m| !m.is_null()) else {
        return (address, None);
    };
    let mut note = None;
    if let Some(weight) = metadata.get("weight") {
        let parsed = match weight {
            Value::Number(n) => n.as_u64().and_then(|w| u32::try_from(w).ok()),
            Value::String(s) => s.parse::<u32>().ok(),
            _ => None,
        };
        match parsed.and_then(Weight::new) {
            Some(w) => address = address.with_attribute(w),
            None => {
                note = Some(EntryError::BadField {
                    field: "weight",
                    found: weight.to_string(),
                    want: "an integer from 1 to 2^32-1 (or a string holding one); the address weighs 1",
                });
            }
        }
    }
    (address.with_attribute(Metadata(metadata.clone())), note)
}

/// What parsing one entry gave: an address, nothing (an entry that says it is not a
/// target, such as a disabled Curator instance), or why it is malformed; plus a note
/// about a part that was ignored (an invalid weight).
pub(crate) struct Parsed {
    pub(crate) address: Result<Option<Address>, EntryError>,
    pub(crate) note: Option<EntryError>,
}

/// One entry the resolver knows: a fingerprint of what it was made from (to parse and
/// warn once per change) and its address, if it has one.
struct Entry {
    fingerprint: u64,
    address: Option<Address>,
}

fn fingerprint(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// The entries of one service, by key (etcd key, ZooKeeper child name), in key order.
///
/// An entry is parsed, and warned about if malformed, only when its data changes: a
/// re-list or an event that brings the same data again costs a hash and no log line.
pub(crate) struct Entries {
    /// `etcd key` or `ZooKeeper node`: how warnings name an entry's key.
    kind: &'static str,
    map: BTreeMap<String, Entry>,
    dirty: bool,
}

impl Entries {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            map: BTreeMap::new(),
            dirty: false,
        }
    }

    /// Whether the addresses changed since the last [`Entries::take_state`].
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Sets `key` to `data`; `parse` runs only if the data changed.
    pub(crate) fn put(&mut self, key: &str, data: &[u8], parse: impl FnOnce(&[u8]) -> Parsed) {
        let print = fingerprint(data);
        if self.map.get(key).is_some_and(|e| e.fingerprint == print) {
            return;
        }
        let entry = self.parse_entry(key, print, data, parse);
        self.insert(key, entry);
    }

    /// Forgets `key` (deleted from the registry).
    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.dirty |= old.address.is_some();
        }
    }

    /// Keeps `key` out of the set because it cannot be read (`reason`), with a warning
    /// once per distinct reason.
    #[cfg(feature = "zookeeper")]
    pub(crate) fn unreadable(&mut self, key: &str, reason: &str) {
        let print = fingerprint(format!("\0unreadable\0{reason}").as_bytes());
        if self.map.get(key).is_some_and(|e| e.fingerprint == print) {
            return;
        }
        tracing::warn!(kind = self.kind, %key, %reason, "skipping a registry entry that cannot be read");
        self.insert(
            key,
            Entry {
                fingerprint: print,
                address: None,
            },
        );
    }

    /// Replaces every entry with a fresh list, parsing only what changed.
    pub(crate) fn replace(&mut self, listed: Vec<Listed>, parse: impl Fn(&[u8]) -> Parsed) {
        let mut old = std::mem::take(&mut self.map);
        let mut changed = false;
        for item in listed {
            match item {
                Listed::Data(key, data) => {
                    let print = fingerprint(&data);
                    let entry = match old.remove(&key) {
                        Some(e) if e.fingerprint == print => e,
                        previous => {
                            let fresh = self.parse_entry(&key, print, &data, &parse);
                            changed |= previous.map(|p| p.address) != Some(fresh.address.clone());
                            fresh
                        }
                    };
                    self.map.insert(key, entry);
                }
                #[cfg(feature = "zookeeper")]
                Listed::Unreadable(key, reason) => {
                    let print = fingerprint(format!("\0unreadable\0{reason}").as_bytes());
                    let entry = match old.remove(&key) {
                        Some(e) if e.fingerprint == print => e,
                        previous => {
                            tracing::warn!(kind = self.kind, %key, %reason, "skipping a registry entry that cannot be read");
                            changed |= previous.is_some_and(|p| p.address.is_some());
                            Entry {
                                fingerprint: print,
                                address: None,
                            }
                        }
                    };
                    self.map.insert(key, entry);
                }
            }
        }
        changed |= old.values().any(|e| e.address.is_some());
        self.dirty |= changed;
    }

    /// The complete state, and the entries are clean again.
    /// How many entries the registry holds, usable or not.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn take_state(&mut self) -> ResolverState {
        self.dirty = false;
        ResolverState::new(
            self.map
                .values()
                .filter_map(|e| e.address.clone())
                .collect(),
        )
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        let old = self.map.insert(key.to_owned(), entry);
        let new = self.map.get(key).and_then(|e| e.address.as_ref());
        let old = old.and_then(|e| e.address);
        if old.as_ref() != new {
            self.dirty = true;
        }
    }

    fn parse_entry(
        &self,
        key: &str,
        print: u64,
        data: &[u8],
        parse: impl FnOnce(&[u8]) -> Parsed,
    ) -> Entry {
        let parsed = parse(data);
        if let Some(note) = &parsed.note {
            tracing::warn!(kind = self.kind, %key, reason = %note, "ignoring part of a registry entry");
        }
        let address = match parsed.address {
            Ok(address) => {
                if address.is_none() {
                    tracing::debug!(kind = self.kind, %key, "a registry entry that is not a target");
                }
                address
            }
            Err(reason) => {
                // A malformed entry is skipped; it never hides the good ones.
                tracing::warn!(kind = self.kind, %key, %reason, "skipping a malformed registry entry");
                None
            }
        };
        Entry {
            fingerprint: print,
            address,
        }
    }
}

/// One item of a full list.
pub(crate) enum Listed {
    /// A key and its data.
    Data(String, Vec<u8>),
    /// A key whose data could not be read, and why (ZooKeeper reads each node apart).
    #[cfg(feature = "zookeeper")]
    Unreadable(String, String),
}

/// Publishes complete states to the channel, at most one per `delay`: a change after a
/// quiet spell goes out at once; changes arriving within `delay` of the last
/// publication wait until `delay` has passed and go out together.
pub(crate) struct Publisher {
    cc: Arc<dyn ClientConn>,
    delay: Duration,
    due: Option<Instant>,
    last: Option<Instant>,
    published: bool,
    /// An error was reported since the last publication: the channel shows it until
    /// the next state, which must therefore go out once the registry is back even if
    /// nothing changed meanwhile.
    errored: bool,
    /// Published with an empty list.
    note: Option<Note>,
}

impl Publisher {
    pub(crate) fn new(cc: Arc<dyn ClientConn>, delay: Duration) -> Self {
        Self {
            cc,
            delay,
            due: None,
            last: None,
            published: false,
            errored: false,
            note: None,
        }
    }

    /// What an empty list is published with ([`lb_core::ResolutionNote`]), for
    /// the error RPCs then fail with: where the resolver looked (`place`, "under
    /// `greeter/` in etcd at ..."), and whether it found nothing there or only
    /// entries it could not use (`entry` and `entries` name them).
    pub(crate) fn with_note(
        mut self,
        entry: &'static str,
        entries: &'static str,
        place: String,
    ) -> Self {
        self.note = Some(Note {
            entry,
            entries,
            place,
        });
        self
    }

    /// After a full list: publishes at once when anything changed, nothing was ever
    /// published (an empty service is a result too), or an error was reported since
    /// the last publication.
    pub(crate) fn listed(&mut self, entries: &mut Entries) {
        if entries.is_dirty() || !self.published || self.errored {
            self.publish(entries);
        }
    }

    /// The registry answers again without a full list (a watch resumed where it left
    /// off): when an error was reported since the last publication, publishes the set
    /// again, unchanged or not, so that the channel stops showing the error.
    #[cfg(feature = "etcd")]
    pub(crate) fn recovered(&mut self, entries: &mut Entries) {
        if self.errored && self.published {
            self.publish(entries);
        }
    }

    /// After applying events: publishes now, or schedules it for `delay` after the
    /// last publication.
    pub(crate) fn changed(&mut self, entries: &mut Entries) {
        if !entries.is_dirty() || self.due.is_some() {
            return;
        }
        let now = Instant::now();
        match self.last.map(|t| t + self.delay).filter(|next| *next > now) {
            Some(next) => self.due = Some(next),
            None => self.publish(entries),
        }
    }

    /// Resolves when a scheduled publication is due (never when none is).
    pub(crate) async fn due(&self) {
        match self.due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    /// Publishes what is pending.
    pub(crate) fn flush(&mut self, entries: &mut Entries) {
        if entries.is_dirty() {
            self.publish(entries);
        }
        self.due = None;
    }

    fn publish(&mut self, entries: &mut Entries) {
        self.due = None;
        self.last = Some(Instant::now());
        self.published = true;
        self.errored = false;
        let found = entries.len();
        let mut state = entries.take_state();
        if state.addresses.is_empty()
            && let Some(note) = &self.note
        {
            state = state.with_note(note.describe(found));
        }
        self.cc.update_state(state);
    }

    /// Reports `error` to the channel.
    pub(crate) fn report(&mut self, error: SharedError) {
        self.errored = true;
        self.cc.report_error(error);
    }
}

/// Where a resolver looks, for the note of an empty list.
struct Note {
    entry: &'static str,
    entries: &'static str,
    place: String,
}

impl Note {
    /// "no keys under ...", or, when there are entries but none is usable, "2 keys
    /// under ..., none usable (see the resolver's warnings)".
    fn describe(&self, found: usize) -> String {
        let Note {
            entry,
            entries,
            place,
        } = self;
        match found {
            0 => format!("no {entries} {place}"),
            1 => format!("1 {entry} {place}, not usable (see the resolver's warnings)"),
            n => format!("{n} {entries} {place}, none usable (see the resolver's warnings)"),
        }
    }
}

/// Logs repeated errors of one resolver or registrar at most once per interval, with
/// how many were left out.
pub(crate) struct ErrorLog {
    what: String,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
    failing: bool,
}

impl ErrorLog {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            interval: ERROR_LOG_INTERVAL,
            last: None,
            suppressed: 0,
            failing: false,
        }
    }

    /// Logs `error` (a warning) unless one was logged within the interval.
    pub(crate) fn error(&mut self, error: &dyn std::fmt::Display) {
        self.failing = true;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            tracing::debug!(what = %self.what, %error, "registry error (rate-limited)");
            return;
        }
        tracing::warn!(
            what = %self.what,
            %error,
            suppressed = self.suppressed,
            "registry error; retrying"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }

    /// Things work again: the next error is logged at once.
    pub(crate) fn recovered(&mut self) {
        if self.failing {
            tracing::info!(what = %self.what, "registry reachable again");
        }
        self.failing = false;
        self.last = None;
        self.suppressed = 0;
    }
}

/// The background task that keeps a registration alive. [`Keeper::stop`] asks it to
/// deregister and waits; dropping the keeper aborts the task without deregistering,
/// as a dying process would (the registry expires the entry).
pub(crate) struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Spawns `keep(stopped)`; `stopped` resolves when [`Keeper::stop`] is called.
    pub(crate) fn spawn<F>(keep: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            stop: Some(stop),
            task: Some(tokio::spawn(keep(stopped))),
        }
    }

    /// Asks the task to deregister and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Registry connections shared by every resolver of the process (per tokio runtime,
/// as a client's connection lives on the runtime that made it), by connection key.
/// An entry lives while some resolver holds it.
pub(crate) struct SharedClients<T> {
    map: Mutex<HashMap<String, Weak<T>>>,
}

impl<T> SharedClients<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The live entry for `key` on `runtime`, or a new one from `make`.
    pub(crate) fn get(
        &self,
        runtime: &tokio::runtime::Handle,
        key: &str,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let key = format!("{}/{key}", runtime.id());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(make());
        map.insert(key, Arc::downgrade(&fresh));
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_addr(data: &[u8]) -> Parsed {
        let s = String::from_utf8_lossy(data);
        match s.strip_prefix("bad") {
            Some(_) => Parsed {
                address: Err(EntryError::NotAnObject),
                note: None,
            },
            None if s == "off" => Parsed {
                address: Ok(None),
                note: None,
            },
            None => Parsed {
                address: Ok(Some(Address::new(s.into_owned()))),
                note: None,
            },
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<usize>>);

    impl ClientConn for Recorder {
        fn update_state(&self, state: ResolverState) {
            self.0.lock().unwrap().push(state.addresses.len());
        }
        fn report_error(&self, _: SharedError) {}
    }

    /// Records each state's resolution note.
    #[derive(Default)]
    struct Notes(Mutex<Vec<Option<String>>>);

    impl ClientConn for Notes {
        fn update_state(&self, state: ResolverState) {
            let note = state
                .attributes
                .get::<lb_core::ResolutionNote>()
                .map(|n| n.0.clone());
            self.0.lock().unwrap().push(note);
        }
        fn report_error(&self, _: SharedError) {}
    }

    #[test]
    fn an_empty_list_says_whether_nothing_was_there_or_nothing_usable() {
        let cc = Arc::new(Notes::default());
        let mut p = Publisher::new(cc.clone(), Duration::ZERO).with_note(
            "key",
            "keys",
            "under `svc/` in etcd at http://e:2379".to_owned(),
        );
        // Values the resolver cannot read (plain `host:port` where JSON is wanted).
        let mut e = Entries::new("test");
        e.put("a", b"bad", parse_addr);
        e.put("b", b"bad", parse_addr);
        p.listed(&mut e);
        e.put("b", b"h:1", parse_addr);
        p.listed(&mut e);
        let mut empty = Entries::new("test");
        let mut q = Publisher::new(cc.clone(), Duration::ZERO).with_note(
            "key",
            "keys",
            "under `svc/` in etcd at http://e:2379".to_owned(),
        );
        q.listed(&mut empty);
        assert_eq!(
            *cc.0.lock().unwrap(),
            [
                Some(
                    "2 keys under `svc/` in etcd at http://e:2379, none usable (see the \
                     resolver's warnings)"
                        .to_owned()
                ),
                None,
                Some("no keys under `svc/` in etcd at http://e:2379".to_owned()),
            ]
        );
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn after_an_error_the_unchanged_set_goes_out_again_once() {
        let cc = Arc::new(Recorder::default());
        let mut p = Publisher::new(cc.clone(), Duration::from_millis(5));
        let mut e = Entries::new("test");
        e.put("a", b"h:1", parse_addr);
        p.listed(&mut e);
        p.recovered(&mut e);
        p.listed(&mut e);
        assert_eq!(
            *cc.0.lock().unwrap(),
            [1],
            "nothing new, no error: no state"
        );
        p.report(Arc::new(std::io::Error::other("registry down")));
        p.recovered(&mut e);
        assert_eq!(
            *cc.0.lock().unwrap(),
            [1, 1],
            "the set again, to clear the error"
        );
        p.recovered(&mut e);
        p.report(Arc::new(std::io::Error::other("registry down")));
        p.listed(&mut e);
        assert_eq!(
            *cc.0.lock().unwrap(),
            [1, 1, 1],
            "once per error, by a list too"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_after_a_quiet_spell_goes_out_at_once_and_a_burst_at_most_once_per_delay() {
        let cc = Arc::new(Recorder::default());
        let mut p = Publisher::new(cc.clone(), Duration::from_millis(5));
        let mut e = Entries::new("test");
        p.listed(&mut e);
        tokio::time::advance(Duration::from_millis(10)).await;
        e.put("a", b"h:1", parse_addr);
        p.changed(&mut e);
        e.put("b", b"h:2", parse_addr);
        p.changed(&mut e);
        e.put("c", b"h:3", parse_addr);
        p.changed(&mut e);
        assert_eq!(*cc.0.lock().unwrap(), [0, 1], "the first change at once");
        let t = Instant::now();
        p.due().await;
        assert_eq!(t.elapsed(), Duration::from_millis(5));
        p.flush(&mut e);
        assert_eq!(*cc.0.lock().unwrap(), [0, 1, 3], "the rest together");
        tokio::time::advance(Duration::from_millis(10)).await;
        e.remove("a");
        p.changed(&mut e);
        assert_eq!(*cc.0.lock().unwrap(), [0, 1, 3, 2]);

        let mut each = Publisher::new(cc.clone(), Duration::ZERO);
        e.remove("b");
        each.changed(&mut e);
        e.remove("c");
        each.changed(&mut e);
        assert_eq!(*cc.0.lock().unwrap(), [0, 1, 3, 2, 1, 0]);
    }

    #[test]
    fn weights_may_be_integers_or_strings_and_bad_ones_are_notes() {
        let a = |m: Value| with_metadata(Address::new("h:1"), Some(&m));
        assert_eq!(a(json!({"weight": 3})).0.weight().get(), 3);
        assert_eq!(a(json!({"weight": "7"})).0.weight().get(), 7);
        for bad in [
            json!(0),
            json!("x"),
            json!(-1),
            json!(1.5),
            json!("0"),
            json!(5_000_000_000u64),
        ] {
            let (addr, note) = a(json!({ "weight": bad }));
            assert_eq!(addr.weight().get(), 1);
            assert!(
                matches!(
                    note,
                    Some(EntryError::BadField {
                        field: "weight",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(a(json!({"zone": "x"})).1.is_none());
    }

    #[test]
    fn entries_change_only_when_their_addresses_do() {
        let mut e = Entries::new("test");
        e.put("a", b"h:1", parse_addr);
        assert!(e.is_dirty());
        assert_eq!(e.take_state().addresses.len(), 1);
        e.put("a", b"h:1", |_| {
            panic!("unchanged data is not parsed again")
        });
        e.put("bad", b"bad", parse_addr);
        e.put("off", b"off", parse_addr);
        assert!(
            !e.is_dirty(),
            "malformed and disabled entries are not addresses"
        );
        e.remove("bad");
        assert!(!e.is_dirty());
        e.replace(
            vec![
                Listed::Data("a".into(), b"h:1".to_vec()),
                Listed::Unreadable("x".into(), "not authorized".into()),
            ],
            |_| panic!("unchanged data is not parsed again"),
        );
        assert!(!e.is_dirty());
        assert_eq!(e.map.len(), 2);
        e.replace(vec![], parse_addr);
        assert!(e.is_dirty());
        assert!(e.take_state().addresses.is_empty());
    }
}
