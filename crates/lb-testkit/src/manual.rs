//! A resolver that tests drive by hand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use lb_core::resolver::{BuildError, ClientConn};
use lb_core::{Address, Resolver, ResolverBuilder, ResolverRegistry, ResolverState, Target};

/// A resolver for the scheme `manual`: whatever the test pushes with
/// [`ManualResolver::update`] reaches the channel.
#[derive(Clone, Default)]
pub struct ManualResolver {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    cc: Option<Arc<dyn ClientConn>>,
    latest: Option<ResolverState>,
    resolve_now_calls: usize,
    built: usize,
}

impl ManualResolver {
    /// A resolver with nothing to say yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A registry with only this resolver; dial `manual:///anything`.
    pub fn registry(&self) -> ResolverRegistry {
        let mut r = ResolverRegistry::new();
        r.register(self.clone()).set_default_scheme("manual");
        r
    }

    /// Pushes a state (kept for a channel built later).
    pub fn update(&self, state: ResolverState) {
        let mut inner = self.lock();
        inner.latest = Some(state.clone());
        if let Some(cc) = &inner.cc {
            cc.update_state(state);
        }
    }

    /// Pushes these addresses.
    pub fn update_addrs(&self, addrs: &[SocketAddr]) {
        self.update(ResolverState::new(
            addrs.iter().map(|a| Address::from(*a)).collect(),
        ));
    }

    /// Reports a resolution error.
    pub fn report_error(&self, message: &str) {
        if let Some(cc) = &self.lock().cc {
            cc.report_error(Arc::new(std::io::Error::other(message.to_owned())));
        }
    }

    /// How often the channel asked to re-resolve.
    pub fn resolve_now_calls(&self) -> usize {
        self.lock().resolve_now_calls
    }

    /// Whether a channel's resolver is running (built and not yet dropped).
    pub fn is_running(&self) -> bool {
        self.lock().cc.is_some()
    }
}

struct Running(ManualResolver);

impl Resolver for Running {
    fn resolve_now(&self) {
        self.0.lock().resolve_now_calls += 1;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock().cc = None;
    }
}

impl ResolverBuilder for ManualResolver {
    fn scheme(&self) -> &str {
        "manual"
    }

    fn build(&self, _: &Target, cc: Arc<dyn ClientConn>) -> Result<Box<dyn Resolver>, BuildError> {
        let mut inner = self.lock();
        if let Some(state) = &inner.latest {
            cc.update_state(state.clone());
        }
        inner.cc = Some(cc);
        inner.built += 1;
        Ok(Box::new(Running(self.clone())))
    }
}
