//! A real etcd server on 127.0.0.1 for tests: free ports, a temporary data directory,
//! killed when dropped (or when the test panics), restartable on the same ports with
//! the same data or with its data wiped; and clusters of several members. A single
//! server can also serve clients over mutual TLS and with authentication enabled
//! ([`EtcdServer::start_secured`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::tls::{PkiFiles, TestPki};

/// The password of the `root` user of an etcd started with an
/// [`EtcdSecurity::user`].
pub const ETCD_ROOT_PASSWORD: &str = "root-secret";

/// How [`EtcdServer::start_secured`] secures etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdSecurity {
    /// Serve clients over TLS only, with a server certificate for `127.0.0.1` and
    /// `localhost` from a fresh [`TestPki`], and require client certificates signed
    /// by its CA (etcd's `--client-cert-auth`). The PEM files are at
    /// [`EtcdServer::tls_files`].
    pub tls: bool,
    /// Enable authentication: a `root` user (password [`ETCD_ROOT_PASSWORD`]) and
    /// this user, with read and write access to its prefixes only.
    pub user: Option<EtcdUser>,
}

/// A user of a secured etcd.
#[derive(Debug, Clone)]
pub struct EtcdUser {
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: String,
    /// Key prefixes it may read and write (`greeter/`).
    pub prefixes: Vec<String>,
}

