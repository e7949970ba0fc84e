//! `grpc-lb watch TARGET`: builds a channel and prints its subconns' states and its
//! picker changes as they happen (sampled every `--interval`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use lb_tonic::{ChannelSnapshot, SubConnSnapshot};
use serde_json::json;

use crate::output::{now, print_json, subconn_json};
use crate::{Failure, duration, sleep_for, stop_signal};

/// `watch`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    channel: crate::ChannelArgs,
    /// How often to look.
    #[arg(long, value_parser = duration::parse, default_value = "100ms")]
    interval: Duration,
    /// Stop after this long instead of at Ctrl-C.
    #[arg(long = "for", value_parser = duration::parse)]
    run_for: Option<Duration>,
    /// Print one JSON line per change.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, Failure> {
    let channel = args.channel.build()?;
    let limit = sleep_for(args.run_for);
    tokio::pin!(limit);
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(args.interval);
    let mut last: Option<ChannelSnapshot> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut limit => break,
            () = &mut stop => break,
        }
        let snapshot = channel.snapshot();
        changes(&args, last.as_ref(), &snapshot);
        last = Some(snapshot);
    }
    channel.close();
    Ok(ExitCode::SUCCESS)
}

fn by_id(snapshot: &ChannelSnapshot) -> BTreeMap<u64, &SubConnSnapshot> {
    snapshot.subconns.iter().map(|s| (s.id.get(), s)).collect()
}

/// Prints what changed between `before` and `after`.
fn changes(args: &Args, before: Option<&ChannelSnapshot>, after: &ChannelSnapshot) {
    let time = now();
    let emit = |event: serde_json::Value, text: String| {
        if args.json {
            let mut event = event;
            event["time"] = json!(time);
            print_json(&event);
        } else {
            println!("{time}  {text}");
        }
    };
    let channel_changed = before.is_none_or(|b| b.state != after.state || b.policy != after.policy);
    if channel_changed {
        emit(
            json!({"event": "channel", "target": after.target, "policy": after.policy, "state": after.state.as_str()}),
            format!(
                "channel {} ({}) {}",
                after.target, after.policy, after.state
            ),
        );
    }
    if before.is_none_or(|b| b.resolver.updates != after.resolver.updates) {
        let addrs: Vec<&str> = after.resolver.addresses.iter().map(|a| a.addr()).collect();
        emit(
            json!({"event": "resolver", "addresses": addrs}),
            format!("resolver: {} address(es) {}", addrs.len(), addrs.join(", ")),
        );
    }
    if before.is_none_or(|b| b.resolver.errors != after.resolver.errors)
        && let Some(error) = &after.resolver.last_error
    {
        emit(
            json!({"event": "resolver_error", "error": error}),
            format!("resolver error: {error}"),
        );
    }
    let old = before.map(by_id).unwrap_or_default();
    let new = by_id(after);
    for (id, sc) in &new {
        match old.get(id) {
            None => emit(
                json!({"event": "subconn", "change": "added", "subconn": subconn_json(sc)}),
                format!(
                    "subconn {id} {} added: {}{}",
                    sc.address.addr(),
                    sc.state,
                    error_suffix(sc)
                ),
            ),
            Some(prev)
                if prev.state != sc.state || prev.connection_attempts != sc.connection_attempts =>
            {
                emit(
                    json!({"event": "subconn", "change": "state", "from": prev.state.as_str(), "subconn": subconn_json(sc)}),
                    format!(
                        "subconn {id} {}: {} -> {}{}",
                        sc.address.addr(),
                        prev.state,
                        sc.state,
                        error_suffix(sc)
                    ),
                )
            }
            Some(_) => {}
        }
    }
    for (id, sc) in &old {
        if !new.contains_key(id) {
            emit(
                json!({"event": "subconn", "change": "removed", "subconn": subconn_json(sc)}),
                format!("subconn {id} {} removed", sc.address.addr()),
            );
        }
    }
    if let Some(b) = before
        && b.picker_updates != after.picker_updates
    {
        let ready: Vec<&str> = after
            .subconns
            .iter()
            .filter(|s| s.state == lb_core::ConnectivityState::Ready)
            .map(|s| s.address.addr())
            .collect();
        emit(
            json!({"event": "picker", "pickers": after.picker_updates, "state": after.state.as_str(), "ready": ready}),
            format!(
                "picker #{} ({}): ready {}",
                after.picker_updates,
                after.state,
                if ready.is_empty() {
                    "none".to_owned()
                } else {
                    ready.join(", ")
                }
            ),
        );
    }
}

fn error_suffix(sc: &SubConnSnapshot) -> String {
    match (&sc.last_error, sc.state) {
        (
            Some(e),
            lb_core::ConnectivityState::TransientFailure | lb_core::ConnectivityState::Idle,
        ) => {
            format!(" ({e})")
        }
        _ => String::new(),
    }
}
