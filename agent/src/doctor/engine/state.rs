//! Hysteresis: a finding opens after its condition held for the rule's
//! window, and closes after it has been clear for as long. One state
//! machine per (rule, resource):
//!
//! ```text
//!            holds                 held ≥ window
//!  (none) ─────────▶ Pending ─────────────────────▶ Open ◀──┐
//!     ▲                 │ clear                  clear │    │ holds
//!     └─────────────────┘                              ▼    │
//!     ◀──────────────────────────────────────────── Clearing
//!                     clear ≥ window (Closed)
//! ```
//!
//! Transitions to Open and out of Clearing are returned as [`Transition`]s
//! so the caller can log them and count them.

use std::time::{Duration, SystemTime};

use super::finding::{Artifact, Finding, FindingState, Severity};
use super::rules::Rule;
use super::settings::RuleWindows;
use super::defaults::MAX_TRACKED_FINDINGS;

/// Where one (rule, resource) condition stands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) enum RuleState {
    /// The condition holds, for less than the rule's window so far.
    Pending {
        /// When it was first seen to hold.
        since: SystemTime,
    },
    /// The finding is open; it carries the latest evidence.
    Open {
        /// The finding (its `since` is the onset).
        finding: Box<Finding>,
    },
    /// Still open, but the condition stopped holding.
    Clearing {
        /// The finding with its last evidence.
        finding: Box<Finding>,
        /// When the condition was first seen clear.
        cleared_at: SystemTime,
    },
}

/// Whether a finding opened or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Its condition held for the rule's window.
    Opened,
    /// Its condition was clear for the rule's window.
    Closed,
}

/// A finding that opened or closed, for the log and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) struct Transition {
    /// Opened or closed.
    pub change: Change,
    /// The rule.
    pub rule: Rule,
    /// The finding's resource.
    pub resource: String,
    /// Its severity (the last one, for a close).
    pub severity: Severity,
    /// Its title (the last one, for a close).
    pub title: String,
    /// The onset of the condition.
    pub since: SystemTime,
    /// When the change was made.
    pub at: SystemTime,
}

impl Transition {
    fn of(change: Change, finding: &Finding, at: SystemTime) -> Self {
        Transition {
            change,
            rule: finding.rule,
            resource: finding.resource.clone(),
            severity: finding.severity,
            title: finding.title.clone(),
            since: finding.since,
            at,
        }
    }
}

/// A condition that holds but has not held for its rule's window yet.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PendingCondition {
    /// The rule.
    pub rule: Rule,
    /// The resource.
    pub resource: String,
    /// When it was first seen to hold.
    pub since: SystemTime,
    /// When it opens if it keeps holding.
    pub opens_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    rule: Rule,
    resource: String,
    state: RuleState,
}

/// The state machines of every (rule, resource) seen, at most
/// [`MAX_TRACKED_FINDINGS`] at once. The doctor keeps one per agent and
/// passes it to every [`diagnose`](super::diagnose).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuleStates {
    entries: Vec<Entry>,
}

fn elapsed(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or(Duration::ZERO)
}

impl RuleStates {
    /// No condition seen yet.
    pub(crate) fn new() -> Self {
        RuleStates::default()
    }

    #[cfg(test)]
    /// Conditions tracked (pending, open or clearing).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    /// Whether nothing is tracked.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    /// The state of one (rule, resource).
    pub(crate) fn get(&self, rule: Rule, resource: &str) -> Option<&RuleState> {
        self.position(rule, resource)
            .map(|i| &self.entries[i].state)
    }