impl EtcdUser {
    /// A user with read and write access to `prefixes`.
    pub fn new(name: &str, password: &str, prefixes: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            password: password.to_owned(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// A running (or stopped) etcd, alone or a member of an [`EtcdCluster`].
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `name=peer-url,...` of the whole cluster.
    initial_cluster: String,
    /// Raft heartbeat and election timeout, in ms (etcd's defaults when `None`).
    timing: Option<(u64, u64)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Client TLS: the PEM files (`None`: plaintext).
    tls: Option<PkiFiles>,
    /// A plaintext port for `/health` and `/metrics` when clients need TLS.
    metrics_port: Option<u16>,
    /// Whether authentication is on (`etcdctl` then runs as root).
    auth: bool,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves. Fails with the install command when the
    /// binary is missing.
    pub async fn start() -> Result<Self, String> {
        let mut last = String::new();
        // A probed port can be taken by a parallel test before etcd binds it: retry
        // on fresh ports when that happens.
        for _ in 0..5 {
            let (client_port, peer_port) = two_ports()?;
            let mut server = Self::new("test", client_port, peer_port, None)?;
            server.initial_cluster = format!("test={}", server.peer_url());
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn new(
        name: &str,
        client_port: u16,
        peer_port: u16,
        timing: Option<(u64, u64)>,
    ) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            client_port,
            peer_port,
            initial_cluster: String::new(),
            timing,
            dir: tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?,
            child: None,
            tls: None,
            metrics_port: None,
            auth: false,
        })
    }

    /// Starts etcd secured as `security` says and waits until it serves; with a
    /// user, also creates it (and `root`) and enables authentication.
    pub async fn start_secured(security: EtcdSecurity) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let (client_port, peer_port) = two_ports()?;
            let mut metrics_port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            while metrics_port == client_port || metrics_port == peer_port {
                metrics_port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            }
            let mut server = Self::new("test", client_port, peer_port, None)?;
            server.initial_cluster = format!("test={}", server.peer_url());
            server.metrics_port = Some(metrics_port);
            if security.tls {
                let pki = TestPki::new().map_err(|e| format!("test PKI: {e}"))?;
                let files = pki
                    .write_files(server.dir.path())
                    .map_err(|e| format!("writing the test PKI: {e}"))?;
                server.tls = Some(files);
            }
            match server.launch().await {
                Ok(()) => {
                    if let Some(user) = &security.user {
                        server.enable_auth(user).await?;
                    }
                    return Ok(server);
                }
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Creates `root` and `user` (with a role for its prefixes) and enables auth.
    async fn enable_auth(&mut self, user: &EtcdUser) -> Result<(), String> {
        let role = format!("{}-role", user.name);
        self.etcdctl(&["user", "add", &format!("root:{ETCD_ROOT_PASSWORD}")])
            .await?;
        self.etcdctl(&["role", "add", &role]).await?;
        for prefix in &user.prefixes {
            self.etcdctl(&[
                "role",
                "grant-permission",
                &role,
                "--prefix=true",
                "readwrite",
                prefix,
            ])
            .await?;
        }
        self.etcdctl(&["user", "add", &format!("{}:{}", user.name, user.password)])
            .await?;
        self.etcdctl(&["user", "grant-role", &user.name, &role])
            .await?;
        self.etcdctl(&["auth", "enable"]).await?;
        self.auth = true;
        Ok(())
    }

    /// Sets the password of `user` (as root).
    pub async fn set_password(&self, user: &str, password: &str) -> Result<(), String> {
        self.etcdctl_with_input(
            &["user", "passwd", user, "--interactive=false"],
            Some(password),
        )
        .await
        .map(drop)
    }

    /// The PEM files of a server started with [`EtcdSecurity::tls`]: its CA, and a
    /// client certificate and key that it accepts.
    pub fn tls_files(&self) -> Option<&PkiFiles> {
        self.tls.as_ref()
    }

    /// Where `etcd` writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The port that answers `/health` and `/metrics` in plaintext.
    fn plain_port(&self) -> u16 {
        self.metrics_port.unwrap_or(self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The client endpoint, `http://127.0.0.1:port` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
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

    /// Starts it again on the same ports with its data wiped, as a cluster rebuilt
    /// without its data: its revision starts over from 1, below anything a client
    /// saw before.
    pub async fn restart_wiped(&mut self) -> Result<(), String> {
        self.kill().await;
        let data = self.dir.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
        }
        self.launch().await
    }

    /// Runs `etcdctl` against this server with `args`; returns its stdout. On a
    /// secured server it uses the test client certificate and runs as `root`.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcdctl_with_input(args, None).await
    }

    async fn etcdctl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, String> {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint());
        if let Some(files) = &self.tls {
            command
                .arg(format!("--cacert={}", files.ca.display()))
                .arg(format!("--cert={}", files.client_cert.display()))
                .arg(format!("--key={}", files.client_key.display()));
        }
        if self.auth {
            command.arg(format!("--user=root:{ETCD_ROOT_PASSWORD}"));
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot run etcdctl ({e}); install it with `apt-get install etcd-client`")
            })?;
        // Without input, stdin closes here.
        if let Some(mut stdin) = child.stdin.take()
            && let Some(input) = input
        {
            stdin
                .write_all(format!("{input}\n").as_bytes())
                .await
                .map_err(|e| format!("etcdctl stdin: {e}"))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .map_err(|_| format!("etcdctl {args:?} timed out"))?
            .map_err(|e| format!("etcdctl {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// etcd's Prometheus metrics (`GET /metrics`), as text.
    pub async fn metrics(&self) -> Result<String, String> {
        http_get(self.plain_port(), "/metrics")
            .await
            .ok_or_else(|| "GET /metrics failed".to_owned())
    }

    /// How many gRPC calls of `method` (`Range`, `Watch`, `LeaseGrant`, ...) the
    /// server has started, from its metrics.
    pub async fn grpc_calls(&self, method: &str) -> Result<u64, String> {
        Ok(metric_sum(
            &self.metrics().await?,
            "grpc_server_started_total",
            &format!("grpc_method=\"{method}\""),
        ))
    }

    /// How many gRPC calls of `method` the server has finished with the gRPC status
    /// `code` (`OK`, `OutOfRange`, ...), from its metrics.
    pub async fn grpc_calls_handled(&self, method: &str, code: &str) -> Result<u64, String> {
        let metrics = self.metrics().await?;
        Ok(metrics
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter(|l| l.contains(&format!("grpc_method=\"{method}\"")))
            .filter(|l| l.contains(&format!("grpc_code=\"{code}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = self.peer_url();
        let metrics = self.metrics_port;
        let tls = self.tls.clone();
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let mut command = Command::new("etcd");
        command
            .arg(format!("--name={}", self.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--logger=zap");
        if let Some(port) = metrics {
            command.arg(format!("--listen-metrics-urls=http://127.0.0.1:{port}"));
        }
        if let Some(files) = tls {
            command
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", files.ca.display()))
                .arg(format!("--cert-file={}", files.server_cert.display()))
                .arg(format!("--key-file={}", files.server_key.display()));
        }
        if let Some((heartbeat, election)) = self.timing {
            command
                .arg(format!("--heartbeat-interval={heartbeat}"))
                .arg(format!("--election-timeout={election}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start etcd ({e}); install it with `apt-get install etcd-server` (cargo xtask test does)")
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        for _ in 0..400 {
            if healthy(self.plain_port()).await {
                return Ok(());
            }
            if crate::exited(&mut self.child) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.kill().await;
        Err(format!(
            "etcd {} did not become healthy; its log: {}",
            self.name,
            read_log(&self.dir.path().join("etcd.log"))
        ))
    }

    async fn launch(&mut self) -> Result<(), String> {
        self.spawn()?;
        self.wait_healthy().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Several etcd processes forming one cluster on 127.0.0.1, with short raft timeouts
/// (heartbeat 50 ms, election 500 ms) so that a member cut off from the others
/// notices within about a second.
pub struct EtcdCluster {
    /// The members, each with its own client endpoint.
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one serves.
    pub async fn start(size: usize) -> Result<Self, String> {
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let (client_port, peer_port) = two_ports()?;
            members.push(EtcdServer::new(
                &format!("m{i}"),
                client_port,
                peer_port,
                Some((50, 500)),
            )?);
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster = initial_cluster.clone();
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_healthy().await?;
        }
        Ok(Self { members })
    }
}

/// Two distinct free ports outside the ephemeral range.
fn two_ports() -> Result<(u16, u16), String> {
    let a = crate::free_port().map_err(|e| format!("free port: {e}"))?;
    let mut b = crate::free_port().map_err(|e| format!("free port: {e}"))?;
    while b == a {
        b = crate::free_port().map_err(|e| format!("free port: {e}"))?;
    }
    Ok((a, b))
}

/// The sum of the samples of `metric` whose labels contain `label`.
fn metric_sum(metrics: &str, metric: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The body of `GET path` on 127.0.0.1:`port`, if it answers within a second.
async fn http_get(port: u16, path: &str) -> Option<String> {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_millis(500),
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    else {
        return None;
    };
    // HTTP/1.0: no chunked encoding to undo.
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// `GET /health` answers `{"health":"true"...}` once etcd serves.
async fn healthy(port: u16) -> bool {
    http_get(port, "/health")
        .await
        .is_some_and(|body| body.contains("\"health\":\"true\""))
}
