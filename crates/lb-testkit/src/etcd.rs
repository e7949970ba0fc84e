//! A real etcd server on 127.0.0.1 for tests: free ports, a temporary data directory,
//! killed when dropped (or when the test panics), restartable on the same ports and
//! data.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running (or stopped) etcd.
pub struct EtcdServer {
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves. Fails with the install command when the
    /// binary is missing.
    pub async fn start() -> Result<Self, String> {
        let mut last = String::new();
        // A probed port can be taken by a parallel test before etcd binds it: retry
        // on fresh ports when that happens.
        for _ in 0..5 {
            let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
            let client_port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            let mut peer_port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            while peer_port == client_port {
                peer_port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            }
            let mut server = Self {
                client_port,
                peer_port,
                dir,
                child: None,
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The client endpoint, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address, `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same ports with the same data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill().await;
        self.launch().await
    }

    /// Runs `etcdctl` against this server with `args`; returns its stdout.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .await
            .map_err(|e| {
                format!("cannot run etcdctl ({e}); install it with `apt-get install etcd-client`")
            })?;
        if !out.status.success() {
            return Err(format!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn launch(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start etcd ({e}); install it with `apt-get install etcd-server` (cargo xtask test does)")
            })?;
        self.child = Some(child);
        for _ in 0..400 {
            if healthy(self.client_port).await {
                return Ok(());
            }
            if crate::exited(&mut self.child) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.kill().await;
        Err(format!(
            "etcd did not become healthy; its log: {}",
            read_log(&self.dir.path().join("etcd.log"))
        ))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// `GET /health` answers `{"health":"true"...}` once etcd serves.
async fn healthy(port: u16) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_millis(200),
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    else {
        return false;
    };
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_millis(500), stream.read_to_end(&mut body)).await;
    read.is_ok() && String::from_utf8_lossy(&body).contains("\"health\":\"true\"")
}
