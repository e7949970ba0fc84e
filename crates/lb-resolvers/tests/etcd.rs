//! The etcd resolver and registrar against a real etcd on 127.0.0.1.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::time::Duration;

use common::{WAIT, Watching, build_error, watching};
use lb_resolvers::Metadata;
use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar, EtcdResolverBuilder};
use lb_testkit::EtcdServer;

fn options(etcd: &EtcdServer) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        retry_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    }
}

fn resolve(etcd: &EtcdServer, service: &str) -> Watching {
    watching(
        &EtcdResolverBuilder::default(),
        &format!("etcd://{}/{service}", etcd.addr()),
    )
}

async fn client(etcd: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap()
}

#[tokio::test]
async fn discovers_additions_and_removals() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("greeter/a", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    let mut w = resolve(&etcd, "greeter");
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    c.put("greeter/b", r#"{"Op":0,"Addr":"10.0.0.2:80"}"#, None)
        .await
        .unwrap();
    // Another service's keys are not ours.
    c.put("greeterx/c", r#"{"Op":0,"Addr":"10.0.0.3:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:80", "10.0.0.2:80"], WAIT).await;
    c.delete("greeter/a", None).await.unwrap();
    w.expect_addrs(&["10.0.0.2:80"], WAIT).await;
}

#[tokio::test]
async fn reads_keys_written_by_etcdctl_in_the_go_format_with_metadata() {
    let etcd = EtcdServer::start().await.unwrap();
    etcd.etcdctl(&[
        "put",
        "billing/10.0.0.7:443",
        r#"{"Op":0,"Addr":"10.0.0.7:443","Metadata":{"weight":4,"zone":"eu"}}"#,
    ])
    .await
    .unwrap();
    let mut w = resolve(&etcd, "billing");
    let state = w.expect_addrs(&["10.0.0.7:443"], WAIT).await;
    let a = &state.addresses[0];
    assert_eq!(a.weight().get(), 4);
    assert_eq!(a.attributes().get::<Metadata>().unwrap().0["zone"], "eu");
}

#[tokio::test]
async fn malformed_entries_are_skipped_and_never_hide_good_ones() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("svc/good", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    c.put("svc/not-json", "hello", None).await.unwrap();
    c.put("svc/no-addr", r#"{"Op":0}"#, None).await.unwrap();
    c.put("svc/bad-addr", r#"{"Op":0,"Addr":"nowhere"}"#, None)
        .await
        .unwrap();
    let mut w = resolve(&etcd, "svc");
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    // A good entry turned bad leaves the set; the others stay.
    c.put("svc/good2", r#"{"Op":0,"Addr":"10.0.0.2:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:80", "10.0.0.2:80"], WAIT).await;
    c.put("svc/good2", "{broken", None).await.unwrap();
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
}

#[tokio::test]
async fn a_registrar_registers_and_deregisters() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let r = EtcdRegistrar::register(
        options(&etcd),
        "echo",
        "127.0.0.1:7001",
        Some(serde_json::json!({"weight": 2})),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.key(), "echo/127.0.0.1:7001");
    let state = w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    assert_eq!(state.addresses[0].weight().get(), 2);
    // What we wrote is what etcd's Go package writes.
    let raw = etcd
        .etcdctl(&["get", "echo/127.0.0.1:7001", "--print-value-only"])
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(raw.trim()).unwrap(),
        serde_json::json!({"Op": 0, "Addr": "127.0.0.1:7001", "Metadata": {"weight": 2}})
    );
    r.deregister().await;
    w.expect_addrs(&[], WAIT).await;
}

#[tokio::test]
async fn a_dead_registrars_key_expires_with_its_lease() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let ttl = Duration::from_secs(3);
    let r = EtcdRegistrar::register(options(&etcd), "echo", "127.0.0.1:7002", None, ttl)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7002"], WAIT).await;
    // Dropped without deregistering: the keep-alives stop, as if the process died.
    drop(r);
    w.expect_addrs(&[], ttl + Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_etcd_restart_keeps_the_set_and_the_registration_comes_back() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let _r = EtcdRegistrar::register(
        options(&etcd),
        "echo",
        "127.0.0.1:7003",
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    w.expect_addrs(&["127.0.0.1:7003"], WAIT).await;

    let errors = w.error_count();
    etcd.kill().await;
    // The resolver reports the outage and keeps its last good set.
    w.expect_error_after(errors).await;
    assert_eq!(w.current(), ["127.0.0.1:7003"]);
    tokio::time::sleep(Duration::from_secs(4)).await; // longer than the lease TTL

    etcd.restart().await.unwrap();
    // The registration is back (re-put under a new lease if the old one expired)...
    tokio::time::timeout(WAIT, async {
        loop {
            let out = etcd
                .etcdctl(&["get", "echo/127.0.0.1:7003", "--print-value-only"])
                .await
                .unwrap();
            if out.contains("127.0.0.1:7003") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the registration did not come back");
    // ...and the resolver follows new changes again.
    let mut c = client(&etcd).await;
    c.put("echo/late", r#"{"Op":0,"Addr":"127.0.0.1:7004"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7003", "127.0.0.1:7004"], WAIT)
        .await;
}

#[tokio::test]
async fn after_an_outage_the_unchanged_set_is_published_again_to_clear_the_error() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("echo/a", r#"{"Op":0,"Addr":"127.0.0.1:7011"}"#, None)
        .await
        .unwrap();
    let mut w = resolve(&etcd, "echo");
    w.expect_addrs(&["127.0.0.1:7011"], WAIT).await;
    let errors = w.error_count();
    etcd.kill().await;
    w.expect_error_after(errors).await;
    let updates = w.update_count();
    etcd.restart().await.unwrap();
    // The watch resumes where it left off and nothing changed, yet the channel hears
    // the set again: without it, the outage's error would stay on the channel until
    // the next registration.
    assert_eq!(w.expect_update_after(updates).await, ["127.0.0.1:7011"]);
}

/// Not a test of its own: the registrar process that
/// `a_sigkilled_registrar_process_leaves_its_key_to_expire` starts (this test binary
/// re-executed). Without `LB_REGISTRAR_CHILD` it returns at once.
#[tokio::test]
async fn registrar_child_process() {
    let Ok(endpoint) = std::env::var("LB_REGISTRAR_CHILD") else {
        return;
    };
    let options = EtcdOptions {
        endpoints: vec![endpoint],
        retry_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    };
    let _r = EtcdRegistrar::register(
        options,
        "echo",
        "127.0.0.1:7010",
        None,
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    println!("registered");
    // Stay registered until killed (bounded, in case the parent is gone).
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_sigkilled_registrar_process_leaves_its_key_to_expire() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "registrar_child_process", "--nocapture"])
        .env("LB_REGISTRAR_CHILD", etcd.endpoint())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    w.expect_addrs(&["127.0.0.1:7010"], WAIT).await;
    child.kill().await.unwrap(); // SIGKILL: no deregistration, keep-alives just stop
    w.expect_addrs(&[], Duration::from_secs(3) + Duration::from_secs(1))
        .await;
}

#[tokio::test]
async fn a_compacted_revision_makes_the_resolver_list_again() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("svc/a", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    // A resolver that waits 2 s before reconnecting.
    let builder = EtcdResolverBuilder::new(EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        retry_interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        ..EtcdOptions::default()
    });
    let mut w = watching(&builder, &format!("etcd://{}/svc", etcd.addr()));
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;

    // While the resolver is away, the set changes and history is compacted, so the
    // revision it would resume from is gone.
    let errors = w.error_count();
    etcd.restart().await.unwrap();
    w.expect_error_after(errors).await;
    let mut c = client(&etcd).await;
    c.delete("svc/a", None).await.unwrap();
    let put = c
        .put("svc/b", r#"{"Op":0,"Addr":"10.0.0.2:80"}"#, None)
        .await
        .unwrap();
    let revision = put.header().unwrap().revision();
    c.compact(revision, None).await.unwrap();
    w.expect_addrs(&["10.0.0.2:80"], WAIT).await;
}

#[tokio::test]
async fn bad_targets_are_errors() {
    let err = build_error(&EtcdResolverBuilder::default(), "etcd:////");
    assert!(err.contains("empty service name"), "{err}");
}

/// The value of instance `i`: a Go-format endpoint at a distinct 10.x.y.z:80 address,
/// padded to about 200 bytes.
fn endpoint(i: usize) -> String {
    format!(
        r#"{{"Op":0,"Addr":"10.{}.{}.{}:80","Metadata":{{"zone":"zone-{:0>120}"}}}}"#,
        i >> 16,
        (i >> 8) & 255,
        i & 255,
        i % 7
    )
}

/// Puts `service/i<i>` for `i` in `range`, 128 puts per transaction, 8 transactions
/// at a time.
async fn put_many(etcd: &EtcdServer, service: &str, range: std::ops::Range<usize>) {
    use etcd_client::{Txn, TxnOp};
    let c = client(etcd).await;
    let mut batches = tokio::task::JoinSet::new();
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("{service}/i{i}"), endpoint(*i), None))
            .collect();
        let mut kv = c.kv_client();
        batches.spawn(async move { kv.txn(Txn::new().and_then(ops)).await.unwrap() });
        if batches.len() >= 8 {
            batches.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = batches.join_next().await {
        done.unwrap();
    }
}

fn fast(etcd_endpoint: String) -> EtcdResolverBuilder {
    EtcdResolverBuilder::new(EtcdOptions {
        endpoints: vec![etcd_endpoint],
        retry_interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    })
    .with_max_retry_interval(Duration::from_millis(400))
}

#[tokio::test]
async fn a_service_of_100000_keys_is_listed_in_pages() {
    let etcd = EtcdServer::start().await.unwrap();
    put_many(&etcd, "big", 0..100_000).await;
    // About 20 MB of values: one reply would be far above gRPC's usual 4 MiB limit.
    let ranges = etcd.grpc_calls("Range").await.unwrap();
    let mut w = resolve(&etcd, "big");
    let state = w.expect_count(100_000).await;
    assert_eq!(state.addresses[0].addr(), "10.0.0.0:80");
    let pages = etcd.grpc_calls("Range").await.unwrap() - ranges;
    assert!(pages >= 100, "{pages} list requests for 100,000 keys");
    // The watch starts from the listed revision: a later change arrives.
    put_many(&etcd, "big", 100_000..100_001).await;
    w.expect_count(100_001).await;
    assert_eq!(w.error_count(), 0);
}

#[tokio::test]
async fn a_compaction_during_a_paged_list_starts_the_list_over() {
    let etcd = EtcdServer::start().await.unwrap();
    put_many(&etcd, "svc", 0..400).await;
    // 40 pages of 10 keys through a link that delays each reply by 20 ms: the list
    // takes close to a second, and the test compacts meanwhile.
    let proxy = lb_testkit::TcpProxy::start(etcd.addr()).await.unwrap();
    proxy.set_response_delay(Duration::from_millis(20));
    let mut w = watching(
        &fast(format!("http://{}", proxy.addr())).with_page_size(10),
        &format!("etcd://{}/svc", proxy.addr()),
    );
    let mut c = client(&etcd).await;
    // Compact until three lists in a row were cut short: the resolver then reports
    // it (and retries after a backoff); each earlier one started over at once.
    tokio::time::timeout(WAIT, async {
        while w.error_count() == 0 {
            let put = c.put("other/tick", "x", None).await.unwrap();
            c.compact(put.header().unwrap().revision(), None)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no list was ever reported as cut short");
    let compacted = etcd
        .grpc_calls_handled("Range", "OutOfRange")
        .await
        .unwrap();
    assert!(
        compacted >= 3,
        "{compacted} list pages hit a compacted revision"
    );
    // The list starts over at a new revision, and the watch follows from there.
    proxy.set_response_delay(Duration::ZERO);
    w.expect_count(400).await;
    c.delete("svc/i0", None).await.unwrap();
    w.expect_count(399).await;
}

#[tokio::test]
async fn a_watch_cut_right_after_its_creation_resumes_from_the_last_applied_event() {
    let etcd = EtcdServer::start().await.unwrap();
    let proxy = lb_testkit::TcpProxy::start(etcd.addr()).await.unwrap();
    let mut c = client(&etcd).await;
    c.put("svc/a", r#"{"Op":0,"Addr":"10.9.9.9:80"}"#, None)
        .await
        .unwrap();
    let mut w = watching(
        &fast(format!("http://{}", proxy.addr())),
        &format!("etcd://{}/svc", proxy.addr()),
    );
    w.expect_addrs(&["10.9.9.9:80"], WAIT).await;

    // The resolver loses etcd while 2,000 instances register.
    let errors = w.error_count();
    proxy.set_blocked(true);
    w.expect_error_after(errors).await;
    put_many(&etcd, "svc", 0..2000).await;
    // When it comes back, its new watch is confirmed (that reply carries etcd's
    // current revision) and the connection drops before the 2,000 events arrive.
    proxy.cut_next_after_first_message();
    proxy.set_blocked(false);
    tokio::time::timeout(WAIT, async {
        while proxy.cuts() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch was never cut");
    // Resuming from the creation reply's revision would skip them for good; the
    // resolver resumes from the last event it applied and gets them all.
    w.expect_count(2001).await;
}

#[tokio::test]
async fn an_etcd_rebuilt_without_its_data_is_listed_again() {
    let mut etcd = EtcdServer::start().await.unwrap();
    put_many(&etcd, "svc", 0..50).await;
    let mut w = watching(
        &fast(etcd.endpoint()),
        &format!("etcd://{}/svc", etcd.addr()),
    );
    w.expect_count(50).await;
    // The same address, an empty store: its revision starts over far below the one
    // the resolver resumes from.
    let errors = w.error_count();
    etcd.restart_wiped().await.unwrap();
    w.expect_error_after(errors).await;
    let mut c = client(&etcd).await;
    c.put("svc/new", r#"{"Op":0,"Addr":"10.1.1.1:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.1.1.1:80"], WAIT).await;
    // And it follows the new store from there.
    c.put("svc/new2", r#"{"Op":0,"Addr":"10.1.1.2:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.1.1.1:80", "10.1.1.2:80"], WAIT).await;
}

#[tokio::test]
async fn a_member_cut_off_from_its_cluster_ends_the_watch() {
    let mut cluster = lb_testkit::EtcdCluster::start(3).await.unwrap();
    let follower = cluster.members[2].endpoint();
    let mut c = client(&cluster.members[0]).await;
    c.put("svc/a", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    let mut w = watching(
        &fast(follower.clone()),
        &format!("etcd://{}/svc", cluster.members[2].addr()),
    );
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    // The other two members die: the third has no leader and can serve nothing
    // current. With require-leader it ends the watch, so the resolver reports it
    // instead of waiting silently on a stale member.
    let errors = w.error_count();
    cluster.members[0].kill().await;
    cluster.members[1].kill().await;
    w.expect_error_after(errors).await;
    assert_eq!(w.current(), ["10.0.0.1:80"], "the last good set stays");
}

#[tokio::test]
async fn a_watch_canceled_for_another_reason_than_compaction_backs_off_and_recovers() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("svc/a", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    let mut w = watching(
        &fast(etcd.endpoint()),
        &format!("etcd://{}/svc", etcd.addr()),
    );
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;

    // Authentication on: the resolver (no credentials) may not watch. After the
    // restart etcd confirms and at once cancels each watch ("permission denied").
    etcd.etcdctl(&["user", "add", "root:pw"]).await.unwrap();
    etcd.etcdctl(&["auth", "enable"]).await.unwrap();
    let errors = w.error_count();
    etcd.restart().await.unwrap();
    w.expect_error_after(errors + 3).await;
    let watches = etcd.grpc_calls("Watch").await.unwrap();
    let lists = etcd.grpc_calls("Range").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watched = etcd.grpc_calls("Watch").await.unwrap() - watches;
    // Backoff from 50 ms up to 400 ms: about 5 to 10 attempts in 2 s (no sleep at
    // all would be thousands). The resume point stays, so no list is needed.
    assert!(watched <= 25, "{watched} watches in 2 s");
    assert_eq!(etcd.grpc_calls("Range").await.unwrap(), lists);
    assert_eq!(w.current(), ["10.0.0.1:80"]);

    etcd.etcdctl(&["--user", "root:pw", "auth", "disable"])
        .await
        .unwrap();
    c.put("svc/b", r#"{"Op":0,"Addr":"10.0.0.2:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:80", "10.0.0.2:80"], WAIT).await;
}

/// The lease the key is under now (0: none, or no key).
async fn lease_of(etcd: &EtcdServer, key: &str) -> i64 {
    let r = client(etcd).await.get(key, None).await.unwrap();
    r.kvs().first().map_or(0, |kv| kv.lease())
}

#[tokio::test]
async fn an_old_process_leaving_does_not_remove_a_new_one_with_the_same_address() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let ttl = Duration::from_secs(10);
    let old = EtcdRegistrar::register(options(&etcd), "echo", "127.0.0.1:7001", None, ttl)
        .await
        .unwrap();
    let old_lease = lease_of(&etcd, "echo/127.0.0.1:7001").await;
    // A new process on the same address takes the key over...
    let new = EtcdRegistrar::register(options(&etcd), "echo", "127.0.0.1:7001", None, ttl)
        .await
        .unwrap();
    let new_lease = lease_of(&etcd, "echo/127.0.0.1:7001").await;
    assert_ne!(old_lease, new_lease);
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    // ...and the old one's deregistration leaves it alone.
    old.deregister().await;
    assert_eq!(lease_of(&etcd, "echo/127.0.0.1:7001").await, new_lease);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.current(), ["127.0.0.1:7001"]);
    new.deregister().await;
    w.expect_addrs(&[], WAIT).await;
}

#[tokio::test]
async fn a_key_deleted_by_someone_else_comes_back_while_the_lease_lives() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = resolve(&etcd, "echo");
    let ttl = Duration::from_secs(10);
    let older = EtcdRegistrar::register(options(&etcd), "echo", "127.0.0.1:7001", None, ttl)
        .await
        .unwrap();
    let lease = lease_of(&etcd, "echo/127.0.0.1:7001").await;
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    // An operator deletes the key: the registrar puts it back under its lease.
    etcd.etcdctl(&["del", "echo/127.0.0.1:7001"]).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while lease_of(&etcd, "echo/127.0.0.1:7001").await != lease {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the key never came back");
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;

    // A newer registration of the same address leaves: the older one, still alive,
    // puts its entry back.
    let newer = EtcdRegistrar::register(options(&etcd), "echo", "127.0.0.1:7001", None, ttl)
        .await
        .unwrap();
    newer.deregister().await;
    tokio::time::timeout(WAIT, async {
        while lease_of(&etcd, "echo/127.0.0.1:7001").await != lease {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the older registration did not come back");
    w.expect_addrs(&["127.0.0.1:7001"], WAIT).await;
    older.deregister().await;
    w.expect_addrs(&[], WAIT).await;
}

#[tokio::test]
async fn a_lease_lost_right_after_each_registration_is_retried_with_backoff() {
    let etcd = EtcdServer::start().await.unwrap();
    // Whoever this is revokes every lease our key is put under, as soon as it is.
    let mut killer = client(&etcd).await;
    let (_w, mut events) = killer
        .watch("echo/127.0.0.1:7001", None)
        .await
        .unwrap()
        .split();
    let mut revoker = killer.clone();
    let killing = tokio::spawn(async move {
        while let Ok(Some(r)) = events.message().await {
            for e in r.events() {
                if let Some(kv) = e.kv().filter(|kv| kv.lease() != 0) {
                    let _ = revoker.lease_revoke(kv.lease()).await;
                }
            }
        }
    });
    let grants = etcd.grpc_calls("LeaseGrant").await.unwrap();
    let r = EtcdRegistrar::register(
        options(&etcd),
        "echo",
        "127.0.0.1:7001",
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let granted = etcd.grpc_calls("LeaseGrant").await.unwrap() - grants;
    // Registering again after 100 ms, then 1.6 times longer each time: about 7 in
    // 2 s. Without a wait it would be hundreds.
    assert!((2..=20).contains(&granted), "{granted} leases in 2 s");
    killing.abort();
    r.deregister().await;
}

#[tokio::test]
async fn reads_lower_case_keys_and_string_weights_as_go_services_write_them() {
    let etcd = EtcdServer::start().await.unwrap();
    etcd.etcdctl(&[
        "put",
        "billing/a",
        r#"{"addr":"10.0.0.8:443","metadata":{"weight":"3"}}"#,
    ])
    .await
    .unwrap();
    let mut w = resolve(&etcd, "billing");
    let state = w.expect_addrs(&["10.0.0.8:443"], WAIT).await;
    assert_eq!(state.addresses[0].weight().get(), 3);
}

#[tokio::test]
async fn a_burst_of_registrations_is_published_in_a_few_complete_states() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut w = watching(
        &fast(etcd.endpoint()).with_update_delay(Duration::from_millis(200)),
        &format!("etcd://{}/svc", etcd.addr()),
    );
    w.expect_addrs(&[], WAIT).await;
    let before = w.update_count();
    // 300 registrations, each its own put (its own revision and watch event).
    let c = client(&etcd).await;
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..300 {
        let mut kv = c.kv_client();
        puts.spawn(async move { kv.put(format!("svc/i{i}"), endpoint(i), None).await });
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap().unwrap();
    }
    w.expect_count(300).await;
    let published = w.update_count() - before;
    assert!(published < 30, "{published} states for 300 changes");
    // Without coalescing, one state per watch response.
    let mut each = watching(
        &fast(etcd.endpoint()).with_update_delay(Duration::ZERO),
        &format!("etcd://{}/svc", etcd.addr()),
    );
    each.expect_count(300).await;
    let before = each.update_count();
    c.kv_client().delete("svc/i0", None).await.unwrap();
    each.expect_count(299).await;
    assert_eq!(each.update_count() - before, 1);
}

#[tokio::test]
async fn resolvers_of_a_process_share_one_connection_that_goes_with_the_last() {
    let etcd = EtcdServer::start().await.unwrap();
    let proxy = lb_testkit::TcpProxy::start(etcd.addr()).await.unwrap();
    let mut c = client(&etcd).await;
    c.put("a/1", r#"{"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    c.put("b/1", r#"{"Addr":"10.0.0.2:80"}"#, None)
        .await
        .unwrap();
    let builder = fast(format!("http://{}", proxy.addr()));
    let mut a = watching(&builder, &format!("etcd://{}/a", proxy.addr()));
    let mut b = watching(&builder, &format!("etcd://{}/b", proxy.addr()));
    let mut a2 = watching(&builder, &format!("etcd://{}/a", proxy.addr()));
    a.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    b.expect_addrs(&["10.0.0.2:80"], WAIT).await;
    a2.expect_addrs(&["10.0.0.1:80"], WAIT).await;
    assert_eq!((proxy.accepted(), proxy.open()), (1, 1));
    // Each follows its own service on it.
    c.put("b/2", r#"{"Addr":"10.0.0.3:80"}"#, None)
        .await
        .unwrap();
    b.expect_addrs(&["10.0.0.2:80", "10.0.0.3:80"], WAIT).await;
    assert_eq!(a.current(), ["10.0.0.1:80"]);
    drop((a, b, a2));
    tokio::time::timeout(WAIT, async {
        while proxy.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection outlived its resolvers");
}

#[tokio::test]
async fn a_resolver_started_while_etcd_is_down_lists_once_it_is_up() {
    let mut etcd = EtcdServer::start().await.unwrap();
    etcd.kill().await;
    let mut w = watching(
        &fast(etcd.endpoint()),
        &format!("etcd://{}/svc", etcd.addr()),
    );
    w.expect_error_after(0).await;
    assert!(
        w.state.borrow().is_none(),
        "nothing published without a list"
    );
    etcd.restart().await.unwrap();
    let mut c = client(&etcd).await;
    c.put("svc/a", r#"{"Addr":"10.0.0.1:80"}"#, None)
        .await
        .unwrap();
    w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
}

#[tokio::test]
async fn registering_fails_when_etcd_cannot_be_reached() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let options = EtcdOptions {
        timeout: Duration::from_millis(500),
        ..options(&etcd)
    };
    etcd.kill().await;
    let err = EtcdRegistrar::register(
        options,
        "echo",
        "127.0.0.1:7001",
        None,
        Duration::from_secs(5),
    )
    .await
    .err()
    .expect("registered without etcd");
    assert!(err.to_string().contains("lease grant"), "{err}");
}

#[tokio::test]
async fn a_watch_catching_up_on_more_than_4_mib_of_events_gets_them_all() {
    use etcd_client::{Txn, TxnOp};
    let etcd = EtcdServer::start().await.unwrap();
    let proxy = lb_testkit::TcpProxy::start(etcd.addr()).await.unwrap();
    let target = format!("etcd://{}/svc", proxy.addr());
    let builder = fast(format!("http://{}", proxy.addr()));
    let mut w = watching(&builder, &target);
    // The same resolver with tonic's default 4 MiB limit on replies.
    let mut small = watching(&builder.clone().with_max_message_size(4 << 20), &target);
    w.expect_addrs(&[], WAIT).await;
    small.expect_addrs(&[], WAIT).await;
    // While both are away, 5,120 instances of 1 KB register (40 transactions of 128):
    // etcd sends them to a catching-up watch in one reply of over 5 MiB.
    let errors = w.error_count();
    proxy.set_blocked(true);
    w.expect_error_after(errors).await;
    let mut c = client(&etcd).await;
    for t in 0..40 {
        let ops: Vec<TxnOp> = (0..128)
            .map(|i| {
                let n = t * 128 + i;
                let value = format!(
                    r#"{{"Addr":"10.0.{}.{}:80","Metadata":{{"pad":"{:0>1000}"}}}}"#,
                    n / 250,
                    n % 250,
                    0
                );
                TxnOp::put(format!("svc/i{n}"), value, None)
            })
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    proxy.set_blocked(false);
    w.expect_count(5120).await;
    // The other cannot take that reply: it fails each time and keeps its last set.
    let failed = small.error_count();
    small.expect_error_after(failed + 2).await;
    assert_eq!(small.current(), Vec::<String>::new());
    let error = small.last_error();
    assert!(error.contains("message length too large"), "{error}");
}

// Secured etcd: client TLS (mutual) and user/password authentication.

mod secured {
    use super::*;
    use lb_resolvers::etcd::{EtcdError, EtcdTls};
    use lb_testkit::{EtcdSecurity, EtcdUser, TestPki};

    /// Every secured test is bounded by this.
    const LIMIT: Duration = Duration::from_secs(60);

    async fn secured(tls: bool, auth: bool) -> EtcdServer {
        EtcdServer::start_secured(EtcdSecurity {
            tls,
            user: auth.then(|| EtcdUser::new("app", "app-secret", &["greeter/"])),
        })
        .await
        .unwrap()
    }

    /// Options that trust the server's CA and present its client certificate.
    fn tls_options(etcd: &EtcdServer) -> EtcdOptions {
        let files = etcd.tls_files().unwrap();
        options(etcd).with_tls(
            EtcdTls::new(&files.ca).with_client_identity(&files.client_cert, &files.client_key),
        )
    }

    fn resolve_with(etcd: &EtcdServer, options: EtcdOptions, service: &str) -> Watching {
        watching(
            &EtcdResolverBuilder::new(options).with_max_retry_interval(Duration::from_millis(500)),
            &format!("etcd://{}/{service}", etcd.addr()),
        )
    }

    async fn register(options: EtcdOptions, addr: &str) -> Result<EtcdRegistrar, EtcdError> {
        EtcdRegistrar::register(options, "greeter", addr, None, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn over_mutual_tls_with_auth_a_registrar_and_a_resolver_work() {
        tokio::time::timeout(LIMIT, async {
            let etcd = secured(true, true).await;
            let options = tls_options(&etcd).with_credentials("app", "app-secret");
            let mut w = resolve_with(&etcd, options.clone(), "greeter");
            w.expect_addrs(&[], WAIT).await;
            let r = register(options, "127.0.0.1:7101").await.unwrap();
            w.expect_addrs(&["127.0.0.1:7101"], WAIT).await;
            // What the registrar wrote is there for etcdctl (root, over TLS) too.
            let raw = etcd
                .etcdctl(&["get", "greeter/127.0.0.1:7101", "--print-value-only"])
                .await
                .unwrap();
            assert!(raw.contains("127.0.0.1:7101"), "{raw}");
            r.deregister().await;
            w.expect_addrs(&[], WAIT).await;
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn with_auth_a_wrong_password_is_an_error_naming_the_endpoint() {
        tokio::time::timeout(LIMIT, async {
            let etcd = secured(false, true).await;
            let wrong = options(&etcd).with_credentials("app", "not-the-password");
            let err = register(wrong.clone(), "127.0.0.1:7102")
                .await
                .err()
                .expect("registered with a wrong password");
            assert!(matches!(err, EtcdError::Auth { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&etcd.endpoint()), "{text}");
            assert!(text.contains("user `app`"), "{text}");
            assert!(text.contains("authentication failed"), "{text}");
            assert!(!text.contains("not-the-password"), "{text}");

            let mut w = resolve_with(&etcd, wrong, "greeter");
            w.expect_error_after(0).await;
            let reported = w.last_error();
            assert!(reported.contains(&etcd.endpoint()), "{reported}");
            assert!(reported.contains("authentication failed"), "{reported}");
            // And it keeps trying.
            w.expect_error_after(1).await;

            // A user may not read keys outside its prefixes: also named.
            let mut other = resolve_with(
                &etcd,
                options(&etcd).with_credentials("app", "app-secret"),
                "billing",
            );
            other.expect_error_after(0).await;
            let reported = other.last_error();
            assert!(reported.contains("permission denied"), "{reported}");
            assert!(reported.contains(&etcd.endpoint()), "{reported}");
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn with_auth_a_resolver_keeps_its_set_while_its_password_fails_and_recovers() {
        tokio::time::timeout(LIMIT, async {
            let mut etcd = secured(false, true).await;
            etcd.etcdctl(&["put", "greeter/a", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#])
                .await
                .unwrap();
            let mut w = resolve_with(
                &etcd,
                options(&etcd).with_credentials("app", "app-secret"),
                "greeter",
            );
            w.expect_addrs(&["10.0.0.1:80"], WAIT).await;
            // The password changes, and a restart drops every connection and token:
            // the resolver must log in again, and cannot.
            etcd.set_password("app", "rotated").await.unwrap();
            let errors = w.error_count();
            etcd.restart().await.unwrap();
            etcd.etcdctl(&["put", "greeter/b", r#"{"Op":0,"Addr":"10.0.0.2:80"}"#])
                .await
                .unwrap();
            tokio::time::timeout(WAIT, async {
                loop {
                    w.expect_error_after(w.error_count()).await;
                    if w.last_error().contains("authentication failed") {
                        break;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no authentication error; last: {}", w.last_error()));
            assert!(w.error_count() > errors);
            assert!(
                w.last_error().contains(&etcd.endpoint()),
                "{}",
                w.last_error()
            );
            // The last good set stays.
            assert_eq!(w.current(), ["10.0.0.1:80"]);
            // Its password back, it lists again and sees what it missed.
            etcd.set_password("app", "app-secret").await.unwrap();
            w.expect_addrs(&["10.0.0.1:80", "10.0.0.2:80"], WAIT).await;
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn with_auth_a_registration_survives_an_etcd_restart_that_forgets_its_token() {
        tokio::time::timeout(LIMIT, async {
            let mut etcd = secured(true, true).await;
            let options = tls_options(&etcd).with_credentials("app", "app-secret");
            let mut w = resolve_with(&etcd, options.clone(), "greeter");
            let ttl = Duration::from_secs(2);
            let _r = EtcdRegistrar::register(options, "greeter", "127.0.0.1:7106", None, ttl)
                .await
                .unwrap();
            w.expect_addrs(&["127.0.0.1:7106"], WAIT).await;
            // etcd keeps tokens in memory: after a restart both the registrar's
            // streams and the resolver's watch must log in again.
            etcd.kill().await;
            tokio::time::sleep(ttl * 2).await;
            etcd.restart().await.unwrap();
            tokio::time::timeout(WAIT, async {
                loop {
                    let out = etcd
                        .etcdctl(&["get", "greeter/127.0.0.1:7106", "--print-value-only"])
                        .await
                        .unwrap();
                    if out.contains("127.0.0.1:7106") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .expect("the registration did not come back");
            etcd.etcdctl(&["put", "greeter/late", r#"{"Op":0,"Addr":"10.0.0.9:80"}"#])
                .await
                .unwrap();
            w.expect_addrs(&["10.0.0.9:80", "127.0.0.1:7106"], WAIT)
                .await;
            // Still held a while later (the lease is kept alive on the new token).
            tokio::time::sleep(ttl * 2).await;
            assert_eq!(w.current(), ["10.0.0.9:80", "127.0.0.1:7106"]);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn with_tls_an_untrusted_server_certificate_is_an_error_naming_the_endpoint() {
        tokio::time::timeout(LIMIT, async {
            let etcd = secured(true, false).await;
            let files = etcd.tls_files().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let other = TestPki::new().unwrap().write_files(dir.path()).unwrap();
            // Our client certificate is fine; the CA we trust did not sign etcd's.
            let untrusted = options(&etcd).with_tls(
                EtcdTls::new(&other.ca).with_client_identity(&files.client_cert, &files.client_key),
            );
            let err = register(untrusted.clone(), "127.0.0.1:7103")
                .await
                .err()
                .expect("registered with an untrusted server");
            assert!(matches!(err, EtcdError::Tls { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&etcd.endpoint()), "{text}");
            assert!(text.contains("certificate"), "{text}");

            let mut w = resolve_with(&etcd, untrusted, "greeter");
            w.expect_error_after(0).await;
            let reported = w.last_error();
            assert!(reported.contains(&etcd.endpoint()), "{reported}");
            assert!(reported.contains("certificate"), "{reported}");
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn with_tls_settings_that_cannot_work_are_rejected_naming_them() {
        tokio::time::timeout(LIMIT, async {
            let etcd = secured(true, false).await;
            let files = etcd.tls_files().unwrap();
            let missing = etcd
                .tls_files()
                .unwrap()
                .client_key
                .with_file_name("absent-key.pem");
            let bad_key = options(&etcd).with_tls(
                EtcdTls::new(&files.ca).with_client_identity(&files.client_cert, &missing),
            );
            let err = register(bad_key.clone(), "127.0.0.1:7104")
                .await
                .err()
                .expect("registered with a missing key file");
            assert!(
                matches!(
                    err,
                    EtcdError::TlsFile {
                        file: "client key",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                err.to_string().contains(&missing.display().to_string()),
                "{err}"
            );
            let build = build_error(
                &EtcdResolverBuilder::new(bad_key),
                &format!("etcd://{}/greeter", etcd.addr()),
            );
            assert!(build.contains(&missing.display().to_string()), "{build}");

            // A CA file that holds no certificate.
            let not_a_ca = options(&etcd).with_tls(EtcdTls::new(&files.client_key));
            let err = not_a_ca.validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    EtcdError::TlsFile {
                        file: "CA certificate",
                        ..
                    }
                ),
                "{err:?}"
            );

            // A certificate without its key.
            let mut half = EtcdTls::new(&files.ca);
            half.client_cert_path = Some(files.client_cert.clone());
            let err = options(&etcd).with_tls(half).validate().unwrap_err();
            assert!(
                matches!(err, EtcdError::InvalidSetting { setting: "tls", .. }),
                "{err:?}"
            );

            // A plaintext endpoint with TLS configured, and the other way round.
            let plain = tls_options(&etcd).with_endpoints([format!("http://{}", etcd.addr())]);
            let err = plain.validate().unwrap_err();
            assert!(
                err.to_string().contains(&format!("http://{}", etcd.addr())),
                "{err}"
            );
            let err = options(&etcd).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    EtcdError::InvalidSetting {
                        setting: "endpoints",
                        ..
                    }
                ),
                "{err:?}"
            );

            // Without a client certificate etcd (`--client-cert-auth`) refuses us.
            let anonymous = options(&etcd).with_tls(EtcdTls::new(&files.ca));
            let err = register(anonymous, "127.0.0.1:7105")
                .await
                .err()
                .expect("registered without a client certificate");
            assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
        })
        .await
        .expect("timed out");
    }
}
