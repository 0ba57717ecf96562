//! An async task dump: tokio's `Handle::dump()`, grouped by identical
//! await trace, largest group first — Go's `goroutine?debug=1` for tokio
//! tasks (`/debug/tasks`).
//!
//! Opt-in and guarded. It exists only in a service built with
//! `--cfg tokio_unstable` and the agent's `taskdump` feature (tokio's
//! `taskdump`; Linux on x86, x86_64, aarch64 or s390x), and it refuses where
//! tokio's dump is known to hurt the host (tokio 1.54.1):
//! - a `current_thread` runtime: the dump runs on the host's only thread
//!   and can panic with "RefCell already borrowed" when a traced task wakes
//!   another (tokio#8391, open; it aborted a production server);
//! - a worker stuck in one poll: the dump waits at a barrier for every
//!   worker, 250 ms at a time, and the stuck one never comes;
//! - a worker inside any poll longer than [`LONG_POLL`] through all of
//!   [`QUIET_WAIT`]: a dump that meets a worker inside a poll can leave it
//!   parked for good (below), so it starts only in a moment when the
//!   watchdog sees every worker parked or between polls;
//! - after a dump that timed out, or that took 250 ms or more (a worker
//!   missed tokio's barrier round, whose count is then left behind): the
//!   next dump can elect a spurious leader that parks a worker for good or
//!   trips tokio's `next.is_notified()` assertion (tokio#6343, fix PR #8370
//!   unmerged) — seen here: a dump while one worker was blocked in a
//!   700 ms poll came back after 261 ms, and that worker then stayed
//!   parked at the dump's end barrier for good (the runtime lost a worker);
//!   a dump can thus hurt the host even when it succeeds, which is why
//!   dumps stay opt-in at build time (and the doctor takes one by itself
//!   only when also asked to at run time) — and the agent turns them off
//!   for the rest of the process after one that took that long;
//! - after a dump followed by a worker held at the start barrier (away
//!   from its scheduler for [`HELD_AFTER_DUMP`] within
//!   [`AFTER_DUMP_WATCH`]): a worker that saw the request only after the
//!   round ended waited alone and left its arrival counted — seen in the
//!   e2e suite under load, the next dump (2 ms) then parked a worker for
//!   good;
//! - while another dump runs (or its after-watch).
//!
//! Tokio 1.54 is required (the workspace pins it): it fixes workers left
//! asleep after a dump (tokio#7478) and `FuturesUnordered` children left
//! hanging (tokio#8434). A dump holds only *idle* tasks — a task running
//! or already woken when it starts is not in it — and resolving its traces
//! reads the binary's debug info (often over 100 ms, tens of MiB the first
//! time), which happens on a blocking thread of the agent, bounded by
//! [`TASK_DUMP_RESOLVE_BUDGET`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How long the host runtime has to hand over its dump.
pub const TASK_DUMP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long resolving the traces of one dump may take; tasks left when it
/// runs out are counted, not grouped.
pub const TASK_DUMP_RESOLVE_BUDGET: Duration = Duration::from_secs(5);

/// How long a dump waits for a moment when no worker is inside a long poll
/// before it is refused.
pub(crate) const QUIET_WAIT: Duration = Duration::from_millis(500);

/// A worker away from its scheduler this long (the watchdog's looks are
/// 10 ms apart by default) is inside a poll a dump could meet.
pub(crate) const LONG_POLL: Duration = Duration::from_millis(20);

/// How long the workers are watched after a dump: tokio's barrier round
/// (250 ms) and a margin. A worker that saw the dump's request only after
/// the round was over waits alone at the start barrier for a round, and
/// its arrival stays counted (tokio#8370, unmerged in 1.54.1): the next
/// dump would then elect a leader without the other workers, trace, and
/// wait for them at the end barrier for good — seen in the e2e suite on a
/// busy machine, the dump itself taking 2 ms.
#[cfg_attr(not(stethoscope_taskdump), allow(dead_code))]
pub(crate) const AFTER_DUMP_WATCH: Duration = Duration::from_millis(400);

/// A worker away from its scheduler this long in [`AFTER_DUMP_WATCH`] may be
/// the one held at the barrier: later dumps are refused.
#[cfg_attr(not(stethoscope_taskdump), allow(dead_code))]
pub(crate) const HELD_AFTER_DUMP: Duration = Duration::from_millis(100);

/// Whether every worker is parked or back in its scheduler within `limit`.
pub(crate) fn between_polls(workers: &[super::WorkerView], limit: Duration) -> bool {
    workers
        .iter()
        .all(|view| view.away_for.is_none_or(|away| away < limit))
}

