//! Stalls — a worker stuck in one poll — and what the watchdog knows about
//! them: when, how long, on which thread, and the stack it was stuck in.
//!
//! The watchdog captures the stacks of the candidate threads while the
//! worker is stuck; symbolizing them (which may load debug info for
//! seconds the first time) happens on a thread of its own, never on the
//! watchdog's or the host runtime's.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::profile::scheduler::{classify, ThreadState};
use crate::symbols::symbolize::Symbolizer;

/// How sure the watchdog is that `frames` are the stuck worker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Attribution {
    /// The thread was identified as this worker by a probe task that ran
    /// on it while every other worker was parked.
    Exact,
    /// The only candidate thread that was inside a task poll (the others
    /// were parked, in the blocking pool, or known to be other workers).
    Inferred,
    /// Several candidate threads were inside a poll; `frames` are the
    /// first one's, `other_candidates` lists the rest.
    Ambiguous,
    /// No stack: capture was refused or no thread could be identified
    /// (`note` says why).
    Unavailable,
}

impl Attribution {
    /// The JSON name: `exact`, `inferred`, `ambiguous` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Exact => "exact",
            Attribution::Inferred => "inferred",
            Attribution::Ambiguous => "ambiguous",
            Attribution::Unavailable => "unavailable",
        }
    }
}

/// A thread whose stack was captured for a stall.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StallThread {
    /// Kernel thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// Symbolized frames, leaf first.
    pub frames: Vec<String>,
}

/// A worker stuck in one poll for longer than the stall threshold.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Stall {
    /// Sequence number, from 1.
    pub id: u64,
    /// Worker index (as in `RuntimeMetrics`).
    pub worker: usize,
    /// When the worker last came back to the scheduler before the stall
    /// (accurate to the watchdog's tick).
    #[serde(serialize_with = "crate::report::time")]
    pub started_at: SystemTime,
    /// How long the worker was away from the scheduler: tokio's own busy
    /// time once the stall is over; time so far while it is `ongoing`.
    #[serde(rename = "duration_ms", serialize_with = "crate::report::ms")]
    pub duration: Duration,
    /// The worker has not come back yet.
    pub ongoing: bool,
    /// Symbolized stack of the stuck thread, leaf first (empty when
    /// unavailable or still being symbolized).
    pub frames: Vec<String>,
    /// The thread `frames` belong to: kernel thread id and name.
    #[serde(serialize_with = "thread_json")]
    pub thread: Option<(u32, String)>,
    /// How the thread was identified.
    pub attribution: Attribution,
    /// Other threads that were inside a poll when attribution is ambiguous.
    pub other_candidates: Vec<StallThread>,
    /// Why something is missing, if it is.
    pub note: Option<String>,
}

/// `{"tid": …, "name": …}` or `null`.
fn thread_json<S: serde::Serializer>(
    thread: &Option<(u32, String)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Thread<'a> {
        tid: u32,
        name: &'a str,
    }
    match thread {
        Some((tid, name)) => serde::Serialize::serialize(&Thread { tid: *tid, name }, s),
        None => s.serialize_none(),
    }
}

/// One captured candidate thread, before symbolization.
#[derive(Debug, Clone)]
pub(crate) struct RawCandidate {
    pub(crate) tid: u32,
    pub(crate) name: String,
    /// Lookup addresses, innermost first; `None` if it did not answer.
    pub(crate) addresses: Option<Vec<u64>>,
}

/// What the watchdog hands to the symbolizing thread.
#[derive(Debug)]
pub(crate) struct StallJob {
    pub(crate) id: u64,
    pub(crate) candidates: Vec<RawCandidate>,
    /// The thread a probe identified as this worker, if any.
    pub(crate) mapped: Option<u32>,
    /// Threads identified as other workers.
    pub(crate) other_workers: Vec<u32>,
    /// Why nothing was captured, if so.
    pub(crate) error: Option<String>,
}

/// Most stalls kept; older ones are dropped.
pub const STALL_HISTORY: usize = 32;

#[derive(Debug, Default)]
struct HistoryInner {
    stalls: VecDeque<Stall>,
    next_id: u64,
    total: u64,
    total_duration: Duration,
}

/// The bounded stall history of one runtime. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct StallHistory {
    inner: Arc<Mutex<HistoryInner>>,
}

