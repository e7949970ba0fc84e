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
