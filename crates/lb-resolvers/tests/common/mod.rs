//! What the registry tests share: a `ClientConn` that keeps the latest state and
//! counts errors, and waiting for an expected address set.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::resolver::ClientConn;
use lb_core::{Resolver, ResolverBuilder, ResolverState, SharedError, Target};
use tokio::sync::watch;

/// Long enough for any registry operation here; only reached when something is wrong.
pub const WAIT: Duration = Duration::from_secs(20);

struct Latest {
    state: watch::Sender<Option<ResolverState>>,
    errors: watch::Sender<usize>,
    updates: Arc<AtomicUsize>,
    last_error: Arc<Mutex<String>>,
}

impl ClientConn for Latest {
    fn update_state(&self, state: ResolverState) {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.state.send_replace(Some(state));
    }
    fn report_error(&self, error: SharedError) {
        *self.last_error.lock().unwrap() = error.to_string();
        self.errors.send_modify(|n| *n += 1);
    }
}

/// A running resolver and what it reported.
pub struct Watching {
    _resolver: Box<dyn Resolver>,
    updates: Arc<AtomicUsize>,
    last_error: Arc<Mutex<String>>,
    pub state: watch::Receiver<Option<ResolverState>>,
    pub errors: watch::Receiver<usize>,
}

/// Starts `builder` on `target`.
pub fn watching(builder: &dyn ResolverBuilder, target: &str) -> Watching {
    let (state, state_rx) = watch::channel(None);
    let (errors, errors_rx) = watch::channel(0);
    let updates = Arc::new(AtomicUsize::new(0));
    let last_error = Arc::new(Mutex::new(String::new()));
    let resolver = builder
        .build(
            &Target::parse(target).unwrap(),
            Arc::new(Latest {
                state,
                errors,
                updates: updates.clone(),
                last_error: last_error.clone(),
            }),
        )
        .unwrap();
    Watching {
        _resolver: resolver,
        updates,
        last_error,
        state: state_rx,
        errors: errors_rx,
    }
}

/// The error a builder returns for `target`.
pub fn build_error(builder: &dyn ResolverBuilder, target: &str) -> String {
    let (state, _s) = watch::channel(None);
    let (errors, _e) = watch::channel(0);
    builder
        .build(
            &Target::parse(target).unwrap(),
            Arc::new(Latest {
                state,
                errors,
                updates: Arc::default(),
                last_error: Arc::default(),
            }),
        )
        .err()
        .unwrap()
        .to_string()
}

pub fn addrs(state: &ResolverState) -> Vec<String> {
    let mut a: Vec<_> = state
        .addresses
        .iter()
        .map(|a| a.addr().to_owned())
        .collect();
    a.sort();
    a
}

impl Watching {
    /// Waits (at most `within`) until the addresses are `expected`.
    pub async fn expect_addrs(&mut self, expected: &[&str], within: Duration) -> ResolverState {
        let found = tokio::time::timeout(
            within,
            self.state
                .wait_for(|s| s.as_ref().is_some_and(|s| addrs(s) == expected)),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        match found {
            Ok(Ok(Some(state))) => state,
            _ => panic!(
                "addresses never became {expected:?}; last: {:?}",
                self.state.borrow().as_ref().map(addrs)
            ),
        }
    }

    /// Waits (at most [`WAIT`]) until there are `n` addresses.
    pub async fn expect_count(&mut self, n: usize) -> ResolverState {
        let found = tokio::time::timeout(
            WAIT,
            self.state
                .wait_for(|s| s.as_ref().is_some_and(|s| s.addresses.len() == n)),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        match found {
            Ok(Ok(Some(state))) => state,
            _ => panic!(
                "never {n} addresses; last: {}",
                self.state
                    .borrow()
                    .as_ref()
                    .map_or(0, |s| s.addresses.len())
            ),
        }
    }

    /// The current addresses.
    pub fn current(&self) -> Vec<String> {
        self.state.borrow().as_ref().map(addrs).unwrap_or_default()
    }

    /// Waits until an error is reported after this call.
    pub async fn expect_error_after(&mut self, before: usize) {
        tokio::time::timeout(WAIT, self.errors.wait_for(|n| *n > before))
            .await
            .expect("no error was reported")
            .unwrap();
    }

    /// Waits until a state is published after `before` states; returns its addresses.
    pub async fn expect_update_after(&mut self, before: usize) -> Vec<String> {
        tokio::time::timeout(WAIT, async {
            while self.update_count() <= before {
                if self.state.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .expect("no state was published");
        self.current()
    }

    /// States published so far.
    pub fn update_count(&self) -> usize {
        self.updates.load(Ordering::SeqCst)
    }

    /// The last error reported, as text.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap().clone()
    }

    /// Errors reported so far.
    pub fn error_count(&self) -> usize {
        *self.errors.borrow()
    }
}