impl StallHistory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HistoryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a stall that just crossed the threshold; returns its id.
    pub(crate) fn start(&self, worker: usize, started_at: SystemTime, stuck_for: Duration) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        inner.total += 1;
        let id = inner.next_id;
        if inner.stalls.len() == STALL_HISTORY {
            inner.stalls.pop_front();
        }
        inner.stalls.push_back(Stall {
            id,
            worker,
            started_at,
            duration: stuck_for,
            ongoing: true,
            frames: Vec::new(),
            thread: None,
            attribution: Attribution::Unavailable,
            other_candidates: Vec::new(),
            note: Some("stack being captured and symbolized".into()),
        });
        id
    }

    /// Records a stall the watchdog only learned about once it was over
    /// (tokio's busy time told its length); it has no stack.
    pub(crate) fn record_missed(&self, worker: usize, started_at: SystemTime, duration: Duration) {
        let id = self.start(worker, started_at, duration);
        self.update(id, |stall| {
            stall.note = Some(
                "over before the watchdog looked again (it looks less often while every worker is parked); no stack".into(),
            );
        });
        self.finish(id, duration);
    }

    /// Forgets a stall that turned out shorter than the threshold.
    pub(crate) fn retract(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(index) = inner.stalls.iter().position(|s| s.id == id) {
            inner.stalls.remove(index);
            inner.total = inner.total.saturating_sub(1);
        }
    }

    /// Updates the time so far of an ongoing stall.
    pub(crate) fn extend(&self, id: u64, stuck_for: Duration) {
        if let Some(stall) = self.lock().stalls.iter_mut().find(|s| s.id == id) {
            stall.duration = stall.duration.max(stuck_for);
        }
    }

    /// Marks a stall over after `duration` away from the scheduler.
    pub(crate) fn finish(&self, id: u64, duration: Duration) -> Option<Stall> {
        let mut inner = self.lock();
        inner.total_duration += duration;
        let stall = inner.stalls.iter_mut().find(|s| s.id == id)?;
        stall.duration = duration;
        stall.ongoing = false;
        Some(stall.clone())
    }

    fn update(&self, id: u64, apply: impl FnOnce(&mut Stall)) -> Option<Stall> {
        let mut inner = self.lock();
        let stall = inner.stalls.iter_mut().find(|s| s.id == id)?;
        apply(stall);
        Some(stall.clone())
    }

    /// The stalls kept, oldest first.
    pub(crate) fn list(&self) -> Vec<Stall> {
        self.lock().stalls.iter().cloned().collect()
    }

    /// The longest stall that started at or after `since` or is still
    /// going on, with its stack.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn longest_since(&self, since: SystemTime) -> Option<Stall> {
        self.lock()
            .stalls
            .iter()
            .filter(|s| s.ongoing || s.started_at >= since)
            .max_by_key(|s| s.duration)
            .cloned()
    }

    /// Stalls since start and their summed duration (finished ones).
    pub(crate) fn totals(&self) -> (u64, Duration) {
        let inner = self.lock();
        (inner.total, inner.total_duration)
    }

    /// Symbolizes a job's stacks, picks the stuck thread and fills in the
    /// stall. Blocks while debug info loads: runs on the stall thread.
    pub(crate) fn resolve(&self, job: StallJob) {
        let resolved = resolve_job(&job);
        let Some(stall) = self.update(job.id, |stall| {
            stall.frames = resolved.frames;
            stall.thread = resolved.thread;
            stall.attribution = resolved.attribution;
            stall.other_candidates = resolved.others;
            stall.note = resolved.note;
        }) else {
            return;
        };
        tracing::warn!(
            worker = stall.worker,
            stuck_ms = stall.duration.as_secs_f64() * 1e3,
            ongoing = stall.ongoing,
            tid = stall.thread.as_ref().map(|t| t.0),
            attribution = stall.attribution.as_str(),
            stack = %Leaf(&stall.frames),
            "tokio worker stuck in one poll"
        );
    }
}

/// The first frames of a stack, for a log line.
struct Leaf<'a>(&'a [String]);

impl fmt::Display for Leaf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, frame) in self.0.iter().take(12).enumerate() {
            if i > 0 {
                f.write_str(" <- ")?;
            }
            f.write_str(frame)?;
        }
        Ok(())
    }
}

struct Resolved {
    frames: Vec<String>,
    thread: Option<(u32, String)>,
    attribution: Attribution,
    others: Vec<StallThread>,
    note: Option<String>,
}

