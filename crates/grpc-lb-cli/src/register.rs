//! `grpc-lb register REGISTRY_TARGET ADDR`: registers an address in etcd or
//! ZooKeeper, keeps it registered, and deregisters it on Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use lb_core::Target;
use lb_resolvers::etcd::{EtcdOptions, EtcdRegistrar};
use lb_resolvers::zookeeper::{ZkAcl, ZkOptions, ZkRegistrar};
use serde_json::{Value, json};

use crate::output::{now, print_json};
use crate::secure::RegistryArgs;
use crate::{Failure, duration, sleep_for, stop_signal};

/// `register`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Where to register: `etcd://host:port/service` (or `etcd:///service` for
    /// 127.0.0.1:2379), `zk://host:port/service` (or `zk:///service`).
    registry: String,
    /// The address to register, `host:port`.
    addr: String,
    /// etcd: the lease's time to live. ZooKeeper: the session timeout.
    #[arg(long, value_parser = duration::parse, default_value = "10s")]
    ttl: Duration,
    /// Metadata to register with the address, as JSON (etcd's `Metadata`, Curator's
    /// `payload`).
    #[arg(long)]
    metadata: Option<String>,
    /// ZooKeeper: the instance id (its node's name). Default: the address.
    #[arg(long)]
    id: Option<String>,
    /// ZooKeeper: the parent of the service nodes.
    #[arg(long, default_value = "/services")]
    base_path: String,
    /// How long to wait for the registry.
    #[arg(long, value_parser = duration::parse, default_value = "5s")]
    timeout: Duration,
    /// Deregister after this long instead of waiting for Ctrl-C or SIGTERM.
    #[arg(long = "for", value_parser = duration::parse)]
    run_for: Option<Duration>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    /// ZooKeeper: who may change the nodes this creates: anyone (`open`), or only
    /// sessions with this --zk-digest identity (`creator`), which anyone may still
    /// read with `creator-world-read`.
    #[arg(long, value_enum, default_value_t = Acl::Open)]
    zk_acl: Acl,
    #[command(flatten)]
    access: RegistryArgs,
}

/// `--zk-acl`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Acl {
    /// `world:anyone:cdrwa`, as Curator does by default.
    Open,
    /// `auth::cdrwa`: only the registrar's digest identity.
    Creator,
    /// `auth::cdrwa` and `world:anyone:r`.
    CreatorWorldRead,
}

impl From<Acl> for ZkAcl {
    fn from(acl: Acl) -> Self {
        match acl {
            Acl::Open => ZkAcl::Open,
            Acl::Creator => ZkAcl::CreatorAll { world_read: false },
            Acl::CreatorWorldRead => ZkAcl::CreatorAll { world_read: true },
        }
    }
}

enum Registration {
    Etcd(EtcdRegistrar),
    Zk(ZkRegistrar),
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, Failure> {
    let target = Target::parse(&args.registry)
        .map_err(|e| Failure(format!("bad registry target `{}`: {e}", args.registry)))?;
    let service = target.endpoint().trim_matches('/').to_owned();
    if service.is_empty() {
        return Err(Failure(format!(
            "`{}` names no service (try etcd://127.0.0.1:2379/greeter)",
            args.registry
        )));
    }
    let metadata: Option<Value> = args
        .metadata
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| Failure(format!("--metadata is not valid JSON: {e}")))?;
    let (host, port) = split_host_port(&args.addr)?;
    let where_ = if target.authority().is_empty() {
        None
    } else {
        Some(target.authority().to_owned())
    };
    args.access.check_for(target.scheme())?;
    if args.zk_acl != Acl::Open && target.scheme() == "etcd" {
        return Err(Failure(
            "--zk-acl does not apply to an `etcd` registry".to_owned(),
        ));
    }
    if args.zk_acl != Acl::Open && !args.access.has_zk_digest() {
        return Err(Failure(
            "--zk-acl creator grants the registrar's digest identity: give it with --zk-digest"
                .to_owned(),
        ));
    }
    let registration = match target.scheme() {
        "etcd" => {
            let mut options = EtcdOptions {
                timeout: args.timeout,
                ..EtcdOptions::default()
            };
            // Without a host in the target, etcd's default port on this machine.
            options.endpoints = args
                .access
                .etcd_endpoints(where_.as_deref().unwrap_or("127.0.0.1:2379"));
            let options = args.access.etcd_options(options)?;
            let endpoints = options.endpoints.join(",");
            let registrar =
                EtcdRegistrar::register(options, &service, &args.addr, metadata.clone(), args.ttl)
                    .await
                    .map_err(|e| Failure(format!("registering in etcd at {endpoints}: {e}")))?;
            Registration::Etcd(registrar)
        }
        "zk" | "zookeeper" => {
            let mut options = ZkOptions {
                session_timeout: args.ttl,
                base_path: args.base_path.clone(),
                ..ZkOptions::default()
            };
            if let Some(authority) = &where_ {
                options.cluster = authority.clone();
            }
            let options = args.access.zk_options(options, args.zk_acl.into())?;
            let cluster = options.cluster.clone();
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| args.addr.replace('/', "_"));
            let registered = tokio::time::timeout(
                args.timeout,
                ZkRegistrar::register(options, &service, &id, &host, port, metadata.clone()),
            )
            .await
            .map_err(|_| {
                Failure(format!(
                    "registering in ZooKeeper at {cluster}: no answer within {:?}",
                    args.timeout
                ))
            })?
            .map_err(|e| Failure(format!("registering in ZooKeeper at {cluster}: {e}")))?;
            Registration::Zk(registered)
        }
        other => {
            return Err(Failure(format!(
                "`{}`: cannot register in `{other}` (use etcd:// or zk://)",
                args.registry
            )));
        }
    };
    let key = match &registration {
        Registration::Etcd(r) => r.key().to_owned(),
        Registration::Zk(r) => r.path().to_owned(),
    };
    if args.json {
        print_json(&json!({
            "time": now(), "event": "registered", "registry": args.registry,
            "address": args.addr, "key": key, "metadata": metadata,
        }));
    } else {
        println!(
            "{}  registered {} as `{key}` in {}; Ctrl-C or SIGTERM deregisters it",
            now(),
            args.addr,
            args.registry
        );
    }
    // The same sequence a server runs (`lb_server::Shutdown`), with nothing to
    // drain: deregister on the signal, then exit.
    let shutdown = match registration {
        Registration::Etcd(r) => lb_server::Shutdown::new().deregister(r),
        Registration::Zk(r) => lb_server::Shutdown::new().deregister(r),
    };
    let run_for = args.run_for;
    shutdown
        .propagation_delay(Duration::ZERO)
        .deregister_timeout(args.timeout)
        .on(async move {
            tokio::select! {
                () = stop_signal() => {}
                () = sleep_for(run_for) => {}
            }
        })
        .serve(|drained| async move {
            drained.await;
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .map_err(|e| Failure(e.to_string()))?;
    if args.json {
        print_json(&json!({ "time": now(), "event": "deregistered", "key": key }));
    } else {
        println!("{}  deregistered `{key}`", now());
    }
    Ok(ExitCode::SUCCESS)
}

/// `host:port` (or `[v6]:port`) into its parts.
fn split_host_port(addr: &str) -> Result<(String, u16), Failure> {
    let bad = || Failure(format!("`{addr}` is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}
