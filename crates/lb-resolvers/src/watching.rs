//! What the registry resolvers (etcd, ZooKeeper) share: a resolver that is a
//! background watch task, and registry metadata as address attributes.

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use lb_core::resolver::BuildError;
use lb_core::{Address, Resolver, Target, Weight};
use serde_json::Value;

use crate::Metadata;

/// A resolver whose work is one background task that watches a registry. The
/// watch keeps the set current, so `resolve_now` has nothing to do; dropping it stops
/// the task.
pub(crate) struct WatchingResolver {
    task: tokio::task::AbortHandle,
}

impl Resolver for WatchingResolver {
    fn resolve_now(&self) {}
}

impl Drop for WatchingResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The service name of `target` (its endpoint without slashes), or an error naming
/// the target.
pub(crate) fn service_name(target: &Target) -> Result<&str, BuildError> {
    let service = target.endpoint().trim_matches('/');
    if service.is_empty() {
        return Err(format!("target `{target}`: empty service name").into());
    }
    Ok(service)
}

/// Starts `watch` on the current tokio runtime as the resolver's task.
pub(crate) fn spawn<F>(target: &Target, watch: F) -> Result<Box<dyn Resolver>, BuildError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| format!("the resolver for `{target}` needs a tokio runtime"))?;
    Ok(Box::new(WatchingResolver {
        task: runtime.spawn(watch).abort_handle(),
    }))
}

/// `address` with registry `metadata` as its [`Metadata`] attribute and, when
/// `metadata.weight` is an integer from 1 to 2^32-1, its [`Weight`]. An invalid weight
/// is dropped with a warning (the address weighs 1).
pub(crate) fn with_metadata(mut address: Address, metadata: Option<&Value>) -> Address {
    let Some(metadata) = metadata.filter(|m| !m.is_null()) else {
        return address;
    };
    if let Some(weight) = metadata.get("weight") {
        match weight
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .and_then(Weight::new)
        {
            Some(w) => address = address.with_attribute(w),
            None => tracing::warn!(
                addr = %address,
                %weight,
                "ignoring an invalid weight (want an integer from 1 to 2^32-1)"
            ),
        }
    }
    address.with_attribute(Metadata(metadata.clone()))
}

/// The background task that keeps a registration alive. [`Keeper::stop`] asks it to
/// deregister and waits; dropping the keeper aborts the task without deregistering,
/// as a dying process would (the registry expires the entry).
pub(crate) struct Keeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Spawns `keep(stopped)`; `stopped` resolves when [`Keeper::stop`] is called.
    pub(crate) fn spawn<F>(keep: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            stop: Some(stop),
            task: Some(tokio::spawn(keep(stopped))),
        }
    }

    /// Asks the task to deregister and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