fn resolve_job(job: &StallJob) -> Resolved {
    let unavailable = |note: String| Resolved {
        frames: Vec::new(),
        thread: None,
        attribution: Attribution::Unavailable,
        others: Vec::new(),
        note: Some(note),
    };
    if let Some(error) = &job.error {
        return unavailable(error.clone());
    }
    let addresses: Vec<u64> = job
        .candidates
        .iter()
        .filter_map(|c| c.addresses.as_deref())
        .flatten()
        .copied()
        .collect();
    let symbols = Symbolizer::global().resolve(&addresses);
    let candidates: Vec<(StallThread, ThreadState)> = job
        .candidates
        .iter()
        .filter_map(|c| {
            let frames: Vec<String> = c
                .addresses
                .as_deref()?
                .iter()
                .flat_map(|address| match symbols.get(address) {
                    Some(chain) if !chain.is_empty() => {
                        chain.iter().map(|f| f.function.to_string()).collect()
                    }
                    _ => vec![format!("{address:#x}")],
                })
                .collect();
            let state = classify(&frames);
            Some((
                StallThread {
                    tid: c.tid,
                    name: c.name.clone(),
                    frames,
                },
                state,
            ))
        })
        .collect();
    if candidates.is_empty() {
        return unavailable("no candidate thread answered the capture signal".into());
    }
    let in_poll = |s: ThreadState| matches!(s, ThreadState::Polling | ThreadState::Unknown);
    let chosen = |thread: &StallThread, attribution, others: Vec<StallThread>| Resolved {
        frames: thread.frames.clone(),
        thread: Some((thread.tid, thread.name.clone())),
        attribution,
        others,
        note: None,
    };
    if let Some(mapped) = job.mapped {
        if let Some((thread, _)) = candidates
            .iter()
            .find(|(t, s)| t.tid == mapped && in_poll(*s))
        {
            return chosen(thread, Attribution::Exact, Vec::new());
        }
    }
    let mut pool: Vec<&(StallThread, ThreadState)> = candidates
        .iter()
        .filter(|(t, s)| in_poll(*s) && !job.other_workers.contains(&t.tid))
        .collect();
    if pool.is_empty() {
        pool = candidates.iter().filter(|(_, s)| in_poll(*s)).collect();
    }
    if pool.iter().any(|(_, s)| *s == ThreadState::Polling) {
        pool.retain(|(_, s)| *s == ThreadState::Polling);
    }
    match pool.as_slice() {
        [] => unavailable(format!(
            "none of the {} candidate threads was inside a task poll when captured",
            candidates.len()
        )),
        [(only, _)] => chosen(only, Attribution::Inferred, Vec::new()),
        [(first, _), rest @ ..] => chosen(
            first,
            Attribution::Ambiguous,
            rest.iter().map(|(t, _)| t.clone()).collect(),
        ),
    }
}

/// Threads of this process: (tid, comm).
pub(crate) fn threads() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            Some((tid, comm.trim_end().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_tracks_totals() {
        let history = StallHistory::default();
        for worker in 0..(STALL_HISTORY + 3) {
            let id = history.start(worker, SystemTime::now(), Duration::from_millis(100));
            history.extend(id, Duration::from_millis(150));
            let done = history.finish(id, Duration::from_millis(200)).unwrap();
            assert!(!done.ongoing);
        }
        let list = history.list();
        assert_eq!(list.len(), STALL_HISTORY);
        assert_eq!(list[0].worker, 3);
        let (total, time) = history.totals();
        assert_eq!(total, STALL_HISTORY as u64 + 3);
        assert_eq!(
            time,
            Duration::from_millis(200) * (STALL_HISTORY as u32 + 3)
        );
    }

    #[test]
    fn picks_the_mapped_thread_or_the_only_one_in_a_poll() {
        let polling = vec![0u64];
        let job = |mapped, others: Vec<u32>| StallJob {
            id: 1,
            candidates: vec![
                RawCandidate {
                    tid: 10,
                    name: "w".into(),
                    addresses: Some(polling.clone()),
                },
                RawCandidate {
                    tid: 11,
                    name: "w".into(),
                    addresses: None,
                },
            ],
            mapped,
            other_workers: others,
            error: None,
        };
        let resolved = resolve_job(&job(Some(10), vec![]));
        assert_eq!(resolved.attribution, Attribution::Exact);
        assert_eq!(resolved.thread.map(|t| t.0), Some(10));
        let resolved = resolve_job(&job(None, vec![]));
        assert_eq!(resolved.attribution, Attribution::Inferred);
        let error = StallJob {
            error: Some("signal taken".into()),
            ..job(None, vec![])
        };
        let resolved = resolve_job(&error);
        assert_eq!(resolved.attribution, Attribution::Unavailable);
        assert_eq!(resolved.note.as_deref(), Some("signal taken"));
    }
}
