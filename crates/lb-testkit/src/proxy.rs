//! A TCP proxy on 127.0.0.1 in front of a real server (etcd, ZooKeeper), for cutting
//! a client's connection at a chosen moment: now, for every new connection while
//! blocked, or right after the server's first HTTP/2 DATA frame on the next
//! connection (a gRPC stream's first message: say, the reply that confirms an etcd
//! watch, with its events still to come).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Default)]
struct Control {
    blocked: AtomicBool,
    cut_next: AtomicBool,
    delay_us: AtomicU64,
    accepted: AtomicUsize,
    open: AtomicUsize,
    cuts: AtomicUsize,
}

/// A proxy to one upstream address.
pub struct TcpProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    sever: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards every connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control::default());
        let (sever, severed) = watch::channel(0);
        let task = tokio::spawn(accept(listener, upstream, control.clone(), severed));
        Ok(Self {
            addr,
            control,
            sever,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection now (new ones are forwarded as usual).
    pub fn sever(&self) {
        self.sever.send_modify(|g| *g += 1);
    }

    /// While blocked, every open connection is closed and new ones are closed as soon
    /// as they are accepted: the server looks down.
    pub fn set_blocked(&self, blocked: bool) {
        self.control.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            self.sever();
        }
    }

    /// The next connection forwards the server's bytes up to the end of the server's
    /// first non-empty HTTP/2 DATA frame, then closes (once).
    pub fn cut_next_after_first_message(&self) {
        self.control.cut_next.store(true, Ordering::SeqCst);
    }

    /// Delays every chunk the server sends by `delay` (a slow link).
    pub fn set_response_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.control.delay_us.store(us, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Connections forwarded and open now.
    pub fn open(&self) -> usize {
        self.control.open.load(Ordering::SeqCst)
    }

    /// Connections cut by [`TcpProxy::cut_next_after_first_message`] so far.
    pub fn cuts(&self) -> usize {
        self.control.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    control: Arc<Control>,
    severed: watch::Receiver<u64>,
) {
    // Owned here: aborting this task drops every connection with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                control.accepted.fetch_add(1, Ordering::SeqCst);
                if control.blocked.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let cut = control.cut_next.swap(false, Ordering::SeqCst);
                connections.spawn(forward(client, upstream, cut, control.clone(), severed.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    cut: bool,
    control: Arc<Control>,
    mut severed: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    control.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(control.clone());
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    severed.borrow_and_update();
    let (client_in, client_out) = client.into_split();
    let (server_in, server_out) = server.into_split();
    tokio::select! {
        () = pump(client_in, server_out) => {}
        () = downstream(server_in, client_out, cut, &control) => {}
        _ = severed.changed() => {}
    }
}

/// Counts a forwarded connection while it is open.
struct Open(Arc<Control>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Server to client, with the delay, and the cut after the first DATA frame.
async fn downstream(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, cut: bool, control: &Control) {
    let mut buf = vec![0u8; 64 * 1024];
    // With `cut`: bytes not yet forwarded (starting at a frame boundary).
    let mut frames: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = control.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if !cut {
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
            continue;
        }
        frames.extend_from_slice(&buf[..n]);
        // Forward whole frames; stop after the first non-empty DATA frame.
        let mut at = 0;
        while frames.len() >= at + 9 {
            let len = (usize::from(frames[at]) << 16)
                | (usize::from(frames[at + 1]) << 8)
                | usize::from(frames[at + 2]);
            let kind = frames[at + 3];
            if frames.len() < at + 9 + len {
                break;
            }
            at += 9 + len;
            if kind == 0 && len > 0 {
                let _ = to.write_all(&frames[..at]).await;
                let _ = to.flush().await;
                control.cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        if at > 0 {
            if to.write_all(&frames[..at]).await.is_err() {
                return;
            }
            frames.drain(..at);
        }
    }
}
