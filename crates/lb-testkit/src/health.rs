//! A `grpc.health.v1.Health` service whose `Watch` streams end after a while, with
//! `UNAVAILABLE`, as a proxy's stream idle timeout ends them (Envoy's default is 5
//! minutes): the statuses are tonic-health's, the streams are cut here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthService;

/// tonic-health, with `Watch` streams that last `ttl` at most.
pub(crate) struct ExpiringHealth {
    inner: HealthService,
    ttl: Duration,
    /// `Watch` calls received.
    watches: Arc<AtomicUsize>,
}

impl ExpiringHealth {
    pub(crate) fn new(inner: HealthService, ttl: Duration, watches: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            ttl,
            watches,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ExpiringHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.watches.fetch_add(1, Ordering::Relaxed);
        let mut answers = self.inner.watch(request).await?.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ttl = self.ttl;
        tokio::spawn(async move {
            let until = tokio::time::sleep(ttl);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    () = &mut until => {
                        let _ = tx.send(Err(Status::unavailable("stream idle timeout"))).await;
                        return;
                    }
                    answer = answers.next() => match answer {
                        Some(answer) => {
                            if tx.send(answer).await.is_err() {
                                return; // the client went away
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
