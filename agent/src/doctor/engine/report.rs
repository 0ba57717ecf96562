//! The doctor's report: a verdict, the open findings, what is about to
//! open — as JSON (docs/doctor.md) and as text that reads like Clinic
//! Doctor's summary.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::units::rfc3339;
use super::finding::{serialize_time, Finding, FindingState, Severity};
use super::frames::tidy;
use super::history::{from_unix_ms, History};
use super::rules::{Rule, RuleInput};
use super::state::{PendingCondition, RuleStates, Transition};
use crate::units::span;
use super::{Current, DoctorConfig};

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No warning or critical finding is open (info findings may be).
    Healthy,
    /// At least one warning, no critical finding.
    Warning,
    /// At least one critical finding.
    Critical,
}

impl Status {
    /// The status of a set of findings: their worst severity, info counting
    /// as healthy.
    pub fn of(findings: &[Finding]) -> Status {
        match findings.iter().map(|f| f.severity).max() {
            Some(Severity::Critical) => Status::Critical,
            Some(Severity::Warning) => Status::Warning,
            _ => Status::Healthy,
        }
    }

    /// `healthy`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// What the history held when the doctor looked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HistoryInfo {
    /// Rows held.
    pub rows: usize,
    /// Rows the ring holds when full (seconds).
    pub capacity: usize,
    /// Seconds from the oldest row to the newest.
    pub seconds: f64,
    /// Time of the oldest row (RFC 3339), `null` when empty.
    #[serde(serialize_with = "serialize_optional_time")]
    pub oldest: Option<SystemTime>,
    /// Time of the newest row (RFC 3339), `null` when empty.
    #[serde(serialize_with = "serialize_optional_time")]
    pub newest: Option<SystemTime>,
}

fn serialize_optional_time<S: Serializer>(
    time: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serialize_time(time, s),
        None => s.serialize_none(),
    }
}

impl HistoryInfo {
    fn of(history: &History) -> Self {
        let oldest = history.oldest_ms();
        let newest = history.newest_ms();
        HistoryInfo {
            rows: history.len(),
            capacity: history.capacity(),
            seconds: match (oldest, newest) {
                (Some(o), Some(n)) => n.saturating_sub(o) as f64 / 1000.0,
                _ => 0.0,
            },
            oldest: oldest.map(from_unix_ms),
            newest: newest.map(from_unix_ms),
        }
    }
}

/// A condition that holds but has not held for its window yet, as the
/// report lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PendingFinding {
    /// The rule.
    pub rule: Rule,
    /// The resource.
    pub resource: String,
    /// When it was first seen to hold (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub since: SystemTime,
    /// When it opens if it keeps holding (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub opens_at: SystemTime,
}

impl From<PendingCondition> for PendingFinding {
    fn from(p: PendingCondition) -> Self {
        PendingFinding {
            rule: p.rule,
            resource: p.resource,
            since: p.since,
            opens_at: p.opens_at,
        }
    }
}

/// `GET /debug/doctor`: `{"status", "findings": [...], "checked_at",
/// "history", "pending", "rules_checked"}` (docs/doctor.md, plus extra fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DoctorReport {
    /// The verdict: the worst open finding's severity.
    pub status: Status,
    /// Open findings, worst first, then oldest first.
    pub findings: Vec<Finding>,
    /// When the doctor looked (RFC 3339).
    #[serde(serialize_with = "serialize_time")]
    pub checked_at: SystemTime,
    /// What the history held.
    pub history: HistoryInfo,
    /// Conditions that hold but have not opened yet.
    pub pending: Vec<PendingFinding>,
    /// How many rules were evaluated.
    pub rules_checked: usize,
}