    fn position(&self, rule: Rule, resource: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.rule == rule && e.resource == resource)
    }

    /// Advances every state machine to `now`: `holding` are the findings
    /// whose condition holds now (every rule was evaluated); anything
    /// tracked and not among them is clear. Returns the findings that
    /// opened or closed.
    pub(crate) fn update(
        &mut self,
        holding: Vec<Finding>,
        windows: &RuleWindows,
        now: SystemTime,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut seen = vec![false; self.entries.len()];
        for finding in holding {
            let window = windows.get(finding.rule);
            let Some(index) = self.position(finding.rule, &finding.resource) else {
                if self.entries.len() >= MAX_TRACKED_FINDINGS {
                    continue;
                }
                let state = if window.is_zero() {
                    transitions.push(Transition::of(Change::Opened, &finding, now));
                    RuleState::Open {
                        finding: Box::new(finding.clone()),
                    }
                } else {
                    RuleState::Pending { since: now }
                };
                self.entries.push(Entry {
                    rule: finding.rule,
                    resource: finding.resource,
                    state,
                });
                seen.push(true);
                continue;
            };
            seen[index] = true;
            let entry = &mut self.entries[index];
            let next = match &entry.state {
                RuleState::Pending { since } if elapsed(*since, now) >= window => {
                    let mut finding = finding;
                    finding.since = *since;
                    transitions.push(Transition::of(Change::Opened, &finding, now));
                    RuleState::Open {
                        finding: Box::new(finding),
                    }
                }
                RuleState::Pending { since } => RuleState::Pending { since: *since },
                RuleState::Open { finding: previous }
                | RuleState::Clearing {
                    finding: previous, ..
                } => {
                    let mut finding = finding;
                    finding.since = previous.since;
                    finding.artifacts = previous.artifacts.clone();
                    RuleState::Open {
                        finding: Box::new(finding),
                    }
                }
            };
            entry.state = next;
        }
        let mut index = 0;
        self.entries.retain_mut(|entry| {
            let keep = match seen.get(index) {
                Some(true) => true,
                _ => {
                    let window = windows.get(entry.rule);
                    match &entry.state {
                        RuleState::Pending { .. } => false,
                        RuleState::Open { finding } if window.is_zero() => {
                            transitions.push(Transition::of(Change::Closed, finding, now));
                            false
                        }
                        RuleState::Open { finding } => {
                            entry.state = RuleState::Clearing {
                                finding: finding.clone(),
                                cleared_at: now,
                            };
                            true
                        }
                        RuleState::Clearing {
                            finding,
                            cleared_at,
                        } => {
                            if elapsed(*cleared_at, now) >= window {
                                transitions.push(Transition::of(Change::Closed, finding, now));
                                false
                            } else {
                                true
                            }
                        }
                    }
                }
            };
            index += 1;
            keep
        });
        transitions
    }

    /// Adds an artifact to the open finding of (rule, resource); `false` if
    /// there is none (it closed meanwhile).
    pub(crate) fn attach(&mut self, rule: Rule, resource: &str, artifact: Artifact) -> bool {
        let Some(index) = self.position(rule, resource) else {
            return false;
        };
        match &mut self.entries[index].state {
            RuleState::Open { finding } | RuleState::Clearing { finding, .. } => {
                finding.add_artifact(artifact);
                true
            }
            RuleState::Pending { .. } => false,
        }
    }

    /// The open findings (clearing ones included), with their state set.
    pub(crate) fn findings(&self) -> Vec<Finding> {
        self.entries
            .iter()
            .filter_map(|entry| match &entry.state {
                RuleState::Open { finding } => Some(Finding {
                    state: FindingState::Open,
                    ..(**finding).clone()
                }),
                RuleState::Clearing { finding, .. } => Some(Finding {
                    state: FindingState::Clearing,
                    ..(**finding).clone()
                }),
                RuleState::Pending { .. } => None,
            })
            .collect()
    }

    /// The conditions that hold but have not opened yet.
    pub(crate) fn pending(&self, windows: &RuleWindows) -> Vec<PendingCondition> {
        self.entries
            .iter()
            .filter_map(|entry| match entry.state {
                RuleState::Pending { since } => Some(PendingCondition {
                    rule: entry.rule,
                    resource: entry.resource.clone(),
                    since,
                    opens_at: since + windows.get(entry.rule),
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::finding::{ArtifactKind, Evidence};

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn finding(rule: Rule, resource: &str, at: SystemTime) -> Finding {
        Finding::new(
            rule,
            Severity::Warning,
            resource,
            format!("{rule} on {resource}"),
            Evidence::default(),
            "",
            at,
        )
    }

    /// Feeds `holds(second)` once a second; returns (second, change) pairs.
    fn run(
        states: &mut RuleStates,
        windows: &RuleWindows,
        seconds: std::ops::Range<u64>,
        holds: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Change)> {
        let mut changes = Vec::new();
        for s in seconds {
            let holding = if holds(s) {
                vec![finding(Rule::EventLoopBlocked, "executor", t(s))]
            } else {
                vec![]
            };
            for transition in states.update(holding, windows, t(s)) {
                changes.push((s, transition.change));
            }
        }
        changes
    }

    #[test]
    fn opens_after_the_window_and_closes_after_as_long_clear() {
        let windows = RuleWindows::default();
        let mut states = RuleStates::new();
        // Holds from second 5 to 29, clear afterwards.
        let changes = run(&mut states, &windows, 0..60, |s| (5..30).contains(&s));
        assert_eq!(changes, [(15, Change::Opened), (40, Change::Closed)]);
        assert!(states.is_empty());
    }

    #[test]
    fn a_short_spike_never_opens_and_a_short_gap_never_closes() {
        let windows = RuleWindows::default();
        let mut states = RuleStates::new();
        let changes = run(&mut states, &windows, 0..60, |s| (20..29).contains(&s));
        assert!(changes.is_empty(), "{changes:?}");
        // Open, then a 9-second gap: stays open, with its first onset.
        let changes = run(&mut states, &windows, 100..160, |s| {
            !(130..139).contains(&s)
        });
        assert_eq!(changes, [(110, Change::Opened)]);
        let findings = states.findings();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].since, t(100));
        assert_eq!(findings[0].state, FindingState::Open);
    }

    #[test]
    fn clearing_findings_are_still_reported_and_keep_artifacts() {
        let windows = RuleWindows::all(Duration::from_secs(3));
        let mut states = RuleStates::new();
        run(&mut states, &windows, 0..5, |_| true);
        assert!(states.attach(
            Rule::EventLoopBlocked,
            "executor",
            Artifact::new(ArtifactKind::StallStack, "/debug/runtime", t(4))
        ));
        assert!(!states.attach(
            Rule::MemoryGrowing,
            "memory",
            Artifact::new(ArtifactKind::HeapSnapshot, "/x", t(4))
        ));
        run(&mut states, &windows, 5..6, |_| true);
        assert_eq!(
            states.findings()[0].artifacts.len(),
            1,
            "artifacts survive new evidence"
        );
        run(&mut states, &windows, 6..7, |_| false);
        let findings = states.findings();
        assert_eq!(findings[0].state, FindingState::Clearing);
        assert_eq!(findings[0].artifacts.len(), 1);
        assert!(matches!(
            states.get(Rule::EventLoopBlocked, "executor"),
            Some(RuleState::Clearing { .. })
        ));
    }

    #[test]
    fn zero_windows_open_and_close_at_once_and_pending_is_listed() {
        let windows =
            RuleWindows::all(Duration::ZERO).with(Rule::MemoryGrowing, Duration::from_secs(120));
        let mut states = RuleStates::new();
        let changes = run(&mut states, &windows, 0..3, |s| s == 1);
        assert_eq!(changes, [(1, Change::Opened), (2, Change::Closed)]);
        states.update(
            vec![finding(Rule::MemoryGrowing, "memory", t(10))],
            &windows,
            t(10),
        );
        let pending = states.pending(&windows);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].opens_at, t(130));
        assert!(states.findings().is_empty());
    }

    #[test]
    fn states_are_per_resource_and_bounded() {
        let windows = RuleWindows::all(Duration::ZERO);
        let mut states = RuleStates::new();
        let many: Vec<Finding> = (0..MAX_TRACKED_FINDINGS + 10)
            .map(|i| finding(Rule::RouteOverBudget, &format!("GET /r{i}"), t(0)))
            .collect();
        let opened = states.update(many, &windows, t(0));
        assert_eq!(opened.len(), MAX_TRACKED_FINDINGS);
        assert_eq!(states.len(), MAX_TRACKED_FINDINGS);
        let closed = states.update(vec![], &windows, t(1));
        assert_eq!(closed.len(), MAX_TRACKED_FINDINGS);
        assert!(closed.iter().all(|c| c.change == Change::Closed));
    }
}
