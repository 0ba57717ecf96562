//! Every thread's stack now — `jstack` or Go's `goroutine?debug=1|2` for a
//! Rust process: each thread's name, scheduler state, CPU time, the labels
//! its code was running with (route, task, span) and its stack, captured
//! with the stall watchdog's machinery ([`StackCapture`]): a real-time
//! signal to each thread, whose handler unwinds its own interrupted
//! context — a running thread as well as one blocked in a futex, a read or
//! `sleep`. Bounded in time: threads that do not answer by the deadline
//! (in an uninterruptible sleep, or with the signal blocked) are listed as
//! such and their queued signal is discarded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::capture::{Captured, StackCapture, ANSWER_TIMEOUT, THREADS_IN_ANSWER_TIMEOUT};
use crate::labels::LabelSet;
use crate::profile::{Profile, ProfileMeta, RawStack, ValueType, View};

/// What a thread was doing when looked at (`/proc/self/task/<tid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ThreadState {
    /// On a CPU or ready to run (`R`).
    Running,
    /// Asleep: waiting on a futex, I/O, a timer (`S`).
    Sleeping,
    /// In an uninterruptible sleep, usually disk I/O (`D`).
    Disk,
    /// Stopped or traced (`T`, `t`).
    Stopped,
    /// Anything else, or unreadable.
    Other,
}

impl ThreadState {
    /// Reads thread `tid`'s state.
    fn of(tid: u32) -> ThreadState {
        let Ok(stat) = std::fs::read(format!("/proc/self/task/{tid}/stat")) else {
            return ThreadState::Other;
        };
        let after = stat
            .iter()
            .rposition(|&b| b == b')')
            .and_then(|i| stat.get(i + 2));
        match after {
            Some(b'R') => ThreadState::Running,
            Some(b'S') | Some(b'I') => ThreadState::Sleeping,
            Some(b'D') => ThreadState::Disk,
            Some(b'T') | Some(b't') => ThreadState::Stopped,
            _ => ThreadState::Other,
        }
    }

    /// `running`, `sleeping`, `disk`, `stopped`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadState::Running => "running",
            ThreadState::Sleeping => "sleeping",
            ThreadState::Disk => "disk",
            ThreadState::Stopped => "stopped",
            ThreadState::Other => "other",
        }
    }
}

/// One thread of the dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DumpedThread {
    /// Kernel thread id.
    pub tid: u32,
    /// Its name (`comm`, 15 bytes at most).
    pub name: String,
    /// What it was doing just before it was signalled.
    pub state: ThreadState,
    /// CPU time it has used since it started, in seconds.
    pub cpu_seconds: f64,
    /// The labels its code was running with (route, method, task, span).
    pub labels: LabelSet,
    /// Whether it answered: its stack is in the dump.
    pub answered: bool,
}

/// Every thread's stack at one instant: what `/debug/threads` renders.
#[derive(Debug, Clone)]
pub struct ThreadDump {
    /// When the signals went out.
    pub captured_at: SystemTime,
    /// How long the capture took (signals out, answers in).
    pub took: Duration,
    /// The threads, in thread-id order.
    pub threads: Vec<DumpedThread>,
    /// Each answered thread's stack (leaf first), by index in `threads`.
    stacks: Vec<Option<Vec<u64>>>,
}

