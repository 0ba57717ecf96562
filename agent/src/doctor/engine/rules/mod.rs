//! The rules: pure functions from the history and the readings of "now" to
//! findings. Each says whether its condition holds *now* (judged over the
//! last [`DoctorConfig::lookback`] seconds, or over its own slope window),
//! with the evidence over its window; [`RuleStates`](super::RuleStates)
//! turns "holds now" into findings that open and close with hysteresis.
//!
//! Rules never fail: what they cannot read (an unknown series, no limit)
//! makes them stay silent.

mod budgets;
mod cpu;
mod executor;
mod hung;
mod limits;
mod memory;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

pub(crate) use budgets::{cpu_over_budget, memory_over_budget, route_over_budget};
pub(crate) use cpu::{cpu_saturated, io_bound};
pub(crate) use executor::{event_loop_blocked, executor_saturated};
pub(crate) use hung::requests_stuck;
pub(crate) use limits::{
    fds_climbing, fds_near_limit, resource_saturated, tasks_climbing, threads_climbing,
    threads_near_limit,
};
pub(crate) use memory::{allocator_fragmentation, memory_growing, memory_near_limit};

use super::history::{History, Window};
use super::{Current, DoctorConfig, Finding};
use super::super::defaults::*;

/// A rule of the doctor, by its stable snake_case id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// `event_loop_blocked`: workers stuck in polls; tasks wait for a worker.
    EventLoopBlocked,
    /// `executor_saturated`: every worker busy, work queues up.
    ExecutorSaturated,
    /// `cpu_saturated`: CPU quota exhausted (throttled) or CPU at its limit.
    CpuSaturated,
    /// `io_bound`: requests slow while CPU idles and the executor answers:
    /// time goes to waiting on I/O or a downstream.
    IoBound,
    /// `memory_growing`: memory or the heap grows steadily.
    MemoryGrowing,
    /// `memory_near_limit`: memory near its limit, or OOM kills.
    MemoryNearLimit,
    /// `allocator_fragmentation`: jemalloc resident far above allocated.
    AllocatorFragmentation,
    /// `fds_near_limit`: open descriptors near their limit.
    FdsNearLimit,
    /// `fds_climbing`: open descriptors grow steadily.
    FdsClimbing,
    /// `threads_near_limit`: threads near their limit.
    ThreadsNearLimit,
    /// `threads_climbing`: threads grow steadily.
    ThreadsClimbing,
    /// `resource_saturated`: a user resource (pool) is full or has waiters.
    ResourceSaturated,
    /// `route_over_budget`: a route over its latency or error budget.
    RouteOverBudget,
    /// `cpu_over_budget`: CPU over its budget (below saturation).
    CpuOverBudget,
    /// `memory_over_budget`: memory over its budget (below the near-limit
    /// threshold).
    MemoryOverBudget,
    /// `requests_stuck`: requests in flight far longer than their route
    /// takes, while the CPU idles and the executor answers: an await that
    /// never completes.
    RequestsStuck,
    /// `tasks_climbing`: the runtime's alive tasks grow steadily (tasks
    /// spawned that never finish).
    TasksClimbing,
}

impl Rule {
    /// Every rule, in evaluation order.
    pub const ALL: [Rule; 17] = [
        Rule::EventLoopBlocked,
        Rule::ExecutorSaturated,
        Rule::CpuSaturated,
        Rule::IoBound,
        Rule::MemoryGrowing,
        Rule::MemoryNearLimit,
        Rule::AllocatorFragmentation,
        Rule::FdsNearLimit,
        Rule::FdsClimbing,
        Rule::ThreadsNearLimit,
        Rule::ThreadsClimbing,
        Rule::ResourceSaturated,
        Rule::RouteOverBudget,
        Rule::CpuOverBudget,
        Rule::MemoryOverBudget,
        Rule::RequestsStuck,
        Rule::TasksClimbing,
    ];