/// Task ids listed per group.
#[cfg_attr(not(stethoscope_taskdump), allow(dead_code))]
const IDS_LISTED: usize = 16;

/// Tasks of the host runtime grouped by identical await trace:
/// `/debug/tasks`' JSON, and as `Display` its text.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TaskDump {
    /// When the dump was asked for.
    #[serde(serialize_with = "crate::report::time")]
    pub captured_at: SystemTime,
    /// How long the runtime took to hand it over, in milliseconds.
    #[serde(rename = "took_ms", serialize_with = "crate::report::ms")]
    pub took: Duration,
    /// How long resolving the traces took, in milliseconds.
    #[serde(rename = "resolved_ms", serialize_with = "crate::report::ms")]
    pub resolved: Duration,
    /// Idle tasks in the dump.
    pub tasks: usize,
    /// Tasks whose trace was not resolved within
    /// [`TASK_DUMP_RESOLVE_BUDGET`] (counted, not grouped).
    pub unresolved: usize,
    /// Largest group first.
    pub groups: Vec<TaskGroup>,
}

/// Tasks waiting at the same place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TaskGroup {
    /// How many tasks.
    pub count: usize,
    /// The first task ids (at most 16).
    pub task_ids: Vec<String>,
    /// One trace per leaf future the tasks wait on (several under `join!`
    /// or `select!`, in sorted order), each leaf first: `function at file:line`, tokio's
    /// tracing machinery and the runtime's harness left out.
    pub traces: Vec<Vec<String>>,
}

impl TaskDump {
    /// Memory the dump holds, estimated.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn approx_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                g.traces.iter().flatten().map(String::len).sum::<usize>()
                    + g.task_ids.iter().map(String::len).sum::<usize>()
                    + 64
            })
            .sum()
    }
}

impl std::fmt::Display for TaskDump {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            out,
            "tasks of {} (pid {}) at {}: {} idle tasks in {} groups; dumped in {:.1} ms, \
             resolved in {:.1} ms",
            crate::profile::process_name(),
            std::process::id(),
            crate::units::rfc3339(self.captured_at),
            self.tasks,
            self.groups.len(),
            self.took.as_secs_f64() * 1e3,
            self.resolved.as_secs_f64() * 1e3,
        )?;
        writeln!(
            out,
            "(idle tasks only: a task running or already woken at the dump is not in it)"
        )?;
        if self.unresolved > 0 {
            writeln!(
                out,
                "{} tasks not resolved within {} s, left out",
                self.unresolved,
                TASK_DUMP_RESOLVE_BUDGET.as_secs()
            )?;
        }
        for group in &self.groups {
            writeln!(out)?;
            let mut ids = group.task_ids.join(", ");
            if group.count > group.task_ids.len() {
                let _ = write!(ids, " and {} more", group.count - group.task_ids.len());
            }
            writeln!(
                out,
                "{} task{} (ids {ids}):",
                group.count,
                if group.count == 1 { "" } else { "s" }
            )?;
            for (i, trace) in group.traces.iter().enumerate() {
                if group.traces.len() > 1 {
                    writeln!(out, "  leaf {}:", i + 1)?;
                }
                for frame in trace {
                    writeln!(out, "    {frame}")?;
                }
            }
        }
        Ok(())
    }
}

/// What a build without task dumps answers, and what to do.
pub(crate) const NOT_BUILT: &str = "task dumps need the service built with \
    RUSTFLAGS=\"--cfg tokio_unstable\" and stethoscope's features = [\"taskdump\"] (Linux on \
    x86_64, aarch64, x86 or s390x); meanwhile /debug/threads shows every thread's stack and \
    /debug/red the requests in flight and their age";

/// Why no dump: the refusals `/debug/tasks` answers with 409 or 501.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not built with `--cfg tokio_unstable` and the `taskdump` feature.
    NotBuilt,
    /// The runtime is `current_thread` (tokio#8391).
    CurrentThread,
    /// A worker is in one poll for longer than the stall threshold.
    WorkerStuck,
    /// Some worker was inside a poll (for over [`LONG_POLL`]) every time
    /// the agent looked during [`QUIET_WAIT`].
    WorkerInPoll,
    /// An earlier dump timed out (tokio#6343).
    #[cfg_attr(not(stethoscope_taskdump), allow(dead_code))]
    TimedOutBefore,
    /// Another dump runs.
    #[cfg_attr(not(stethoscope_taskdump), allow(dead_code))]
    Running,
}

