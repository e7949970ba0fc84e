//! CSDS (gRFC A40): `envoy.service.status.v3.ClientStatusDiscoveryService`, what
//! every xDS client of the process has: each resource it asked for, as the server
//! sent it, with its version, status (requested, does not exist, ACKed, NACKed) and
//! the last rejected update's error.

use std::pin::Pin;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, client_config::GenericXdsConfig,
    client_status_discovery_service_server::ClientStatusDiscoveryService,
};
use envoy_types::pb::google::protobuf::Timestamp;
use futures_util::Stream;
use lb_xds::XdsClient;
use lb_xds::client::CachedResource;
use tonic::{Request, Response, Status, Streaming};

/// The CSDS service over every [`XdsClient`] of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsdsService;

fn timestamp(t: SystemTime) -> Option<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(Timestamp {
        seconds: i64::try_from(d.as_secs()).ok()?,
        nanos: i32::try_from(d.subsec_nanos()).ok()?,
    })
}

fn config(r: &CachedResource, with_contents: bool) -> GenericXdsConfig {
    let status = if r.does_not_exist {
        ClientResourceStatus::DoesNotExist
    } else if r.error.is_some() {
        ClientResourceStatus::Nacked
    } else if r.value.is_some() {
        ClientResourceStatus::Acked
    } else {
        ClientResourceStatus::Requested
    };
    GenericXdsConfig {
        type_url: r.ty.type_url().to_owned(),
        name: r.name.clone(),
        version_info: r.version.clone(),
        xds_config: r.raw.clone().filter(|_| with_contents),
        last_updated: r.last_updated.and_then(timestamp),
        client_status: status as i32,
        error_state: r.error.as_ref().map(|details| UpdateFailureState {
            details: details.clone(),
            version_info: r
                .failed
                .as_ref()
                .map(|(v, _)| v.clone())
                .unwrap_or_default(),
            last_update_attempt: r.failed.as_ref().and_then(|(_, at)| timestamp(*at)),
            failed_configuration: None,
        }),
        ..Default::default()
    }
}

/// The status of every client.
fn status(request: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
    if !request.node_matchers.is_empty() {
        return Err(Status::invalid_argument(
            "node_matchers are not supported: a client reports itself",
        ));
    }
    let with_contents = !request.exclude_resource_contents;
    let config = XdsClient::all()
        .into_iter()
        .map(|client| ClientConfig {
            node: Some(client.node()),
            generic_xds_configs: client
                .dump()
                .iter()
                .map(|r| config(r, with_contents))
                .collect(),
            ..Default::default()
        })
        .collect();
    Ok(ClientStatusResponse { config })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsService {
    type StreamClientStatusStream = ResponseStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let requests = request.into_inner();
        let responses = futures_util::StreamExt::map(requests, |r| r.and_then(|r| status(&r)));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        status(request.get_ref()).map(Response::new)
    }
}
