//! `grpc-lb resolve TARGET [--watch]`: runs the target's resolver, as a channel
//! would, and prints what it says.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use lb_core::resolver::ClientConn;
use lb_core::{ResolverState, SharedError};
use serde_json::json;
use tokio::sync::mpsc;

use crate::output::{address_json, address_line, now, print_json};
use crate::secure::RegistryArgs;
use crate::{Failure, duration, sleep_for, stop_signal};

/// `resolve`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The target: `etcd://host:port/service`, `zk://host:port/service`,
    /// `dns:///host:port`, `static:///a:1,b:2`...
    target: String,
    /// Keep running and print every change with a timestamp.
    #[arg(long)]
    watch: bool,
    /// Print JSON (one line per update with --watch).
    #[arg(long)]
    json: bool,
    /// How long to wait for the resolver's first answer.
    #[arg(long, value_parser = duration::parse, default_value = "10s")]
    timeout: Duration,
    /// With --watch: stop after this long instead of at Ctrl-C.
    #[arg(long = "for", value_parser = duration::parse)]
    run_for: Option<Duration>,
    #[command(flatten)]
    access: RegistryArgs,
}

enum Event {
    Update(ResolverState),
    Error(String),
}

/// The resolver's `ClientConn`: forwards what it says.
struct Sink(mpsc::UnboundedSender<Event>);

impl ClientConn for Sink {
    fn update_state(&self, state: ResolverState) {
        let _ = self.0.send(Event::Update(state));
    }

    fn report_error(&self, error: SharedError) {
        let _ = self
            .0
            .send(Event::Error(lb_core::error_chain(error.as_ref())));
    }
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, Failure> {
    let registry = args.access.resolvers(&args.target)?;
    let (target, builder) = registry
        .resolve(&args.target)
        .map_err(|e| Failure(format!("bad target `{}`: {e}", args.target)))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let resolver = builder
        .build(&target, Arc::new(Sink(tx)))
        .map_err(|e| Failure(format!("cannot resolve `{}`: {e}", args.target)))?;

    // The first answer: an address set, or the error that ends a one-shot resolve.
    let first = tokio::time::timeout(args.timeout, rx.recv())
        .await
        .map_err(|_| {
            Failure(format!(
                "no answer from the resolver for `{}` within {:?}",
                args.target, args.timeout
            ))
        })?;
    match first {
        // Nothing to dial is a failure of a one-shot resolve, saying where the
        // resolver looked.
        Some(Event::Update(state)) if state.addresses.is_empty() && !args.watch => {
            print_state(&args, &state);
            return Err(Failure(format!(
                "`{}` resolved to no addresses{}",
                args.target,
                note(&state).map(|n| format!(": {n}")).unwrap_or_default()
            )));
        }
        Some(Event::Update(state)) => print_state(&args, &state),
        Some(Event::Error(error)) if !args.watch => {
            return Err(Failure(format!("resolving `{}`: {error}", args.target)));
        }
        Some(Event::Error(error)) => print_error(&args, &error),
        None => {
            return Err(Failure(format!(
                "the resolver for `{}` stopped",
                args.target
            )));
        }
    }
    if !args.watch {
        drop(resolver);
        return Ok(ExitCode::SUCCESS);
    }
    let limit = sleep_for(args.run_for);
    tokio::pin!(limit);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Update(state)) => print_state(&args, &state),
                Some(Event::Error(error)) => print_error(&args, &error),
                None => return Err(Failure(format!("the resolver for `{}` stopped", args.target))),
            },
            () = &mut limit => break,
            () = &mut stop => break,
        }
    }
    drop(resolver);
    Ok(ExitCode::SUCCESS)
}

fn print_state(args: &Args, state: &ResolverState) {
    let xds = is_xds(&args.target).then(crate::xds::resources);
    if args.json {
        let mut value = json!({
            "target": args.target,
            "addresses": state.addresses.iter().map(address_json).collect::<Vec<_>>(),
            "service_config": state.service_config,
        });
        if let Some(xds) = &xds {
            value["xds"] = crate::xds::json(xds);
        }
        if let Some(error) = &state.service_config_error {
            value["service_config_error"] = json!(error.to_string());
        }
        if let Some(note) = note(state) {
            value["note"] = json!(note);
        }
        if args.watch {
            value["time"] = json!(now());
        }
        print_json(&value);
        return;
    }
    let n = state.addresses.len();
    let mut header = format!("{n} address{}", if n == 1 { "" } else { "es" });
    if let Some(note) = note(state).filter(|_| n == 0) {
        header = format!("{header} ({note})");
    }
    if args.watch {
        println!("{}  {header}", now());
    } else {
        println!("{header}");
    }
    for address in &state.addresses {
        println!("  {}", address_line(address));
    }
    if let Some(config) = &state.service_config {
        println!("  service config: {config}");
    }
    if let Some(error) = &state.service_config_error {
        println!("  service config: invalid: {error}");
    }
    if let Some(xds) = &xds {
        println!("xDS resources:");
        for line in crate::xds::lines(xds) {
            println!("  {line}");
        }
    }
}

fn is_xds(target: &str) -> bool {
    target.starts_with("xds:")
}

/// What the resolver said about how it resolved (where it looked).
fn note(state: &ResolverState) -> Option<&str> {
    state
        .attributes
        .get::<lb_core::ResolutionNote>()
        .map(|n| n.0.as_str())
}

fn print_error(args: &Args, error: &str) {
    if args.json {
        print_json(&json!({ "time": now(), "target": args.target, "error": error }));
    } else {
        println!("{}  error: {error}", now());
    }
}
