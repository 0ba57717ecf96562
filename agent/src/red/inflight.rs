//! Requests in flight: when each request the layer is serving started, and
//! under which route, without a lock on the request path.
//!
//! A request takes a slot of a fixed table (a compare-and-swap of its start
//! time into a free slot, from where the calling thread last found one) and
//! gives it back when its future completes or is dropped. Reading scans the
//! table: per route the number in flight and the oldest start, and the
//! oldest requests themselves. When every slot is taken a request is
//! counted as in flight but not listed.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::labels::LabelSet;

/// Requests listed at once; more are counted, not listed.
pub const MAX_LISTED_IN_FLIGHT: usize = 4096;

/// The oldest requests [`InFlightReport::oldest`] lists.
pub(crate) const OLDEST_LISTED: usize = 20;

/// Monotonic nanoseconds since the first use (never 0 for a taken slot).
fn now_ns(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| at - Duration::from_secs(1));
    u64::try_from(at.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[derive(Debug, Default)]
struct Slot {
    /// When the request started (monotonic ns, see [`now_ns`]); 0: free.
    started_ns: AtomicU64,
    /// The request's label set (`method`, `route`).
    labels: AtomicU32,
}

/// The table of requests in flight, shared by every layer of one agent.
#[derive(Debug)]
pub(crate) struct InFlight {
    slots: Box<[Slot]>,
    /// Requests in flight that found no free slot.
    unlisted: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            slots: (0..MAX_LISTED_IN_FLIGHT).map(|_| Slot::default()).collect(),
            unlisted: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// Where this thread last found a free slot: threads start apart, so
    /// they rarely touch the same cache lines.
    static CURSOR: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A request's place in the table, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    table: Arc<InFlight>,
    /// The slot, or `None` when the request is counted as unlisted.
    slot: Option<usize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.slot {
            Some(index) => {
                if let Some(slot) = self.table.slots.get(index) {
                    slot.started_ns.store(0, Ordering::Release);
                }
            }
            None => {
                self.table.unlisted.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl InFlight {
    /// Records a request with `labels` that started at `started`.
    pub(crate) fn enter(self: &Arc<Self>, labels: u32, started: Instant) -> Ticket {
        let stamp = now_ns(started);
        let len = self.slots.len();
        let start = CURSOR.with(|cursor| {
            let at = cursor.get();
            if at < len {
                at
            } else {
                // A thread's first request: spread threads over the table.
                let seed = crate::threads::current_tid() as usize;
                seed.wrapping_mul(0x9E37_79B9) % len
            }
        });
        for step in 0..len {
            let index = (start + step) % len;
            let slot = &self.slots[index];
            if slot.started_ns.load(Ordering::Relaxed) == 0
                && slot
                    .started_ns
                    .compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                slot.labels.store(labels, Ordering::Release);
                CURSOR.with(|cursor| cursor.set((index + 1) % len));
                return Ticket {
                    table: Arc::clone(self),
                    slot: Some(index),
                };
            }
        }
        self.unlisted.fetch_add(1, Ordering::Relaxed);
        Ticket {
            table: Arc::clone(self),
            slot: None,
        }
    }

    /// Calls `visit` with the label set and age of every listed request in
    /// flight now.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn each(&self, now: Instant, mut visit: impl FnMut(u32, Duration)) {
        let now = now_ns(now);
        for slot in self.slots.iter() {
            let started = slot.started_ns.load(Ordering::Acquire);
            if started != 0 {
                let labels = slot.labels.load(Ordering::Acquire);
                visit(labels, Duration::from_nanos(now.saturating_sub(started)));
            }
        }
    }

    /// Requests in flight now: per label set, how many and the oldest
    /// start; the oldest requests; and those counted but not listed.
    pub(crate) fn snapshot(&self, now: Instant) -> InFlightSnapshot {
        let now = now_ns(now);
        let mut groups: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut oldest: Vec<(u64, u32)> = Vec::new();
        for slot in self.slots.iter() {
            let started = slot.started_ns.load(Ordering::Acquire);
            if started == 0 {
                continue;
            }
            let labels = slot.labels.load(Ordering::Acquire);
            let age = now.saturating_sub(started);
            let group = groups.entry(labels).or_insert((0, 0));
            group.0 += 1;
            group.1 = group.1.max(age);
            oldest.push((age, labels));
        }
        oldest.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        oldest.truncate(OLDEST_LISTED);
        InFlightSnapshot {
            groups: groups
                .into_iter()
                .map(|(labels, (count, age))| (labels, count, Duration::from_nanos(age)))
                .collect(),
            oldest: oldest
                .into_iter()
                .map(|(age, labels)| (labels, Duration::from_nanos(age)))
                .collect(),
            unlisted: self.unlisted.load(Ordering::Relaxed),
        }
    }
}

/// What [`InFlight::snapshot`] saw, by label-set id.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlightSnapshot {
    /// (label set, requests, age of the oldest).
    pub(crate) groups: Vec<(u32, u64, Duration)>,
    /// (label set, age), oldest first.
    pub(crate) oldest: Vec<(u32, Duration)>,
    /// In flight but not listed (the table was full).
    pub(crate) unlisted: u64,
}

/// One request in flight, as `/debug/red` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct InFlightRequest {
    /// HTTP method.
    pub method: String,
    /// Route template.
    pub route: String,
    /// How long it has been running, in milliseconds.
    #[serde(serialize_with = "crate::report::ms")]
    pub age_ms: Duration,
    /// The labels its future runs with.
    pub labels: LabelSet,
}

