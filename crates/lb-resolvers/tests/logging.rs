//! What the registry resolvers log: a malformed entry once per change of that entry
//! (not on every event or re-list), and repeated registry errors rarely, while every
//! error still reaches the channel. Events are captured with a subscriber set for the
//! test's thread (the tests run on a current-thread runtime, so every task logs
//! there).

#![cfg(all(feature = "etcd", feature = "zookeeper"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{WAIT, watching};
use lb_resolvers::etcd::{EtcdOptions, EtcdResolverBuilder};
use lb_resolvers::zookeeper::{ZkOptions, ZkResolverBuilder};
use lb_testkit::{EtcdServer, TcpProxy, ZooKeeperServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use zookeeper_client as zk;

/// Every event at INFO or above, as `level name=value name=value ...`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// Captured lines containing every one of `parts`.
    fn count(&self, parts: &[&str]) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }
}

#[tokio::test]
async fn a_malformed_etcd_entry_is_warned_about_once_per_change() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    c.put("svc/bad", "not json", None).await.unwrap();
    c.put("svc/good", r#"{"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    let proxy = TcpProxy::start(etcd.addr()).await.unwrap();
    let builder = EtcdResolverBuilder::new(EtcdOptions {
        endpoints: vec![format!("http://{}", proxy.addr())],
        retry_interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    })
    .with_max_retry_interval(Duration::from_millis(200));
    let mut w = watching(&builder, &format!("etcd://{}/svc", proxy.addr()));
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    let bad = ["WARN", "malformed", "key=svc/bad"];
    assert_eq!(capture.count(&bad), 1);

    // Many other events, then a full list again (a compaction while the resolver was
    // away): the entry has not changed, so no new warning.
    for i in 0..20 {
        c.put(
            format!("svc/g{i}"),
            format!(r#"{{"Addr":"10.0.1.{i}:80"}}"#),
            None,
        )
        .await
        .unwrap();
    }
    w.expect_count(21).await;
    let errors = w.error_count();
    let lists = etcd.grpc_calls("Range").await.unwrap();
    proxy.set_blocked(true);
    w.expect_error_after(errors).await;
    c.put("other/x", "x", None).await.unwrap();
    let put = c.put("other/x", "y", None).await.unwrap();
    c.compact(put.header().unwrap().revision(), None)
        .await
        .unwrap();
    c.put("svc/after", r#"{"Addr":"10.0.2.1:80"}"#, None)
        .await
        .unwrap();
    proxy.set_blocked(false);
    w.expect_count(22).await;
    assert!(
        etcd.grpc_calls("Range").await.unwrap() > lists,
        "listed again"
    );
    assert_eq!(capture.count(&bad), 1, "re-listed without a change");

    // The entry changes, still malformed: one more warning.
    c.put("svc/bad", "still not json", None).await.unwrap();
    c.put("svc/marker", r#"{"Addr":"10.0.3.1:80"}"#, None)
        .await
        .unwrap();
    w.expect_count(23).await;
    assert_eq!(capture.count(&bad), 2);
}

#[tokio::test]
async fn a_malformed_zookeeper_node_is_warned_about_once_per_change() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let mut server = ZooKeeperServer::start().await.unwrap();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.mkdir("/services/svc", &persistent).await.unwrap();
    let node = |i: u32| format!(r#"{{"address":"10.0.0.{i}","port":80}}"#);
    client
        .create("/services/svc/bad", b"{\"address\":", &persistent)
        .await
        .unwrap();
    client
        .create("/services/svc/good", node(1).as_bytes(), &persistent)
        .await
        .unwrap();
    let builder = ZkResolverBuilder::new(ZkOptions {
        cluster: server.connect_string(),
        session_timeout: Duration::from_secs(20),
        retry_interval: Duration::from_millis(50),
        ..ZkOptions::default()
    });
    let mut w = watching(&builder, "zk:///svc");
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    let bad = ["WARN", "malformed", "key=bad"];
    assert_eq!(capture.count(&bad), 1);

    for i in 2..22 {
        client
            .create(
                &format!("/services/svc/g{i}"),
                node(i).as_bytes(),
                &persistent,
            )
            .await
            .unwrap();
    }
    w.expect_count(21).await;
    // A restart: the resolver lists every child again on reconnecting.
    let errors = w.error_count();
    let reads = server.reads_under("services").await.unwrap();
    server.kill().await;
    w.expect_error_after(errors).await;
    server.restart().await.unwrap();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    client
        .create("/services/svc/after", node(30).as_bytes(), &persistent)
        .await
        .unwrap();
    w.expect_count(22).await;
    // (The restarted server counts from zero: every read since is the new list's.)
    assert!(
        server.reads_under("services").await.unwrap() >= 22,
        "listed again ({reads} before)"
    );
    assert_eq!(capture.count(&bad), 1, "re-listed without a change");

    client
        .set_data("/services/svc/bad", b"[]", None)
        .await
        .unwrap();
    client
        .create("/services/svc/marker", node(31).as_bytes(), &persistent)
        .await
        .unwrap();
    w.expect_count(23).await;
    assert_eq!(capture.count(&bad), 2);
}

#[tokio::test]
async fn repeated_registry_errors_are_logged_rarely_and_each_is_reported() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let mut etcd = EtcdServer::start().await.unwrap();
    let builder = EtcdResolverBuilder::new(EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        retry_interval: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    })
    .with_max_retry_interval(Duration::from_millis(20));
    let mut w = watching(&builder, &format!("etcd://{}/svc", etcd.addr()));
    w.expect_addrs(&[], WAIT).await;
    etcd.kill().await;
    // Retrying every 20 ms or so: many failures, each reported to the channel...
    w.expect_error_after(20).await;
    // ...and logged once (the next log line for this resolver is due in 10 s).
    let logged = capture.count(&["WARN", "registry error", "svc/"]);
    assert_eq!(logged, 1, "{:?}", capture.0.lock().unwrap());
}
