//! `weighted_round_robin` driven by load reports (gRFC A58) through the harness:
//! per-call and out-of-band reports, blackout, expiry, the error penalty, and the
//! static weights when too few backends report.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::time::Duration;

use lb_core::ConnectivityState::*;
use lb_core::test_util::{Event, Harness};
use lb_core::{
    Address, BalancerBuilder, Code, Error, LoadReport, ReportSource, Status, TimerId, Weight,
};
use lb_policies::weighted_round_robin::{self, WrrConfig};

const A: &str = "10.0.0.1:1";
const B: &str = "10.0.0.2:1";
const C: &str = "10.0.0.3:1";

fn ready(addrs: &[(&str, u32)], config: &str) -> Harness {
    let mut h = Harness::new(weighted_round_robin::builder());
    h.update_with_config(
        addrs
            .iter()
            .map(|(a, w)| Address::new(*a).with_attribute(Weight::new(*w).unwrap()))
            .collect(),
        config,
    )
    .unwrap();
    for (a, _) in addrs {
        h.set_state(a, Connecting);
        h.set_state(a, Ready);
    }
    h
}

fn shares(h: &Harness, n: usize) -> HashMap<String, f64> {
    let mut counts: HashMap<String, f64> = HashMap::new();
    for a in h.pick_addrs(n) {
        *counts.entry(a).or_default() += 1.0 / n as f64;
    }
    counts
}

fn report(qps: f64, utilization: f64) -> LoadReport {
    LoadReport::new()
        .with_rps(qps)
        .with_cpu_utilization(utilization)
}

/// One RPC to each address in turn, each ending with the report `load(addr)`.
fn per_call_reports(h: &Harness, rounds: usize, load: impl Fn(&str) -> LoadReport) {
    let ok = Status::new(Code::Ok, "");
    for _ in 0..rounds {
        let rpc = h.start_rpc();
        let r = load(&rpc.addr);
        rpc.finish(&ok, Duration::from_millis(1), Some(&r));
    }
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() < 0.01
}

const NO_BLACKOUT: &str = r#"{"blackoutPeriod": "0s"}"#;

#[test]
fn per_call_reports_set_the_weights() {
    let mut h = ready(&[(A, 1), (B, 1), (C, 1)], NO_BLACKOUT);
    // Same QPS; A is three times as busy: a third of B's and C's weight.
    per_call_reports(&h, 30, |a| report(100.0, if a == A { 0.9 } else { 0.3 }));
    assert_eq!(h.fire_timers(), 1, "the weight update timer");
    let s = shares(&h, 7000);
    assert!(close(s[A], 1.0 / 7.0), "{s:?}");
    assert!(close(s[B], 3.0 / 7.0), "{s:?}");
    assert!(close(s[C], 3.0 / 7.0), "{s:?}");
}

#[test]
fn application_utilization_wins_over_cpu() {
    let mut h = ready(&[(A, 1), (B, 1)], NO_BLACKOUT);
    per_call_reports(&h, 10, |a| {
        let r = report(100.0, 0.5);
        if a == A {
            r.with_application_utilization(0.25)
        } else {
            r
        }
    });
    h.fire_timers();
    let s = shares(&h, 3000);
    assert!(close(s[A], 2.0 / 3.0), "{s:?}");
}

#[test]
fn errors_weigh_with_the_penalty() {
    let mut h = ready(
        &[(A, 1), (B, 1)],
        r#"{"blackoutPeriod": "0s", "errorUtilizationPenalty": 1.0}"#,
    );
    // A: 100 qps at 0.5 with 50 errors/s: 100 / (0.5 + 0.5) = 100. B: 100 / 0.5 = 200.
    per_call_reports(&h, 10, |a| {
        if a == A {
            report(100.0, 0.5).with_eps(50.0)
        } else {
            report(100.0, 0.5)
        }
    });
    h.fire_timers();
    let s = shares(&h, 3000);
    assert!(close(s[A], 1.0 / 3.0), "{s:?}");
}

#[test]
fn reports_without_utilization_or_qps_are_ignored() {
    let mut h = ready(&[(A, 3), (B, 1)], NO_BLACKOUT);
    per_call_reports(&h, 10, |a| {
        if a == A {
            report(0.0, 0.5)
        } else {
            report(10.0, 0.0)
        }
    });
    h.fire_timers();
    let s = shares(&h, 4000);
    assert!(close(s[A], 0.75), "static weights still apply: {s:?}");
}

