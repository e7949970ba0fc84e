//! A third-party resolver in one page: `file:///path` reads one `host:port` per line
//! from a file and follows its changes.
//!
//! Run: `cargo run -p examples --example file_resolver`
//!
//! The program starts two echo servers, writes both addresses to a temporary file,
//! dials `file:///<that file>`, then rewrites the file to list only the second server
//! and shows the traffic following.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverState, Target};
use lb_testkit::Backend;
use lb_testkit::pb::EchoRequest;
use lb_testkit::pb::echo_client::EchoClient;
use lb_tonic::{LbChannel, WaitForReady};
use tokio::sync::Notify;

/// Builds resolvers for `file:///absolute/path`.
struct FileResolverBuilder;

/// The running resolver: a task that polls the file; dropping it stops the task.
struct FileResolver {
    wake: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Resolver for FileResolver {
    fn resolve_now(&self) {
        self.wake.notify_one(); // read the file again now
    }
}

impl Drop for FileResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResolverBuilder for FileResolverBuilder {
    fn scheme(&self) -> &str {
        "file"
    }

    fn build(
        &self,
        target: &Target,
        cc: Arc<dyn ClientConn>,
    ) -> Result<Box<dyn Resolver>, BuildError> {
        let path = format!("/{}", target.endpoint().trim_start_matches('/'));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(follow(path, wake.clone(), cc));
        Ok(Box::new(FileResolver {
            wake,
            task: task.abort_handle(),
        }))
    }
}

/// Reads the file whenever it changes (polled every 100 ms) or when asked.
async fn follow(path: String, wake: Arc<Notify>, cc: Arc<dyn ClientConn>) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let modified = tokio::fs::metadata(&path).await.and_then(|m| m.modified());
        match modified {
            Ok(m) if Some(m) != seen => {
                seen = Some(m);
                match tokio::fs::read_to_string(&path).await {
                    // A complete state every time: the channel replaces the old one.
                    Ok(text) => cc.update_state(ResolverState::new(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(Address::new)
                            .collect(),
                    )),
                    Err(e) => cc.report_error(Arc::new(e)),
                }
            }
            Ok(_) => {}
            // Keep the last good addresses; tell the channel what is wrong.
            Err(e) => cc.report_error(Arc::new(e)),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = wake.notified() => seen = None,
        }
    }
}

async fn spread(client: &mut EchoClient<LbChannel>, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(EchoRequest::default());
        request.extensions_mut().insert(WaitForReady(true));
        request.set_timeout(Duration::from_secs(5));
        if let Ok(r) = client.unary_echo(request).await {
            *counts.entry(r.into_inner().server).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let first = Backend::start("first").await?;
    let second = Backend::start("second").await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("greeter.addrs");
    std::fs::write(&file, format!("{}\n{}\n", first.addr(), second.addr()))?;

    // Register the custom scheme next to the built-in ones.
    let mut resolvers = lb_resolvers::registry();
    resolvers.register(FileResolverBuilder);
    let channel = LbChannel::builder(format!("file://{}", file.display()))
        .resolvers(resolvers)
        .policy("round_robin")
        .build()?;
    let mut client = EchoClient::new(channel);

    // Round robin starts with whichever server connects first; let both connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("both listed:   {:?}", spread(&mut client, 100).await);
    // Sleep so the new modification time differs on coarse-grained file systems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, format!("# first is gone\n{}\n", second.addr()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("second only:   {:?}", spread(&mut client, 100).await);
    Ok(())
}