/// Evaluates every rule at `now`, advances their state machines, and
/// returns the report with the findings that opened or closed.
///
/// Call it once a second (after each history row) so windows are timed
/// accurately; calls in between (an HTTP request) are harmless.
pub(crate) fn diagnose(
    history: &History,
    current: &Current,
    config: &DoctorConfig,
    states: &mut RuleStates,
    now: SystemTime,
) -> (DoctorReport, Vec<Transition>) {
    let input = RuleInput::new(history, current, config, now);
    let mut holding = Vec::new();
    for rule in Rule::ALL {
        rule.evaluate(&input, &mut holding);
    }
    let transitions = states.update(holding, &config.windows, now);
    let mut findings = states.findings();
    for finding in &mut findings {
        finding.resolve_next();
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.since.cmp(&b.since)));
    let report = DoctorReport {
        status: Status::of(&findings),
        findings,
        checked_at: now,
        history: HistoryInfo::of(history),
        pending: states
            .pending(&config.windows)
            .into_iter()
            .map(PendingFinding::from)
            .collect(),
        rules_checked: Rule::ALL.len(),
    };
    (report, transitions)
}

/// Width the text wraps at.
const WIDTH: usize = 100;
/// Width of the label column.
const LABEL: usize = 12;
/// Frames of a stack the text shows.
const FRAMES: usize = 12;

/// Units the wrapper keeps on the line of their number.
const UNITS: &[&str] = &[
    "ms", "s", "min", "h", "d", "%", "B", "KiB", "MiB", "GiB", "cores", "MiB/min",
];

/// The words of `text`, each unit glued to the number before it.
fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let unit = UNITS.iter().any(|u| {
            word.strip_prefix(u)
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_punctuation()))
        });
        match words.last_mut() {
            Some(last) if unit && last.ends_with(|c: char| c.is_ascii_digit()) => {
                last.push(' ');
                last.push_str(word);
            }
            _ => words.push(word.to_owned()),
        }
    }
    words
}

