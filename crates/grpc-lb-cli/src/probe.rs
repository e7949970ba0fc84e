//! `grpc-lb probe TARGET`: `grpc.health.v1.Health/Check` through an `LbChannel`,
//! then a table of RPCs, failures and latency per backend with the subconn states.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use lb_tonic::{ChannelSnapshot, LbChannel, ServedBy, SubConnSnapshot};
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::output::{latency, millis, print_json, subconn_json};
use crate::{Failure, duration};

/// `probe`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    channel: crate::ChannelArgs,
    /// How many RPCs to send (default 100, unless --duration is given).
    #[arg(short = 'n', long = "requests", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Send RPCs for this long instead of a number of them.
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,
    /// RPCs in flight at once.
    #[arg(short = 'c', long, default_value_t = 1)]
    concurrency: u32,
    /// The service whose health to ask about (the server as a whole when absent).
    #[arg(long, default_value = "")]
    health: String,
    /// Each RPC's deadline.
    #[arg(long, value_parser = duration::parse, default_value = "5s")]
    timeout: Duration,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// What one backend answered.
#[derive(Default)]
struct Answers {
    latencies: Vec<Duration>,
    /// Answers that were not `SERVING`.
    not_serving: u64,
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    by_backend: HashMap<String, Answers>,
    /// RPCs that failed, by status code, and the last message of each.
    errors: BTreeMap<String, (u64, String)>,
    ok: u64,
    failed: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (backend, answers) in other.by_backend {
            let mine = self.by_backend.entry(backend).or_default();
            mine.latencies.extend(answers.latencies);
            mine.not_serving += answers.not_serving;
        }
        for (code, (n, message)) in other.errors {
            let mine = self.errors.entry(code).or_default();
            mine.0 += n;
            mine.1 = message;
        }
        self.ok += other.ok;
        self.failed += other.failed;
    }
}

/// When the probe stops.
enum Budget {
    Requests(u64),
    Until(Instant),
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, Failure> {
    if args.concurrency == 0 {
        return Err(Failure("--concurrency must be at least 1".into()));
    }
    let channel = args.channel.build()?;

    let started = Instant::now();
    let (budget, bar) = match (args.requests, args.duration) {
        (_, Some(d)) => (
            Budget::Until(started + d),
            progress(millis(d), "ms", args.json),
        ),
        (n, None) => {
            let n = n.unwrap_or(100);
            (Budget::Requests(n), progress(n, "RPCs", args.json))
        }
    };
    let budget = Arc::new(budget);
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let client = HealthClient::new(channel.clone());
        let service = args.health.clone();
        let (budget, issued, bar) = (budget.clone(), issued.clone(), bar.clone());
        let timeout = args.timeout;
        workers.push(tokio::spawn(async move {
            worker(client, service, timeout, &budget, &issued, &bar, started).await
        }));
    }
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(
            worker
                .await
                .map_err(|e| Failure(format!("a probe worker failed: {e}")))?,
        );
    }
    bar.finish_and_clear();
    for answers in tally.by_backend.values_mut() {
        answers.latencies.sort_unstable();
    }
    let elapsed = started.elapsed();
    let snapshot = channel.snapshot();
    report(&args, &tally, &snapshot, elapsed);
    channel.close();
    let total = tally.ok + tally.failed;
    if total > 0 && tally.ok == 0 {
        let (code, (_, message)) = tally
            .errors
            .iter()
            .max_by_key(|(_, (n, _))| *n)
            .map(|(c, e)| (c.clone(), e.clone()))
            .unwrap_or_default();
        return Err(Failure(format!(
            "all {total} RPCs to `{}` failed; most with {code}: {message}",
            args.channel.target
        )));
    }
    if tally.failed > 0 {
        eprintln!("grpc-lb: {} of {total} RPCs failed", tally.failed);
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn known_policies() -> Vec<String> {
    let registry = lb_policies::registry();
    let mut names: Vec<String> = registry.names().into_iter().map(str::to_owned).collect();
    names.sort();
    names
}

fn progress(length: u64, unit: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template =
        format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

async fn worker(
    mut client: HealthClient<LbChannel>,
    service: String,
    timeout: Duration,
    budget: &Budget,
    issued: &AtomicU64,
    bar: &ProgressBar,
    started: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        match budget {
            Budget::Requests(n) => {
                if issued.fetch_add(1, Ordering::Relaxed) >= *n {
                    break;
                }
            }
            Budget::Until(end) => {
                if Instant::now() >= *end {
                    break;
                }
            }
        }
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.clone(),
        });
        request.set_timeout(timeout);
        let sent = Instant::now();
        match client.check(request).await {
            Ok(response) => {
                let took = sent.elapsed();
                let backend = response
                    .extensions()
                    .get::<ServedBy>()
                    .map_or_else(|| "?".to_owned(), |s| s.0.addr().to_owned());
                let answers = tally.by_backend.entry(backend).or_default();
                answers.latencies.push(took);
                if response.into_inner().status == ServingStatus::Serving as i32 {
                    tally.ok += 1;
                } else {
                    answers.not_serving += 1;
                    tally.failed += 1;
                    let e = tally.errors.entry("NOT_SERVING".to_owned()).or_default();
                    e.0 += 1;
                    e.1 = format!("the health service says `{service}` is not serving");
                }
            }
            Err(status) => {
                tally.failed += 1;
                let e = tally
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default();
                e.0 += 1;
                e.1 = status.message().to_owned();
            }
        }
        match budget {
            Budget::Requests(_) => bar.inc(1),
            Budget::Until(_) => bar.set_position(millis(started.elapsed())),
        }
        bar.set_message(format!("{} failed", tally.failed));
    }
    tally
}

fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) * p).div_ceil(100);
    sorted.get(i).copied()
}

/// One row of the table: an address, its subconn if the channel still has one,
/// and the answers it gave.
struct Backend<'a> {
    addr: &'a str,
    subconn: Option<&'a SubConnSnapshot>,
    /// Sorted.
    latencies: &'a [Duration],
    not_serving: u64,
}

impl<'a> Backend<'a> {
    fn new(addr: &'a str, subconn: Option<&'a SubConnSnapshot>, tally: &'a Tally) -> Self {
        let answers = tally.by_backend.get(addr);
        Self {
            addr,
            subconn,
            latencies: answers.map_or(&[], |a| a.latencies.as_slice()),
            not_serving: answers.map_or(0, |a| a.not_serving),
        }
    }

    /// Attempts sent to it: the subconn's count, else the answers seen.
    fn rpcs(&self) -> u64 {
        self.subconn
            .map_or(self.latencies.len() as u64, |sc| sc.rpcs.started)
    }

    /// Failed attempts and NOT_SERVING answers.
    fn failed(&self) -> u64 {
        self.subconn.map_or(0, |sc| sc.rpcs.failed) + self.not_serving
    }

    fn percentiles(&self) -> (Option<Duration>, Option<Duration>) {
        (
            percentile(self.latencies, 50),
            percentile(self.latencies, 99),
        )
    }

    fn json(&self) -> serde_json::Value {
        let (p50, p99) = self.percentiles();
        json!({
            "backend": self.addr,
            "rpcs": self.rpcs(),
            "failed": self.failed(),
            "not_serving": self.not_serving,
            "p50_ms": p50.map(|d| d.as_secs_f64() * 1e3),
            "p99_ms": p99.map(|d| d.as_secs_f64() * 1e3),
            "subconn": self.subconn.map(subconn_json),
        })
    }

    fn cells(&self) -> [String; 8] {
        let (p50, p99) = self.percentiles();
        [
            self.addr.to_owned(),
            self.subconn
                .map_or("(removed)", |sc| sc.state.as_str())
                .to_owned(),
            self.rpcs().to_string(),
            self.failed().to_string(),
            latency(p50),
            latency(p99),
            self.subconn
                .map_or("-".to_owned(), |sc| sc.connection_attempts.to_string()),
            self.subconn
                .and_then(|sc| sc.last_error.clone())
                .unwrap_or_default(),
        ]
    }
}

fn report(args: &Args, tally: &Tally, snapshot: &ChannelSnapshot, elapsed: Duration) {
    let total = tally.ok + tally.failed;
    let rate = total as f64 / elapsed.as_secs_f64().max(1e-9);
    // Every address the channel had, with what its subconn and the answers say,
    // then answers from backends whose subconn is gone by now.
    let mut backends: Vec<Backend<'_>> = snapshot
        .subconns
        .iter()
        .map(|sc| Backend::new(sc.address.addr(), Some(sc), tally))
        .collect();
    for addr in tally.by_backend.keys() {
        if !snapshot.subconns.iter().any(|sc| sc.address.addr() == addr) {
            backends.push(Backend::new(addr, None, tally));
        }
    }
    let rows: Vec<serde_json::Value> = backends.iter().map(Backend::json).collect();
    let text_rows: Vec<[String; 8]> = backends.iter().map(Backend::cells).collect();
    if args.json {
        print_json(&json!({
            "target": snapshot.target,
            "policy": snapshot.policy,
            "state": snapshot.state.as_str(),
            "rpcs": total,
            "succeeded": tally.ok,
            "failed": tally.failed,
            "elapsed_ms": millis(elapsed),
            "rpcs_per_second": rate,
            "concurrency": args.concurrency,
            "backends": rows,
            "errors": tally.errors.iter().map(|(code, (n, message))| json!({
                "code": code, "count": n, "last_message": message,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!(
        "{}  policy {}  channel {}",
        snapshot.target, snapshot.policy, snapshot.state
    );
    println!(
        "{total} RPCs in {:.2} s ({rate:.0}/s) at concurrency {}: {} succeeded, {} failed",
        elapsed.as_secs_f64(),
        args.concurrency,
        tally.ok,
        tally.failed
    );
    println!();
    let header = [
        "backend",
        "state",
        "rpcs",
        "failed",
        "p50",
        "p99",
        "connects",
        "last error",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &text_rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(7) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 7 {
                out.push_str(cell);
            } else if (2..=6).contains(&i) {
                out.push_str(&format!("{cell:>w$}  ", w = widths[i]));
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    println!("{}", line(&header));
    for row in &text_rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        println!("{}", line(&cells));
    }
    if !tally.errors.is_empty() {
        println!();
        println!("errors:");
        for (code, (n, message)) in &tally.errors {
            println!("  {n:>6} {code}: {message}");
        }
    }
}
