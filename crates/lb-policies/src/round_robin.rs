//! `round_robin`: every address connected, RPCs spread evenly over the ready ones.
//!
//! Built on [`lb_core::base`]: one subconn per address, all kept connected (an `Idle`
//! subconn reconnects at once), and the aggregate state is `Ready` if any subconn is,
//! else `Connecting` if any is connecting or idle, else `TransientFailure` (which asks
//! the resolver to re-resolve). A subconn that failed counts as failing until it is
//! ready again, so a set of dead backends reads `TransientFailure`, not an endless
//! `Connecting`. Address updates keep the subconns of unchanged addresses.
//!
//! The picker cycles over the ready subconns from a random start. Config: `{}`.

use std::sync::Arc;

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{LbConfig, Pick, PickInfo, PickResult, Picker, SubConn};

use crate::cursor::Cursor;

/// The policy's name in service configs.
pub const NAME: &str = "round_robin";

/// The `round_robin` balancer builder, ready to register.
pub fn builder() -> BaseBuilder<RoundRobin> {
    BaseBuilder::new(NAME, RoundRobin)
}

/// The picker builder of `round_robin`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl PickerBuilder for RoundRobin {
    fn build(&mut self, ready: &[ReadySubConn], _: Option<&LbConfig>) -> Arc<dyn Picker> {
        Arc::new(RoundRobinPicker::new(
            ready.iter().map(|r| r.subconn.clone()).collect(),
        ))
    }
}

/// Cycles over a fixed, non-empty list of subconns.
pub struct RoundRobinPicker {
    subconns: Box<[SubConn]>,
    cursor: Cursor,
}

impl RoundRobinPicker {
    /// A picker over `subconns`, which must not be empty.
    pub fn new(subconns: Box<[SubConn]>) -> Self {
        Self {
            cursor: Cursor::new(subconns.len()),
            subconns,
        }
    }
}

impl Picker for RoundRobinPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        match self.subconns.get(self.cursor.next()) {
            Some(subconn) => PickResult::Pick(Pick::new(subconn)),
            None => PickResult::Queue,
        }
    }
}
