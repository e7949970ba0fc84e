//! A DNS server on 127.0.0.1 whose records the test sets and changes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A name's records: addresses, and TXT records (each a list of strings).
#[derive(Default, Clone)]
struct Entry {
    ips: Vec<IpAddr>,
    txt: Vec<Vec<String>>,
    /// TXT queries get SERVFAIL.
    txt_fails: bool,
    /// TXT queries get no answer at all.
    txt_silent: bool,
}

type Records = Arc<Mutex<HashMap<String, Entry>>>;

/// Answers A, AAAA and TXT queries over UDP from a table the test controls; unknown
/// names get NXDOMAIN. Answers carry TTL 0 so resolvers do not cache them.
pub struct DnsServer {
    addr: SocketAddr,
    records: Records,
    queries: Arc<AtomicUsize>,
    txt_queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Starts on an ephemeral UDP port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = socket.local_addr()?;
        let records = Records::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let txt_queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(
            socket,
            records.clone(),
            queries.clone(),
            txt_queries.clone(),
        ));
        Ok(Self {
            addr,
            records,
            queries,
            txt_queries,
            task,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the addresses of `name` (no trailing dot needed); an empty list removes
    /// them (and the name, if it has no TXT records).
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        self.edit(name, |entry| entry.ips = ips.to_vec());
    }

    /// Sets the TXT records of `name`, each given as its strings (a record's strings
    /// are joined by whoever reads it); an empty list removes them.
    pub fn set_txt(&self, name: &str, records: &[&[&str]]) {
        self.edit(name, |entry| {
            entry.txt = records
                .iter()
                .map(|r| r.iter().map(|s| (*s).to_owned()).collect())
                .collect();
        });
    }

    /// Makes TXT queries for `name` fail with SERVFAIL (a broken server), or answer
    /// again.
    pub fn fail_txt(&self, name: &str, fail: bool) {
        self.edit(name, |entry| entry.txt_fails = fail);
    }

    /// Leaves TXT queries for `name` unanswered (a firewall that drops them), or
    /// answers them again.
    pub fn drop_txt(&self, name: &str, drop: bool) {
        self.edit(name, |entry| entry.txt_silent = drop);
    }

    /// TXT queries received so far (answered or not).
    pub fn txt_queries(&self) -> usize {
        self.txt_queries.load(Ordering::Relaxed)
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = records.entry(name.clone()).or_default();
        f(entry);
        if entry.ips.is_empty() && entry.txt.is_empty() && !entry.txt_fails && !entry.txt_silent {
            records.remove(&name);
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: UdpSocket,
    records: Records,
    queries: Arc<AtomicUsize>,
    txt_queries: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue; // not DNS: ignore, as a server would
        };
        queries.fetch_add(1, Ordering::Relaxed);
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        let mut known = false;
        let mut failed = false;
        let mut silent = false;
        for query in &request.queries {
            response.add_query(query.clone());
            if query.query_type() == RecordType::TXT {
                txt_queries.fetch_add(1, Ordering::Relaxed);
            }
            let name = query
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let entry = records
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
            let Some(entry) = entry else { continue };
            known = true;
            for ip in entry.ips {
                let rdata = match (query.query_type(), ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(query.name().clone(), 0, rdata));
            }
            if query.query_type() == RecordType::TXT {
                failed |= entry.txt_fails;
                silent |= entry.txt_silent;
                for strings in entry.txt {
                    let rdata = RData::TXT(TXT::new(strings));
                    response.add_answer(Record::from_rdata(query.name().clone(), 0, rdata));
                }
            }
        }
        if silent {
            continue;
        }
        if failed {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if !known {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}