impl ThreadDump {
    /// Signals every thread of the process but the calling one and waits
    /// for their answers until the deadline: [`ANSWER_TIMEOUT`] for up to
    /// 256 threads, proportionally more for more.
    pub(crate) fn capture(capture: &mut StackCapture) -> Result<ThreadDump, super::CaptureError> {
        let me = crate::threads::current_tid();
        let tids: Vec<u32> = crate::threads::all_threads()
            .into_iter()
            .filter(|&tid| tid != me)
            .collect();
        let states: Vec<ThreadState> = tids.iter().map(|&tid| ThreadState::of(tid)).collect();
        let budget = ANSWER_TIMEOUT.mul_f64(
            (tids.len() as f64 / THREADS_IN_ANSWER_TIMEOUT as f64).max(1.0),
        );
        let captured_at = SystemTime::now();
        let started = Instant::now();
        let answers = capture.capture(&tids, started + budget)?;
        let took = started.elapsed();
        let mut threads = Vec::with_capacity(tids.len());
        let mut stacks = Vec::with_capacity(tids.len());
        for ((&tid, state), answer) in tids.iter().zip(states).zip(answers) {
            let (stack, labels, answered) = match answer {
                Captured::Frames(frames, labels) => {
                    (Some(frames), crate::labels::resolve(labels), true)
                }
                Captured::Gone => continue,
                Captured::NoAnswer => (None, LabelSet::default(), false),
            };
            threads.push(DumpedThread {
                tid,
                name: thread_name(tid),
                state,
                cpu_seconds: thread_cpu(tid).as_secs_f64(),
                labels,
                answered,
            });
            stacks.push(stack);
        }
        Ok(ThreadDump {
            captured_at,
            took,
            threads,
            stacks,
        })
    }

    /// Memory the dump holds, estimated.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn approx_bytes(&self) -> usize {
        let stacks: usize = self.stacks.iter().flatten().map(|s| s.len() * 8).sum();
        stacks + self.threads.len() * (std::mem::size_of::<DumpedThread>() + 64)
    }

    /// The dump as a count profile: one sample per answered thread, with
    /// labels `thread` (its name), `state` and the thread's own labels —
    /// `go tool pprof -traces` lists them, `-tagfocus` picks some.
    pub fn to_profile(&self) -> Profile {
        let names: Vec<Arc<str>> = self.threads.iter().map(|t| Arc::from(&*t.name)).collect();
        let stacks = self
            .threads
            .iter()
            .zip(&self.stacks)
            .zip(&names)
            .filter_map(|((thread, stack), name)| {
                let stack = stack.as_ref()?;
                Some(RawStack {
                    thread: Some(Arc::clone(name)),
                    addresses: stack,
                    values: vec![1],
                    labels: thread.labels.with("state", thread.state.as_str()),
                })
            });
        let answered = self.stacks.iter().filter(|s| s.is_some()).count();
        let exe = crate::profile::process_name();
        let meta = ProfileMeta {
            sample_types: vec![ValueType::new("threads", "count")],
            default_value: 0,
            flame_value: 0,
            period_type: ValueType::new("threads", "count"),
            period: 1,
            started_at: self.captured_at,
            duration: self.took,
            title: format!("Threads of {exe} (pid {})", std::process::id()),
            comments: vec![format!(
                "{} threads, {answered} answered in {:.1} ms, at {}",
                self.threads.len(),
                self.took.as_secs_f64() * 1e3,
                crate::units::rfc3339(self.captured_at)
            )],
            symbolize: true,
            drop_frames: None,
        };
        Profile::build(meta, stacks)
    }

    /// The threads grouped by identical stack (Go's `debug=1`), the largest
    /// group first; threads that did not answer form one group without a
    /// stack. With `grouped` false, one group per thread (`debug=2`).
    pub fn groups(&self, view: &View, grouped: bool) -> ThreadGroups {
        let profile = self.to_profile();
        // Samples are in the order of the answered threads.
        let mut frames_of: Vec<Option<Vec<String>>> = Vec::with_capacity(self.threads.len());
        let mut samples = profile.samples.iter();
        for stack in &self.stacks {
            frames_of.push(stack.as_ref().and_then(|_| {
                let sample = samples.next()?;
                let frames: Vec<Cow<'_, str>> = view.stack(&profile, sample)?;
                // Leaf first, as every stack of the agent's JSON.
                Some(frames.into_iter().rev().map(Cow::into_owned).collect())
            }));
        }
        let mut groups: Vec<ThreadGroup> = Vec::new();
        let mut index: HashMap<(&[u64], ThreadState), usize> = HashMap::new();
        for (i, thread) in self.threads.iter().enumerate() {
            let Some(stack) = &self.stacks[i] else {
                continue;
            };
            let Some(frames) = frames_of[i].clone() else {
                continue;
            };
            let key = (stack.as_slice(), thread.state);
            match index.get(&key).filter(|_| grouped) {
                Some(&g) => groups[g].threads.push(thread.clone()),
                None => {
                    index.insert(key, groups.len());
                    groups.push(ThreadGroup {
                        count: 0,
                        state: Some(thread.state),
                        frames,
                        threads: vec![thread.clone()],
                    });
                }
            }
        }
        let silent: Vec<DumpedThread> = self
            .threads
            .iter()
            .filter(|t| !t.answered)
            .cloned()
            .collect();
        for group in &mut groups {
            group.count = group.threads.len();
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.frames.cmp(&b.frames)));
        if !silent.is_empty() {
            groups.push(ThreadGroup {
                count: silent.len(),
                state: None,
                frames: Vec::new(),
                threads: silent,
            });
        }
        ThreadGroups {
            captured_at: self.captured_at,
            took: self.took,
            threads: self.threads.len(),
            answered: self.threads.iter().filter(|t| t.answered).count(),
            view: view.note(),
            groups,
        }
    }
}

