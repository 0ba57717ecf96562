//! Executor lag, tokio runtime health, task monitors, and the stuck-worker
//! watchdog that captures the culprit stack.
//!
//! When the agent starts inside a tokio runtime (or is given one with
//! [`AgentBuilder::watch_runtime`](crate::AgentBuilder::watch_runtime)), a thread of
//! its own, outside that runtime, looks at it every
//! [`DEFAULT_LAG_RESOLUTION`]:
//!
//! - **Executor lag.** It spawns a tiny probe task onto the runtime and
//!   measures how long the task waits for its first poll — the delay any
//!   newly woken task experiences. Because tokio's work stealing lets a
//!   free worker pick the probe up while another is blocked, each worker is
//!   also watched on its own: tokio publishes a worker's counters every
//!   time it returns to the scheduler, and a worker whose counters stop
//!   moving while it is not parked is inside one poll. When it comes back,
//!   the time it was away (tokio's own busy time) is one more lag sample:
//!   what a task queued behind it waited. A blocked worker cannot hide.
//!   Samples go into HDR histograms since start and over rolling 10 s,
//!   1 min and 5 min windows ([`LagReport`]).
//! - **Stalls.** A worker away from the scheduler longer than the stall
//!   threshold ([`DEFAULT_STALL_THRESHOLD`])
//!   is stuck in one poll: the watchdog sends the worker's thread a
//!   real-time signal whose handler unwinds that thread's stack — also when
//!   it is blocked off-CPU in `sleep`, a mutex or synchronous I/O — and
//!   keeps the symbolized stack in a bounded history ([`Stall`]).
//! - **Runtime health.** Workers, alive tasks, queue depth, per-worker busy
//!   ratio and parks ([`RuntimeReport`]), and the metrics of every
//!   [`TaskMonitor`](tokio_metrics::TaskMonitor) the service asked for with
//!   [`Agent::task_monitor`](crate::Agent::task_monitor).
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), stethoscope::Error> {
//! let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
//! let monitor = agent.task_monitor("checkout");
//! tokio::spawn(monitor.instrument(async { /* the service's work */ }));
//! tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//! let lag = agent.runtime().lag()?;
//! println!("lag p99 over 10 s: {:?}", lag.windows.ten_seconds.p99);
//! let runtime = agent.runtime().report()?;
//! assert_eq!(runtime.workers, 2);
//! # agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

#[cfg(native_unwind)]
mod capture;
#[cfg(not(native_unwind))]
#[path = "capture_unsupported.rs"]
mod capture;
mod probe;
#[cfg(feature = "metrics")]
mod metrics;
mod render;
mod stall;
mod tasks;
mod task_dump;
mod thread_dump;
mod watchdog;
mod window;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::histogram::HistogramSummary;
use crate::periodic::Alarm;
use crate::Error;
use probe::ProbeSlot;
use stall::StallHistory;
use tasks::TaskMonitors;
use window::LagWindows;
pub(crate) use window::TimelinePoint;
use workers::WorkerCounters;

pub use stall::{Attribution, Stall, StallThread, STALL_HISTORY};
pub use tasks::{TaskMonitorReport, MAX_TASK_MONITORS};
pub(crate) use capture::CaptureError;
pub use task_dump::{TaskDump, TaskGroup, TASK_DUMP_RESOLVE_BUDGET, TASK_DUMP_TIMEOUT};
pub use thread_dump::{DumpedThread, ThreadDump, ThreadGroup, ThreadGroups, ThreadState};
pub use window::LAG_BUCKETS;

/// How often the executor-lag probe runs and the stuck-worker watchdog
/// looks at the runtime's workers (Node's `monitorEventLoopDelay` default).
pub const DEFAULT_LAG_RESOLUTION: Duration = Duration::from_millis(10);

/// Shortest and longest lag resolution the builder accepts.
pub const LAG_RESOLUTION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(1));

/// A worker that stays inside one poll longer than this is reported as a
/// stall, with the stack it is stuck in.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// Longest stall threshold the builder accepts.
pub const MAX_STALL_THRESHOLD: Duration = Duration::from_secs(60);

