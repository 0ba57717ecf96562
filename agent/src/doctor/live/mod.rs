//! The doctor at work inside an agent: a thread of its own
//! (`stethoscope-doctor`) writes one history row a second from the
//! agent's capabilities, evaluates the rules right after, logs every
//! finding that opens or closes, and captures evidence for new findings
//! (heap snapshots, a short CPU profile) on a second, short-lived thread so
//! that the one-second rhythm never waits for a capture.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

mod recorder;
#[cfg(feature = "metrics")]
mod metrics;

use recorder::Recorder;
use super::{
    diagnose, Artifact, ArtifactKind, CaptureLimiter, Change, Current, DoctorReport,
    DoctorSettings, History, HistoryColumns, Rule, RuleStates, Series, Severity, Status,
    Transition,
};
use crate::cpu::CpuProfiler;
use crate::heap::HeapProfiler;
use crate::profile::shelf::ProfileShelf;
use crate::profile::Profile;
use crate::Error;

/// CPU profiles the doctor keeps for its findings, newest last.
pub const MAX_CPU_ARTIFACTS: usize = 4;
/// Memory the kept CPU profiles may hold together.
pub const MAX_CPU_ARTIFACT_BYTES: usize = 32 * 1024 * 1024;

/// Thread and task dumps the doctor keeps for its findings, newest last.
#[cfg(feature = "runtime")]
const MAX_DUMP_ARTIFACTS: usize = 8;

/// A thread or task dump captured for a finding.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone)]
pub(crate) enum DumpArtifact {
    /// Every thread's stack.
    Threads(Arc<crate::runtime::ThreadDump>),
    /// The runtime's tasks by await trace.
    Tasks(Arc<crate::runtime::TaskDump>),
}

#[cfg(feature = "runtime")]
impl DumpArtifact {
    fn approx_bytes(&self) -> usize {
        match self {
            DumpArtifact::Threads(dump) => dump.approx_bytes(),
            DumpArtifact::Tasks(dump) => dump.approx_bytes(),
        }
    }
}

/// The capabilities the doctor reads once a second and captures with.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub(crate) cpu: CpuProfiler,
    pub(crate) heap: HeapProfiler,
    /// Profiles kept through `POST /debug/profiles` (their memory counts
    /// as the agent's).
    pub(crate) kept: Arc<ProfileShelf>,
    #[cfg(feature = "resources")]
    pub(crate) resources: crate::resources::ResourceMonitor,
    #[cfg(feature = "runtime")]
    pub(crate) runtime: crate::runtime::RuntimeHealth,
    #[cfg(feature = "red")]
    pub(crate) red: crate::red::RedMetrics,
}

/// The agent's doctor: the history, the latest diagnosis and the evidence
/// captured for findings. Cheap to clone. Get it with
/// [`Agent::doctor`](crate::Agent::doctor).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stethoscope::Error> {
/// let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
/// let report = agent.doctor().diagnose();
/// println!("{}: {} findings", report.status.as_str(), report.findings.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Doctor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: DoctorSettings,
    state: Mutex<State>,
    limiter: Mutex<CaptureLimiter>,
    /// A capture thread is running; later captures wait their turn by
    /// being skipped (the limiter allows them again later).
    capturing: AtomicBool,
    artifacts: Mutex<VecDeque<CpuArtifact>>,
    #[cfg(feature = "runtime")]
    dumps: Mutex<VecDeque<(u64, DumpArtifact)>>,
    next_artifact: AtomicU64,
    /// Transitions since start, by rule and change (opened, closed).
    transitions: [[AtomicU64; 2]; Rule::ALL.len()],
}

#[derive(Debug)]
struct State {
    history: History,
    rules: RuleStates,
    latest: Option<DoctorReport>,
    /// Second heap snapshots to take: (rule, resource, due).
    follow_ups: Vec<(Rule, String, SystemTime)>,
}

/// A CPU profile captured for a finding.
#[derive(Debug)]
struct CpuArtifact {
    id: u64,
    profile: Arc<Profile>,
}