#[test]
fn static_weights_apply_until_two_backends_report() {
    let mut h = ready(&[(A, 3), (B, 1), (C, 1)], NO_BLACKOUT);
    per_call_reports(&h, 20, |a| {
        if a == A {
            report(100.0, 0.1)
        } else {
            LoadReport::new()
        }
    });
    h.fire_timers();
    let s = shares(&h, 5000);
    assert!(close(s[A], 0.6), "one report is not enough: {s:?}");
    // Two report; the third gets their mean (A 100/0.1 = 1000, B 100/0.4 = 250).
    per_call_reports(&h, 30, |a| match a {
        A => report(100.0, 0.1),
        B => report(100.0, 0.4),
        _ => LoadReport::new(),
    });
    h.fire_timers();
    let s = shares(&h, 9000);
    // Weights 1000 : 250 : 625.
    assert!(close(s[A], 1000.0 / 1875.0), "{s:?}");
    assert!(close(s[C], 625.0 / 1875.0), "{s:?}");
}

#[test]
fn the_blackout_period_delays_new_weights() {
    let mut h = ready(&[(A, 1), (B, 1)], r#"{"blackoutPeriod": "0.2s"}"#);
    per_call_reports(&h, 10, |a| report(100.0, if a == A { 0.9 } else { 0.1 }));
    h.fire_timers();
    let s = shares(&h, 2000);
    assert!(close(s[A], 0.5), "in the blackout: {s:?}");
    std::thread::sleep(Duration::from_millis(250));
    per_call_reports(&h, 10, |a| report(100.0, if a == A { 0.9 } else { 0.1 }));
    h.fire_timers();
    let s = shares(&h, 2000);
    assert!(close(s[A], 0.1), "after the blackout: {s:?}");
}

#[test]
fn weights_expire_and_the_blackout_starts_over() {
    let config = r#"{"blackoutPeriod": "0.1s", "weightExpirationPeriod": "0.3s"}"#;
    let mut h = ready(&[(A, 1), (B, 1)], config);
    let skewed = |a: &str| report(100.0, if a == A { 0.9 } else { 0.1 });
    per_call_reports(&h, 10, skewed);
    std::thread::sleep(Duration::from_millis(150));
    per_call_reports(&h, 10, skewed);
    h.fire_timers();
    assert!(close(shares(&h, 2000)[A], 0.1));
    // No report for longer than the expiration period: back to static weights.
    std::thread::sleep(Duration::from_millis(350));
    h.fire_timers();
    assert!(close(shares(&h, 2000)[A], 0.5), "expired");
    // Reports again: a new blackout before they count.
    per_call_reports(&h, 10, skewed);
    h.fire_timers();
    assert!(close(shares(&h, 2000)[A], 0.5), "a new blackout");
}

#[test]
fn a_reconnected_backend_starts_its_blackout_over() {
    let config = r#"{"blackoutPeriod": "0.1s"}"#;
    let mut h = ready(&[(A, 1), (B, 1), (C, 1)], config);
    let load = |a: &str| match a {
        A => report(100.0, 0.9),
        B => report(100.0, 0.1),
        _ => report(100.0, 0.2),
    };
    per_call_reports(&h, 30, load);
    std::thread::sleep(Duration::from_millis(150));
    per_call_reports(&h, 30, load);
    h.fire_timers();
    let before = shares(&h, 6000);
    // Weights 111 : 1000 : 500.
    assert!(close(before[A], 111.1 / 1611.1), "{before:?}");
    // A's connection drops and comes back: its reports count again only after a
    // blackout; meanwhile it weighs the mean of B and C (750).
    h.set_state(A, Idle);
    h.set_state(A, Connecting);
    h.set_state(A, Ready);
    per_call_reports(&h, 30, load);
    h.fire_timers();
    let after = shares(&h, 9000);
    assert!(close(after[A], 750.0 / 2250.0), "{after:?}");
}

#[test]
fn out_of_band_reports_replace_per_call_ones() {
    let config =
        r#"{"enableOobLoadReport": true, "oobReportingPeriod": "2s", "blackoutPeriod": "0s"}"#;
    let mut h = ready(&[(A, 1), (B, 1)], config);
    let events = h.take_events();
    for a in [A, B] {
        assert!(
            events.contains(&Event::WatchLoadReports(
                a.into(),
                Some(ReportSource::OutOfBand(Duration::from_secs(2)))
            )),
            "{events:?}"
        );
    }
    // Per-call reports are not read with OOB on.
    per_call_reports(&h, 10, |a| report(100.0, if a == A { 0.9 } else { 0.1 }));
    h.fire_timers();
    assert!(close(shares(&h, 2000)[A], 0.5));
    // Out-of-band ones are.
    assert!(h.report_load(A, &report(100.0, 0.1)));
    assert!(h.report_load(B, &report(100.0, 0.3)));
    h.fire_timers();
    assert!(close(shares(&h, 4000)[A], 0.75));
    // Turning OOB off goes back to per-call reports (and so stops the streams).
    h.update_with_config(
        vec![Address::new(A), Address::new(B)],
        r#"{"blackoutPeriod": "0s"}"#,
    )
    .unwrap();
    h.fire_timers();
    let events = h.take_events();
    assert!(
        events.contains(&Event::WatchLoadReports(
            A.into(),
            Some(ReportSource::PerCall)
        )),
        "{events:?}"
    );
}

#[test]
fn weights_are_recomputed_every_update_period() {
    let mut h = ready(&[(A, 1)], r#"{"weightUpdatePeriod": "0.01s"}"#);
    // Raised to the 100 ms floor, as in grpc-go.
    assert!(h.take_events().contains(&Event::Schedule(
        Duration::from_millis(100),
        TimerId::new(1)
    )));
}

#[test]
fn config_errors_name_the_field() {
    let b = weighted_round_robin::builder();
    let parse = |json: &str| b.parse_config(&serde_json::from_str(json).unwrap());
    for (bad, field) in [
        (
            r#"{"errorUtilizationPenalty": -1}"#,
            "errorUtilizationPenalty",
        ),
        (r#"{"blackoutPeriod": "ten"}"#, "blackoutPeriod"),
        (
            r#"{"weightExpirationPeriod": "0s"}"#,
            "weightExpirationPeriod",
        ),
        (r#"{"enableOobLoadReport": "yes"}"#, "enableOobLoadReport"),
        (
            r#"{"enableOobLoadReport": true, "oobReportingPeriod": "0s"}"#,
            "oobReportingPeriod",
        ),
    ] {
        match parse(bad) {
            Err(Error::LbConfig { path, .. }) => assert_eq!(path, field, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let config = parse("{}").unwrap();
    assert_eq!(config.get::<WrrConfig>(), Some(&WrrConfig::default()));
}

/// gRFC A78's metrics: updates that fall back to static weights, backends whose
/// weight is not usable yet or stale, and each backend's weight.
#[test]
fn a78_metrics_follow_the_weights() {
    use lb_policies::weighted_round_robin::metric_names;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The policy registers its handles when the channel builds it.
    let h = metrics::with_local_recorder(&recorder, || {
        ready(
            &[(A, 1), (B, 1), (C, 1)],
            r#"{"blackoutPeriod": "0s", "weightExpirationPeriod": "60s"}"#,
        )
    });
    let value = |name: &str| -> Vec<DebugValue> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, _, _, _)| k.key().name() == name)
            .map(|(_, _, _, v)| v)
            .collect()
    };
    // No reports yet: every build fell back, and every backend was not yet usable.
    let fallbacks = match value(metric_names::RR_FALLBACK).as_slice() {
        [DebugValue::Counter(n)] => *n,
        other => panic!("{other:?}"),
    };
    assert!(fallbacks >= 1);
    // Only A and B report: C is still not usable, and the update no longer falls
    // back.
    // (C's reports carry no utilization, so they are ignored.)
    per_call_reports(&h, 30, |a| {
        report(
            100.0,
            match a {
                A => 0.5,
                B => 0.25,
                _ => 0.0,
            },
        )
    });
    let _ = value(metric_names::NOT_YET_USABLE); // start the counts over
    let _ = value(metric_names::RR_FALLBACK);
    let mut h = h;
    assert_eq!(h.fire_timers(), 1, "the weight update timer");
    let snapshot = snapshotter.snapshot().into_vec();
    let get = |name: &str| {
        snapshot
            .iter()
            .find(|(k, _, _, _)| k.key().name() == name)
            .map(|(k, _, _, v)| {
                assert!(k.key().labels().any(|l| l.key() == "grpc.target"), "{k:?}");
                v
            })
    };
    assert_eq!(
        get(metric_names::NOT_YET_USABLE),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        get(metric_names::RR_FALLBACK),
        Some(&DebugValue::Counter(0))
    );
    match get(metric_names::WEIGHTS) {
        Some(DebugValue::Histogram(values)) => {
            let mut got: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
            got.sort_by(f64::total_cmp);
            // qps / utilization: 200 for A, 400 for B, 0 for C.
            assert_eq!(got[got.len() - 3..], [0.0, 200.0, 400.0], "{got:?}");
        }
        other => panic!("{other:?}"),
    }
}