/// How long the watchdog keeps the unwind tables it copied for a stack
/// capture after the last stall (~2 MiB), so a burst of stalls copies them
/// once.
pub const STALL_CAPTURE_KEEP: Duration = Duration::from_secs(60);

const NO_RUNTIME: &str =
    "no tokio runtime: start the agent inside one or pass AgentBuilder::watch_runtime";
const SHUT_DOWN: &str = "the tokio runtime the agent watched has shut down";

/// Executor lag over every window; its JSON is `/debug/lag`'s (docs/endpoints.md)
/// and its `Display` the `format=text` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LagReport {
    /// Whether a runtime is watched (`false`: every window is empty and
    /// `reason` says why).
    pub available: bool,
    /// Why lag is unavailable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// How often the probe runs and workers are looked at.
    #[serde(rename = "resolution_ms", serialize_with = "crate::report::ms")]
    pub resolution: Duration,
    /// The lag histograms.
    pub windows: LagSummaries,
    /// How long the probe now in flight has waited, if it has waited
    /// longer than one resolution tick (the runtime is busy or blocked
    /// right now).
    #[serde(rename = "probe_waiting_ms", serialize_with = "crate::report::opt_ms")]
    pub probe_waiting: Option<Duration>,
}

/// Executor lag since start and over the rolling windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LagSummaries {
    /// Every sample since the agent started.
    pub all: HistogramSummary,
    /// The last 10 s (up to 11 s: whole 1 s slices).
    #[serde(rename = "10s")]
    pub ten_seconds: HistogramSummary,
    /// The last minute (up to 70 s: whole 10 s slices).
    #[serde(rename = "1m")]
    pub one_minute: HistogramSummary,
    /// The last 5 minutes (up to 6 min: whole 1 min slices).
    #[serde(rename = "5m")]
    pub five_minutes: HistogramSummary,
}

impl LagReport {
    /// The report when no runtime is watched.
    pub(crate) fn unavailable(reason: &'static str, resolution: Duration) -> Self {
        LagReport {
            available: false,
            reason: Some(reason),
            resolution,
            windows: LagSummaries::default(),
            probe_waiting: None,
        }
    }
}

impl std::fmt::Display for LagReport {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.write_str(&render::text(self))
    }
}

/// One worker of the runtime.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Worker index.
    pub worker: usize,
    /// Share of the last second this worker was busy, 0..1 (`None` in the
    /// agent's first second). Not divided by the number of workers.
    pub busy_ratio: Option<f64>,
    /// Times the worker parked (ran out of work) since the runtime started.
    pub parks: u64,
    /// Busy time since the runtime started, as last published by the worker.
    #[serde(rename = "busy_ms_total", serialize_with = "crate::report::ms")]
    pub busy_total: Duration,
    /// Whether the worker is parked now.
    pub parked: bool,
    /// How long the worker has been away from the scheduler, if it is
    /// inside a poll that has lasted at least one resolution tick.
    #[serde(rename = "away_ms", serialize_with = "crate::report::opt_ms")]
    pub away_for: Option<Duration>,
    /// The worker's kernel thread id, once a probe identified it.
    pub thread_id: Option<u32>,
    /// Extra counters of `--cfg tokio_unstable` builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unstable: Option<UnstableWorkerMetrics>,
}

/// Per-worker counters tokio exposes only with `--cfg tokio_unstable`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct UnstableWorkerMetrics {
    /// Tasks polled.
    pub polls: u64,
    /// Tasks stolen from other workers.
    pub steals: u64,
    /// Steal operations.
    pub steal_operations: u64,
    /// Tasks this worker scheduled on its own queue.
    pub local_schedules: u64,
    /// Times the local queue overflowed into the global queue.
    pub overflows: u64,
    /// Exponentially weighted mean poll time.
    #[serde(rename = "mean_poll_ms", serialize_with = "crate::report::ms")]
    pub mean_poll: Duration,
    /// Tasks in the worker's local queue now.
    pub local_queue_depth: usize,
}