/// The requests of one (method, route) in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouteInFlight {
    /// HTTP method.
    pub method: String,
    /// Route template.
    pub route: String,
    /// Requests in flight now.
    pub in_flight: u64,
    /// How long the oldest has been running, in milliseconds.
    #[serde(serialize_with = "crate::report::ms")]
    pub oldest_ms: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_hold_their_place_until_dropped() {
        let table = Arc::new(InFlight::default());
        // Ages measured forward: starts never before the table's epoch.
        let start = Instant::now();
        let now = start + Duration::from_secs(40);
        let old = table.enter(7, start);
        let young: Vec<Ticket> = (0..3)
            .map(|_| table.enter(9, now - Duration::from_millis(10)))
            .collect();
        let snapshot = table.snapshot(now);
        let mut groups = snapshot.groups.clone();
        groups.sort();
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].0, groups[0].1), (7, 1));
        assert!(groups[0].2 >= Duration::from_secs(40));
        assert_eq!((groups[1].0, groups[1].1), (9, 3));
        assert_eq!(snapshot.oldest[0].0, 7, "oldest first");
        drop(old);
        drop(young);
        let snapshot = table.snapshot(Instant::now());
        assert!(snapshot.groups.is_empty() && snapshot.oldest.is_empty());
    }

    #[test]
    fn a_full_table_counts_the_rest_unlisted_and_frees_them() {
        let table = Arc::new(InFlight::default());
        let now = Instant::now();
        let tickets: Vec<Ticket> = (0..MAX_LISTED_IN_FLIGHT + 5)
            .map(|_| table.enter(1, now))
            .collect();
        let snapshot = table.snapshot(now);
        assert_eq!(snapshot.groups[0].1, MAX_LISTED_IN_FLIGHT as u64);
        assert_eq!(snapshot.unlisted, 5);
        assert_eq!(snapshot.oldest.len(), OLDEST_LISTED);
        drop(tickets);
        let snapshot = table.snapshot(Instant::now());
        assert_eq!(snapshot.unlisted, 0);
        assert!(snapshot.groups.is_empty());
        let mut seen = 0;
        table.each(Instant::now(), |_, _| seen += 1);
        assert_eq!(seen, 0);
    }
}
