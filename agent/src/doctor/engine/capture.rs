//! Auto-capture policy: what to capture when a finding opens, and a
//! limiter that keeps captures bounded and rate-limited. The agent does the
//! capturing (heap snapshot, CPU profile) and attaches the result with
//! [`RuleStates::attach`](super::RuleStates::attach).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::finding::ArtifactKind;
use super::rules::Rule;
use super::defaults::{
    DEFAULT_AUTO_CAPTURE, DEFAULT_AUTO_CAPTURE_FOLLOW_UP, DEFAULT_AUTO_CAPTURE_HZ,
    DEFAULT_AUTO_CAPTURE_INTERVAL, DEFAULT_AUTO_CAPTURE_PROFILE, DEFAULT_AUTO_CAPTURE_TASK_DUMPS,
    MAX_AUTO_CAPTURES_PER_HOUR,
};

/// Length of the rate limiter's window.
const HOUR: Duration = Duration::from_secs(3600);

impl Rule {
    /// What the agent captures when a finding of this rule opens: a heap
    /// snapshot for memory growth (the base of the diff in `next`), a short
    /// low-rate CPU profile for CPU and executor saturation, the stall's
    /// stack for a blocked executor.
    pub fn capture(self) -> Option<ArtifactKind> {
        match self {
            Rule::MemoryGrowing => Some(ArtifactKind::HeapSnapshot),
            Rule::CpuSaturated | Rule::ExecutorSaturated => Some(ArtifactKind::CpuProfile),
            Rule::EventLoopBlocked => Some(ArtifactKind::StallStack),
            // The thread dump first; the task dump comes with it where the
            // build has one and the policy allows it (`task_dumps`).
            Rule::RequestsStuck => Some(ArtifactKind::ThreadDump),
            Rule::TasksClimbing => Some(ArtifactKind::TaskDump),
            _ => None,
        }
    }
}

/// How the agent captures artifacts for findings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapturePolicy {
    /// Capture at all (`DEFAULT_AUTO_CAPTURE`; `STETHOSCOPE_AUTO_CAPTURE=off`).
    pub enabled: bool,
    /// Length of a CPU profile (default 10 s).
    pub profile: Duration,
    /// Its sampling rate (default DEFAULT_PROFILE_HZ).
    pub hz: u32,
    /// Delay of the second heap snapshot (default 5 min).
    pub follow_up: Duration,
    /// Least time between two captures for one rule (default 15 min).
    pub interval: Duration,
    /// Most captures per hour (default 8).
    pub per_hour: usize,
    /// Take task dumps too, in builds that have them (default off;
    /// `STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS=on`): for `requests_stuck`
    /// with its thread dump, for `tasks_climbing` alone. Off because a
    /// dump that meets a worker inside a poll can leave that worker parked
    /// for good (tokio 1.54; docs/endpoints.md) — the agent still starts a
    /// dump only when every worker is parked or between polls.
    pub task_dumps: bool,
}

impl Default for CapturePolicy {
    fn default() -> Self {
        CapturePolicy {
            enabled: DEFAULT_AUTO_CAPTURE,
            profile: DEFAULT_AUTO_CAPTURE_PROFILE,
            hz: DEFAULT_AUTO_CAPTURE_HZ,
            follow_up: DEFAULT_AUTO_CAPTURE_FOLLOW_UP,
            interval: DEFAULT_AUTO_CAPTURE_INTERVAL,
            per_hour: MAX_AUTO_CAPTURES_PER_HOUR,
            task_dumps: DEFAULT_AUTO_CAPTURE_TASK_DUMPS,
        }
    }
}

/// Decides whether a capture may run now: at most one per rule per
/// [`interval`](CapturePolicy::interval) and
/// [`per_hour`](CapturePolicy::per_hour) in all. Stall stacks are kept by
/// the watchdog anyway and cost nothing, so they are always allowed.
#[derive(Debug, Clone)]
pub(crate) struct CaptureLimiter {
    policy: CapturePolicy,
    /// Times of the captures of the last hour, oldest first.
    recent: VecDeque<SystemTime>,
    /// Last capture per rule.
    last: [Option<SystemTime>; Rule::ALL.len()],
}

impl CaptureLimiter {
    /// A limiter with `policy`.
    pub(crate) fn new(policy: CapturePolicy) -> Self {
        CaptureLimiter {
            recent: VecDeque::with_capacity(policy.per_hour),
            policy,
            last: [None; Rule::ALL.len()],
        }
    }

    /// What to capture for a finding of `rule` that opened at `now`, if
    /// anything may be captured; counts the capture when it may.
    pub(crate) fn admit(&mut self, rule: Rule, now: SystemTime) -> Option<ArtifactKind> {
        let kind = rule.capture().filter(|_| self.policy.enabled)?;
        if kind == ArtifactKind::StallStack {
            return Some(kind);
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or(Duration::ZERO) >= HOUR)
        {
            self.recent.pop_front();
        }
        let last = &mut self.last[rule as usize];
        let too_soon = last.is_some_and(|t| {
            now.duration_since(t).unwrap_or(Duration::ZERO) < self.policy.interval
        });
        if too_soon || self.recent.len() >= self.policy.per_hour {
            return None;
        }
        *last = Some(now);
        self.recent.push_back(now);
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn captures_are_rate_limited_per_rule_and_per_hour() {
        let mut limiter = CaptureLimiter::new(CapturePolicy::default());
        assert_eq!(
            limiter.admit(Rule::CpuSaturated, t(0)),
            Some(ArtifactKind::CpuProfile)
        );
        assert_eq!(
            limiter.admit(Rule::CpuSaturated, t(600)),
            None,
            "within 15 min"
        );
        assert_eq!(
            limiter.admit(Rule::CpuSaturated, t(900)),
            Some(ArtifactKind::CpuProfile)
        );
        assert_eq!(
            limiter.admit(Rule::FdsNearLimit, t(900)),
            None,
            "nothing to capture"
        );
        assert_eq!(
            limiter.admit(Rule::EventLoopBlocked, t(901)),
            Some(ArtifactKind::StallStack)
        );
        assert_eq!(
            limiter.admit(Rule::EventLoopBlocked, t(902)),
            Some(ArtifactKind::StallStack)
        );

        let policy = CapturePolicy {
            interval: Duration::ZERO,
            per_hour: 3,
            ..CapturePolicy::default()
        };
        let mut limiter = CaptureLimiter::new(policy);
        let admitted = (0..10)
            .filter(|i| limiter.admit(Rule::MemoryGrowing, t(i * 60)).is_some())
            .count();
        assert_eq!(admitted, 3);
        assert!(
            limiter.admit(Rule::MemoryGrowing, t(3600)).is_some(),
            "the hour has passed"
        );
    }

    #[test]
    fn opting_out_captures_nothing() {
        let mut limiter = CaptureLimiter::new(CapturePolicy {
            enabled: false,
            ..CapturePolicy::default()
        });
        for rule in Rule::ALL {
            assert_eq!(limiter.admit(rule, t(0)), None);
        }
    }
}