/// Runtime-wide counters tokio exposes only with `--cfg tokio_unstable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct UnstableRuntimeMetrics {
    /// Threads in the blocking pool.
    pub blocking_threads: usize,
    /// Idle threads in the blocking pool.
    pub idle_blocking_threads: usize,
    /// Tasks waiting for a blocking-pool thread.
    pub blocking_queue_depth: usize,
    /// Tasks spawned since the runtime started.
    pub spawned_tasks: u64,
    /// Tasks scheduled from outside the runtime.
    pub remote_schedules: u64,
    /// Times a task was forced to yield by the coop budget.
    pub budget_forced_yields: u64,
}

/// Health of the host's tokio runtime; its JSON is `/debug/runtime`'s
/// (docs/endpoints.md) and its `Display` the `format=text` report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RuntimeReport {
    /// Whether a runtime is watched (`false`: only `task_monitors` has
    /// content and `reason` says why).
    pub available: bool,
    /// Why the runtime's health is unavailable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `multi_thread`, `current_thread` or `other`.
    pub flavor: &'static str,
    /// Worker threads.
    pub workers: usize,
    /// Tasks alive (spawned, not yet finished).
    pub alive_tasks: usize,
    /// Tasks waiting in the global (injection) queue.
    pub global_queue_depth: usize,
    /// One row per worker.
    pub per_worker: Vec<WorkerReport>,
    /// The latest stalls, newest first (at most [`STALL_HISTORY`]).
    pub stalls: Vec<Stall>,
    /// Stalls since the agent started.
    pub stalls_total: u64,
    /// Time lost in finished stalls since the agent started.
    #[serde(rename = "stalled_ms_total", serialize_with = "crate::report::ms")]
    pub stalled_total: Duration,
    /// A poll longer than this is a stall.
    #[serde(rename = "stall_threshold_ms", serialize_with = "crate::report::ms")]
    pub stall_threshold: Duration,
    /// The named task monitors handed out by `Agent::task_monitor`.
    pub task_monitors: Vec<TaskMonitorReport>,
    /// Extra counters of `--cfg tokio_unstable` builds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unstable: Option<UnstableRuntimeMetrics>,
}

impl RuntimeReport {
    /// The report when no runtime is watched: only the task monitors,
    /// which work without one.
    pub(crate) fn unavailable(
        reason: &'static str,
        stall_threshold: Duration,
        task_monitors: Vec<TaskMonitorReport>,
    ) -> Self {
        RuntimeReport {
            available: false,
            reason: Some(reason),
            flavor: "other",
            workers: 0,
            alive_tasks: 0,
            global_queue_depth: 0,
            per_worker: Vec::new(),
            stalls: Vec::new(),
            stalls_total: 0,
            stalled_total: Duration::ZERO,
            stall_threshold,
            task_monitors,
            unstable: None,
        }
    }
}

impl std::fmt::Display for RuntimeReport {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.write_str(&render::runtime_text(self))
    }
}

/// The watchdog's latest view of one worker.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WorkerView {
    counters: WorkerCounters,
    busy_ratio: Option<f64>,
    away_for: Option<Duration>,
    tid: Option<u32>,
}

/// One second of the runtime, for the doctor's history.
#[cfg_attr(not(feature = "doctor"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct DoctorSample {
    pub(crate) last_second: Option<TimelinePoint>,
    pub(crate) workers: usize,
    pub(crate) busy_min: Option<f64>,
    pub(crate) busy_max: Option<f64>,
    pub(crate) busy_mean: Option<f64>,
    pub(crate) global_queue_depth: usize,
    pub(crate) alive_tasks: usize,
    pub(crate) stalls_total: u64,
    pub(crate) longest_stall: Option<Stall>,
}

/// State shared by the watchdog thread and readers.
#[derive(Debug)]
pub(crate) struct Inner {
    handle: tokio::runtime::Handle,
    resolution: Duration,
    threshold: Duration,
    epoch: Instant,
    probe: Arc<ProbeSlot>,
    windows: Mutex<LagWindows>,
    workers: Mutex<Vec<WorkerView>>,
    stalls: StallHistory,
    /// Wakes the watchdog: from its dormant sleep when work arrives, and to
    /// stop it.
    alarm: Arc<Alarm>,
    stop: AtomicBool,
    /// The host runtime has shut down.
    shut_down: AtomicBool,
}

impl Inner {
    fn record_lag(&self, now: Duration, lag: Duration) {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(now, lag);
    }

