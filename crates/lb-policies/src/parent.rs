//! What the tree policies (`priority`, `weighted_target`, `xds_cluster_manager`)
//! share: every call from the channel goes to their children, then the parent
//! follows what the children published. Each policy says only how it takes a new
//! config and how it settles.

use lb_core::child::ChildManager;
use lb_core::{
    Balancer, ClientConn, ClientConnState, Error, SharedError, SubConn, SubConnState, TimerId,
};

/// A parent policy over a [`ChildManager`] keyed by child name.
pub(crate) trait Parent: Send + 'static {
    /// Its children.
    fn children(&mut self) -> &mut ChildManager<String>;

    /// A new config and address list.
    fn update(&mut self, state: ClientConnState, cc: &mut dyn ClientConn) -> Result<(), Error>;

    /// After a call reached the children: follows what they published, and
    /// publishes its own state and picker if they changed.
    fn settle(&mut self, cc: &mut dyn ClientConn);

    /// One of its own timers (no hop left) went off. None by default.
    fn own_timer(&mut self, _id: u64, _cc: &mut dyn ClientConn) {}

    /// The policy is closing, before its children are: cancel its own timers.
    fn closing(&mut self) {}
}

/// A [`Parent`] as a [`Balancer`].
pub(crate) struct ParentBalancer<P>(pub(crate) P);

impl<P: Parent> Balancer for ParentBalancer<P> {
    fn update_client_conn_state(
        &mut self,
        state: ClientConnState,
        cc: &mut dyn ClientConn,
    ) -> Result<(), Error> {
        self.0.update(state, cc)
    }

    fn resolver_error(&mut self, error: SharedError, cc: &mut dyn ClientConn) {
        self.0.children().resolver_error(&error, cc);
        self.0.settle(cc);
    }

    fn update_subconn_state(
        &mut self,
        subconn: &SubConn,
        state: &SubConnState,
        cc: &mut dyn ClientConn,
    ) {
        self.0.children().update_subconn_state(subconn, state, cc);
        self.0.settle(cc);
    }

    fn exit_idle(&mut self, cc: &mut dyn ClientConn) {
        self.0.children().exit_idle(cc);
        self.0.settle(cc);
    }

    fn timer(&mut self, timer: TimerId, cc: &mut dyn ClientConn) {
        match timer.own_id() {
            Some(id) => self.0.own_timer(id, cc),
            None => self.0.children().timer(timer, cc),
        }
        self.0.settle(cc);
    }

    fn close(&mut self, cc: &mut dyn ClientConn) {
        self.0.closing();
        self.0.children().close(cc);
    }
}