impl Refusal {
    /// What is refused, and why.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::NotBuilt => {
                "task dumps need the service built with --cfg tokio_unstable and stethoscope's \
                 taskdump feature (Linux on x86_64, aarch64, x86 or s390x)"
            }
            Refusal::CurrentThread => {
                "a task dump of a current_thread runtime runs on the service's only thread and can \
                 panic it (tokio#8391: RefCell already borrowed)"
            }
            Refusal::WorkerStuck => {
                "a worker of the runtime is stuck in one poll: a dump would wait for it at tokio's \
                 barrier and stop the other workers again and again"
            }
            Refusal::WorkerInPoll => {
                "a worker of the runtime was inside a poll every time the agent looked for half a \
                 second: a dump that meets a worker inside a poll can leave it parked for good \
                 (tokio#6343, PR #8370 unmerged), so dumps start only when every worker is parked \
                 or between polls"
            }
            Refusal::TimedOutBefore => {
                "an earlier task dump timed out, or a worker missed or was held at tokio's 250 ms \
                 barrier during or after one; another could park a worker for good or trip \
                 tokio's scheduler (tokio#6343, PR #8370 unmerged), so task dumps are off until \
                 the service restarts"
            }
            Refusal::Running => "a task dump is already running",
        }
    }

    /// What to do instead.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Refusal::NotBuilt => {
                "build with RUSTFLAGS=\"--cfg tokio_unstable\" and stethoscope's features = \
                 [\"taskdump\"]; meanwhile /debug/threads shows every thread's stack and /debug/red \
                 the requests in flight and their age"
            }
            Refusal::CurrentThread => {
                "use /debug/threads (every thread's stack) and /debug/red (requests in flight), or \
                 run the service on a multi_thread runtime"
            }
            Refusal::WorkerStuck => {
                "/debug/runtime?format=text shows the stuck worker's stack; /debug/threads every \
                 thread's"
            }
            Refusal::WorkerInPoll => {
                "retry when the service is quieter; /debug/threads shows every thread's stack now, \
                 /debug/runtime?format=text the workers"
            }
            Refusal::TimedOutBefore => {
                "use /debug/threads (every thread's stack) and /debug/red (requests in flight)"
            }
            Refusal::Running => "retry in a few seconds",
        }
    }

    /// 501 for a build without dumps, 409 for the rest.
    pub(crate) fn not_built(self) -> bool {
        self == Refusal::NotBuilt
    }
}