    fn publish_workers(&self, views: Vec<WorkerView>) {
        *self.workers.lock().unwrap_or_else(PoisonError::into_inner) = views;
    }

    /// Sleeps until `deadline`, a stop request or — `dormant` — the alarm.
    fn sleep_until(&self, deadline: Instant, dormant: bool) -> crate::periodic::Wake {
        self.alarm.sleep_until(deadline, dormant, &self.stop)
    }

    fn set_shut_down(&self) {
        self.shut_down.store(true, Ordering::Release);
    }

    fn shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }
}

/// Executor lag, runtime health and stalls of the host's tokio runtime,
/// and the task monitors handed out. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuntimeHealth {
    runtime: Option<Arc<Inner>>,
    tasks: TaskMonitors,
    /// How often the probe and the watchdog look.
    resolution: Duration,
    /// A poll longer than this is a stall.
    threshold: Duration,
    /// The stack capture of thread dumps, prepared at the first one (its
    /// unwind tables, ~2 MiB) and kept for the next.
    dumps: Arc<Mutex<Option<capture::StackCapture>>>,
}

/// Stops the watchdog when the agent goes away.
#[derive(Debug)]
pub(crate) struct WatchdogGuard(Arc<Inner>);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
        self.0.alarm.unpark();
    }
}

impl RuntimeHealth {
    /// Watches `runtime` (none: every report is unavailable) from a thread
    /// of its own, every `resolution`; a poll longer than `threshold` is a
    /// stall. `alarm` wakes the watchdog from its dormant sleep (a quiet
    /// runtime) when work arrives.
    pub(crate) fn start(
        runtime: Option<tokio::runtime::Handle>,
        resolution: Duration,
        threshold: Duration,
        alarm: Arc<Alarm>,
    ) -> Result<(Self, Option<WatchdogGuard>), Error> {
        let tasks = TaskMonitors::default();
        let Some(handle) = runtime else {
            return Ok((
                RuntimeHealth {
                    runtime: None,
                    tasks,
                    resolution,
                    threshold,
                    dumps: Arc::default(),
                },
                None,
            ));
        };
        let epoch = Instant::now();
        let windows = LagWindows::new(SystemTime::now()).map_err(|_| Error::InvalidSetting {
            setting: "lag_resolution",
            reason: "cannot create the lag histograms",
        })?;
        let inner = Arc::new(Inner {
            handle,
            resolution,
            threshold,
            epoch,
            probe: Arc::new(ProbeSlot::new(epoch)),
            windows: Mutex::new(windows),
            workers: Mutex::new(Vec::new()),
            stalls: StallHistory::default(),
            alarm,
            stop: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
        });
        watchdog::spawn(Arc::clone(&inner)).map_err(|source| Error::Os {
            call: "spawning the executor-lag watchdog thread",
            source,
        })?;
        Ok((
            RuntimeHealth {
                runtime: Some(Arc::clone(&inner)),
                tasks,
                resolution,
                threshold,
                dumps: Arc::default(),
            },
            Some(WatchdogGuard(inner)),
        ))
    }

    fn inner(&self) -> Result<&Arc<Inner>, Error> {
        match &self.runtime {
            None => Err(Error::Unsupported {
                what: "runtime health",
                reason: NO_RUNTIME,
            }),
            Some(inner) if inner.shut_down() => Err(Error::Unsupported {
                what: "runtime health",
                reason: SHUT_DOWN,
            }),
            Some(inner) => Ok(inner),
        }
    }

    /// Every thread's stack now, with its name, state, CPU time and labels
    /// (`/debug/threads`). Blocks for the capture's deadline at most
    /// (100 ms for up to 256 threads; the first dump also prepares the
    /// unwind tables, tens of milliseconds): call it off async code. Works
    /// without a watched runtime.
    ///
    /// # Errors
    /// [`Error::StackCapture`] when stacks cannot be captured here (another
    /// library owns the capture signal, or the platform is not Linux on
    /// x86_64 or aarch64).
    pub fn thread_dump(&self) -> Result<ThreadDump, Error> {
        let mut cell = self.dumps.lock().unwrap_or_else(PoisonError::into_inner);
        if cell.as_ref().is_some_and(capture::StackCapture::poisoned) {
            *cell = None;
        }
        let capture = match cell.as_mut() {
            Some(capture) => capture,
            None => cell.insert(
                capture::StackCapture::prepare()
                    .map_err(|error| Error::StackCapture(Box::new(error)))?,
            ),
        };
        ThreadDump::capture(capture).map_err(|error| Error::StackCapture(Box::new(error)))
    }

