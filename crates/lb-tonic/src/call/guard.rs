//! One RPC counted in the channel's activity (for idleness), from the call until
//! its response ends or is dropped.

use std::sync::Arc;

use crate::control::Core;

/// One RPC in flight: counted from the call until its response ends or is dropped.
pub(crate) struct CallGuard(Arc<Core>);

impl CallGuard {
    pub(crate) fn start(core: Arc<Core>) -> Self {
        core.activity.call_started();
        Self(core)
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.0
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.activity.call_ended();
    }
}
