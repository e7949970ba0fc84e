//! A channel's or subchannel's recent events (A14's `ChannelTrace`), in a bounded
//! buffer: the oldest event goes when a new one would not fit.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use super::Id;

/// How serious a trace event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// Normal operation: creation, state changes, resolver updates.
    Info,
    /// Something went wrong and was handled: a failed connection attempt.
    Warning,
    /// Something failed: a resolver error, a policy that rejected its config.
    Error,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceEvent {
    /// What happened.
    pub description: String,
    /// How serious it is.
    pub severity: Severity,
    /// When.
    pub at: SystemTime,
    /// The subchannel it is about (its creation or removal), if any.
    pub subchannel: Option<Id>,
    /// The child channel it is about, if any.
    pub channel: Option<Id>,
}

/// A trace as channelz shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceData {
    /// Events ever logged (more than `events.len()` once old ones were dropped).
    pub events_logged: u64,
    /// When the traced entity was created.
    pub created: SystemTime,
    /// The events kept, oldest first.
    pub events: Vec<TraceEvent>,
}

/// A bounded event buffer.
#[derive(Debug)]
pub struct Trace {
    created: SystemTime,
    capacity: usize,
    inner: Mutex<(u64, VecDeque<TraceEvent>)>,
}

impl Trace {
    /// The number of events a [`Trace::default`] keeps.
    pub const DEFAULT_CAPACITY: usize = 64;

    /// A trace that keeps the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            created: SystemTime::now(),
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Logs an event with no child reference.
    pub fn log(&self, severity: Severity, description: impl Into<String>) {
        self.push(TraceEvent {
            description: description.into(),
            severity,
            at: SystemTime::now(),
            subchannel: None,
            channel: None,
        });
    }

    /// Logs an event about subchannel `id` (its creation or removal).
    pub fn log_subchannel(&self, severity: Severity, description: impl Into<String>, id: Id) {
        self.push(TraceEvent {
            description: description.into(),
            severity,
            at: SystemTime::now(),
            subchannel: Some(id),
            channel: None,
        });
    }

    fn push(&self, event: TraceEvent) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0 += 1;
        if inner.1.len() == self.capacity {
            inner.1.pop_front();
        }
        inner.1.push_back(event);
    }

    /// The trace now.
    pub fn data(&self) -> TraceData {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        TraceData {
            events_logged: inner.0,
            created: self.created,
            events: inner.1.iter().cloned().collect(),
        }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_and_counts_all() {
        let trace = Trace::new(3);
        for i in 0..5 {
            trace.log(Severity::Info, format!("event {i}"));
        }
        trace.log_subchannel(Severity::Warning, "subchannel gone", 7);
        let data = trace.data();
        assert_eq!(data.events_logged, 6);
        let names: Vec<_> = data.events.iter().map(|e| e.description.as_str()).collect();
        assert_eq!(names, ["event 3", "event 4", "subchannel gone"]);
        assert_eq!(data.events[2].subchannel, Some(7));
        assert_eq!(data.events[2].severity, Severity::Warning);
    }
}