#[cfg(stethoscope_taskdump)]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant, SystemTime};

    use super::{Refusal, TaskDump, TaskGroup, IDS_LISTED, TASK_DUMP_RESOLVE_BUDGET};

    /// How long a tokio worker waits at the dump's barrier for the others
    /// before it gives up the round (tokio 1.54.1's `trace_core`).
    const BARRIER_ROUND: Duration = Duration::from_millis(250);

    /// A dump runs.
    static RUNNING: AtomicBool = AtomicBool::new(false);
    /// A dump timed out: no more in this process.
    static TIMED_OUT: AtomicBool = AtomicBool::new(false);

    /// Clears [`RUNNING`] when the dump's task ends, however it ends.
    struct Running;

    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }

    pub(crate) const BUILT: bool = true;

    /// Whether an earlier dump turned dumps off for this process.
    pub(crate) fn turned_off() -> bool {
        TIMED_OUT.load(Ordering::Acquire)
    }

    /// Asks `handle`'s runtime for its dump, on the caller's runtime (the
    /// agent's), waiting `timeout` at most. Once the dump is handed over,
    /// `settled` watches the workers (see [`super::AFTER_DUMP_WATCH`]):
    /// `false` turns dumps off for the process. The next dump waits for it.
    pub(crate) async fn dump<F>(
        handle: tokio::runtime::Handle,
        timeout: Duration,
        settled: F,
    ) -> Result<(tokio::runtime::Dump, SystemTime, Duration), DumpError>
    where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        // The one before may still be watching the workers: wait for its
        // verdict rather than refuse a dump asked for right after another.
        let waited_until = Instant::now() + super::AFTER_DUMP_WATCH + Duration::from_millis(100);
        while RUNNING.swap(true, Ordering::AcqRel) {
            if Instant::now() >= waited_until {
                return Err(DumpError::Refused(Refusal::Running));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let guard = Running;
        if TIMED_OUT.load(Ordering::Acquire) {
            return Err(DumpError::Refused(Refusal::TimedOutBefore));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let captured_at = SystemTime::now();
        let started = Instant::now();
        // On the agent's runtime, so the dump finishes (and clears RUNNING)
        // even when the request that asked for it has gone.
        tokio::spawn(async move {
            let _guard = guard;
            let dump = handle.dump().await;
            let _ = tx.send(dump);
            if !settled.await {
                // A worker that saw the request only after the round
                // waited alone at the start barrier: its arrival stays
                // counted (tokio#8370), and the next dump would elect a
                // leader that waits for the other worker for good.
                TIMED_OUT.store(true, Ordering::Release);
                tracing::warn!(
                    "a tokio worker was held at the task dump's barrier after the dump; \
                     task dumps are off until the service restarts (tokio#8370)"
                );
            }
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(dump)) => {
                let took = started.elapsed();
                // A dump that took a barrier round or longer had a worker
                // miss tokio's 250 ms barrier: the round's count is left
                // behind (tokio 1.54.1), and the next dump could elect a
                // spurious leader that parks a worker for good. Seen here
                // under CPU starvation: the dump itself came back fine.
                if took >= BARRIER_ROUND {
                    TIMED_OUT.store(true, Ordering::Release);
                }
                Ok((dump, captured_at, took))
            }
            Ok(Err(_)) => Err(DumpError::Gone),
            Err(_) => {
                TIMED_OUT.store(true, Ordering::Release);
                Err(DumpError::TimedOut)
            }
        }
    }

    /// Resolves and groups the tasks' traces (blocking: reads debug info).
    pub(crate) fn group(
        dump: &tokio::runtime::Dump,
        captured_at: SystemTime,
        took: Duration,
    ) -> TaskDump {
        let started = Instant::now();
        let deadline = started + TASK_DUMP_RESOLVE_BUDGET;
        let mut index: HashMap<Vec<Vec<String>>, usize> = HashMap::new();
        let mut groups: Vec<TaskGroup> = Vec::new();
        let (mut tasks, mut unresolved) = (0, 0);
        for task in dump.tasks().iter() {
            tasks += 1;
            if Instant::now() > deadline {
                unresolved += 1;
                continue;
            }
            let mut traces: Vec<Vec<String>> = task
                .trace()
                .resolve_backtraces()
                .iter()
                .map(|backtrace| {
                    let frames = backtrace.frames().flat_map(|frame| {
                        frame.symbols().map(|symbol| {
                            (
                                symbol.name_demangled().map(str::to_owned),
                                symbol.filename().map(|f| f.display().to_string()),
                                symbol.lineno(),
                            )
                        })
                    });
                    super::tidy(frames)
                })
                .collect();
            // The leaves of one poll come in no fixed order (a connection
            // task waits on its socket and on its handler's await).
            traces.sort();
            let at = *index.entry(traces.clone()).or_insert_with(|| {
                groups.push(TaskGroup {
                    count: 0,
                    task_ids: Vec::new(),
                    traces,
                });
                groups.len() - 1
            });
            let group = &mut groups[at];
            group.count += 1;
            if group.task_ids.len() < IDS_LISTED {
                group.task_ids.push(task.id().to_string());
            }
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.traces.cmp(&b.traces)));
        TaskDump {
            captured_at,
            took,
            resolved: started.elapsed(),
            tasks,
            unresolved,
            groups,
        }
    }

    /// Why a dump did not come.
    #[derive(Debug)]
    pub(crate) enum DumpError {
        Refused(Refusal),
        TimedOut,
        Gone,
    }
}

#[cfg(not(stethoscope_taskdump))]
mod imp {
    pub(crate) const BUILT: bool = false;

    /// Never: a build without dumps has none to turn off.
    pub(crate) fn turned_off() -> bool {
        false
    }
}

pub(crate) use imp::*;

/// Frames of one leaf's backtrace, leaf first, as `function at file:line`:
/// tokio's tracing machinery (and the unwinder's) before the leaf and the
/// runtime's harness from `Root::poll` on are left out, hashes stripped.
#[cfg_attr(
    not(stethoscope_taskdump),
    allow(dead_code)
)]
pub(crate) fn tidy(
    frames: impl Iterator<Item = (Option<String>, Option<String>, Option<u32>)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, file, line) in frames {
        let name = name.unwrap_or_else(|| "??".to_owned());
        let name = strip_hash(&name);
        if name.contains("tokio::runtime::task::trace::Root") {
            break;
        }
        if out.is_empty()
            && (name.starts_with("backtrace::")
                || name.starts_with("tokio::runtime::task::trace::")
                || name.starts_with("tokio::runtime::context::")
                || name == "??")
        {
            continue;
        }
        let short = file.as_deref().map(short_path);
        out.push(match (short, line) {
            (Some(file), Some(line)) => format!("{name} at {file}:{line}"),
            (Some(file), None) => format!("{name} at {file}"),
            _ => name.to_owned(),
        });
    }
    out
}