/// Appends `first` then `text`, wrapped at [`WIDTH`], continuation lines
/// indented by `indent`.
fn wrapped(out: &mut String, first: &str, indent: usize, text: &str) {
    let mut line = first.to_owned();
    let mut empty = true;
    for word in words(text) {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(&word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Appends `text` after `label`, wrapped at [`WIDTH`] with a hanging indent.
fn labelled(out: &mut String, label: &str, text: &str) {
    wrapped(out, &format!("   {label:<LABEL$}"), 3 + LABEL, text);
}

impl DoctorReport {
    /// The report as text: the verdict first, then each finding with its
    /// evidence, advice and next steps.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let count = |severity| {
            self.findings
                .iter()
                .filter(|f| f.severity == severity)
                .count()
        };
        let verdict = match self.findings.len() {
            0 => format!("stethoscope doctor: {} — no findings", self.status.as_str()),
            n => {
                let mut parts = Vec::new();
                for severity in [Severity::Critical, Severity::Warning, Severity::Info] {
                    let n = count(severity);
                    if n > 0 {
                        parts.push(format!("{n} {severity}"));
                    }
                }
                format!(
                    "stethoscope doctor: {} — {n} finding{} ({})",
                    self.status.as_str().to_uppercase(),
                    if n == 1 { "" } else { "s" },
                    parts.join(", ")
                )
            }
        };
        out.push_str(&verdict);
        out.push('\n');
        let _ = writeln!(
            out,
            "checked {} over {} of history ({} rows); {} rules",
            rfc3339(self.checked_at),
            span(std::time::Duration::from_secs_f64(
                self.history.seconds.max(0.0)
            )),
            self.history.rows,
            self.rules_checked
        );
        for (i, finding) in self.findings.iter().enumerate() {
            out.push('\n');
            let first = format!("{}. [{}] ", i + 1, finding.severity);
            let indent = first.chars().count();
            wrapped(&mut out, &first, indent, &finding.title);
            let state = match finding.state {
                FindingState::Open => "open",
                FindingState::Clearing => "clearing",
            };
            labelled(
                &mut out,
                "rule",
                &format!(
                    "{} · {} · {state} since {}",
                    finding.rule,
                    finding.resource,
                    rfc3339(finding.since)
                ),
            );
            labelled(&mut out, "evidence", &finding.evidence.text);
            for detail in &finding.evidence.details {
                labelled(&mut out, "", detail);
            }
            render_stack(&mut out, finding);
            labelled(&mut out, "do", &finding.recommendation);
            for (j, url) in finding.next.iter().enumerate() {
                labelled(&mut out, if j == 0 { "next" } else { "" }, url);
            }
            for (j, artifact) in finding.artifacts.iter().enumerate() {
                let kind = serde_json::to_value(artifact.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                labelled(
                    &mut out,
                    if j == 0 { "artifacts" } else { "" },
                    &format!("{kind} {} ({})", artifact.url, rfc3339(artifact.taken_at)),
                );
            }
        }
        if !self.pending.is_empty() {
            out.push('\n');
            for pending in &self.pending {
                let _ = writeln!(
                    out,
                    "watching: {} ({}) holds since {}; opens at {} if it keeps holding",
                    pending.rule,
                    pending.resource,
                    rfc3339(pending.since),
                    rfc3339(pending.opens_at)
                );
            }
        }
        out
    }
}

fn render_stack(out: &mut String, finding: &Finding) {
    let frames = &finding.evidence.frames;
    if frames.is_empty() {
        return;
    }
    let app = finding
        .evidence
        .stall
        .as_ref()
        .and_then(|s| s.application_frame.as_deref());
    // Leaf first, runtime and framework plumbing folded into markers as in
    // every human view (the JSON keeps every frame).
    let mut folded = crate::profile::frames::fold_plumbing(frames.iter().rev().map(String::as_str));
    folded.reverse();
    let shown = folded.len().min(FRAMES);
    for (i, frame) in folded.iter().take(shown).enumerate() {
        let label = if i == 0 { "stack" } else { "" };
        let marked = if Some(&**frame) == app {
            format!("→ {}   ← application frame", tidy(frame))
        } else {
            format!("  {}", tidy(frame))
        };
        let _ = writeln!(out, "   {label:<LABEL$}{marked}");
    }
    if folded.len() > shown {
        let _ = writeln!(
            out,
            "   {:<LABEL$}  … {} more frames",
            "",
            folded.len() - shown
        );
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::doctor::engine::finding::{Artifact, ArtifactKind};
    use crate::doctor::engine::fixtures::{Scenario, MIB};
    use crate::doctor::engine::history::Series;
    use crate::doctor::engine::state::Change;
    use crate::doctor::{Budget, ResourceReading, RouteReading, StallReading};

    #[test]
    fn a_healthy_service_stays_healthy_for_fifteen_minutes() {
        let s = Scenario::new(900, |_, _| {});
        let (transitions, report) = s.replay(0);
        assert!(transitions.is_empty(), "{transitions:?}");
        assert_eq!(report.status, Status::Healthy);
        assert!(report.findings.is_empty());
        assert!(report.pending.is_empty(), "{:?}", report.pending);
        assert_eq!(report.history.rows, 900);
        assert!(report
            .to_text()
            .starts_with("stethoscope doctor: healthy — no findings\n"));
    }

    #[test]
    fn a_single_spike_of_every_kind_opens_nothing() {
        // One bad second at 10:00 of every signal the short-window rules read.
        let s = Scenario::new(900, |second, row| {
            if second == 600 {
                row.set(Series::LagMaxMs, 800.0);
                row.set(Series::LagP50Ms, 300.0);
                row.set(Series::LagP99Ms, 700.0);
                row.set(Series::WorkerBusyMin, 1.0);
                row.set(Series::GlobalQueueDepth, 500.0);
                row.set(Series::CpuThrottledRatio, 0.9);
                row.set(Series::CpuCores, 2.0);
                row.set(Series::MemoryBytes, 1000.0 * MIB);
                row.set(Series::OpenFds, 60000.0);
                row.set(
                    Series::ResourceSaturation(crate::doctor::engine::fixtures::pool_slot()),
                    9.0,
                );
            }
        });
        let (transitions, report) = s.replay(590);
        assert!(transitions.is_empty(), "{transitions:?}");
        assert_eq!(report.status, Status::Healthy);
    }

    #[test]
    fn a_blocked_executor_opens_after_its_window_and_closes_after_it() {
        // Blocks every second from 10:00 to 12:00.
        let mut s = Scenario::new(900, |second, row| {
            if (600..720).contains(&second) {
                row.set(Series::LagMaxMs, 250.0);
                row.set(Series::LagP50Ms, 30.0);
            }
        });
        s.current.longest_stall = None;
        let (transitions, report) = s.replay(590);
        let blocked: Vec<(Change, SystemTime)> = transitions
            .iter()
            .filter(|t| t.rule == Rule::EventLoopBlocked)
            .map(|t| (t.change, t.at))
            .collect();
        let at = |second| s.start + Duration::from_secs(second);
        // Opens 10 s after the first bad second; its condition stays true
        // for the 5-second lookback after the last one, then 10 s to close.
        assert_eq!(
            blocked,
            [(Change::Opened, at(610)), (Change::Closed, at(734))]
        );
        assert_eq!(
            transitions
                .iter()
                .find(|t| t.change == Change::Opened)
                .unwrap()
                .since,
            at(600)
        );
        assert_eq!(report.status, Status::Healthy);
    }

    #[test]
    fn report_json_has_the_contract_shape() {
        let mut s = Scenario::new(900, |second, row| {
            if second >= 800 {
                row.set(Series::LagMaxMs, 400.0);
            }
            row.set(
                Series::JemallocAllocatedBytes,
                120.0 * MIB + 4.0 * MIB * second as f64 / 60.0,
            );
        });
        s.current.longest_stall = Some(StallReading::new(
            0,
            s.end - Duration::from_secs(2),
            Duration::from_millis(420),
            vec![
                "std::thread::sleep".into(),
                "demo::blocking_handler::{{closure}}".into(),
            ],
        ));
        s.config.windows = crate::doctor::RuleWindows::all(Duration::from_secs(10));
        let mut states = RuleStates::new();
        let mut at = s.end - Duration::from_secs(30);
        let mut opened = Vec::new();
        let mut last = None;
        while at <= s.end {
            let (report, transitions) =
                diagnose(&s.history, &s.current, &s.config, &mut states, at);
            for t in transitions {
                if t.rule == Rule::MemoryGrowing && t.change == Change::Opened {
                    // What the wiring does: a heap snapshot for a growth finding.
                    let snapshot =
                        Artifact::new(ArtifactKind::HeapSnapshot, "/debug/heap/snapshots/3", at)
                            .id("3");
                    assert!(states.attach(t.rule, &t.resource, snapshot));
                }
                opened.push(t.rule);
            }
            last = Some(report);
            at += Duration::from_secs(1);
        }
        let report = last.unwrap();
        assert!(
            opened.contains(&Rule::EventLoopBlocked) && opened.contains(&Rule::MemoryGrowing),
            "{opened:?}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["status"], "warning");
        for finding in json["findings"].as_array().unwrap() {
            for field in [
                "rule",
                "severity",
                "resource",
                "title",
                "evidence",
                "recommendation",
                "next",
                "since",
                "artifacts",
            ] {
                assert!(finding.get(field).is_some(), "{field} missing in {finding}");
            }
            assert!(finding["since"].as_str().unwrap().ends_with('Z'));
            assert!(finding["evidence"]["window_s"].is_number());
            assert!(finding["evidence"]["values"].is_object());
        }
        let growing = report
            .findings
            .iter()
            .find(|f| f.rule == Rule::MemoryGrowing)
            .unwrap();
        assert_eq!(
            growing.next[0],
            "/debug/heap/diff?base=3&target=now&format=text"
        );
        assert_eq!(json["findings"][1]["artifacts"][0]["kind"], "heap_snapshot");
        let text = report.to_text();
        assert!(
            text.starts_with("stethoscope doctor: WARNING — 2 findings (2 warning)\n"),
            "{text}"
        );
        assert!(
            text.contains("→ demo::blocking_handler   ← application frame"),
            "{text}"
        );
        assert!(
            text.contains("   next        /debug/runtime?format=text\n"),
            "{text}"
        );
        assert!(
            text.contains("   artifacts   heap_snapshot /debug/heap/snapshots/3"),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l.chars().count() <= WIDTH + 40),
            "{text}"
        );
    }

    #[test]
    fn text_wraps_without_parting_numbers_and_units() {
        let mut out = String::new();
        let text = "lag p50 0.20 ms (median), p99 2.27 ms, max 400 ms; memory 217 MiB of 1.00 GiB (21 %), \
                    growing 4.00 MiB/min; the limit is reached in ~3 h 22 min";
        labelled(&mut out, "evidence", &text.repeat(3));
        for line in out.lines() {
            assert!(line.chars().count() <= WIDTH, "{line}");
            let first = line.split_whitespace().next().unwrap();
            let bare = first.trim_end_matches(|c: char| c.is_ascii_punctuation());
            assert!(!UNITS.contains(&bare), "{line}");
        }
        assert!(out.starts_with("   evidence    lag p50"), "{out}");
    }

    /// Full history, every user resource registered, 50 routes with
    /// budgets, and most rules' conditions true: the worst case of one
    /// `/debug/doctor`.
    fn heavy_scenario() -> Scenario {
        let mut s = Scenario::new(900, |second, row| {
            let s = second as f64;
            row.set(
                Series::JemallocAllocatedBytes,
                120.0 * MIB + 4.0 * MIB * s / 60.0,
            );
            row.set(Series::RssBytes, 200.0 * MIB + 4.0 * MIB * s / 60.0);
            row.set(Series::JemallocResidentBytes, 400.0 * MIB);
            row.set(Series::OpenFds, 120.0 + s);
            row.set(Series::Threads, 24.0 + s / 5.0);
            row.set(Series::LagMaxMs, 300.0);
            row.set(Series::CpuThrottledRatio, 0.5);
        });
        for i in 1..16 {
            s.history.resource_slot(&format!("pool_{i}")).unwrap();
            s.current
                .resources
                .push(ResourceReading::new(format!("pool_{i}"), 1.0, 1.0, "slots"));
        }
        for i in 0..50 {
            let route = format!("/r{i}");
            s.config
                .budgets
                .add(Budget::route(&format!("GET {route}")).p95(Duration::from_millis(10)))
                .unwrap();
            s.current.routes.push(
                RouteReading::new("GET", route, 1000, 50)
                    .latency(Duration::from_millis(600), Duration::from_secs(1)),
            );
        }
        s
    }

    fn cost_of_one_diagnosis(runs: u32) -> Duration {
        let s = heavy_scenario();
        let mut states = RuleStates::new();
        let started = Instant::now();
        for _ in 0..runs {
            let (report, _) = diagnose(&s.history, &s.current, &s.config, &mut states, s.end);
            assert!(report.pending.len() + report.findings.len() >= 8);
        }
        started.elapsed() / runs
    }

    #[test]
    fn one_diagnosis_of_a_full_history_is_cheap() {
        // Debug builds are 10–20× slower than release; docs/doctor.md
        // quotes the release figure of the ignored test below.
        let each = cost_of_one_diagnosis(10);
        assert!(each < Duration::from_millis(100), "{each:?} per diagnosis");
    }

    #[test]
    #[ignore = "timing: run with --release -- --ignored --nocapture"]
    fn diagnosis_cost_in_release() {
        let each = cost_of_one_diagnosis(200);
        println!("one diagnosis of 900 rows, 16 resources, 50 routes: {each:?}");
        assert!(each < Duration::from_millis(5), "{each:?}");
    }

    #[test]
    fn a_minute_of_a_blocked_executor_opens_one_warning() {
        use super::super::{Current, DoctorConfig, History, Row, RuleStates, Series};
        use std::time::Duration;
        let mut history = History::new(900);
        let mut states = RuleStates::new();
        let config = DoctorConfig::default();
        let start = SystemTime::now() - Duration::from_secs(60);
        let mut opened = Vec::new();
        for s in 0..60 {
            let at = start + Duration::from_secs(s);
            // The executor lags 250 ms every second: blocked.
            history.push(
                &Row::new(at)
                    .with(Series::LagP50Ms, 30.0)
                    .with(Series::LagMaxMs, 250.0),
            );
            let (report, transitions) =
                diagnose(&history, &Current::default(), &config, &mut states, at);
            opened.extend(transitions.iter().map(|t| t.rule));
            if s == 59 {
                assert_eq!(report.status, Status::Warning);
                assert_eq!(report.findings[0].rule.id(), "event_loop_blocked");
            }
        }
        assert_eq!(opened, [crate::doctor::Rule::EventLoopBlocked]);
    }
}
