//! CPU per (method, route) of the last CPU profile window, kept for
//! `/debug/red`: the RED layer labels every request, so each finished CPU
//! window already knows how much CPU each route's requests used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::{CpuProfile, ProfileMode};

/// CPU per route over one profile window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteCpu {
    /// Start of the window.
    pub(crate) started_at: SystemTime,
    /// Its length.
    pub(crate) duration: Duration,
    /// CPU time per (method, route) labels.
    pub(crate) by_route: HashMap<(String, String), Duration>,
}

impl RouteCpu {
    /// CPU the requests of `method` `route` used in the window (zero if
    /// none of its samples fell in it).
    #[cfg_attr(not(feature = "red"), allow(dead_code))]
    pub(crate) fn of(&self, method: &str, route: &str) -> Duration {
        self.by_route
            .get(&(method.to_owned(), route.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

static LAST: Mutex<Option<Arc<RouteCpu>>> = Mutex::new(None);

/// Keeps the CPU per route of `profile`, a finished CPU window.
pub(crate) fn record(profile: &CpuProfile) {
    if profile.mode() != ProfileMode::Cpu {
        return;
    }
    let period = profile.period();
    let mut by_route: HashMap<(String, String), Duration> = HashMap::new();
    for stack in profile.stacks() {
        let Some(route) = stack.labels.get("route") else {
            continue;
        };
        let method = stack.labels.get("method").unwrap_or_default();
        let cpu = period.saturating_mul(u32::try_from(stack.samples).unwrap_or(u32::MAX));
        *by_route
            .entry((method.to_owned(), route.to_owned()))
            .or_default() += cpu;
    }
    let window = RouteCpu {
        started_at: profile.started_at(),
        duration: profile.duration(),
        by_route,
    };
    *LAST.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(window));
}

/// The CPU per route of the last CPU window that finished, if any.
#[cfg_attr(not(feature = "red"), allow(dead_code))]
pub(crate) fn last() -> Option<Arc<RouteCpu>> {
    LAST.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuStack;
    use crate::labels::Labels;

    #[test]
    fn sums_samples_per_method_and_route() {
        let _sampler = crate::cpu::SAMPLER_TESTS.blocking_lock();
        let stack = |labels: Labels, samples: u64| CpuStack {
            thread: Arc::from("t"),
            frames: Arc::from([1u64].as_slice()),
            labels: labels.set(),
            samples,
            weight: samples * 10_000_000,
        };
        let items = Labels::new([("method", "GET"), ("route", "/items/{id}")]);
        let profile = CpuProfile {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            hz: 100,
            mode: ProfileMode::Cpu,
            cpu_time: Duration::from_millis(100),
            samples: 10,
            dropped: 0,
            notes: Vec::new(),
            stacks: vec![
                stack(items, 6),
                stack(items.with([("tenant", "a")]), 2),
                stack(Labels::none(), 2),
            ],
        };
        record(&profile);
        let last = last().unwrap();
        assert_eq!(last.of("GET", "/items/{id}"), Duration::from_millis(80));
        assert_eq!(last.of("POST", "/items/{id}"), Duration::ZERO);
        assert_eq!(last.by_route.len(), 1);
    }
}