    /// The host runtime's idle tasks grouped by identical await trace
    /// (`/debug/tasks`), resolved on a blocking thread. Call it from a
    /// runtime other than the host's (the agent's server does): the dump
    /// itself runs on the host's workers, which stop for it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] without a watched runtime or in a build
    /// without `--cfg tokio_unstable` and the `taskdump` feature;
    /// [`Error::TaskDumpRefused`] on a `current_thread` runtime, while a
    /// worker is stuck in a poll, after a dump that timed out, or while
    /// another runs; [`Error::TaskDumpTimedOut`] when the runtime did not
    /// hand it over within [`TASK_DUMP_TIMEOUT`].
    pub async fn task_dump(&self) -> Result<TaskDump, Error> {
        use task_dump::Refusal;
        let inner = self.inner()?;
        let refused = |refusal: Refusal| {
            if refusal.not_built() {
                Error::Unsupported {
                    what: "a task dump",
                    reason: task_dump::NOT_BUILT,
                }
            } else {
                Error::TaskDumpRefused {
                    reason: refusal.reason(),
                    hint: refusal.hint(),
                }
            }
        };
        // Where a dump would hurt, say so first, whatever the build: the
        // hint is the same (the thread dump, the requests in flight).
        if inner.handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(refused(Refusal::CurrentThread));
        }
        if task_dump::turned_off() {
            return Err(refused(Refusal::TimedOutBefore));
        }
        let stuck = inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|view| view.away_for.is_some_and(|away| away >= inner.threshold));
        if stuck {
            return Err(refused(Refusal::WorkerStuck));
        }
        if !task_dump::BUILT {
            return Err(refused(Refusal::NotBuilt));
        }
        // A dump that meets a worker inside a poll can leave that worker
        // parked for good (see `task_dump`): start it only in a moment when
        // every worker is parked or just back in its scheduler.
        if !self.workers_between_polls(inner).await {
            return Err(refused(Refusal::WorkerInPoll));
        }
        self.take_task_dump(Arc::clone(inner), refused).await
    }

    /// Whether, within [`task_dump::QUIET_WAIT`], the watchdog saw every
    /// worker parked or away from its scheduler for less than
    /// [`task_dump::LONG_POLL`] (two looks at the least).
    async fn workers_between_polls(&self, inner: &Inner) -> bool {
        let limit = task_dump::LONG_POLL.max(inner.resolution * 2);
        watch_workers(inner, task_dump::QUIET_WAIT, |views| {
            task_dump::between_polls(views, limit)
        })
        .await
    }

    #[cfg(stethoscope_taskdump)]
    async fn take_task_dump(
        &self,
        inner: Arc<Inner>,
        refused: impl Fn(task_dump::Refusal) -> Error,
    ) -> Result<TaskDump, Error> {
        let handle = inner.handle.clone();
        // Settled: no worker held away from its scheduler after the dump.
        let settled = async move {
            let held = watch_workers(&inner, task_dump::AFTER_DUMP_WATCH, |views| {
                !task_dump::between_polls(views, task_dump::HELD_AFTER_DUMP)
            });
            !held.await
        };
        let (dump, at, took) = match task_dump::dump(handle, TASK_DUMP_TIMEOUT, settled).await {
            Ok(dumped) => dumped,
            Err(task_dump::DumpError::Refused(refusal)) => return Err(refused(refusal)),
            Err(task_dump::DumpError::TimedOut) => {
                return Err(Error::TaskDumpTimedOut(TASK_DUMP_TIMEOUT))
            }
            Err(task_dump::DumpError::Gone) => {
                return Err(Error::Unsupported {
                    what: "a task dump",
                    reason: SHUT_DOWN,
                })
            }
        };
        tokio::task::spawn_blocking(move || task_dump::group(&dump, at, took))
            .await
            .map_err(|_| Error::Unsupported {
                what: "a task dump",
                reason: "resolving the dump's traces failed (see the service's log)",
            })
    }

    #[cfg(not(stethoscope_taskdump))]
    async fn take_task_dump(
        &self,
        _inner: Arc<Inner>,
        refused: impl Fn(task_dump::Refusal) -> Error,
    ) -> Result<TaskDump, Error> {
        Err(refused(task_dump::Refusal::NotBuilt))
    }

    /// How often the lag probe runs and the watchdog looks.
    pub(crate) fn resolution(&self) -> Duration {
        self.resolution
    }

    /// A worker inside one poll for longer than this is a stall.
    pub(crate) fn stall_threshold(&self) -> Duration {
        self.threshold
    }

    /// Whether a runtime is watched; if not, why.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match &self.runtime {
            None => Some(NO_RUNTIME),
            Some(inner) if inner.shut_down() => Some(SHUT_DOWN),
            Some(_) => None,
        }
    }

    /// The named task monitor, created on first use: instrument the
    /// service's tasks with it and their poll, schedule and idle times
    /// appear in `/debug/runtime` and `/metrics` under that name. Works
    /// without a watched runtime too.
    pub fn task_monitor(&self, name: &str) -> tokio_metrics::TaskMonitor {
        self.tasks.get(name)
    }

    /// Executor lag over every window.
    ///
    /// # Errors
    /// [`Error::Unsupported`] without a runtime, or once it has shut down.
    pub fn lag(&self) -> Result<LagReport, Error> {
        let inner = self.inner()?;
        let now = inner.epoch.elapsed();
        let summaries = inner
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summaries(now);
        let probe_waiting = match inner.probe.state() {
            probe::ProbeState::Pending { spawned_ns } => {
                let waited = now.saturating_sub(Duration::from_nanos(spawned_ns));
                (waited > inner.resolution).then_some(waited)
            }
            _ => None,
        };
        Ok(LagReport {
            available: true,
            reason: None,
            resolution: inner.resolution,
            windows: LagSummaries {
                all: summaries.all,
                ten_seconds: summaries.ten_seconds,
                one_minute: summaries.one_minute,
                five_minutes: summaries.five_minutes,
            },
            probe_waiting,
        })
    }

    /// Per-second lag points of the last five minutes, oldest first.
    pub(crate) fn timeline(&self) -> Result<Vec<TimelinePoint>, Error> {
        let inner = self.inner()?;
        let now = inner.epoch.elapsed();
        Ok(inner
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .timeline(now))
    }

    /// Cumulative lag counts per [`LAG_BUCKETS`] bucket (non-cumulative
    /// per bucket, `+Inf` last) and the sum in seconds, for `/metrics`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn lag_buckets(&self) -> Option<([u64; LAG_BUCKETS.len() + 1], f64)> {
        let inner = self.runtime.as_ref()?;
        Some(
            inner
                .windows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .buckets(),
        )
    }

    /// What the doctor records each second: the last second's lag, the
    /// workers' busy shares, queue, tasks, stalls, and the longest stall
    /// since `stalls_since`. `None` without a watched runtime.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn doctor_sample(&self, stalls_since: SystemTime) -> Option<DoctorSample> {
        let inner = self.inner().ok()?;
        let now = inner.epoch.elapsed();
        let last_second = inner
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_point(now)
            // A second without a probe sample (the runtime blocked, or idle
            // between dormant probes) has no lag of its own.
            .filter(|p| {
                SystemTime::now()
                    .duration_since(p.at)
                    .is_ok_and(|age| age <= Duration::from_secs(2))
            });
        let busy: Vec<f64> = inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|view| view.busy_ratio)
            .collect();
        let metrics = inner.handle.metrics();
        let (stalls_total, _) = inner.stalls.totals();
        Some(DoctorSample {
            last_second,
            workers: metrics.num_workers(),
            busy_min: busy.iter().copied().reduce(f64::min),
            busy_max: busy.iter().copied().reduce(f64::max),
            busy_mean: (!busy.is_empty()).then(|| busy.iter().sum::<f64>() / busy.len() as f64),
            global_queue_depth: metrics.global_queue_depth(),
            alive_tasks: metrics.num_alive_tasks(),
            stalls_total,
            longest_stall: inner.stalls.longest_since(stalls_since),
        })
    }

    /// Runtime health now: counters, per-worker state, stalls, task monitors.
    ///
    /// # Errors
    /// [`Error::Unsupported`] without a runtime, or once it has shut down.
    pub fn report(&self) -> Result<RuntimeReport, Error> {
        let inner = self.inner()?;
        let metrics = inner.handle.metrics();
        let views = inner
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let workers = metrics.num_workers();
        let per_worker = (0..workers)
            .map(|worker| {
                let view = views.get(worker).copied().unwrap_or_default();
                WorkerReport {
                    worker,
                    busy_ratio: view.busy_ratio,
                    parks: view.counters.parks,
                    busy_total: Duration::from_nanos(view.counters.busy_ns),
                    parked: view.counters.parked(),
                    away_for: view.away_for,
                    thread_id: view.tid,
                    unstable: unstable_worker(&metrics, worker),
                }
            })
            .collect();
        let (stalls_total, stalled_total) = inner.stalls.totals();
        let mut stalls = inner.stalls.list();
        stalls.reverse();
        Ok(RuntimeReport {
            available: true,
            reason: None,
            flavor: match inner.handle.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => "multi_thread",
                tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
                _ => "other",
            },
            workers,
            alive_tasks: metrics.num_alive_tasks(),
            global_queue_depth: metrics.global_queue_depth(),
            per_worker,
            stalls,
            stalls_total,
            stalled_total,
            stall_threshold: inner.threshold,
            task_monitors: self.tasks.reports(),
            unstable: unstable_runtime(&metrics),
        })
    }

    /// The task monitors' metrics (also without a watched runtime).
    pub fn task_monitors(&self) -> Vec<TaskMonitorReport> {
        self.tasks.reports()
    }

    /// The latest lag windows as text, the latest per-second points as SVG.
    pub(crate) fn render_svg(&self, title: &str) -> Result<String, Error> {
        let lag = self.lag()?;
        let threshold = self.inner()?.threshold;
        Ok(render::svg(title, &lag, &self.timeline()?, threshold))
    }


}

