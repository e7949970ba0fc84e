//! `grpc-lb channelz HOST:PORT`: reads a gRPC process's channelz (gRFC A14: ours,
//! grpc-go's, C-core's, grpc-java's) and prints its channels, subchannels, servers
//! and, on request, their sockets. Every listing is paged through to its end.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use lb_server::admin::proto::{self, channelz_client::ChannelzClient};
use serde_json::{Value, json};

use crate::output::print_json;
use crate::{Failure, duration};

/// `channelz`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The process to ask: `HOST:PORT`, or any target (`dns:///host:port`).
    address: String,
    /// Also list each subchannel's and server's sockets.
    #[arg(long)]
    sockets: bool,
    /// How many entries to ask for per page.
    #[arg(long, default_value_t = 100)]
    page_size: i64,
    /// Give up after this long.
    #[arg(long, value_parser = duration::parse, default_value = "30s")]
    timeout: Duration,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// Nested channels deeper than this are listed by id only (a cycle in a broken
/// process's refs must not run forever).
const MAX_DEPTH: usize = 8;

type Client = ChannelzClient<lb_tonic::LbChannel>;

pub(crate) async fn run(args: Args) -> Result<ExitCode, Failure> {
    if args.page_size < 0 {
        return Err(Failure(format!(
            "--page-size must not be negative (got {})",
            args.page_size
        )));
    }
    let target = if args.address.contains("://") {
        args.address.clone()
    } else {
        format!("static:///{}", args.address)
    };
    let channel = lb_tonic::LbChannel::builder(target.clone())
        .build()
        .map_err(|e| Failure(format!("`{}`: {e}", args.address)))?;
    let mut client = ChannelzClient::new(channel.clone());
    let walk = Walk {
        args: &args,
        address: &args.address,
    };
    let result = tokio::time::timeout(args.timeout, walk.all(&mut client)).await;
    channel.close();
    let tree = match result {
        Ok(tree) => tree?,
        Err(_) => {
            return Err(Failure(format!(
                "{}: no complete answer within {:?}",
                args.address, args.timeout
            )));
        }
    };
    if args.json {
        print_json(&tree);
    } else {
        print_text(&tree);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the next page starts after one whose highest id is `last`: `None` at the
/// end, or when a peer's ids do not move forward (a broken or hostile process must
/// not make the walk loop or overflow).
fn next_start(end: bool, start: i64, last: i64) -> Option<i64> {
    if end || last < start {
        return None;
    }
    last.checked_add(1)
}

struct Walk<'a> {
    args: &'a Args,
    address: &'a str,
}

impl Walk<'_> {
    fn failure(&self, status: &tonic::Status) -> Failure {
        if status.code() == tonic::Code::Unimplemented {
            return Failure(format!(
                "{}: UNIMPLEMENTED: the server does not serve grpc.channelz.v1",
                self.address
            ));
        }
        Failure(format!(
            "{}: channelz answered {:?}: {}",
            self.address,
            status.code(),
            status.message()
        ))
    }

    async fn all(&self, client: &mut Client) -> Result<Value, Failure> {
        let mut channels = Vec::new();
        let mut start = 0;
        loop {
            let page = client
                .get_top_channels(proto::GetTopChannelsRequest {
                    start_channel_id: start,
                    max_results: self.args.page_size,
                })
                .await
                .map_err(|s| self.failure(&s))?
                .into_inner();
            let last = page
                .channel
                .iter()
                .filter_map(|c| c.r#ref.as_ref())
                .map(|r| r.channel_id)
                .max();
            for c in page.channel {
                channels.push(self.channel(client, c, 0).await?);
            }
            match last.and_then(|id| next_start(page.end, start, id)) {
                Some(next) => start = next,
                None => break,
            }
        }
        let mut servers = Vec::new();
        let mut start = 0;
        loop {
            let page = client
                .get_servers(proto::GetServersRequest {
                    start_server_id: start,
                    max_results: self.args.page_size,
                })
                .await
                .map_err(|s| self.failure(&s))?
                .into_inner();
            let last = page
                .server
                .iter()
                .filter_map(|s| s.r#ref.as_ref())
                .map(|r| r.server_id)
                .max();
            for s in page.server {
                servers.push(self.server(client, s).await?);
            }
            match last.and_then(|id| next_start(page.end, start, id)) {
                Some(next) => start = next,
                None => break,
            }
        }
        Ok(json!({ "channels": channels, "servers": servers }))
    }

    fn channel<'a>(
        &'a self,
        client: &'a mut Client,
        channel: proto::Channel,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Failure>> + Send + 'a>>
    {
        Box::pin(async move {
            let id = channel.r#ref.as_ref().map_or(0, |r| r.channel_id);
            let mut out = data_json(id, channel.data.as_ref());
            let mut children = Vec::new();
            for r in &channel.channel_ref {
                if depth >= MAX_DEPTH {
                    children.push(json!({ "id": r.channel_id }));
                    continue;
                }
                let child = client
                    .get_channel(proto::GetChannelRequest {
                        channel_id: r.channel_id,
                    })
                    .await;
                match child.map(|c| c.into_inner().channel) {
                    Ok(Some(c)) => children.push(self.channel(client, c, depth + 1).await?),
                    // Gone since the listing: skipped, as the process no longer has it.
                    Ok(None) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(self.failure(&s)),
                }
            }
            let mut subchannels = Vec::new();
            for r in &channel.subchannel_ref {
                let sub = client
                    .get_subchannel(proto::GetSubchannelRequest {
                        subchannel_id: r.subchannel_id,
                    })
                    .await;
                match sub.map(|s| s.into_inner().subchannel) {
                    Ok(Some(s)) => subchannels.push(self.subchannel(client, s).await?),
                    Ok(None) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(self.failure(&s)),
                }
            }
            out["channels"] = Value::Array(children);
            out["subchannels"] = Value::Array(subchannels);
            if self.args.sockets {
                out["sockets"] = self
                    .sockets(client, channel.socket_ref.iter().map(|r| r.socket_id))
                    .await?;
            }
            Ok(out)
        })
    }

    async fn subchannel(
        &self,
        client: &mut Client,
        sub: proto::Subchannel,
    ) -> Result<Value, Failure> {
        let id = sub.r#ref.as_ref().map_or(0, |r| r.subchannel_id);
        let mut out = data_json(id, sub.data.as_ref());
        if self.args.sockets {
            out["sockets"] = self
                .sockets(client, sub.socket_ref.iter().map(|r| r.socket_id))
                .await?;
        }
        Ok(out)
    }

    async fn server(&self, client: &mut Client, server: proto::Server) -> Result<Value, Failure> {
        let id = server.r#ref.as_ref().map_or(0, |r| r.server_id);
        let data = server.data.unwrap_or_default();
        let mut out = json!({
            "id": id,
            "calls": calls_json(data.calls_started, data.calls_succeeded, data.calls_failed, data.last_call_started_timestamp.as_ref()),
            "trace": trace_json(data.trace.as_ref()),
        });
        let listen: Vec<i64> = server.listen_socket.iter().map(|r| r.socket_id).collect();
        out["listen_sockets"] = self.sockets(client, listen.iter().copied()).await?;
        if self.args.sockets {
            let mut ids = Vec::new();
            let mut start = 0;
            loop {
                let page = match client
                    .get_server_sockets(proto::GetServerSocketsRequest {
                        server_id: id,
                        start_socket_id: start,
                        max_results: self.args.page_size,
                    })
                    .await
                {
                    Ok(page) => page.into_inner(),
                    // The server went away during the walk: no more sockets.
                    Err(s) if s.code() == tonic::Code::NotFound => break,
                    Err(s) => return Err(self.failure(&s)),
                };
                let last = page.socket_ref.iter().map(|r| r.socket_id).max();
                ids.extend(page.socket_ref.iter().map(|r| r.socket_id));
                match last.and_then(|id| next_start(page.end, start, id)) {
                    Some(next) => start = next,
                    None => break,
                }
            }
            out["sockets"] = self.sockets(client, ids.into_iter()).await?;
        }
        Ok(out)
    }

    async fn sockets(
        &self,
        client: &mut Client,
        ids: impl Iterator<Item = i64>,
    ) -> Result<Value, Failure> {
        let mut out = Vec::new();
        for id in ids {
            let socket = client
                .get_socket(proto::GetSocketRequest {
                    socket_id: id,
                    summary: false,
                })
                .await;
            match socket.map(|s| s.into_inner().socket) {
                Ok(Some(s)) => out.push(socket_json(id, &s)),
                Ok(None) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(self.failure(&s)),
            }
        }
        Ok(Value::Array(out))
    }
}

/// Seconds of 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
const YEAR_10000: i64 = 253_402_300_800;

fn time(t: Option<&prost_types::Timestamp>) -> Value {
    // A peer may send any time; only 1970 to 9999 print as RFC 3339.
    let Some(t) = t.filter(|t| (0..YEAR_10000).contains(&t.seconds)) else {
        return Value::Null;
    };
    let Ok(t) = SystemTime::try_from(*t) else {
        return Value::Null;
    };
    json!(humantime::format_rfc3339_millis(t).to_string())
}

fn state_name(data: Option<&proto::ChannelData>) -> &'static str {
    use proto::channel_connectivity_state::State;
    let state = data
        .and_then(|d| d.state.as_ref())
        .and_then(|s| State::try_from(s.state).ok())
        .unwrap_or(State::Unknown);
    match state {
        State::Unknown => "UNKNOWN",
        State::Idle => "IDLE",
        State::Connecting => "CONNECTING",
        State::Ready => "READY",
        State::TransientFailure => "TRANSIENT_FAILURE",
        State::Shutdown => "SHUTDOWN",
    }
}

fn calls_json(
    started: i64,
    succeeded: i64,
    failed: i64,
    last: Option<&prost_types::Timestamp>,
) -> Value {
    json!({ "started": started, "succeeded": succeeded, "failed": failed, "last_started": time(last) })
}

fn trace_json(trace: Option<&proto::ChannelTrace>) -> Value {
    use proto::channel_trace_event::Severity;
    let Some(trace) = trace else {
        return Value::Null;
    };
    json!({
        "events_logged": trace.num_events_logged,
        "created": time(trace.creation_timestamp.as_ref()),
        "events": trace.events.iter().map(|e| json!({
            "time": time(e.timestamp.as_ref()),
            "severity": match Severity::try_from(e.severity).unwrap_or(Severity::CtUnknown) {
                Severity::CtInfo => "INFO",
                Severity::CtWarning => "WARNING",
                Severity::CtError => "ERROR",
                Severity::CtUnknown => "UNKNOWN",
            },
            "description": e.description,
        })).collect::<Vec<_>>(),
    })
}

/// A channel's or subchannel's id, target, state, calls and trace.
fn data_json(id: i64, data: Option<&proto::ChannelData>) -> Value {
    let d = data.cloned().unwrap_or_default();
    json!({
        "id": id,
        "target": d.target,
        "state": state_name(data),
        "calls": calls_json(d.calls_started, d.calls_succeeded, d.calls_failed, d.last_call_started_timestamp.as_ref()),
        "trace": trace_json(d.trace.as_ref()),
    })
}

fn address(a: Option<&proto::Address>) -> Value {
    use proto::address::Address as A;
    match a.and_then(|a| a.address.as_ref()) {
        Some(A::TcpipAddress(t)) => {
            let ip = match t.ip_address.len() {
                4 => <[u8; 4]>::try_from(t.ip_address.as_slice())
                    .map(|b| std::net::IpAddr::from(b).to_string())
                    .ok(),
                16 => <[u8; 16]>::try_from(t.ip_address.as_slice())
                    .map(|b| std::net::IpAddr::from(b).to_string())
                    .ok(),
                _ => None,
            };
            match ip {
                Some(ip) if ip.contains(':') => json!(format!("[{ip}]:{}", t.port)),
                Some(ip) => json!(format!("{ip}:{}", t.port)),
                None => json!(format!("?:{}", t.port)),
            }
        }
        Some(A::UdsAddress(u)) => json!(format!("unix:{}", u.filename)),
        Some(A::OtherAddress(o)) => json!(o.name),
        None => Value::Null,
    }
}

fn socket_json(id: i64, s: &proto::Socket) -> Value {
    let d = s.data.clone().unwrap_or_default();
    json!({
        "id": id,
        "local": address(s.local.as_ref()),
        "remote": address(s.remote.as_ref()),
        "remote_name": s.remote_name,
        "streams": { "started": d.streams_started, "succeeded": d.streams_succeeded, "failed": d.streams_failed },
        "messages": { "sent": d.messages_sent, "received": d.messages_received },
        "keepalives_sent": d.keep_alives_sent,
        "last_local_stream": time(d.last_local_stream_created_timestamp.as_ref()),
        "last_remote_stream": time(d.last_remote_stream_created_timestamp.as_ref()),
        "local_flow_control_window": d.local_flow_control_window,
        "remote_flow_control_window": d.remote_flow_control_window,
        "tls": s.security.as_ref().map(|_| true),
    })
}

fn calls_text(v: &Value) -> String {
    format!(
        "calls {} started, {} ok, {} failed",
        v["started"], v["succeeded"], v["failed"]
    )
}

fn last_event(v: &Value) -> String {
    v["trace"]["events"]
        .as_array()
        .and_then(|e| e.last())
        .map(|e| {
            format!(
                "  last event {} {}",
                e["time"].as_str().unwrap_or("?"),
                e["description"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

fn socket_text(indent: &str, s: &Value) {
    println!(
        "{indent}socket {}  {} -> {}  streams {} started, {} ok, {} failed  keepalives {}",
        s["id"],
        s["local"].as_str().unwrap_or("-"),
        s["remote"].as_str().unwrap_or("-"),
        s["streams"]["started"],
        s["streams"]["succeeded"],
        s["streams"]["failed"],
        s["keepalives_sent"],
    );
}

fn channel_text(indent: &str, c: &Value) {
    println!(
        "{indent}channel {}  {}  {}  {}",
        c["id"],
        c["target"].as_str().unwrap_or(""),
        c["state"].as_str().unwrap_or(""),
        calls_text(&c["calls"])
    );
    let inner = format!("{indent}  ");
    for child in c["channels"].as_array().into_iter().flatten() {
        channel_text(&inner, child);
    }
    for s in c["subchannels"].as_array().into_iter().flatten() {
        println!(
            "{inner}subchannel {}  {}  {}  {}{}",
            s["id"],
            s["target"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            calls_text(&s["calls"]),
            last_event(s)
        );
        for socket in s["sockets"].as_array().into_iter().flatten() {
            socket_text(&format!("{inner}  "), socket);
        }
    }
    for socket in c["sockets"].as_array().into_iter().flatten() {
        socket_text(&inner, socket);
    }
}

fn print_text(tree: &Value) {
    let channels = tree["channels"].as_array().map_or(&[][..], Vec::as_slice);
    let servers = tree["servers"].as_array().map_or(&[][..], Vec::as_slice);
    if channels.is_empty() && servers.is_empty() {
        println!("no channels and no servers");
    }
    for c in channels {
        channel_text("", c);
    }
    for s in servers {
        let listening: Vec<&str> = s["listen_sockets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["local"].as_str())
            .collect();
        println!(
            "server {}  {}  listening on {}",
            s["id"],
            calls_text(&s["calls"]),
            if listening.is_empty() {
                "-".to_owned()
            } else {
                listening.join(", ")
            }
        );
        for socket in s["sockets"].as_array().into_iter().flatten() {
            socket_text("  ", socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_stops_at_the_end_and_on_ids_that_do_not_move_forward() {
        assert_eq!(next_start(false, 0, 7), Some(8));
        assert_eq!(next_start(true, 0, 7), None);
        assert_eq!(next_start(false, 10, 3), None, "a page below its start");
        assert_eq!(next_start(false, 0, i64::MAX), None, "no overflow");
    }

    #[test]
    fn times_outside_rfc_3339_print_as_null() {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        assert_eq!(time(Some(&at(-1))), Value::Null);
        assert_eq!(time(Some(&at(YEAR_10000))), Value::Null);
        assert_eq!(time(Some(&at(i64::MIN))), Value::Null);
        assert_eq!(time(Some(&at(0))), json!("1970-01-01T00:00:00.000Z"));
        assert_eq!(time(None), Value::Null);
    }
}
