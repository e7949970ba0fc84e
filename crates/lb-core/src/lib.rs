//! The model of client-side gRPC load balancing: what every other `grpc-lb` crate
//! is written against.
//!
//! The flow, as in grpc-go's `balancer` package:
//!
//! 1. A [`Resolver`] (built by a [`ResolverBuilder`] chosen by the target's scheme)
//!    watches a naming system and pushes complete [`ResolverState`]s to the channel.
//! 2. The channel hands them to the [`Balancer`] (built by a [`BalancerBuilder`] chosen
//!    by the [`ServiceConfig`]), which creates [`SubConn`]s through the [`ClientConn`]
//!    it is given, connects them and watches their [`ConnectivityState`]s.
//! 3. The balancer publishes an aggregate state and a [`Picker`]; every RPC asks the
//!    current picker for a subconn, without blocking and without a lock.
//!
//! This crate has no transport and no async runtime: `lb-tonic` implements the channel
//! over HTTP/2, `lb-policies` the built-in policies, `lb-resolvers` DNS, etcd and
//! ZooKeeper discovery. A simple policy is a [`base::PickerBuilder`]:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
//! use lb_core::{BalancerRegistry, LbConfig, Pick, PickInfo, PickResult, Picker};
//!
//! /// Round robin in a dozen lines: the base helper does the connection bookkeeping.
//! #[derive(Clone)]
//! struct Rr;
//! struct RrPicker { ready: Vec<ReadySubConn>, next: AtomicUsize }
//!
//! impl Picker for RrPicker {
//!     fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
//!         let i = self.next.fetch_add(1, Ordering::Relaxed) % self.ready.len();
//!         PickResult::Pick(Pick::new(&self.ready[i].subconn))
//!     }
//! }
//! impl PickerBuilder for Rr {
//!     fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
//!         Arc::new(RrPicker { ready: ready.to_vec(), next: AtomicUsize::new(0) })
//!     }
//! }
//!
//! let mut registry = BalancerRegistry::new();
//! registry.register(BaseBuilder::new("my_round_robin", Rr));
//! assert!(registry.get("my_round_robin").is_some());
//! ```
//!
//! With the `test-util` feature, [`test_util::Harness`] drives any balancer the way a
//! channel would and records what it does.

#![warn(missing_docs)]

mod address;
mod attributes;
mod error;
mod load;
mod picker;
mod state;
mod status;
mod subconn;
mod target;

pub mod balancer;
pub mod base;
pub mod channelz;
pub mod child;
pub mod hierarchy;
pub mod resolver;
pub mod routing;
pub mod service_config;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use address::{Address, Authority};
pub use attributes::{AttributeValue, Attributes, Weight};
pub use balancer::BalancerRegistry;
pub use balancer::{
    Balancer, BalancerBuilder, BuildOptions, ClientConn, ClientConnState, LbConfig, SubConnOptions,
    TimerHandle, TimerId,
};
pub use error::{Error, ResolutionNote, SharedError, closest, error_chain};
pub use load::{LoadReport, LoadReportListener, LoadReportWatch, ReportSource};
pub use picker::{
    Callbacks, DoneInfo, FailPicker, IdlePicker, OnDone, Pick, PickInfo, PickResult, Picker,
    QueuePicker,
};
pub use resolver::ResolverRegistry;
pub use resolver::{Resolver, ResolverBuilder, ResolverState};
pub use service_config::ServiceConfig;
pub use state::{ConnectivityState, IllegalTransition, StateTracker};
pub use status::{Code, Status};
pub use subconn::{
    HealthCheckFailed, SubConn, SubConnHandle, SubConnId, SubConnState, failure_message,
};
pub use target::Target;
