//! `xds_cluster_impl_experimental`: what a cluster applies to each RPC before its
//! endpoint policy picks, as grpc-go's `clusterimpl`: drops by category (EDS
//! `drop_overloads`) and circuit breaking (`max_requests`, counted per cluster and
//! EDS service across every channel of the process).
//!
//! ```json
//! {"xds_cluster_impl_experimental": {
//!    "cluster": "c1", "edsServiceName": "c1-eds", "maxConcurrentRequests": 1024,
//!    "dropCategories": [{"category": "lb", "requestsPerMillion": 10000}],
//!    "childPolicy": [{"round_robin": {}}]}}
//! ```
//!
//! A dropped RPC fails at once with `UNAVAILABLE`, wait-for-ready or not. With
//! `"error"` set (this crate's resolver sets it for a cluster that cannot be
//! built), every RPC fails with that message and the child gets no addresses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lb_core::child::{ChildPolicy, GracefulSwitch, parse_child_policy};
use lb_core::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, ClientConn, ClientConnState,
    ConnectivityState, DoneInfo, Error, FailPicker, LbConfig, OnDone, PickInfo, PickResult, Picker,
    SharedError, Status, SubConn, SubConnState, TimerId,
};
use serde_json::Value;

/// The policy's name (grpc-go's).
pub const NAME: &str = "xds_cluster_impl_experimental";

/// The builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterImpl;

/// The parsed config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterImplConfig {
    /// The cluster.
    pub cluster: String,
    /// Its EDS service name.
    pub eds_service_name: String,
    /// The most RPCs in flight to it, process-wide.
    pub max_requests: u32,
    /// Drop categories: name and parts per million.
    pub drops: Vec<(Arc<str>, u32)>,
    /// Fail every RPC with this, instead of picking.
    pub error: Option<String>,
    /// The endpoint policy.
    pub child: ChildPolicy,
}

fn err(field: &str, reason: &str) -> Error {
    Error::lb_config(NAME, field, reason)
}

impl BalancerBuilder for ClusterImpl {
    fn name(&self) -> &str {
        NAME
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ClusterImplBalancer {
            switch: GracefulSwitch::new(options.clone()),
            config: None,
            counter: None,
        })
    }

    fn parse_config(&self, config: &Value) -> Result<LbConfig, Error> {
        self.parse_config_in(config, &BalancerRegistry::new())
    }

    fn parse_config_in(
        &self,
        config: &Value,
        registry: &BalancerRegistry,
    ) -> Result<LbConfig, Error> {
        let obj = config
            .as_object()
            .ok_or_else(|| err("$", "expected a JSON object"))?;
        let string = |key: &str| -> Result<String, Error> {
            match obj.get(key) {
                None => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(err(key, "expected a string")),
            }
        };
        let cluster = string("cluster")?;
        if cluster.is_empty() {
            return Err(err("cluster", "is required"));
        }
        let max_requests = match obj.get("maxConcurrentRequests") {
            None => crate::resource::DEFAULT_MAX_REQUESTS,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| err("maxConcurrentRequests", "expected a non-negative integer"))?,
        };
        let mut drops = Vec::new();
        if let Some(list) = obj.get("dropCategories") {
            let list = list
                .as_array()
                .ok_or_else(|| err("dropCategories", "expected a list"))?;
            for (i, d) in list.iter().enumerate() {
                let category = d.get("category").and_then(Value::as_str).ok_or_else(|| {
                    err(
                        &format!("dropCategories[{i}].category"),
                        "expected a string",
                    )
                })?;
                let per_million = d
                    .get("requestsPerMillion")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        err(
                            &format!("dropCategories[{i}].requestsPerMillion"),
                            "expected a non-negative integer",
                        )
                    })?;
                drops.push((Arc::from(category), per_million.min(1_000_000)));
            }
        }
        let error = match obj.get("error") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(err("error", "expected a string")),
        };
        let child = obj
            .get("childPolicy")
            .ok_or_else(|| err("childPolicy", "is required"))
            .and_then(|c| parse_child_policy(c, "childPolicy", NAME, registry))?;
        Ok(LbConfig::new(ClusterImplConfig {
            cluster,
            eds_service_name: string("edsServiceName")?,
            max_requests,
            drops,
            error,
            child,
        }))
    }
}

type Counters = Mutex<HashMap<(String, String), std::sync::Weak<AtomicU32>>>;

