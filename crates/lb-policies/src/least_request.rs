//! `least_request` (gRFC A48): each RPC goes to the least loaded of a few randomly
//! drawn backends, the load being the number of RPCs in flight.
//!
//! Connection handling is `round_robin`'s ([`lb_core::base`]). Each subconn has an
//! outstanding-RPC counter, kept across pickers for as long as the subconn lives: a
//! pick draws `choiceCount` distinct ready subconns at random, takes the one with
//! the fewest RPCs in flight, and increments its counter; the pick's completion
//! callback decrements it, whatever the RPC's status. No lock and no allocation per
//! pick.
//!
//! A slow backend accumulates RPCs in flight and is drawn in vain; a stalled one
//! (its process stopped, its connections open) keeps the RPCs it has until their
//! deadlines, and gets no more once it holds more than the others.
//!
//! Config, as A48: `{"choiceCount": 2}`: 2 by default; below 2 is an error, above 10
//! counts as 10. Registered as `least_request` and, for configs written for grpc-go,
//! `least_request_experimental`. Choices are drawn without replacement (see
//! `choice.rs`; grpc-go draws with replacement).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lb_core::base::{BaseBuilder, PickerBuilder, ReadySubConn};
use lb_core::{
    DoneInfo, Error, LbConfig, OnDone, Pick, PickInfo, PickResult, Picker, SubConn, SubConnId,
};

use crate::choice::{Choices, MAX_CHOICES};
use crate::config::Fields;

/// The policy's name in service configs.
pub const NAME: &str = "least_request";

/// grpc-go's name for the same policy.
pub const GRPC_GO_NAME: &str = "least_request_experimental";

/// The `least_request` balancer builder, ready to register.
pub fn builder() -> BaseBuilder<LeastRequest> {
    BaseBuilder::new(NAME, LeastRequest::default())
}

/// The same policy under grpc-go's name, `least_request_experimental`.
pub fn grpc_go_builder() -> BaseBuilder<LeastRequest> {
    BaseBuilder::new(GRPC_GO_NAME, LeastRequest::default())
}

/// The parsed config of `least_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeastRequestConfig {
    /// How many ready subconns a pick compares (2 to 10).
    pub choice_count: u32,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        Self { choice_count: 2 }
    }
}

/// The picker builder of `least_request`: one channel's outstanding-RPC counters.
#[derive(Debug, Clone, Default)]
pub struct LeastRequest {
    counters: HashMap<SubConnId, Arc<Outstanding>>,
}

impl PickerBuilder for LeastRequest {
    fn build(&mut self, ready: &[ReadySubConn], config: Option<&LbConfig>) -> Arc<dyn Picker> {
        let config = config
            .and_then(LbConfig::get::<LeastRequestConfig>)
            .copied()
            .unwrap_or_default();
        let entries = ready
            .iter()
            .map(|r| Counted {
                subconn: r.subconn.clone(),
                load: self.counters.entry(r.subconn.id()).or_default().clone(),
            })
            .collect();
        Arc::new(LeastRequestPicker {
            entries,
            choices: config.choice_count as usize,
        })
    }

    fn subconn_removed(&mut self, subconn: &SubConn) {
        self.counters.remove(&subconn.id());
    }

    fn parse_config(&self, policy: &str, config: &serde_json::Value) -> Result<LbConfig, Error> {
        // Errors name this policy's registered name.
        let name = if policy == GRPC_GO_NAME {
            GRPC_GO_NAME
        } else {
            NAME
        };
        let f = Fields::of(name, config)?;
        let choice_count = f.number("choiceCount", 2, None)?;
        if choice_count < 2 {
            return Err(f.error(
                "choiceCount",
                format!("must be at least 2, got {choice_count}"),
            ));
        }
        Ok(LbConfig::new(LeastRequestConfig {
            choice_count: choice_count.min(MAX_CHOICES as u32),
        }))
    }
}

/// A subconn's RPCs in flight, on a cache line of its own; decremented by the
/// completion callback.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Outstanding(AtomicU64);

impl Outstanding {
    /// RPCs in flight now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl OnDone for Outstanding {
    #[inline]
    fn done(&self, _: &DoneInfo<'_>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Counted {
    subconn: SubConn,
    load: Arc<Outstanding>,
}

/// Picks the least loaded of `choices` random ready subconns.
pub struct LeastRequestPicker {
    entries: Box<[Counted]>,
    choices: usize,
}

impl Picker for LeastRequestPicker {
    #[inline]
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let drawn = Choices::draw(self.entries.len(), self.choices);
        let mut best: Option<(&Counted, u64)> = None;
        for &i in drawn.as_slice() {
            let Some(entry) = self.entries.get(i as usize) else {
                continue;
            };
            let load = entry.load.get();
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((entry, load));
            }
        }
        match best {
            Some((entry, _)) => {
                entry.load.0.fetch_add(1, Ordering::Relaxed);
                PickResult::Pick(Pick::new(&entry.subconn).with_on_done(entry.load.clone()))
            }
            None => PickResult::Queue,
        }
    }
}
