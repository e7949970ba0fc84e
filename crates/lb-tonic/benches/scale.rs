//! Registries at scale: a client following a service of 10,000 instances in a real
//! etcd and a real ZooKeeper.
//!
//! Run: `cargo xtask bench --bench scale` (needs etcd and ZooKeeper installed;
//! `cargo xtask test` installs them). `GRPC_LB_SCALE_INSTANCES` changes the size
//! (default 10,000). With `GRPC_LB_BENCH_DOC=<path>` the results replace the section
//! between `<!-- scale:start -->` and `<!-- scale:end -->` in that file.
//!
//! Per registry, this process writes the instances straight into the registry (the
//! bulk at dead ports, 127.10.x.y:9, plus three live echo servers) and starts the
//! client as a child process (this binary again), so that its memory and CPU time are
//! its own: an `LbChannel` (round_robin) following the service through the crate's
//! resolver, wrapped to time and count the states it publishes. It measures:
//! * channel build → first complete address set, and the client's resident memory;
//! * registration → first RPC routed to the new server, and deregistration → last RPC
//!   routed there (10 rounds each, the client sending RPCs one after another; the two
//!   processes compare wall-clock times);
//! * registry requests the follower makes per registration (ZooKeeper: the server's
//!   count of reads under the service's namespace; etcd: Range and Watch calls);
//! * client CPU time while 1,000 registrations arrive at once, with the default
//!   coalescing delay (5 ms) and without (a second client), and how many complete
//!   states each published; and the client's CPU over 2 s without changes, for scale.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code: a panic is a failure report

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Resolver, ResolverBuilder, ResolverRegistry, ResolverState, SharedError, Target};
use lb_resolvers::etcd::{EtcdOptions, EtcdResolverBuilder};
use lb_resolvers::zookeeper::{ZkOptions, ZkResolverBuilder};
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_testkit::{Backend, EtcdServer, ZooKeeperServer};
use lb_tonic::{LbChannel, WaitForReady};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zookeeper_client as zk;

const ROUNDS: usize = 10;
const LIVE: usize = 3;
const BURST: usize = 1000;
const SERVICE: &str = "svc";
/// Generous bound on every step; only reached when something is broken.
const STEP: Duration = Duration::from_secs(120);

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The dead address of bulk instance `i`: nothing listens on port 9 of 127/8.
fn dead(i: usize) -> (String, u16) {
    (format!("127.10.{}.{}", i / 250, i % 250 + 1), 9)
}

// ---------------------------------------------------------------------------------
// The registries, as the benchmark writes to them.

enum Registry {
    Etcd(EtcdServer, Box<etcd_client::Client>),
    Zk(ZooKeeperServer, zk::Client),
}

impl Registry {
    async fn etcd() -> Self {
        let server = EtcdServer::start().await.unwrap();
        let client = etcd_client::Client::connect([server.endpoint()], None)
            .await
            .unwrap();
        Registry::Etcd(server, Box::new(client))
    }

    async fn zookeeper() -> Self {
        let server = ZooKeeperServer::start().await.unwrap();
        let client = zk::Client::connect(&server.connect_string()).await.unwrap();
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client
            .mkdir(&format!("/scale/{SERVICE}"), &persistent)
            .await
            .unwrap();
        Registry::Zk(server, client)
    }

