//! The built `grpc-lb` binary against real servers: tonic backends with the health
//! service, a real etcd and a real ZooKeeper.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_resolvers::zookeeper::{ZkOptions, ZkRegistrar};
use lb_testkit::{Backend, EtcdServer, ZooKeeperServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::{BIN, run};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One clear line on stderr, a non-zero exit, and no panic.
fn assert_one_line_error(output: &Output, contains: &str) {
    let err = stderr(output);
    assert!(!output.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("grpc-lb: error: "), "{err}");
    assert!(err.contains(contains), "`{contains}` in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    // Causes are in words, not debug dumps of other crates' errors.
    assert!(
        !err.contains("::") && !err.contains("Os {") && !err.contains("source:"),
        "{err}"
    );
}

/// A long-running subcommand whose stdout is read line by line.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// With these environment variables set.
    fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next JSON line that satisfies `want` (others are skipped), within 20 s.
    async fn next_json(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("output ended before {what}"));
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if want(&value) {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Sends SIGTERM and waits for the exit; returns the rest of stdout.
    async fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap();
        let mut rest = String::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        (status.success(), rest)
    }
}

fn addresses(value: &Value) -> Vec<String> {
    value["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["address"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn resolve_prints_an_etcd_service_with_metadata() {
    let etcd = EtcdServer::start().await.unwrap();
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    };
    let registered = EtcdRegistrar::register(
        options,
        "greeter",
        "127.0.0.1:50051",
        Some(serde_json::json!({"zone": "a"})),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let target = format!("etcd://{}/greeter", etcd.addr());

    let text = run(&["resolve", &target]).await;
    assert!(text.status.success(), "{}", stderr(&text));
    let out = stdout(&text);
    assert!(out.starts_with("1 address\n"), "{out}");
    assert!(out.contains("127.0.0.1:50051"), "{out}");
    assert!(out.contains(r#"metadata {"zone":"a"}"#), "{out}");

    let json = run(&["resolve", &target, "--json"]).await;
    assert!(json.status.success(), "{}", stderr(&json));
    let value: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(addresses(&value), ["127.0.0.1:50051"]);
    assert_eq!(value["addresses"][0]["metadata"]["zone"], "a");
    assert_eq!(value["addresses"][0]["weight"], 1);

    // A service name with a typo: nothing to dial is a failure, saying where the
    // resolver looked.
    let typo = format!("etcd://{}/greetr", etcd.addr());
    let empty = run(&["resolve", &typo]).await;
    assert_one_line_error(&empty, "resolved to no addresses");
    assert!(
        stderr(&empty).contains(&format!(
            "no keys under `greetr/` in etcd at http://{}",
            etcd.addr()
        )),
        "{}",
        stderr(&empty)
    );
    assert!(
        stdout(&empty).starts_with("0 addresses (no keys under"),
        "{}",
        stdout(&empty)
    );
    registered.deregister().await;
}

#[tokio::test]
async fn resolve_watch_prints_each_zookeeper_change() {
    let zk = ZooKeeperServer::start().await.unwrap();
    let target = format!("zk://{}/greeter", zk.connect_string());
    let mut watch = Running::spawn(&["resolve", &target, "--watch", "--json", "--for", "50s"]);
    let options = ZkOptions {
        cluster: zk.connect_string(),
        ..ZkOptions::default()
    };
    let a = ZkRegistrar::register(options.clone(), "greeter", "a", "127.0.0.1", 7001, None)
        .await
        .unwrap();
    let first = watch
        .next_json("a's registration", |v| addresses(v) == ["127.0.0.1:7001"])
        .await;
    assert!(first["time"].as_str().is_some(), "{first}");
    let b = ZkRegistrar::register(options, "greeter", "b", "127.0.0.1", 7002, None)
        .await
        .unwrap();
    watch
        .next_json("b's registration", |v| addresses(v).len() == 2)
        .await;
    a.deregister().await;
    watch
        .next_json("a's removal", |v| addresses(v) == ["127.0.0.1:7002"])
        .await;
    b.deregister().await;
    let (ok, _) = watch.terminate().await;
    assert!(ok, "resolve --watch exits cleanly on SIGTERM");
}

#[tokio::test]
async fn probe_reports_each_backend_and_the_dead_one() {
    let a = Backend::start_with_health("a").await.unwrap();
    let b = Backend::start_with_health("b").await.unwrap();
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let target = format!("static:///{},{},{dead}", a.addr(), b.addr());

    let json = run(&[
        "probe",
        &target,
        "--policy",
        "round_robin",
        "-n",
        "200",
        "-c",
        "4",
        "--json",
    ])
    .await;
    assert!(json.status.success(), "{}", stderr(&json));
    let value: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(value["rpcs"], 200);
    assert_eq!(value["succeeded"], 200);
    assert_eq!(value["policy"], "round_robin");
    let backends = value["backends"].as_array().unwrap();
    let row = |addr: &str| {
        backends
            .iter()
            .find(|r| r["backend"] == addr)
            .unwrap_or_else(|| panic!("{addr} in {value}"))
            .clone()
    };
    let (ra, rb) = (row(&a.addr().to_string()), row(&b.addr().to_string()));
    assert_eq!(
        ra["rpcs"].as_u64().unwrap() + rb["rpcs"].as_u64().unwrap(),
        200
    );
    // Round robin over two backends (the first RPCs may go out while only one is
    // ready).
    let share = ra["rpcs"].as_u64().unwrap();
    assert!((80..=120).contains(&share), "{value}");
    assert!(ra["p99_ms"].as_f64().unwrap() >= ra["p50_ms"].as_f64().unwrap());
    let rd = row(&dead);
    assert_eq!(rd["rpcs"], 0);
    assert!(
        rd["subconn"]["last_error"]
            .as_str()
            .unwrap()
            .contains(&dead),
        "{rd}"
    );
    assert_eq!(
        a.service().hits() + b.service().hits(),
        0,
        "health checks only"
    );

    let text = run(&[
        "probe",
        &target,
        "--duration",
        "300ms",
        "-c",
        "2",
        "--service-config",
        r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#,
    ])
    .await;
    assert!(text.status.success(), "{}", stderr(&text));
    let out = stdout(&text);
    assert!(out.contains("backend"), "{out}");
    assert!(out.contains("p99"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&dead) && l.contains("TRANSIENT_FAILURE")),
        "{out}"
    );
}

#[tokio::test]
async fn probe_counts_not_serving_and_fails_when_nothing_answers() {
    let a = Backend::start_with_health("a").await.unwrap();
    a.set_health("", false).await;
    let out = run(&[
        "probe",
        &format!("static:///{}", a.addr()),
        "-n",
        "5",
        "--json",
    ])
    .await;
    assert_one_line_error(&out, "all 5 RPCs");
    let value: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(value["failed"], 5);
    assert_eq!(value["backends"][0]["not_serving"], 5);

    // A server without the health service answers UNIMPLEMENTED.
    let plain = Backend::start("plain").await.unwrap();
    let out = run(&["probe", &format!("static:///{}", plain.addr()), "-n", "3"]).await;
    assert_one_line_error(&out, "Unimplemented");
}

#[tokio::test]
async fn register_holds_an_etcd_key_until_sigterm() {
    let etcd = EtcdServer::start().await.unwrap();
    let target = format!("etcd://{}/greeter", etcd.addr());
    let mut reg = Running::spawn(&[
        "register",
        &target,
        "127.0.0.1:50051",
        "--ttl",
        "10s",
        "--metadata",
        r#"{"zone":"b"}"#,
        "--json",
    ]);
    let registered = reg
        .next_json("the registration", |v| v["event"] == "registered")
        .await;
    assert_eq!(registered["key"], "greeter/127.0.0.1:50051");
    let got = etcd
        .etcdctl(&["get", "greeter/", "--prefix"])
        .await
        .unwrap();
    assert!(
        got.contains("127.0.0.1:50051") && got.contains("zone"),
        "{got}"
    );
    let (ok, rest) = reg.terminate().await;
    assert!(ok, "exit 0 after SIGTERM");
    assert!(rest.contains("deregistered"), "{rest}");
    let got = etcd
        .etcdctl(&["get", "greeter/", "--prefix"])
        .await
        .unwrap();
    assert!(got.trim().is_empty(), "the key is gone: {got}");
}

#[tokio::test]
async fn register_holds_a_zookeeper_node_until_sigterm() {
    let zk = ZooKeeperServer::start().await.unwrap();
    let target = format!("zk://{}/greeter", zk.connect_string());
    let mut reg = Running::spawn(&[
        "register",
        &target,
        "127.0.0.1:7003",
        "--id",
        "n1",
        "--json",
    ]);
    let registered = reg
        .next_json("the registration", |v| v["event"] == "registered")
        .await;
    assert_eq!(registered["key"], "/services/greeter/n1");
    // Seen by a resolver, as a client would.
    let resolved = run(&["resolve", &target, "--json"]).await;
    let value: Value = serde_json::from_str(stdout(&resolved).trim()).unwrap();
    assert_eq!(addresses(&value), ["127.0.0.1:7003"]);
    let (ok, _) = reg.terminate().await;
    assert!(ok);
    let resolved = run(&["resolve", &target, "--json"]).await;
    let value: Value = serde_json::from_str(stdout(&resolved).trim()).unwrap();
    assert!(addresses(&value).is_empty(), "{value}");
}

#[tokio::test]
async fn watch_shows_subconn_states_and_pickers() {
    let a = Backend::start("a").await.unwrap();
    let dead = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let target = format!("static:///{},{dead}", a.addr());
    let out = run(&[
        "watch",
        &target,
        "--policy",
        "round_robin",
        "--for",
        "1s",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let subconn_state = |addr: &str, state: &str| {
        events.iter().any(|e| {
            e["event"] == "subconn"
                && e["subconn"]["address"] == addr
                && e["subconn"]["state"] == state
        })
    };
    assert!(subconn_state(&a.addr().to_string(), "READY"), "{events:?}");
    assert!(subconn_state(&dead, "TRANSIENT_FAILURE"), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "channel" && e["state"] == "READY"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "resolver"),
        "{events:?}"
    );
}

#[tokio::test]
async fn bad_input_is_one_line_and_a_non_zero_exit() {
    // Registries nobody listens on.
    let unreachable = format!("127.0.0.1:{}", lb_testkit::free_port().unwrap());
    let etcd_down = format!("etcd://{unreachable}/svc");
    let zk_down = format!("zk://{unreachable}/svc");
    let cases: [(&[&str], &str); 21] = [
        (&["resolve", "nope://x/y"], "nope://x/y"),
        (
            &["resolve", "stattic:///127.0.0.1:1"],
            "did you mean `static`?",
        ),
        (&["probe", "http://127.0.0.1:1"], "`dns:///host:port`"),
        (
            &["probe", "static:///127.0.0.1:1", "--policy", "nope"],
            "unknown policy `nope`",
        ),
        (
            &["watch", "static:///127.0.0.1:1", "--policy", "nope"],
            "unknown policy `nope`",
        ),
        (
            &["probe", "static:///127.0.0.1:1", "--service-config", "{"],
            "service config",
        ),
        (
            &["register", "etcd://127.0.0.1:2379/svc", "not-an-address"],
            "`not-an-address` is not host:port",
        ),
        (
            &["register", "dns:///svc", "127.0.0.1:1"],
            "use etcd:// or zk://",
        ),
        (
            &[
                "register",
                "etcd://127.0.0.1:2379/svc",
                "127.0.0.1:1",
                "--metadata",
                "{not json",
            ],
            "--metadata",
        ),
        (&["resolve", &etcd_down, "--timeout", "3s"], &unreachable),
        (
            &["register", &etcd_down, "127.0.0.1:1", "--timeout", "2s"],
            &unreachable,
        ),
        (
            &["register", &zk_down, "127.0.0.1:1", "--timeout", "2s"],
            &unreachable,
        ),
        (&["resolve", &zk_down, "--timeout", "3s"], &unreachable),
        // Registry access flags: refused where they would not be used, checked
        // before anything connects.
        (
            &["resolve", "static:///127.0.0.1:1", "--etcd-user", "a:b"],
            "--etcd-user does not apply to a `static` target",
        ),
        (
            &["probe", "127.0.0.1:1", "--zk-digest", "a:b"],
            "--zk-digest does not apply to a target without a scheme",
        ),
        (
            &["register", &etcd_down, "127.0.0.1:1", "--zk-digest", "a:b"],
            "--zk-digest does not apply",
        ),
        (
            &["register", &etcd_down, "127.0.0.1:1", "--zk-acl", "creator"],
            "--zk-acl does not apply",
        ),
        (
            &["register", &zk_down, "127.0.0.1:1", "--zk-acl", "creator"],
            "give it with --zk-digest",
        ),
        (
            &[
                "resolve",
                &etcd_down,
                "--etcd-cacert",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        // A target without a host uses https://127.0.0.1:2379 with TLS too.
        (
            &[
                "register",
                "etcd:///svc",
                "127.0.0.1:1",
                "--etcd-cacert",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem",
        ),
        (
            &["probe", &etcd_down, "--etcd-user", "app"],
            "GRPC_LB_ETCD_PASSWORD",
        ),
    ];
    for (args, expected) in cases {
        assert_one_line_error(&run(args).await, expected);
    }
}

/// `resolve --watch` prints the registry's error while it is down, does not end,
/// prints the set again once it is back, and the changes made after.
#[tokio::test]
async fn resolve_watch_outlives_an_etcd_restart() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..EtcdOptions::default()
    };
    let registered = EtcdRegistrar::register(
        options,
        "greeter",
        "127.0.0.1:50061",
        None,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let target = format!("etcd://{}/greeter", etcd.addr());
    let mut watch = Running::spawn(&["resolve", &target, "--watch", "--json", "--for", "50s"]);
    watch
        .next_json("the first set", |v| addresses(v) == ["127.0.0.1:50061"])
        .await;
    etcd.kill().await;
    let error = watch
        .next_json("the error while etcd is down", |v| v["error"].is_string())
        .await;
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains(&etcd.addr().to_string()),
        "{error}"
    );
    etcd.restart().await.unwrap();
    // Nothing changed meanwhile, and the set is printed again: the error is over.
    watch
        .next_json("the unchanged set once etcd is back", |v| {
            addresses(v) == ["127.0.0.1:50061"]
        })
        .await;
    let second = EtcdRegistrar::register(
        EtcdOptions {
            endpoints: vec![etcd.endpoint()],
            ..EtcdOptions::default()
        },
        "greeter",
        "127.0.0.1:50062",
        None,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    watch
        .next_json("a registration made after the restart", |v| {
            addresses(v).len() == 2
        })
        .await;
    let (ok, _) = watch.terminate().await;
    assert!(ok);
    second.deregister().await;
    registered.deregister().await;
}

/// `resolve` and `register` reach an etcd that wants mutual TLS and a password, with
/// the password on the command line or in the environment; a wrong one is one line
/// naming the endpoint.
#[tokio::test]
async fn resolve_and_register_reach_an_etcd_with_mutual_tls_and_auth() {
    use lb_testkit::{EtcdSecurity, EtcdUser};
    let etcd = EtcdServer::start_secured(EtcdSecurity {
        tls: true,
        user: Some(EtcdUser::new("app", "app-secret", &["greeter/"])),
    })
    .await
    .unwrap();
    let files = etcd.tls_files().unwrap();
    let (ca, cert, key) = (
        files.ca.to_str().unwrap(),
        files.client_cert.to_str().unwrap(),
        files.client_key.to_str().unwrap(),
    );
    let target = format!("etcd://{}/greeter", etcd.addr());
    let tls = ["--etcd-cacert", ca, "--etcd-cert", cert, "--etcd-key", key];
    let mut register = vec!["register", &target, "127.0.0.1:50071", "--json"];
    register.extend(tls);
    register.extend(["--etcd-user", "app"]);
    let mut reg = Running::spawn_with_env(&register, &[("GRPC_LB_ETCD_PASSWORD", "app-secret")]);
    reg.next_json("the registration", |v| v["event"] == "registered")
        .await;

    let mut resolve = vec!["resolve", &target, "--json"];
    resolve.extend(tls);
    resolve.extend(["--etcd-user", "app:app-secret"]);
    let out = run(&resolve).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(addresses(&value), ["127.0.0.1:50071"]);

    let mut wrong = vec!["resolve", &target, "--timeout", "5s"];
    wrong.extend(tls);
    wrong.extend(["--etcd-user", "app:wrong"]);
    let out = run(&wrong).await;
    assert_one_line_error(&out, &format!("etcd at https://{}", etcd.addr()));
    assert!(
        stderr(&out).contains("refused user `app`"),
        "{}",
        stderr(&out)
    );

    let (ok, rest) = reg.terminate().await;
    assert!(ok && rest.contains("deregistered"), "{rest}");
    let out = run(&resolve).await;
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(addresses(&value).is_empty(), "{value}");
}

/// `register` with a digest identity and creator ACLs: anyone resolves the instance,
/// nobody else may delete it.
#[tokio::test]
async fn register_protects_a_zookeeper_node_with_its_digest() {
    use zookeeper_client as zk;
    let zk = ZooKeeperServer::start().await.unwrap();
    let target = format!("zk://{}/greeter", zk.connect_string());
    let mut reg = Running::spawn_with_env(
        &[
            "register",
            &target,
            "127.0.0.1:50072",
            "--zk-digest",
            "app",
            "--zk-acl",
            "creator-world-read",
            "--json",
        ],
        &[("GRPC_LB_ZK_PASSWORD", "app-secret")],
    );
    let registered = reg
        .next_json("the registration", |v| v["event"] == "registered")
        .await;
    let path = registered["key"].as_str().unwrap().to_owned();

    let out = run(&["resolve", &target, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let value: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(addresses(&value), ["127.0.0.1:50072"]);

    let stranger = zk::Client::connect(&zk.connect_string()).await.unwrap();
    assert_eq!(
        stranger.delete(&path, None).await,
        Err(zk::Error::NoAuth),
        "a client without the digest cannot remove {path}"
    );
    let (ok, rest) = reg.terminate().await;
    assert!(ok && rest.contains("deregistered"), "{rest}");
}