/// `name` without rustc's `::h0123456789abcdef` suffix.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// A source path without the registry or toolchain prefix:
/// `…/tokio-1.54.1/src/sync/notify.rs` → `tokio-1.54.1/src/sync/notify.rs`.
fn short_path(path: &str) -> String {
    for marker in ["/registry/src/", "/rustc/", "/git/checkouts/"] {
        if let Some(at) = path.find(marker) {
            let rest = &path[at + marker.len()..];
            // Skip the index or commit directory.
            return rest.split_once('/').map_or(rest, |(_, r)| r).to_owned();
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_waits_while_any_worker_is_inside_a_poll() {
        let view = |away_ms: Option<u64>| super::super::WorkerView {
            away_for: away_ms.map(Duration::from_millis),
            ..Default::default()
        };
        let limit = LONG_POLL;
        assert!(between_polls(&[], limit));
        assert!(between_polls(&[view(None), view(None)], limit), "parked");
        assert!(between_polls(&[view(None), view(Some(10))], limit), "one look");
        assert!(!between_polls(&[view(None), view(Some(20))], limit));
        assert!(!between_polls(&[view(Some(700)), view(None)], limit));
    }

    #[test]
    fn tidy_keeps_the_task_s_own_frames_leaf_first() {
        let frame = |name: &str, file: &str, line: u32| {
            (Some(name.to_owned()), Some(file.to_owned()), Some(line))
        };
        let frames = vec![
            frame("backtrace::backtrace::trace::h0123456789abcdef", "/x/backtrace.rs", 1),
            frame("tokio::runtime::task::trace::trace_leaf", "/x/trace.rs", 2),
            frame(
                "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/sync/batch_semaphore.rs",
                600,
            ),
            frame("demo::wait_for_a_permit::{{closure}}", "/src/demo.rs", 40),
            frame("tokio::runtime::task::trace::Root<T>::poll", "/x/trace.rs", 3),
            frame("tokio::runtime::task::core::Core<T,S>::poll", "/x/core.rs", 4),
        ];
        assert_eq!(
            tidy(frames.into_iter()),
            vec![
                "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll \
                 at tokio-1.54.1/src/sync/batch_semaphore.rs:600"
                    .to_owned(),
                "demo::wait_for_a_permit::{{closure}} at /src/demo.rs:40".to_owned(),
            ]
        );
    }

    #[test]
    fn refusals_say_why_and_what_instead() {
        for refusal in [
            Refusal::NotBuilt,
            Refusal::CurrentThread,
            Refusal::WorkerStuck,
            Refusal::TimedOutBefore,
            Refusal::Running,
        ] {
            assert!(!refusal.reason().is_empty() && !refusal.hint().is_empty());
            assert_eq!(refusal.not_built(), refusal == Refusal::NotBuilt);
        }
        assert!(Refusal::CurrentThread.reason().contains("tokio#8391"));
        assert!(Refusal::NotBuilt.hint().contains("/debug/threads"));
    }

    #[test]
    fn text_lists_groups_largest_first_with_ids() {
        let dump = TaskDump {
            captured_at: SystemTime::UNIX_EPOCH,
            took: Duration::from_millis(3),
            resolved: Duration::from_millis(40),
            tasks: 13,
            unresolved: 0,
            groups: vec![
                TaskGroup {
                    count: 12,
                    task_ids: (1..=12).map(|i| i.to_string()).collect(),
                    traces: vec![vec!["a::wait at a.rs:1".into()]],
                },
                TaskGroup {
                    count: 1,
                    task_ids: vec!["20".into()],
                    traces: vec![vec!["b::recv at b.rs:2".into()]],
                },
            ],
        };
        let text = dump.to_string();
        assert!(text.contains("13 idle tasks in 2 groups"), "{text}");
        let twelve = text.find("12 tasks (ids 1, 2").unwrap();
        let one = text.find("1 task (ids 20)").unwrap();
        assert!(twelve < one, "{text}");
        assert!(text.contains("    a::wait at a.rs:1"), "{text}");
    }
}
