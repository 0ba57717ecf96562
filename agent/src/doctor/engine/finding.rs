//! What the doctor reports: findings with their evidence, advice, next
//! steps and artifacts (docs/doctor.md).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::rules::Rule;
use super::defaults::MAX_ARTIFACTS_PER_FINDING;

pub(crate) use crate::report::time as serialize_time;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; does not change the report's status.
    Info,
    /// Degraded: users are or will soon be affected.
    Warning,
    /// Failing or about to fail (out of memory, executor stuck for seconds).
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a finding's condition still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    /// The condition holds; evidence is current.
    Open,
    /// The condition no longer holds; the finding closes once it has been
    /// clear for the rule's window. Evidence is from its last hold.
    Clearing,
}

/// One problem the doctor found (docs/doctor.md): which rule, how bad, about
/// what, the numbers behind it, what to do, and where to look next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// The rule, by its stable snake_case id.
    pub rule: Rule,
    /// How bad it is.
    pub severity: Severity,
    /// What it is about: `executor`, `cpu`, `memory`, `heap`,
    /// `file_descriptors`, `threads`, `io`, a user resource's name, or a
    /// route (`GET /items/{id}`).
    pub resource: String,
    /// One line, with the key number.
    pub title: String,
    /// The numbers and the window they come from.
    pub evidence: Evidence,
    /// What to change, concretely.
    pub recommendation: String,
    /// Ready-to-run relative URLs on this agent, most useful first.
    pub next: Vec<String>,
    /// When the condition started to hold (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub since: SystemTime,
    /// What the doctor captured for this finding (heap snapshots, CPU
    /// profiles), oldest first.
    pub artifacts: Vec<Artifact>,
    /// Open, or clearing (the condition stopped holding).
    pub state: FindingState,
}

impl Finding {
    /// A finding as a rule produces it, at `now`, with no next step or
    /// artifact yet.
    pub(crate) fn new(
        rule: Rule,
        severity: Severity,
        resource: impl Into<String>,
        title: impl Into<String>,
        evidence: Evidence,
        recommendation: impl Into<String>,
        now: SystemTime,
    ) -> Self {
        Finding {
            rule,
            severity,
            resource: resource.into(),
            title: title.into(),
            evidence,
            recommendation: recommendation.into(),
            next: Vec::new(),
            since: now,
            artifacts: Vec::new(),
            state: FindingState::Open,
        }
    }

    /// Appends next-step URLs.
    #[must_use]
    pub(crate) fn next<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.next.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Adds an artifact. Beyond [`MAX_ARTIFACTS_PER_FINDING`] the oldest
    /// one is dropped — but not the first of its kind, which `next` refers
    /// to (the base of a heap diff).
    pub(crate) fn add_artifact(&mut self, artifact: Artifact) {
        if self.artifacts.len() >= MAX_ARTIFACTS_PER_FINDING {
            let first_of_kind = |i: usize| {
                !self.artifacts[..i]
                    .iter()
                    .any(|a| a.kind == self.artifacts[i].kind)
            };
            let drop = (0..self.artifacts.len())
                .find(|&i| !first_of_kind(i))
                .unwrap_or(0);
            self.artifacts.remove(drop);
        }
        self.artifacts.push(artifact);
    }

    /// Fills the placeholders of `next` (`{heap_snapshot}`: the id of the
    /// finding's first artifact of that kind) and drops the URLs whose
    /// placeholders have no artifact.
    pub(crate) fn resolve_next(&mut self) {
        let artifacts = &self.artifacts;
        self.next = std::mem::take(&mut self.next)
            .into_iter()
            .filter_map(|url| {
                let mut url = url;
                for kind in ArtifactKind::ALL {
                    let placeholder = kind.placeholder();
                    if url.contains(placeholder) {
                        let id = artifacts
                            .iter()
                            .find(|a| a.kind == kind)
                            .and_then(|a| a.id.as_deref())?;
                        url = url.replace(placeholder, id);
                    }
                }
                Some(url)
            })
            .collect();
    }
}

/// The numbers behind a finding, and the window they come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Evidence {
    /// The numbers in words, with units.
    pub text: String,
    /// Seconds of history the numbers summarize.
    pub window_s: f64,
    /// The numbers, named with their unit (`lag_p50_ms`, `rss_bytes`,
    /// `cpu_utilization` for a 0..1 ratio).
    pub values: BTreeMap<&'static str, f64>,
    /// More lines of text (one per route, resource, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// For a stall: the stuck worker's stack, leaf first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// For a stall: which worker, when, how long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<StallEvidence>,
}

impl Evidence {
    /// Evidence over a window.
    pub(crate) fn new(text: impl Into<String>, window: Duration) -> Self {
        Evidence {
            text: text.into(),
            window_s: window.as_secs_f64(),
            ..Evidence::default()
        }
    }