    fn label(&self) -> &'static str {
        match self {
            Registry::Etcd(..) => "etcd",
            Registry::Zk(..) => "ZooKeeper",
        }
    }

    fn target(&self) -> String {
        match self {
            Registry::Etcd(s, _) => format!("etcd://{}/{SERVICE}", s.addr()),
            Registry::Zk(s, _) => format!("zk://{}/{SERVICE}", s.connect_string()),
        }
    }

    /// Registers `id` at `host:port` (etcd: Go's format; ZooKeeper: Curator's).
    fn entry(&self, id: &str, host: &str, port: u16) -> (String, String) {
        match self {
            Registry::Etcd(..) => (
                format!("{SERVICE}/{id}"),
                format!(r#"{{"Op":0,"Addr":"{host}:{port}","Metadata":{{"zone":"bench"}}}}"#),
            ),
            Registry::Zk(..) => (
                format!("/scale/{SERVICE}/{id}"),
                format!(
                    r#"{{"name":"{SERVICE}","id":"{id}","address":"{host}","port":{port},"sslPort":null,"payload":{{"zone":"bench"}},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":null}}"#
                ),
            ),
        }
    }

    /// Writes many entries at once: etcd in concurrent single puts (one revision and
    /// one watch event each), ZooKeeper in pipelined creates.
    async fn register_many(&mut self, entries: Vec<(String, String)>) {
        match self {
            Registry::Etcd(_, c) => {
                let mut puts = tokio::task::JoinSet::new();
                for (key, value) in entries {
                    let mut kv = c.kv_client();
                    puts.spawn(async move { kv.put(key, value, None).await.unwrap() });
                    if puts.len() >= 64 {
                        puts.join_next().await.unwrap().unwrap();
                    }
                }
                while let Some(p) = puts.join_next().await {
                    p.unwrap();
                }
            }
            Registry::Zk(_, c) => {
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                for chunk in entries.chunks(1000) {
                    let creates: Vec<_> = chunk
                        .iter()
                        .map(|(path, data)| c.create(path, data.as_bytes(), &persistent))
                        .collect();
                    for create in creates {
                        create.await.unwrap();
                    }
                }
            }
        }
    }

    async fn deregister(&mut self, key: &str) {
        match self {
            Registry::Etcd(_, c) => {
                c.delete(key, None).await.unwrap();
            }
            Registry::Zk(_, c) => c.delete(key, None).await.unwrap(),
        }
    }

    /// Requests a follower makes that this count sees: ZooKeeper's reads under
    /// `/scale`, etcd's Range and Watch calls.
    async fn follower_requests(&self) -> u64 {
        match self {
            Registry::Etcd(s, _) => {
                s.grpc_calls("Range").await.unwrap() + s.grpc_calls("Watch").await.unwrap()
            }
            Registry::Zk(s, _) => s.reads_under("scale").await.unwrap(),
        }
    }
}

// ---------------------------------------------------------------------------------
// The client process.

