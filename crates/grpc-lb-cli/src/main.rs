//! `grpc-lb`: see what a load-balanced gRPC target resolves to, how its backends
//! answer, and keep test registrations alive.
//!
//! ```text
//! grpc-lb resolve etcd://127.0.0.1:2379/greeter            # the address set, once
//! grpc-lb resolve zk://127.0.0.1:2181/greeter --watch      # every change, timestamped
//! grpc-lb probe dns:///greeter.internal:50051 -n 1000 -c 16 --policy least_request
//! grpc-lb register etcd://127.0.0.1:2379/greeter 127.0.0.1:50051 --ttl 10
//! grpc-lb watch static:///127.0.0.1:50051,127.0.0.1:50052
//! grpc-lb channelz 127.0.0.1:50051 --sockets              # any gRPC process's channelz
//! ```
//!
//! Every subcommand takes `--json` (one JSON document, or one JSON line per event
//! for `--watch` and `watch`). Errors are one line on stderr and a non-zero exit.

mod channelz;
mod duration;
mod output;
mod probe;
mod register;
mod resolve;
mod secure;
mod watch;
mod xds;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Client-side load balancing for gRPC, from the command line.
#[derive(Parser, Debug)]
#[command(name = "grpc-lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what a target resolves to: addresses with their weights and
    /// attributes.
    Resolve(resolve::Args),
    /// Send grpc.health.v1.Health/Check through a load-balancing channel and report
    /// RPCs, failures and latency per backend.
    Probe(probe::Args),
    /// Register an address in etcd or ZooKeeper until Ctrl-C or SIGTERM, then
    /// deregister it.
    Register(register::Args),
    /// Show a channel's subconn states and picker changes as they happen.
    Watch(watch::Args),
    /// Print a gRPC process's channels, subchannels, servers and sockets, as its
    /// channelz service (gRFC A14) reports them.
    Channelz(channelz::Args),
}

/// A failure the tool reports as one line.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("grpc-lb: internal error: {info}");
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("grpc-lb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Resolve(args) => resolve::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Register(args) => register::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Channelz(args) => channelz::run(args).await,
        }
    });
    // Registry clients and channels may hold background tasks: do not wait on them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            let line = message.replace('\n', " ");
            eprintln!("grpc-lb: error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM.
pub(crate) use lb_server::stop_signal;

/// How `probe` and `watch` build their channel.
#[derive(clap::Args, Debug)]
pub(crate) struct ChannelArgs {
    /// The target: `etcd://host:port/service`, `zk://host:port/service`,
    /// `dns:///host:port`, `static:///a:1,b:2`...
    target: String,
    /// The load-balancing policy (`round_robin`, `pick_first`, `least_request`,
    /// `peak_ewma`, `weighted_round_robin`, `ring_hash`...).
    #[arg(long, conflicts_with = "service_config")]
    policy: Option<String>,
    /// A service config in gRPC's JSON form (policy, health checking, retries...).
    #[arg(long)]
    service_config: Option<String>,
    #[command(flatten)]
    access: secure::RegistryArgs,
}

impl ChannelArgs {
    /// The channel, or one line saying why not.
    pub(crate) fn build(&self) -> Result<lb_tonic::LbChannel, Failure> {
        let mut builder = lb_tonic::LbChannel::builder(self.target.clone())
            .resolvers(self.access.resolvers(&self.target)?);
        if let Some(policy) = &self.policy {
            if lb_policies::registry().get(policy).is_none() {
                return Err(Failure(format!(
                    "unknown policy `{policy}` (known: {})",
                    probe::known_policies().join(", ")
                )));
            }
            builder = builder.policy(policy);
        }
        if let Some(config) = &self.service_config {
            builder = builder.default_service_config(config.clone());
        }
        builder
            .build()
            .map_err(|e| Failure(format!("`{}`: {e}", self.target)))
    }
}

/// Sleeps for `limit`, or forever without one.
pub(crate) async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