    /// The stable id (`event_loop_blocked`, …), as in JSON and `/metrics`.
    pub fn id(self) -> &'static str {
        match self {
            Rule::EventLoopBlocked => "event_loop_blocked",
            Rule::ExecutorSaturated => "executor_saturated",
            Rule::CpuSaturated => "cpu_saturated",
            Rule::IoBound => "io_bound",
            Rule::MemoryGrowing => "memory_growing",
            Rule::MemoryNearLimit => "memory_near_limit",
            Rule::AllocatorFragmentation => "allocator_fragmentation",
            Rule::FdsNearLimit => "fds_near_limit",
            Rule::FdsClimbing => "fds_climbing",
            Rule::ThreadsNearLimit => "threads_near_limit",
            Rule::ThreadsClimbing => "threads_climbing",
            Rule::ResourceSaturated => "resource_saturated",
            Rule::RouteOverBudget => "route_over_budget",
            Rule::CpuOverBudget => "cpu_over_budget",
            Rule::MemoryOverBudget => "memory_over_budget",
            Rule::RequestsStuck => "requests_stuck",
            Rule::TasksClimbing => "tasks_climbing",
        }
    }

    /// The rule with this id.
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == id)
    }

    /// Its hysteresis window unless configured otherwise (`DEFAULT_WINDOW_*`).
    pub const fn default_window(self) -> Duration {
        match self {
            Rule::EventLoopBlocked => DEFAULT_WINDOW_EVENT_LOOP_BLOCKED,
            Rule::ExecutorSaturated => DEFAULT_WINDOW_EXECUTOR_SATURATED,
            Rule::CpuSaturated => DEFAULT_WINDOW_CPU_SATURATED,
            Rule::IoBound => DEFAULT_WINDOW_IO_BOUND,
            Rule::MemoryGrowing => DEFAULT_WINDOW_MEMORY_GROWING,
            Rule::MemoryNearLimit => DEFAULT_WINDOW_MEMORY_NEAR_LIMIT,
            Rule::AllocatorFragmentation => DEFAULT_WINDOW_ALLOCATOR_FRAGMENTATION,
            Rule::FdsNearLimit | Rule::ThreadsNearLimit => DEFAULT_WINDOW_NEAR_LIMIT,
            Rule::FdsClimbing | Rule::ThreadsClimbing | Rule::TasksClimbing => {
                DEFAULT_WINDOW_CLIMBING
            }
            Rule::RequestsStuck => DEFAULT_WINDOW_REQUESTS_STUCK,
            Rule::ResourceSaturated => DEFAULT_WINDOW_RESOURCE_SATURATED,
            Rule::RouteOverBudget | Rule::CpuOverBudget | Rule::MemoryOverBudget => {
                DEFAULT_WINDOW_BUDGET
            }
        }
    }

    /// Evaluates the rule, appending the findings whose condition holds now.
    pub fn evaluate(self, input: &RuleInput<'_>, out: &mut Vec<Finding>) {
        match self {
            Rule::EventLoopBlocked => out.extend(event_loop_blocked(input)),
            Rule::ExecutorSaturated => out.extend(executor_saturated(input)),
            Rule::CpuSaturated => out.extend(cpu_saturated(input)),
            Rule::IoBound => out.extend(io_bound(input)),
            Rule::MemoryGrowing => out.extend(memory_growing(input)),
            Rule::MemoryNearLimit => out.extend(memory_near_limit(input)),
            Rule::AllocatorFragmentation => out.extend(allocator_fragmentation(input)),
            Rule::FdsNearLimit => out.extend(fds_near_limit(input)),
            Rule::FdsClimbing => out.extend(fds_climbing(input)),
            Rule::ThreadsNearLimit => out.extend(threads_near_limit(input)),
            Rule::ThreadsClimbing => out.extend(threads_climbing(input)),
            Rule::ResourceSaturated => out.extend(resource_saturated(input)),
            Rule::RouteOverBudget => out.extend(route_over_budget(input)),
            Rule::CpuOverBudget => out.extend(cpu_over_budget(input)),
            Rule::MemoryOverBudget => out.extend(memory_over_budget(input)),
            Rule::RequestsStuck => out.extend(requests_stuck(input)),
            Rule::TasksClimbing => out.extend(tasks_climbing(input)),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.id())
    }
}

/// What a rule reads: the history, the readings of now, the thresholds,
/// and the time "now" is.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// The one-second history.
    pub history: &'a History,
    /// Readings of now beyond the history.
    pub current: &'a Current,
    /// Thresholds, windows, budgets.
    pub config: &'a DoctorConfig,
    /// The time of the evaluation: rows after it are ignored.
    pub now: SystemTime,
}

impl<'a> RuleInput<'a> {
    /// The inputs of one evaluation.
    pub fn new(
        history: &'a History,
        current: &'a Current,
        config: &'a DoctorConfig,
        now: SystemTime,
    ) -> Self {
        RuleInput {
            history,
            current,
            config,
            now,
        }
    }

    /// The rows of the last `length`, up to now.
    pub(crate) fn recent(&self, length: Duration) -> Window<'a> {
        let from = self
            .now
            .checked_sub(length)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.history.window(from, self.now)
    }

    /// The rows "now" is judged on.
    pub(crate) fn lookback(&self) -> Window<'a> {
        self.recent(self.config.lookback)
    }

    /// A rule's evidence window: its hysteresis window, at least the lookback.
    pub(crate) fn evidence_window(&self, rule: Rule) -> (Duration, Window<'a>) {
        let length = self.config.windows.get(rule).max(self.config.lookback);
        (length, self.recent(length))
    }
}

/// Next-step URL of a CPU flame graph.
pub(crate) const CPU_PROFILE_SVG: &str = "/debug/pprof/profile?seconds=10&format=svg";
/// Next-step URL of a CPU "top" table.
pub(crate) const CPU_PROFILE_TEXT: &str = "/debug/pprof/profile?seconds=10&format=text";
/// Next-step URL of the USE table.
pub(crate) const USE_TEXT: &str = "/debug/use?format=text";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_snake_case_and_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_id(rule.id()), Some(rule));
            assert!(rule
                .id()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(serde_json::to_value(rule).unwrap(), rule.id());
            assert!(rule.default_window() > DEFAULT_DOCTOR_LOOKBACK, "{rule}");
        }
        for (i, rule) in Rule::ALL.iter().enumerate() {
            assert_eq!(*rule as usize, i);
        }
    }
}
