//! Parsers of what registries, DNS and users hand the resolvers, under property
//! sweeps of 100,000 random and mutated inputs each: target strings (parsed, and
//! resolved by the fixed-list resolvers), etcd `naming/endpoints` values, Curator
//! `ServiceInstance`s, and DNS `grpc_config` TXT records. None may panic or hang,
//! and every error must say what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;

use lb_core::test_util::sweep::{Mutator, sweep};
use lb_core::{Error, ResolverState, SharedError, Target};

const CASES: usize = 100_000;

/// Whether `parts` are all non-empty, for an error's check.
fn non_empty(what: &dyn std::fmt::Debug, parts: &[&str]) -> Result<(), String> {
    if parts.iter().all(|p| !p.trim().is_empty()) {
        Ok(())
    } else {
        Err(format!("an error with an empty part: {what:?}"))
    }
}

struct Discard;

impl lb_core::resolver::ClientConn for Discard {
    fn update_state(&self, _: ResolverState) {}
    fn report_error(&self, _: SharedError) {}
}

const TARGETS: &[&str] = &[
    "static:///10.0.0.1:80,10.0.0.2:80,[::1]:50051",
    "static:///localhost:50051",
    "passthrough:///[2001:db8::1]:443",
    "passthrough:///svc.example.com:8080",
    "unix:///tmp/grpc.sock",
    "unix:relative/path.sock",
    "unix-abstract:grpc-abstract",
    "dns:///greeter.example.com:443",
    "dns://10.0.0.53:53/greeter:50051?x=1",
    "etcd://10.0.0.5:2379,10.0.0.6:2379/service",
    "zk:///services/greeter",
    "greeter.example.com:50051",
    "127.0.0.1:1",
];

#[test]
fn target_strings_survive_100_000_mutations_through_parsing_and_the_fixed_list_resolvers() {
    let registry = lb_resolvers::registry();
    let mut inputs = Mutator::new(0x7a6e7, TARGETS).with_tokens(&[
        "static",
        "passthrough",
        "unix",
        "unix-abstract",
        "dns",
        "[::",
        "]:",
        ",,",
    ]);
    let report = sweep(
        "target",
        CASES,
        || inputs.next_text().into_bytes(),
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let target = Target::parse(&text).map_err(|e| e.to_string())?;
            if target.as_str() != text {
                return Err(format!("parsed {text:?} as {:?}", target.as_str()));
            }
            let (target, builder) = registry.resolve(&text).map_err(|e| e.to_string())?;
            // The resolvers that resolve in `build`, with no network and no runtime.
            if matches!(
                target.scheme(),
                "static" | "passthrough" | "unix" | "unix-abstract"
            ) {
                builder
                    .build(&target, Arc::new(Discard))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        },
        |bytes, message| {
            let text = String::from_utf8_lossy(bytes);
            if message.starts_with("parsed ") {
                return Err(message.clone());
            }
            // Every message names the target it is about (or the piece that is bad).
            non_empty(message, &[message])?;
            if !message.contains(&*text) && !message.contains('`') && !message.contains('"') {
                return Err(format!("the message does not name the input: {message}"));
            }
            Ok(())
        },
    );
    assert!(report.accepted > 1_000, "{report}");
    let _ = Error::NoAddresses { note: None }; // the crate's errors are lb_core's
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_endpoint_values_survive_100_000_mutations() {
    let corpus = [
        r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}"#,
        r#"{"Op":0,"Addr":"[::1]:443","Metadata":{"weight":3,"zone":"a"}}"#,
        r#"{"addr":"svc.example.com:8080","metadata":{"weight":"7"}}"#,
        r#"{"Addr":"10.0.0.2:1","Metadata":{"weight":0}}"#,
    ];
    let mut inputs =
        Mutator::new(0xe7cd, &corpus).with_tokens(&["Op", "Addr", "Metadata", "weight"]);
    let report = sweep(
        "etcd endpoint",
        CASES,
        || inputs.next_input(),
        lb_resolvers::etcd::parse_endpoint,
        |_, e| entry_error_named(e),
    );
    assert!(report.accepted > 1_000, "{report}");
}

/// Whether a registry entry's error says what is wrong.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
fn entry_error_named(e: &lb_resolvers::EntryError) -> Result<(), String> {
    use lb_resolvers::EntryError;
    match e {
        EntryError::NotJson(why) => non_empty(e, &[why]),
        EntryError::NotAnObject => Ok(()),
        EntryError::Missing(field) => non_empty(e, &[field]),
        EntryError::BadField { field, found, want } => non_empty(e, &[field, found, want]),
        EntryError::BadAddress { address, reason } => non_empty(e, &[address, reason]),
        other => Err(format!("an error of an unknown kind: {other:?}")),
    }
}

#[cfg(feature = "zookeeper")]
#[test]
fn curator_service_instances_survive_100_000_mutations() {
    let corpus = [
        r#"{"name":"greeter","id":"a1","address":"10.0.0.1","port":50051,"sslPort":null,
            "payload":{"weight":2},"registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC",
            "uriSpec":null,"enabled":true}"#,
        r#"{"name":"greeter","id":"b2","address":"::1","port":null,"sslPort":443,"payload":null}"#,
        r#"{"address":"svc.example.com","port":8080,"enabled":"false"}"#,
        r#"{"address":"10.0.0.3","port":1,"payload":{"@class":"x.Y","weight":"5"}}"#,
    ];
    let mut inputs = Mutator::new(0x2ccc, &corpus)
        .with_tokens(&["address", "port", "sslPort", "payload", "enabled"]);
    let report = sweep(
        "curator instance",
        CASES,
        || inputs.next_input(),
        lb_resolvers::zookeeper::parse_instance,
        |_, e| entry_error_named(e),
    );
    assert!(report.accepted > 1_000, "{report}");
}

#[cfg(feature = "dns")]
#[test]
fn dns_grpc_config_records_survive_100_000_mutations() {
    use lb_resolvers::dns::{Client, choose_service_config, find_grpc_config};
    let corpus = [
        r#"grpc_config=[{"clientLanguage":["go","RUST"],"percentage":50,"clientHostname":["host-1"],"serviceConfig":{"loadBalancingConfig":[{"round_robin":{}}]}}]"#,
        r#"grpc_config=[{"serviceConfig":{}},{"percentage":0,"serviceConfig":{"methodConfig":[]}}]"#,
        r#"grpc_config=[]"#,
        "v=spf1 include:_spf.example.com -all",
    ];
    let client = Client::new(Some("host-1".into()));
    let mut draws = fastrand::Rng::with_seed(1);
    let mut inputs = Mutator::new(0xd25, &corpus).with_tokens(&[
        "grpc_config=",
        "clientLanguage",
        "percentage",
        "clientHostname",
        "serviceConfig",
    ]);
    let report = sweep(
        "dns grpc_config",
        CASES,
        || inputs.next_input(),
        |bytes| {
            // As DNS hands it over: a record of up to 255-byte strings.
            let strings: Vec<&[u8]> = bytes.chunks(255).collect();
            let Some(value) = find_grpc_config(&[strings]) else {
                return Ok(None);
            };
            choose_service_config(&value, &client, || draws.u32(1..=100))
        },
        |_, e| non_empty(e, &[&e.path, &e.reason]),
    );
    assert!(report.accepted > 1_000, "{report}");
}
