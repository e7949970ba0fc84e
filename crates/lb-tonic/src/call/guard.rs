//! One RPC counted in the channel's activity (for idleness) and, with channelz and
//! the per-RPC counters on, in its channelz call counts, from the call until its response ends
//! or is dropped.

use std::sync::Arc;

use crate::control::Core;

/// One RPC in flight: counted from the call until its response ends or is dropped.
pub(crate) struct CallGuard {
    core: Arc<Core>,
    /// It ended with `OK` (else, when dropped, it failed).
    ok: bool,
}

impl CallGuard {
    pub(crate) fn start(core: Arc<Core>) -> Self {
        core.activity.call_started();
        if core.stats.count_channelz {
            core.stats.call_started();
        }
        Self { core, ok: false }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Whether the call's end is counted (so its code is worth reading).
    pub(crate) fn counts(&self) -> bool {
        self.core.stats.count_channelz
    }

    /// The call's status arrived: `OK` or not.
    pub(crate) fn ended(&mut self, ok: bool) {
        self.ok = ok;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.core.stats.count_channelz {
            self.core.stats.call_ended(self.ok);
        }
        self.core.activity.call_ended();
    }
}