/// What the client's resolver published.
#[derive(Default)]
struct Published {
    states: AtomicUsize,
    addresses: AtomicUsize,
    /// When the last state was published (Unix time, ns).
    last_ns: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

/// A resolver builder that counts what the real one publishes.
struct Counting {
    inner: Box<dyn ResolverBuilder>,
    published: Arc<Published>,
}

struct CountingConn {
    cc: Arc<dyn ClientConn>,
    published: Arc<Published>,
}

impl ClientConn for CountingConn {
    fn update_state(&self, state: ResolverState) {
        self.published.states.fetch_add(1, Ordering::SeqCst);
        self.published.last_ns.store(
            u64::try_from(unix_ns()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.published
            .addresses
            .store(state.addresses.len(), Ordering::SeqCst);
        self.published.changed.notify_waiters();
        self.cc.update_state(state);
    }

    fn report_error(&self, error: SharedError) {
        self.cc.report_error(error);
    }
}

impl ResolverBuilder for Counting {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        self.inner.build(
            target,
            Arc::new(CountingConn {
                cc,
                published: self.published.clone(),
            }),
        )
    }
}

impl Published {
    async fn wait_for(&self, n: usize) {
        tokio::time::timeout(STEP, async {
            loop {
                let changed = self.changed.notified();
                if self.addresses.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {n} addresses"));
    }
}

/// CPU time (user + system) of this process so far, from /proc (10 ms resolution).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th,
    // stime the 13th (fields 14 and 15 of the whole line); in ticks of 1/100 s.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Resident memory of this process now, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn echo(client: &mut EchoClient<LbChannel>) -> Option<String> {
    let mut req = tonic::Request::new(EchoRequest::default());
    req.extensions_mut().insert(WaitForReady(true));
    req.set_timeout(Duration::from_secs(5));
    client
        .unary_echo(req)
        .await
        .ok()
        .map(|r| r.into_inner().server)
}

async fn client_process(target: String) {
    let expect: usize = std::env::var("LB_SCALE_EXPECT").unwrap().parse().unwrap();
    let delay = Duration::from_millis(std::env::var("LB_SCALE_DELAY_MS").unwrap().parse().unwrap());
    let published = Arc::new(Published::default());
    let inner: Box<dyn ResolverBuilder> = if target.starts_with("etcd:") {
        Box::new(EtcdResolverBuilder::new(EtcdOptions::default()).with_update_delay(delay))
    } else {
        Box::new(
            ZkResolverBuilder::new(ZkOptions {
                base_path: "/scale".to_owned(),
                ..ZkOptions::default()
            })
            .with_update_delay(delay),
        )
    };
    let mut resolvers = ResolverRegistry::new();
    resolvers.register(Counting {
        inner,
        published: published.clone(),
    });
    let start = Instant::now();
    let channel = LbChannel::builder(target)
        .resolvers(resolvers)
        .policy("round_robin")
        .build()
        .unwrap();
    published.wait_for(expect).await;
    let first_complete = start.elapsed();
    let mut client = EchoClient::new(channel);
    while echo(&mut client).await.is_none() {}
    // Settle: the connection attempts to the dead instances have all started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("ready {} {}", first_complete.as_micros(), rss_kib());

    // Commands from the benchmark, one per line (stdin read on a blocking thread).
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["probe", name] => {
                println!("probing");
                while echo(&mut client).await.as_deref() != Some(*name) {}
                println!(
                    "routed {} {}",
                    unix_ns(),
                    published.last_ns.load(Ordering::SeqCst)
                );
            }
            ["gone", name] => {
                println!("watching");
                let mut last = 0;
                let end = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < end {
                    if echo(&mut client).await.as_deref() == Some(*name) {
                        last = unix_ns();
                    }
                }
                println!("last {last}");
            }
            ["idle", ms] => {
                let cpu = cpu_time();
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                println!("idle {}", (cpu_time() - cpu).as_millis());
            }
            ["burst", n] => {
                let n: usize = n.parse().unwrap();
                let (cpu, states, t) = (
                    cpu_time(),
                    published.states.load(Ordering::SeqCst),
                    Instant::now(),
                );
                println!("armed");
                published.wait_for(n).await;
                let wall = t.elapsed();
                println!(
                    "burst {} {} {}",
                    (cpu_time() - cpu).as_millis(),
                    published.states.load(Ordering::SeqCst) - states,
                    wall.as_millis()
                );
            }
            _ => return,
        }
    }
}

/// The client process, as seen from the benchmark.
struct Client {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Client {
    async fn start(target: &str, expect: usize, delay_ms: u64) -> Self {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("LB_SCALE_CLIENT", target)
            .env("LB_SCALE_EXPECT", expect.to_string())
            .env("LB_SCALE_DELAY_MS", delay_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next line's words after `word`.
    async fn expect(&mut self, word: &str) -> Vec<u128> {
        let line = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the client never said {word}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the client ended before saying {word}"));
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(word), "{line}");
        words.map(|w| w.parse().unwrap()).collect()
    }

    async fn quit(mut self) {
        self.send("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------------
// The benchmark.

struct Figures {
    label: &'static str,
    first_complete: Duration,
    rss_mib: f64,
    up: Vec<Duration>,
    published: Vec<Duration>,
    down: Vec<Duration>,
    requests_per_registration: f64,
    idle_cpu_ms: u128,
    burst: [(u128, u128, u128); 2],
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

async fn measure(mut registry: Registry, instances: usize) -> Figures {
    let label = registry.label();
    eprintln!("{label}: registering {instances} instances");
    let bulk: Vec<(String, String)> = (0..instances)
        .map(|i| {
            let (host, port) = dead(i);
            registry.entry(&format!("d{i}"), &host, port)
        })
        .collect();
    registry.register_many(bulk).await;
    let mut live = Vec::new();
    for i in 0..LIVE {
        let backend = Backend::start(&format!("live{i}")).await.unwrap();
        let a = backend.addr();
        let entry = registry.entry(&format!("live{i}"), &a.ip().to_string(), a.port());
        registry.register_many(vec![entry]).await;
        live.push(backend);
    }
    let total = instances + LIVE;

    eprintln!("{label}: starting the client");
    let mut client = Client::start(&registry.target(), total, 5).await;
    let ready = client.expect("ready").await;
    let first_complete = Duration::from_micros(u64::try_from(ready[0]).unwrap());
    let rss_mib = ready[1] as f64 / 1024.0;

    let (mut up, mut published, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let mut requests = 0;
    for round in 0..ROUNDS {
        let name = format!("new{round}");
        let backend = Backend::start(&name).await.unwrap();
        let a = backend.addr();
        let (key, value) = registry.entry(&name, &a.ip().to_string(), a.port());
        client.send(&format!("probe {name}")).await;
        client.expect("probing").await;
        let before = registry.follower_requests().await;
        let t0 = unix_ns();
        registry.register_many(vec![(key.clone(), value)]).await;
        let routed = client.expect("routed").await;
        let since = |t: u128| Duration::from_nanos(u64::try_from(t.saturating_sub(t0)).unwrap());
        up.push(since(routed[0]));
        published.push(since(routed[1]));
        requests += registry.follower_requests().await - before;

        client.send(&format!("gone {name}")).await;
        client.expect("watching").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t1 = unix_ns();
        registry.deregister(&key).await;
        let last = client.expect("last").await[0];
        down.push(Duration::from_nanos(
            u64::try_from(last.saturating_sub(t1)).unwrap(),
        ));
        drop(backend);
    }

    client.send("idle 2000").await;
    let idle_cpu_ms = client.expect("idle").await[0];

    // A burst of registrations, with coalescing (this client, 5 ms)...
    let mut burst = [(0, 0, 0); 2];
    let mut next = instances;
    for (slot, delay_ms) in [5u64, 0].into_iter().enumerate() {
        let expect = total + BURST * (slot + 1);
        if slot == 1 {
            // ...and without, in a fresh client.
            client.quit().await;
            client = Client::start(&registry.target(), total + BURST, delay_ms).await;
            client.expect("ready").await;
        }
        client.send(&format!("burst {expect}")).await;
        client.expect("armed").await;
        let entries: Vec<(String, String)> = (next..next + BURST)
            .map(|i| {
                let (host, port) = dead(i);
                registry.entry(&format!("d{i}"), &host, port)
            })
            .collect();
        next += BURST;
        registry.register_many(entries).await;
        let b = client.expect("burst").await;
        burst[slot] = (b[0], b[1], b[2]);
    }
    client.quit().await;
    drop(live);
    Figures {
        label,
        first_complete,
        rss_mib,
        up,
        published,
        down,
        requests_per_registration: requests as f64 / ROUNDS as f64,
        idle_cpu_ms,
        burst,
    }
}

/// `n` with thousands separators.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(instances: usize, figures: &[Figures]) -> String {
    let mut out = format!(
        "A client following a service of {} instances at dead ports plus {LIVE} live echo servers, round_robin; {ROUNDS} rounds for the latencies.\n\n",
        thousands(instances)
    );
    out.push_str("| registry | first complete set | client RSS | registration → state published (min / median / max) | registration → routed (min / median / max) | deregistration → last routed (min / median / max) | follower requests per registration |\n|---|---:|---:|---|---|---|---:|\n");
    for f in figures {
        let (a, b, c) = median(f.up.clone());
        let (p, q, r) = median(f.published.clone());
        let (d, e, g) = median(f.down.clone());
        let _ = writeln!(
            out,
            "| {} | {:.0} ms | {:.0} MiB | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {:.1} |",
            f.label,
            ms(f.first_complete),
            f.rss_mib,
            ms(p),
            ms(q),
            ms(r),
            ms(a),
            ms(b),
            ms(c),
            ms(d),
            ms(e),
            ms(g),
            f.requests_per_registration
        );
    }
    let _ = write!(
        out,
        "\nClient CPU time while {} registrations arrive at once (all at dead ports), and the complete states its resolver published meanwhile; for scale, the same client's CPU over 2 s with no change.\n\n| registry | coalescing | client CPU | states published | burst wall time | idle CPU per 2 s |\n|---|---|---:|---:|---:|---:|\n",
        thousands(BURST)
    );
    for f in figures {
        for (i, mode) in ["5 ms (default)", "off (0)"].iter().enumerate() {
            let (cpu, states, wall) = f.burst[i];
            let _ = writeln!(
                out,
                "| {} | {mode} | {cpu} ms | {states} | {wall} ms | {} ms |",
                f.label, f.idle_cpu_ms
            );
        }
    }
    out
}

#[tokio::main]
async fn main() {
    if let Ok(target) = std::env::var("LB_SCALE_CLIENT") {
        return client_process(target).await;
    }
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let instances = std::env::var("GRPC_LB_SCALE_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let etcd = measure(Registry::etcd().await, instances).await;
    let zookeeper = measure(Registry::zookeeper().await, instances).await;
    let table = table(instances, &[etcd, zookeeper]);
    print!("{table}");
    if let Ok(path) = std::env::var("GRPC_LB_BENCH_DOC") {
        let doc = std::fs::read_to_string(&path).unwrap();
        if let (Some(a), Some(b)) = (
            doc.find("<!-- scale:start -->"),
            doc.find("<!-- scale:end -->"),
        ) {
            let start = a + "<!-- scale:start -->".len();
            std::fs::write(&path, format!("{}\n{table}{}", &doc[..start], &doc[b..])).unwrap();
            println!("wrote {path}");
        }
    }
}