/// The in-flight counter of a cluster and EDS service, shared by every channel of
/// the process (grpc-go's `clusterRequestsCounter`).
fn counter(cluster: &str, service: &str) -> Arc<AtomicU32> {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    let mut all = COUNTERS
        .get_or_init(Counters::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (cluster.to_owned(), service.to_owned());
    if let Some(c) = all.get(&key).and_then(std::sync::Weak::upgrade) {
        return c;
    }
    let c = Arc::new(AtomicU32::new(0));
    all.retain(|_, w| w.strong_count() > 0);
    all.insert(key, Arc::downgrade(&c));
    c
}

struct ClusterImplBalancer {
    switch: GracefulSwitch,
    config: Option<Arc<ClusterImplConfig>>,
    counter: Option<Arc<AtomicU32>>,
}

impl ClusterImplBalancer {
    fn with_child(
        &mut self,
        cc: &mut dyn ClientConn,
        f: impl FnOnce(&mut GracefulSwitch, &mut dyn ClientConn),
    ) {
        f(&mut self.switch, cc);
        if self.switch.take_published() {
            self.publish(cc);
        }
    }

    fn publish(&self, cc: &mut dyn ClientConn) {
        let (Some(config), Some(counter)) = (&self.config, &self.counter) else {
            return;
        };
        if let Some(error) = &config.error {
            let status = Status::unavailable(error.clone());
            cc.update_state(
                ConnectivityState::TransientFailure,
                Arc::new(FailPicker(status)),
            );
            return;
        }
        let state = self.switch.state();
        cc.update_state(
            state,
            Arc::new(ClusterImplPicker {
                child: self.switch.picker(),
                // Drops apply only while the child is READY, as grpc-go's.
                drop: state == ConnectivityState::Ready,
                config: config.clone(),
                done: Arc::new(Release(counter.clone())),
                counter: counter.clone(),
            }),
        );
    }
}

impl Balancer for ClusterImplBalancer {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        let config = state
            .config
            .as_ref()
            .and_then(|c| c.get::<ClusterImplConfig>())
            .cloned()
            .ok_or_else(|| err("$", "a config with a cluster and a childPolicy is required"))?;
        let config = Arc::new(config);
        self.counter = Some(counter(&config.cluster, &config.eds_service_name));
        self.config = Some(config.clone());
        let child = config.child.clone();
        let mut state = state;
        if config.error.is_some() {
            state.addresses.clear();
        }
        let mut result = Ok(());
        self.with_child(cc, |s, cc| {
            result = s
                .switch_to(&child.name, cc)
                .and_then(|()| s.update_client_conn_state(state.with_config(child.config), cc));
        });
        // A new config changes the picker even when the child published nothing.
        self.publish(cc);
        result
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.with_child(cc, |s, cc| s.resolver_error(error, cc));
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        self.with_child(cc, |s, cc| s.update_subconn_state(subconn, state, cc));
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.with_child(cc, |s, cc| s.exit_idle(cc));
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        self.with_child(cc, |s, cc| s.timer(timer, cc));
    }

    fn close(&mut self, cc: &mut dyn ClientConn) {
        self.switch.close(cc);
    }
}

/// Gives back an in-flight slot when the RPC ends.
struct Release(Arc<AtomicU32>);

impl OnDone for Release {
    fn done(&self, _: &DoneInfo<'_>) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct ClusterImplPicker {
    child: Arc<dyn Picker>,
    drop: bool,
    config: Arc<ClusterImplConfig>,
    counter: Arc<AtomicU32>,
    done: Arc<dyn OnDone>,
}

impl Picker for ClusterImplPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        for (category, per_million) in self.config.drops.iter().filter(|_| self.drop) {
            if *per_million > 0 && fastrand::u32(0..1_000_000) < *per_million {
                return PickResult::Drop(Status::unavailable(format!(
                    "RPC dropped by cluster {}'s drop category {category}",
                    self.config.cluster
                )));
            }
        }
        match self.child.pick(info) {
            PickResult::Pick(pick) => {
                // Count first, then check: two racing picks cannot both take the
                // last slot.
                let before = self.counter.fetch_add(1, Ordering::AcqRel);
                if before >= self.config.max_requests {
                    self.counter.fetch_sub(1, Ordering::AcqRel);
                    return PickResult::Drop(Status::unavailable(format!(
                        "cluster {} has {} RPCs in flight, its max_requests",
                        self.config.cluster, self.config.max_requests
                    )));
                }
                PickResult::Pick(pick.with_on_done(self.done.clone()))
            }
            other => other,
        }
    }
}
