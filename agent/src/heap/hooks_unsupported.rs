//! Stand-in where the agent's sample hooks are not built (no jemalloc, or
//! a platform without the agent's signal-safe primitives): no allocation
//! windows, no labels on the live heap; heap profiles are unaffected.

use super::allocs::WindowTable;
use super::live::{LabelledStacks, LiveCounts};
use crate::Error;

#[derive(Debug)]
pub(crate) struct SampleHooks(());

pub(crate) fn install() -> Result<SampleHooks, Error> {
    Err(Error::HeapUnavailable {
        reason:
            "allocation profiles are built for Linux x86_64 and aarch64 with the `heap` feature",
        hint: "the live heap (/debug/pprof/heap) works wherever jemalloc does",
    })
}

pub(crate) fn publish_window_table(_table: *mut WindowTable) {}

pub(crate) fn retract_window_table() -> bool {
    true
}

pub(crate) fn live_labels(_interval: f64) -> Option<(LabelledStacks, LiveCounts)> {
    None
}

pub(crate) fn counters() -> (Option<LiveCounts>, u64, u64) {
    (None, 0, 0)
}