/// Whether the watchdog's view of the workers met `seen` at one of its
/// looks within `within` (one look every resolution tick).
async fn watch_workers(
    inner: &Inner,
    within: Duration,
    seen: impl Fn(&[WorkerView]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if seen(&inner.workers.lock().unwrap_or_else(PoisonError::into_inner)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(inner.resolution).await;
    }
}

#[cfg(tokio_unstable)]
fn unstable_worker(
    metrics: &tokio::runtime::RuntimeMetrics,
    worker: usize,
) -> Option<UnstableWorkerMetrics> {
    Some(UnstableWorkerMetrics {
        polls: metrics.worker_poll_count(worker),
        steals: metrics.worker_steal_count(worker),
        steal_operations: metrics.worker_steal_operations(worker),
        local_schedules: metrics.worker_local_schedule_count(worker),
        overflows: metrics.worker_overflow_count(worker),
        mean_poll: metrics.worker_mean_poll_time(worker),
        local_queue_depth: metrics.worker_local_queue_depth(worker),
    })
}

#[cfg(not(tokio_unstable))]
fn unstable_worker(
    _metrics: &tokio::runtime::RuntimeMetrics,
    _worker: usize,
) -> Option<UnstableWorkerMetrics> {
    None
}

#[cfg(tokio_unstable)]
fn unstable_runtime(metrics: &tokio::runtime::RuntimeMetrics) -> Option<UnstableRuntimeMetrics> {
    Some(UnstableRuntimeMetrics {
        blocking_threads: metrics.num_blocking_threads(),
        idle_blocking_threads: metrics.num_idle_blocking_threads(),
        blocking_queue_depth: metrics.blocking_queue_depth(),
        spawned_tasks: metrics.spawned_tasks_count(),
        remote_schedules: metrics.remote_schedule_count(),
        budget_forced_yields: metrics.budget_forced_yield_count(),
    })
}

#[cfg(not(tokio_unstable))]
fn unstable_runtime(_metrics: &tokio::runtime::RuntimeMetrics) -> Option<UnstableRuntimeMetrics> {
    None
}
