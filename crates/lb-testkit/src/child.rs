//! A test backend in a child process, so that a test can *stall* it: stop the
//! process (`SIGSTOP`) with its connections open, the way a backend that hangs (a
//! long GC pause, a VM migration, a debugger) looks to its clients, and resume it
//! (`SIGCONT`).
//!
//! The child is the test binary itself, run again with an environment variable that
//! makes one of its functions serve instead of test:
//!
//! ```no_run
//! // In a test file: the entry point the child runs (a no-op as a normal test).
//! #[test]
//! fn child_backend() {
//!     lb_testkit::child::serve_if_asked();
//! }
//!
//! # async fn example() -> std::io::Result<()> {
//! // In a test: a backend named "c" in a child process running `child_backend`.
//! let c = lb_testkit::child::ChildBackend::spawn_test("child_backend", "c").await?;
//! c.stop().await?;   // stalled: connections open, nothing answers
//! c.resume().await?;
//! # Ok(()) }
//! ```
//!
//! Every child is bounded: it runs under `timeout -s KILL` (two minutes by default),
//! exits when its parent closes its stdin (the parent's [`ChildBackend`] is dropped
//! or the parent dies), and is killed when its [`ChildBackend`] is dropped, stopped
//! or not.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::Backend;

/// The variable that makes [`serve_if_asked`] serve: the backend's name.
pub const ENV: &str = "LB_TESTKIT_CHILD_BACKEND";

/// With it, the child reports its load (ORCA): `<qps>,<utilization>`.
pub const ORCA_ENV: &str = "LB_TESTKIT_CHILD_ORCA";

/// How long a child may live at most.
pub const MAX_LIFETIME: Duration = Duration::from_secs(120);

/// In a child started by [`ChildBackend`]: serves an echo backend until the parent
/// goes away, then exits the process. Anywhere else (no [`ENV`]): returns at once.
pub fn serve_if_asked() {
    let Ok(name) = std::env::var(ENV) else {
        return;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("child backend: no runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        let orca = std::env::var(ORCA_ENV).ok().and_then(|v| {
            let (qps, utilization) = v.split_once(',')?;
            Some(crate::Orca::fixed(
                qps.parse().ok()?,
                utilization.parse().ok()?,
            ))
        });
        let started = match &orca {
            Some(orca) => Backend::start_with_orca(&name, orca).await,
            None => Backend::start_restartable(&name).await,
        };
        let backend = match started {
            Ok(b) => b,
            Err(e) => {
                eprintln!("child backend: cannot listen: {e}");
                return 2;
            }
        };
        println!("\nLISTENING {} {}", backend.addr(), std::process::id());
        // Until the parent closes stdin (or dies), bounded by the lifetime.
        let mut stdin = tokio::io::stdin();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(MAX_LIFETIME, stdin.read_to_end(&mut sink)).await;
        drop(backend);
        0
    });
    std::process::exit(code);
}

/// A backend in a child process (see the module docs).
pub struct ChildBackend {
    /// The `timeout` process that bounds the child's life.
    _timeout: Child,
    /// Held open: the child exits when it closes.
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    pid: u32,
}

impl ChildBackend {
    /// Runs the test function `entry` of the current test binary (which calls
    /// [`serve_if_asked`]) as a backend named `name`.
    pub async fn spawn_test(entry: &str, name: &str) -> std::io::Result<Self> {
        Self::spawn(
            &[entry, "--exact", "--nocapture", "--test-threads=1"],
            name,
            None,
        )
        .await
    }

    /// Runs the current executable with `args` as a backend named `name`: for a
    /// binary whose `main` calls [`serve_if_asked`] first (a bench). With `orca`,
    /// `(qps, utilization)`, it reports that load per call and out of band.
    pub async fn spawn(
        args: &[&str],
        name: &str,
        orca: Option<(f64, f64)>,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut timeout = Command::new("timeout")
            .arg("-s")
            .arg("KILL")
            .arg(MAX_LIFETIME.as_secs().to_string())
            .arg(exe)
            .args(args)
            .env(ENV, name)
            .envs(orca.map(|(q, u)| (ORCA_ENV, format!("{q},{u}"))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = timeout.stdin.take();
        let stdout = timeout
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the child has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                // libtest may have started the line ("test child_backend ... ").
                if let Some((_, rest)) = line.split_once("LISTENING ") {
                    return Ok(rest.to_owned());
                }
            }
            Err(std::io::Error::other("the child exited before listening"))
        })
        .await
        .map_err(|_| std::io::Error::other("the child did not listen within 30 s"))??;
        let mut parts = listening.split_whitespace();
        let addr = parts
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad child line {listening:?}")))?;
        let pid = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad child line {listening:?}")))?;
        // Keep reading (and dropping) its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            _timeout: timeout,
            _stdin: stdin,
            addr,
            pid,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the process (`SIGSTOP`): its connections stay open, nothing answers.
    pub async fn stop(&self) -> std::io::Result<()> {
        self.signal("STOP").await
    }

    /// Resumes a stopped process (`SIGCONT`).
    pub async fn resume(&self) -> std::io::Result<()> {
        self.signal("CONT").await
    }

    async fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -{signal} {} failed: {status}",
                self.pid
            )))
        }
    }
}

impl Drop for ChildBackend {
    fn drop(&mut self) {
        // The `timeout` process is killed on drop; the backend itself is its child,
        // so kill it by its own pid (stopped or not).
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .status();
    }
}
