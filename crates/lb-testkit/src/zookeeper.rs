//! A real ZooKeeper server on 127.0.0.1 for tests (Debian's `zookeeper` package): a
//! free port, a temporary data directory, short session timeouts allowed, killed when
//! dropped, restartable; optionally with a digest super user who may do anything
//! whatever a node's ACL says.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const ZK_SERVER: &str = "/usr/share/zookeeper/bin/zkServer.sh";

/// The user name of the super user of [`ZooKeeperServer::start_with_super_digest`].
pub const ZK_SUPER_USER: &str = "super";

/// A running (or stopped) ZooKeeper.
pub struct ZooKeeperServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra JVM flags of the server (`SERVER_JVMFLAGS`).
    server_flags: String,
}

impl ZooKeeperServer {
    /// Starts ZooKeeper and waits until it answers `ruok`. Fails with the install
    /// command when it is missing.
    pub async fn start() -> Result<Self, String> {
        Self::start_with_flags(String::new()).await
    }

    /// Starts ZooKeeper with a digest super user, [`ZK_SUPER_USER`] with `password`
    /// (ZooKeeper's `zookeeper.DigestAuthenticationProvider.superDigest`): a session
    /// that adds `digest super:password` may read and change every node, whatever
    /// its ACL, to check what ACL-protected nodes hold.
    pub async fn start_with_super_digest(password: &str) -> Result<Self, String> {
        let digest = digest_of(ZK_SUPER_USER, password).await?;
        Self::start_with_flags(format!(
            "-Dzookeeper.DigestAuthenticationProvider.superDigest={ZK_SUPER_USER}:{digest}"
        ))
        .await
    }

    async fn start_with_flags(server_flags: String) -> Result<Self, String> {
        if !std::path::Path::new(ZK_SERVER).exists() {
            return Err(format!(
                "{ZK_SERVER} not found; install ZooKeeper with `apt-get install zookeeper` (cargo xtask test does)"
            ));
        }
        let mut last = String::new();
        // A probed port can be taken by a parallel test before ZooKeeper binds it:
        // retry on a fresh port when that happens.
        for _ in 0..5 {
            let port = crate::free_port().map_err(|e| format!("free port: {e}"))?;
            match Self::start_on(port, server_flags.clone()).await {
                Ok(server) => return Ok(server),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn start_on(port: u16, server_flags: String) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let config = format!(
            "tickTime=100\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok,mntr,cons,srvr\nminSessionTimeout=200\nmaxSessionTimeout=60000\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).map_err(|e| format!("zoo.cfg: {e}"))?;
        let mut server = Self {
            port,
            dir,
            child: None,
            server_flags,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The connect string, `127.0.0.1:port`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Sends a four-letter word (`ruok`, `mntr`, `cons`, `srvr` are enabled) and
    /// returns the answer.
    pub async fn four_letter_word(&self, word: &str) -> Result<String, String> {
        let mut s = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)),
        )
        .await
        .map_err(|_| format!("{word}: connect timed out"))?
        .map_err(|e| format!("{word}: {e}"))?;
        s.write_all(word.as_bytes())
            .await
            .map_err(|e| format!("{word}: {e}"))?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .map_err(|_| format!("{word}: no answer"))?
            .map_err(|e| format!("{word}: {e}"))?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// The server's `mntr` statistics, by name.
    pub async fn mntr(&self) -> Result<BTreeMap<String, String>, String> {
        let text = self.four_letter_word("mntr").await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Read requests (getData, getChildren, ...) the server has answered for nodes
    /// under the top-level node `/<namespace>`, from its per-namespace statistics
    /// (pings, writes and other namespaces are not counted).
    pub async fn reads_under(&self, namespace: &str) -> Result<u64, String> {
        let stats = self.mntr().await?;
        let name = format!("zk_cnt_{namespace}_read_per_namespace");
        Ok(stats.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The session ids of the client connections open now (from `cons`).
    pub async fn connected_sessions(&self) -> Result<Vec<String>, String> {
        let text = self.four_letter_word("cons").await?;
        let mut sessions: Vec<String> = text
            .lines()
            .filter_map(|l| l.split("sid=").nth(1))
            .map(|rest| rest.split([',', ')']).next().unwrap_or(rest).to_owned())
            .collect();
        sessions.sort();
        Ok(sessions)
    }

    /// Kills the server at once (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port with its data wiped: every client session is
    /// unknown to it, so clients that reconnect see their session expire.
    pub async fn restart_wiped(&mut self) -> Result<(), String> {
        self.kill().await;
        let data = self.dir.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| format!("wipe {}: {e}", data.display()))?;
        }
        self.launch().await
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill().await;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_path_buf();
        let dir = dir.as_path();
        let log =
            std::fs::File::create(dir.join("zookeeper.out")).map_err(|e| format!("log: {e}"))?;
        let child = Command::new(ZK_SERVER)
            .arg("start-foreground")
            .arg(dir.join("zoo.cfg"))
            .env("ZOOCFGDIR", dir)
            .env("ZOO_LOG_DIR", dir)
            .env("JVMFLAGS", "-Xmx256m")
            .env("SERVER_JVMFLAGS", &self.server_flags)
            .stdin(Stdio::null())
            // ZooKeeper logs to the console: keep it, to explain a failed start.
            .stdout(log.try_clone().map_err(|e| format!("log: {e}"))?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start ZooKeeper ({e}); install it with `apt-get install zookeeper`")
            })?;
        self.child = Some(child);
        // The JVM takes a moment; allow 20 s on a loaded machine.
        for _ in 0..400 {
            if ruok(self.port).await {
                return Ok(());
            }
            if crate::exited(&mut self.child) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill().await;
        let log = std::fs::read_to_string(dir.join("zookeeper.out")).unwrap_or_default();
        Err(format!(
            "ZooKeeper did not answer ruok; its output: {}",
            log.chars()
                .rev()
                .take(2000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        ))
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// ZooKeeper's digest of `user:password`: base64 of its SHA-1 (computed by `openssl`).
async fn digest_of(user: &str, password: &str) -> Result<String, String> {
    let script = "printf '%s' \"$1\" | openssl dgst -binary -sha1 | openssl base64";
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(format!("{user}:{password}"))
        .output()
        .await
        .map_err(|e| format!("cannot run openssl for the digest ({e})"))?;
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || digest.is_empty() {
        return Err(format!(
            "openssl could not compute the digest (is it installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(digest)
}

async fn ruok(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(200),
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"ruok").await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut answer)).await;
    read.is_ok() && answer == b"imok"
}