/// The threads of a dump in groups: the JSON of `/debug/threads?format=json`
/// and, as `Display`, its text.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ThreadGroups {
    /// When the signals went out.
    #[serde(serialize_with = "crate::report::time")]
    pub captured_at: SystemTime,
    /// How long the capture took, in milliseconds.
    #[serde(rename = "took_ms", serialize_with = "crate::report::ms")]
    pub took: Duration,
    /// Threads in the dump (the one that took it is not).
    pub threads: usize,
    /// Of those, the ones that answered with their stack.
    pub answered: usize,
    /// What the view folded, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Largest group first; threads that did not answer last, in a group
    /// without frames or state.
    pub groups: Vec<ThreadGroup>,
}

/// Threads with the same stack and state.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ThreadGroup {
    /// How many.
    pub count: usize,
    /// Their state (`None` for threads that did not answer).
    pub state: Option<ThreadState>,
    /// Their stack, leaf first, plumbing folded as the view says.
    pub frames: Vec<String>,
    /// The threads.
    pub threads: Vec<DumpedThread>,
}

/// Threads named in a group's header line before "and N more".
const NAMES_LISTED: usize = 8;

impl std::fmt::Display for ThreadGroups {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            out,
            "threads of {} (pid {}) at {}: {} threads, {} answered in {:.1} ms",
            crate::profile::process_name(),
            std::process::id(),
            crate::units::rfc3339(self.captured_at),
            self.threads,
            self.answered,
            self.took.as_secs_f64() * 1e3
        )?;
        if let Some(view) = &self.view {
            writeln!(out, "view: {view}")?;
        }
        for group in &self.groups {
            writeln!(out)?;
            let mut names = String::new();
            for thread in group.threads.iter().take(NAMES_LISTED) {
                if !names.is_empty() {
                    names.push_str(", ");
                }
                let _ = write!(names, "{} ({})", thread.name, thread.tid);
            }
            if group.threads.len() > NAMES_LISTED {
                let _ = write!(names, " and {} more", group.threads.len() - NAMES_LISTED);
            }
            match group.state {
                Some(state) => writeln!(
                    out,
                    "{} thread{} {}: {names}",
                    group.count,
                    if group.count == 1 { "" } else { "s" },
                    state.as_str()
                )?,
                None => writeln!(
                    out,
                    "{} thread{} did not answer in time (uninterruptible sleep, or the signal \
                     is blocked): {names}",
                    group.count,
                    if group.count == 1 { "" } else { "s" },
                )?,
            }
            let cpu: f64 = group.threads.iter().map(|t| t.cpu_seconds).sum();
            writeln!(out, "  cpu {cpu:.3} s in all")?;
            let mut labels: Vec<String> = group
                .threads
                .iter()
                .filter(|t| !t.labels.is_empty())
                .map(|t| t.labels.to_string())
                .collect();
            labels.sort();
            labels.dedup();
            for set in labels.iter().take(4) {
                writeln!(out, "  labels {set}")?;
            }
            for frame in &group.frames {
                writeln!(out, "    {frame}")?;
            }
        }
        Ok(())
    }
}

fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|name| name.trim_end().to_owned())
        .unwrap_or_default()
}

/// CPU time of thread `tid` (scheduler accounting, nanoseconds exact).
fn thread_cpu(tid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}