    /// Records a number; an unknown (non-finite) one is left out.
    #[must_use]
    pub(crate) fn value(mut self, name: &'static str, value: f64) -> Self {
        if value.is_finite() {
            self.values.insert(name, value);
        }
        self
    }

    /// Records a number if there is one.
    #[must_use]
    pub(crate) fn value_opt(self, name: &'static str, value: Option<f64>) -> Self {
        match value {
            Some(value) => self.value(name, value),
            None => self,
        }
    }
}

/// The stall behind an `event_loop_blocked` finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StallEvidence {
    /// Worker index.
    pub worker: usize,
    /// When the worker entered the poll it was stuck in (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub started_at: SystemTime,
    /// How long it was stuck, milliseconds.
    pub duration_ms: f64,
    /// Whether it is still stuck.
    pub ongoing: bool,
    /// The leaf-most frame of application code in the stack, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_frame: Option<String>,
}

/// What kind of thing an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArtifactKind {
    /// A heap snapshot (`/debug/heap/snapshots/{id}`).
    HeapSnapshot,
    /// A CPU profile captured when the finding opened.
    CpuProfile,
    /// The stack of a stall, kept with the finding.
    StallStack,
    /// Pinned segments of the continuous profiler around the onset.
    ProfileSegment,
    /// Every thread's stack when the finding opened.
    ThreadDump,
    /// The runtime's tasks grouped by await trace when the finding opened.
    TaskDump,
}

impl ArtifactKind {
    const ALL: [ArtifactKind; 6] = [
        ArtifactKind::HeapSnapshot,
        ArtifactKind::CpuProfile,
        ArtifactKind::StallStack,
        ArtifactKind::ProfileSegment,
        ArtifactKind::ThreadDump,
        ArtifactKind::TaskDump,
    ];

    /// The placeholder a rule writes in `next` for the id of the finding's
    /// first artifact of this kind: `{heap_snapshot}`, `{cpu_profile}`, …
    pub fn placeholder(self) -> &'static str {
        match self {
            ArtifactKind::HeapSnapshot => "{heap_snapshot}",
            ArtifactKind::CpuProfile => "{cpu_profile}",
            ArtifactKind::StallStack => "{stall_stack}",
            ArtifactKind::ProfileSegment => "{profile_segment}",
            ArtifactKind::ThreadDump => "{thread_dump}",
            ArtifactKind::TaskDump => "{task_dump}",
        }
    }
}

/// Something the doctor captured for a finding, where to fetch it, when it
/// was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Artifact {
    /// What it is.
    pub kind: ArtifactKind,
    /// Relative URL on this agent.
    pub url: String,
    /// When it was captured (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub taken_at: SystemTime,
    /// Its id where it has one (a heap snapshot's), filling the placeholders
    /// of `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Artifact {
    /// An artifact at `url`, taken at `taken_at`.
    pub fn new(kind: ArtifactKind, url: impl Into<String>, taken_at: SystemTime) -> Self {
        Artifact {
            kind,
            url: url.into(),
            taken_at,
            id: None,
        }
    }

    /// Sets its id.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;
    use super::*;


    #[test]
    fn placeholders_fill_from_artifacts_or_drop() {
        let mut finding = Finding::new(
            Rule::MemoryGrowing,
            Severity::Warning,
            "heap",
            "t",
            Evidence::default(),
            "r",
            UNIX_EPOCH,
        )
        .next([
            "/debug/heap/diff?base={heap_snapshot}&target=now&format=text",
            "/debug/heap/stats",
        ]);
        let mut unresolved = finding.clone();
        unresolved.resolve_next();
        assert_eq!(unresolved.next, ["/debug/heap/stats"]);
        finding.add_artifact(
            Artifact::new(
                ArtifactKind::HeapSnapshot,
                "/debug/heap/snapshots/7",
                UNIX_EPOCH,
            )
            .id("7"),
        );
        finding.resolve_next();
        assert_eq!(
            finding.next[0],
            "/debug/heap/diff?base=7&target=now&format=text"
        );
        for i in 0..20 {
            finding.add_artifact(Artifact::new(
                ArtifactKind::CpuProfile,
                format!("/p/{i}"),
                UNIX_EPOCH,
            ));
        }
        assert_eq!(finding.artifacts.len(), MAX_ARTIFACTS_PER_FINDING);
        assert_eq!(finding.artifacts.last().unwrap().url, "/p/19");
        assert_eq!(
            finding.artifacts[0].kind,
            ArtifactKind::HeapSnapshot,
            "the diff's base stays"
        );
        assert_eq!(
            finding.artifacts[1].url, "/p/0",
            "so does the first profile"
        );
    }
}
