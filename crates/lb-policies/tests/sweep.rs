//! The service config parser (method configs, retry and hedging policies, and every
//! built-in policy's config) under a property sweep: 100,000 random and mutated
//! configs. None may panic or hang, and every error must say where and what.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use lb_core::test_util::sweep::{Mutator, sweep};
use lb_core::{Error, ServiceConfig};

/// Valid configs that together use every field the parser reads.
const CORPUS: &[&str] = &[
    r#"{"loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": "echo.Echo", "method": "UnaryEcho"}, {"service": "a.B"}],
          "waitForReady": true, "timeout": "1.5s",
          "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 4, "resource_exhausted"]}}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "healthCheckConfig": {"serviceName": "echo.Echo"}}"#,
    r#"{"methodConfig": [{"name": [{}], "timeout": "0.000000001s",
          "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE", "ABORTED"]}}],
        "loadBalancingPolicy": "round_robin"}"#,
    r#"{"loadBalancingConfig": [{"unknown_policy": {}}, {"pick_first": {"shuffleAddressList": true}}]}"#,
    r#"{"loadBalancingConfig": [{"weighted_round_robin": {"enableOobLoadReport": true,
        "oobReportingPeriod": "10s", "blackoutPeriod": "10s", "weightExpirationPeriod": "180s",
        "weightUpdatePeriod": "1s", "errorUtilizationPenalty": 1.0}}]}"#,
    r#"{"loadBalancingConfig": [{"least_request": {"choiceCount": 3}}]}"#,
    r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 2}}]}"#,
    r#"{"loadBalancingConfig": [{"peak_ewma": {"decayTime": "10s", "defaultRtt": "0.03s"}}]}"#,
    r#"{"loadBalancingConfig": [{"ring_hash": {"minRingSize": 1024, "maxRingSize": 4096,
        "requestHashHeader": "x-user-id"}}]}"#,
    r#"{"loadBalancingConfig": [{"outlier_detection": {"interval": "10s", "baseEjectionTime": "30s",
        "maxEjectionTime": "300s", "maxEjectionPercent": 10,
        "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100, "minimumHosts": 5, "requestVolume": 100},
        "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 100, "minimumHosts": 5, "requestVolume": 50},
        "childPolicy": [{"outlier_detection": {"childPolicy": [{"ring_hash": {}}]}}, {"round_robin": {}}]}}]}"#,
    r#"{"methodConfig": [{"name": [{"service": ""}], "waitForReady": false,
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "10s",
          "backoffMultiplier": 1.5, "retryableStatusCodes": [14]}}],
        "loadBalancingConfig": [{"pick_first": {}}]}"#,
    r#"{"loadBalancingConfig": [{"xds_cluster_manager_experimental": {"children": {
        "orders": {"childPolicy": [{"priority_experimental": {
            "children": {"p0": {"config": [{"weighted_target_experimental": {"targets": {
                "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
                "zone-b": {"weight": 1, "childPolicy": [{"least_request": {"choiceCount": 2}}]}}}}]},
                         "p1": {"config": [{"ring_hash": {}}], "ignoreReresolutionRequests": true}},
            "priorities": ["p0", "p1"]}}]},
        "users": {"childPolicy": [{"pick_first": {}}]}}}}]}"#,
    "{}",
];

#[test]
fn the_service_config_parser_survives_100_000_mutated_configs() {
    let registry = lb_policies::registry();
    let mut inputs = Mutator::new(0x5e71ce, CORPUS).with_tokens(&[
        "loadBalancingConfig",
        "methodConfig",
        "retryPolicy",
        "hedgingPolicy",
        "childPolicy",
        "priorities",
        "targets",
        "\"s\"",
    ]);
    let report = sweep(
        "service config",
        100_000,
        // The channel takes a service config as text.
        || inputs.next_text().into_bytes(),
        |bytes| ServiceConfig::parse(&String::from_utf8_lossy(bytes), &registry),
        |_, error| named(error),
    );
    assert!(
        report.accepted > 1_000,
        "the sweep stays near valid configs: {report}"
    );
}

/// Whether `e` says where and what is wrong; its message on success.
fn named(e: &Error) -> Result<(), String> {
    let fine = |parts: &[&str]| {
        if parts.iter().all(|p| !p.trim().is_empty()) {
            Ok(())
        } else {
            Err(format!("an error with an empty part: {e:?}"))
        }
    };
    match e {
        Error::ServiceConfig { path, reason } => fine(&[path, reason]),
        Error::LbConfig {
            policy,
            path,
            reason,
        } => fine(&[policy, path, reason]),
        Error::NoSupportedPolicy { names, registered }
            if !names.is_empty() && !registered.is_empty() =>
        {
            Ok(())
        }
        Error::UnknownPolicy { name, registered } if !registered.is_empty() => fine(&[name]),
        other => Err(format!(
            "an error that does not name what is wrong: {other:?}"
        )),
    }
}