impl Doctor {
    pub(crate) fn new(settings: DoctorSettings) -> Self {
        let history = History::new(settings.history_rows);
        Doctor {
            inner: Arc::new(Inner {
                limiter: Mutex::new(CaptureLimiter::new(settings.capture.clone())),
                settings,
                state: Mutex::new(State {
                    history,
                    rules: RuleStates::new(),
                    latest: None,
                    follow_ups: Vec::new(),
                }),
                capturing: AtomicBool::new(false),
                artifacts: Mutex::new(VecDeque::new()),
                #[cfg(feature = "runtime")]
                dumps: Mutex::new(VecDeque::new()),
                next_artifact: AtomicU64::new(1),
                transitions: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the recorder thread, which reads `caps` once a second until
    /// the returned guard drops.
    pub(crate) fn start(&self, caps: Sources) -> Result<crate::periodic::StopOnDrop, Error> {
        let doctor = self.clone();
        let mut recorder = Recorder::default();
        crate::periodic::spawn_every("stethoscope-doctor", Duration::from_secs(1), move || {
            doctor.tick(&caps, &mut recorder, SystemTime::now());
        })
        .map_err(|source| Error::Os {
            call: "spawning the doctor's thread",
            source,
        })
    }

    /// Memory the history holds (fixed at start: one row a second for
    /// [`DoctorSettings::history_rows`]), in bytes.
    pub fn history_bytes(&self) -> usize {
        self.state().history.memory_bytes()
    }

    /// The settings the doctor runs with.
    pub fn settings(&self) -> &DoctorSettings {
        &self.inner.settings
    }

    /// The latest diagnosis (the doctor evaluates every rule once a
    /// second); before the first evaluation, a healthy report over the
    /// empty history.
    pub fn diagnose(&self) -> DoctorReport {
        let state = self.state();
        match &state.latest {
            Some(report) => report.clone(),
            None => {
                let mut rules = RuleStates::new();
                diagnose(
                    &state.history,
                    &Current::default(),
                    &self.inner.settings.config,
                    &mut rules,
                    SystemTime::now(),
                )
                .0
            }
        }
    }

    /// The history from `since` (every row without it), as columns: the
    /// timestamps and one array per series (every series without any).
    pub fn history(&self, since: Option<SystemTime>, series: &[Series]) -> HistoryColumns {
        let state = self.state();
        let all;
        let series = if series.is_empty() {
            all = state.history.all_series();
            &all
        } else {
            series
        };
        state
            .history
            .columns(since.unwrap_or(SystemTime::UNIX_EPOCH), series)
    }

    /// Runs `read` with the history (to parse series names against it).
    pub(crate) fn with_history<T>(&self, read: impl FnOnce(&History) -> T) -> T {
        read(&self.state().history)
    }

    /// Findings opened and closed since start, per rule: (rule, opened,
    /// closed).
    pub fn transitions(&self) -> Vec<(Rule, u64, u64)> {
        Rule::ALL
            .iter()
            .zip(&self.inner.transitions)
            .map(|(rule, [opened, closed])| {
                (
                    *rule,
                    opened.load(Ordering::Relaxed),
                    closed.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// A CPU profile captured for a finding, by id.
    pub(crate) fn cpu_artifact(&self, id: u64) -> Option<Arc<Profile>> {
        self.inner
            .artifacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|a| a.id == id)
            .map(|a| Arc::clone(&a.profile))
    }

    /// A thread or task dump captured for a finding, by id.
    #[cfg(feature = "runtime")]
    pub(crate) fn dump_artifact(&self, id: u64) -> Option<DumpArtifact> {
        self.inner
            .dumps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(kept, _)| *kept == id)
            .map(|(_, dump)| dump.clone())
    }

    /// Memory the kept CPU profiles and dumps hold, estimated.
    pub(crate) fn artifact_bytes(&self) -> usize {
        let profiles: usize = self
            .inner
            .artifacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.profile.approx_bytes())
            .sum();
        #[cfg(feature = "runtime")]
        let dumps: usize = self
            .inner
            .dumps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, dump)| dump.approx_bytes())
            .sum();
        #[cfg(not(feature = "runtime"))]
        let dumps = 0;
        profiles + dumps
    }

    /// Ids of the artifacts kept (CPU profiles, then dumps).
    pub(crate) fn artifact_ids(&self) -> Vec<u64> {
        #[cfg_attr(not(feature = "runtime"), allow(unused_mut))]
        let mut ids: Vec<u64> = self
            .inner
            .artifacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| a.id)
            .collect();
        #[cfg(feature = "runtime")]
        ids.extend(
            self.inner
                .dumps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(id, _)| *id),
        );
        ids
    }

    /// One second: a row, an evaluation, the transitions' consequences.
    pub(crate) fn tick(&self, caps: &Sources, recorder: &mut Recorder, now: SystemTime) {
        let config = &self.inner.settings.config;
        let (report, transitions, follow_ups) = {
            let mut state = self.state();
            let state = &mut *state;
            let (row, current) = recorder.read(
                caps,
                &mut state.history,
                config,
                self.artifact_bytes(),
                now,
            );
            state.history.push(&row);
            let (report, transitions) =
                diagnose(&state.history, &current, config, &mut state.rules, now);
            let due: Vec<(Rule, String)> = state
                .follow_ups
                .iter()
                .filter(|(_, _, at)| *at <= now)
                .map(|(rule, resource, _)| (*rule, resource.clone()))
                .collect();
            state.follow_ups.retain(|(_, _, at)| *at > now);
            (report, transitions, due)
        };
        for transition in &transitions {
            self.record_transition(transition);
        }
        let opened: Vec<&Transition> = transitions
            .iter()
            .filter(|t| t.change == Change::Opened)
            .collect();
        for transition in &opened {
            self.pin_for(caps, transition);
            self.capture_for(caps, transition, now);
        }
        {
            // Published with what was attached at once (the stall's stack,
            // the pinned profile): a reader never sees a new finding
            // without them. Captures on their own thread attach later.
            let mut state = self.state();
            let state = &mut *state;
            let mut report = report;
            for t in &opened {
                refresh_finding(&mut report, &state.rules, t.rule, &t.resource);
            }
            state.latest = Some(report);
        }
        for (rule, resource) in follow_ups {
            self.follow_up(caps, rule, &resource);
        }
    }

    fn record_transition(&self, t: &Transition) {
        let index = t.rule as usize;
        let change = match t.change {
            Change::Opened => 0,
            Change::Closed => 1,
        };
        if let Some(counter) = self.inner.transitions.get(index).map(|c| &c[change]) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match t.change {
            Change::Opened => tracing::warn!(
                target: "stethoscope::doctor",
                rule = t.rule.id(),
                resource = %t.resource,
                severity = t.severity.as_str(),
                "finding opened: {}",
                t.title
            ),
            Change::Closed => tracing::info!(
                target: "stethoscope::doctor",
                rule = t.rule.id(),
                resource = %t.resource,
                severity = t.severity.as_str(),
                "finding closed: {}",
                t.title
            ),
        }
    }

    fn attach(&self, rule: Rule, resource: &str, artifact: Artifact) {
        let mut state = self.state();
        let state = &mut *state;
        if state.rules.attach(rule, resource, artifact) {
            // The latest report shows it at once, not a second later.
            if let Some(report) = state.latest.as_mut() {
                refresh_finding(report, &state.rules, rule, resource);
            }
        }
    }

    /// Pins the continuous profiler's segments around a new finding's
    /// onset (when continuous profiling is on), so its profile outlives the
    /// ring; the pin is the finding's `profile_segment` artifact.
    fn pin_for(&self, caps: &Sources, t: &Transition) {
        if t.severity == Severity::Info {
            return;
        }
        let reason = format!("{} {}", t.rule.id(), t.resource);
        let Some(id) = caps.cpu.pin(t.since, &reason) else {
            return;
        };
        tracing::info!(
            target: "stethoscope::doctor",
            rule = t.rule.id(),
            resource = %t.resource,
            pin = id,
            "continuous profile around the onset pinned"
        );
        self.attach(
            t.rule,
            &t.resource,
            Artifact::new(
                ArtifactKind::ProfileSegment,
                format!("/debug/pprof/profile?pin={id}&format=svg"),
                t.since,
            )
            .id(id.to_string()),
        );
    }

    /// Captures what explains a finding that just opened, if the policy
    /// and the rate limit allow.
    fn capture_for(&self, caps: &Sources, t: &Transition, now: SystemTime) {
        let kind = self
            .inner
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(t.rule, now);
        match kind {
            Some(ArtifactKind::StallStack) => {
                // The rule copied the stall's stack into the evidence; the
                // artifact points at the watchdog's full record.
                self.attach(
                    t.rule,
                    &t.resource,
                    Artifact::new(ArtifactKind::StallStack, "/debug/runtime?format=text", now),
                );
            }
            Some(ArtifactKind::HeapSnapshot) => {
                if caps.heap.check().is_err() {
                    return;
                }
                let follow_up = self.inner.settings.capture.follow_up;
                self.state()
                    .follow_ups
                    .push((t.rule, t.resource.clone(), now + follow_up));
                self.on_capture_thread(caps, t.rule, t.resource.clone(), Capture::HeapSnapshot);
            }
            Some(ArtifactKind::CpuProfile) => {
                let hz = self.inner.settings.capture.hz;
                if let Some(running) = caps.cpu.status().running_hz.filter(|&h| h != hz) {
                    tracing::info!(
                        target: "stethoscope::doctor",
                        rule = t.rule.id(),
                        running_hz = running,
                        "CPU profile not captured: an operator's profile at another rate runs"
                    );
                    return;
                }
                self.on_capture_thread(caps, t.rule, t.resource.clone(), Capture::CpuProfile);
            }
            #[cfg(feature = "runtime")]
            Some(ArtifactKind::ThreadDump) => {
                self.on_capture_thread(caps, t.rule, t.resource.clone(), Capture::Dumps);
            }
            #[cfg(feature = "runtime")]
            Some(ArtifactKind::TaskDump) if self.inner.settings.capture.task_dumps => {
                self.on_capture_thread(caps, t.rule, t.resource.clone(), Capture::TaskDump);
            }
            _ => {}
        }
    }

    /// The second heap snapshot of a memory finding still open.
    fn follow_up(&self, caps: &Sources, rule: Rule, resource: &str) {
        let open = self
            .state()
            .rules
            .findings()
            .into_iter()
            .any(|f| f.rule == rule && f.resource == resource);
        if open {
            self.on_capture_thread(caps, rule, resource.to_owned(), Capture::FollowUpSnapshot);
        }
    }

    fn on_capture_thread(&self, caps: &Sources, rule: Rule, resource: String, what: Capture) {
        if self.inner.capturing.swap(true, Ordering::AcqRel) {
            tracing::debug!(target: "stethoscope::doctor", rule = rule.id(), "a capture already runs; skipped");
            return;
        }
        let (doctor, caps) = (self.clone(), caps.clone());
        let spawned = std::thread::Builder::new()
            .name("stethoscope-capture".into())
            .spawn(move || {
                if let Err(error) = doctor.capture(&caps, rule, &resource, what) {
                    tracing::info!(
                        target: "stethoscope::doctor",
                        rule = rule.id(),
                        %error,
                        "auto-capture failed"
                    );
                }
                doctor.inner.capturing.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            self.inner.capturing.store(false, Ordering::Release);
            tracing::info!(target: "stethoscope::doctor", %error, "cannot start a capture thread");
        }
    }

    fn capture(
        &self,
        caps: &Sources,
        rule: Rule,
        resource: &str,
        what: Capture,
    ) -> Result<(), Error> {
        match what {
            Capture::HeapSnapshot | Capture::FollowUpSnapshot => {
                let base = self.first_snapshot(rule, resource);
                let snapshot = caps.heap.take_snapshot()?;
                let id = snapshot.id.to_string();
                let url = match (what, base) {
                    (Capture::FollowUpSnapshot, Some(base)) => {
                        format!("/debug/heap/diff?base={base}&target={id}&format=text")
                    }
                    _ => format!("/debug/heap/snapshots/{id}"),
                };
                self.attach(
                    rule,
                    resource,
                    Artifact::new(ArtifactKind::HeapSnapshot, url, snapshot.taken_at).id(id),
                );
            }
            #[cfg(feature = "runtime")]
            Capture::Dumps => {
                let dump = caps.runtime.thread_dump()?;
                let taken_at = dump.captured_at;
                let id = self.keep_dump(DumpArtifact::Threads(Arc::new(dump)));
                self.attach(
                    rule,
                    resource,
                    Artifact::new(
                        ArtifactKind::ThreadDump,
                        format!("/debug/doctor/artifacts/{id}?format=text"),
                        taken_at,
                    )
                    .id(id.to_string()),
                );
                // Where the policy allows, the build has task dumps and
                // they are safe now.
                if self.inner.settings.capture.task_dumps {
                    self.capture_task_dump(caps, rule, resource, false)?;
                }
            }
            #[cfg(feature = "runtime")]
            Capture::TaskDump => self.capture_task_dump(caps, rule, resource, true)?,
            Capture::CpuProfile => {
                let policy = &self.inner.settings.capture;
                let request = crate::cpu::ProfileRequest::new(policy.profile).hz(policy.hz);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Os {
                        call: "building the capture thread's runtime",
                        source,
                    })?;
                let raw = runtime.block_on(caps.cpu.profile(request))?;
                let taken_at = raw.started_at();
                let profile = Arc::new(raw.to_profile());
                let id = self.keep_cpu_profile(profile);
                self.attach(
                    rule,
                    resource,
                    Artifact::new(
                        ArtifactKind::CpuProfile,
                        format!("/debug/doctor/artifacts/{id}?format=svg"),
                        taken_at,
                    )
                    .id(id.to_string()),
                );
            }
        }
        Ok(())
    }

    /// Takes a task dump and attaches it. A dump this build or this
    /// runtime cannot give is an error only when it is `wanted` by itself.
    #[cfg(feature = "runtime")]
    fn capture_task_dump(
        &self,
        caps: &Sources,
        rule: Rule,
        resource: &str,
        wanted: bool,
    ) -> Result<(), Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Os {
                call: "building the capture thread's runtime",
                source,
            })?;
        let dump = match runtime.block_on(caps.runtime.task_dump()) {
            Ok(dump) => dump,
            Err(Error::Unsupported { .. } | Error::TaskDumpRefused { .. }) if !wanted => {
                return Ok(())
            }
            Err(error) => return Err(error),
        };
        let taken_at = dump.captured_at;
        let id = self.keep_dump(DumpArtifact::Tasks(Arc::new(dump)));
        self.attach(
            rule,
            resource,
            Artifact::new(
                ArtifactKind::TaskDump,
                format!("/debug/doctor/artifacts/{id}?format=text"),
                taken_at,
            )
            .id(id.to_string()),
        );
        Ok(())
    }

    #[cfg(feature = "runtime")]
    fn keep_dump(&self, dump: DumpArtifact) -> u64 {
        let id = self.inner.next_artifact.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.inner.dumps.lock().unwrap_or_else(PoisonError::into_inner);
        kept.push_back((id, dump));
        while kept.len() > MAX_DUMP_ARTIFACTS {
            kept.pop_front();
        }
        id
    }

    fn first_snapshot(&self, rule: Rule, resource: &str) -> Option<String> {
        self.state()
            .rules
            .findings()
            .into_iter()
            .find(|f| f.rule == rule && f.resource == resource)?
            .artifacts
            .iter()
            .find(|a| a.kind == ArtifactKind::HeapSnapshot)
            .and_then(|a| a.id.clone())
    }

    fn keep_cpu_profile(&self, profile: Arc<Profile>) -> u64 {
        let id = self.inner.next_artifact.fetch_add(1, Ordering::Relaxed);
        let mut kept = self
            .inner
            .artifacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        kept.push_back(CpuArtifact { id, profile });
        let bytes = |kept: &VecDeque<CpuArtifact>| -> usize {
            kept.iter().map(|a| a.profile.approx_bytes()).sum()
        };
        while kept.len() > MAX_CPU_ARTIFACTS
            || (kept.len() > 1 && bytes(&kept) > MAX_CPU_ARTIFACT_BYTES)
        {
            kept.pop_front();
        }
        id
    }

    /// The status of the latest diagnosis: 0 healthy, 1 warning, 2 critical.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn status_level(&self) -> u8 {
        match self.state().latest.as_ref().map(|r| r.status) {
            Some(Status::Critical) => 2,
            Some(Status::Warning) => 1,
            _ => 0,
        }
    }
}

/// What a capture thread takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    HeapSnapshot,
    FollowUpSnapshot,
    CpuProfile,
    /// A thread dump, and a task dump where there is one.
    #[cfg(feature = "runtime")]
    Dumps,
    #[cfg(feature = "runtime")]
    TaskDump,
}

/// Replaces `report`'s finding of `rule` on `resource` with the rules'
/// current one (artifacts included), keeping the report's order.
fn refresh_finding(report: &mut DoctorReport, rules: &RuleStates, rule: Rule, resource: &str) {
    report
        .findings
        .retain(|f| !(f.rule == rule && f.resource == resource));
    report.findings.extend(
        rules
            .findings()
            .into_iter()
            .filter(|f| f.rule == rule && f.resource == resource)
            .map(|mut f| {
                f.resolve_next();
                f
            }),
    );
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.since.cmp(&b.since)));
}
