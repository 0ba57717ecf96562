//! The doctor's default thresholds, windows, budgets and bounds: what
//! [`DoctorConfig::default`](super::DoctorConfig), [`Budgets::default`](super::Budgets)
//! and [`CapturePolicy::default`](super::CapturePolicy) start from
//! (docs/doctor.md lists them).

use std::time::Duration;

use crate::cpu::DEFAULT_PROFILE_HZ;

/// Rows the doctor's history keeps, one per second: 15 minutes.
pub const DEFAULT_HISTORY_ROWS: usize = 900;

/// Shortest and longest history the agent accepts, in rows (seconds):
/// one minute to one hour.
pub const HISTORY_ROWS_RANGE: (usize, usize) = (60, 3600);

/// Registered user resources the history records (two series each:
/// utilization and saturation). Resources registered beyond this many
/// still appear in `/debug/use` and `/metrics`, not in the history.
pub const MAX_HISTORY_RESOURCES: usize = 16;

/// Seconds of history over which a rule judges "now" (medians and maxima
/// of the latest per-second values). Shorter than every rule's window, so
/// a single spike keeps a condition true for at most this long and never
/// opens a finding by itself.
pub(crate) const DEFAULT_DOCTOR_LOOKBACK: Duration = Duration::from_secs(5);

/// Window of `event_loop_blocked`: how long the executor must stay blocked
/// before the finding opens (and clear before it closes).
pub(crate) const DEFAULT_WINDOW_EVENT_LOOP_BLOCKED: Duration = Duration::from_secs(10);

/// Window of `executor_saturated`.
pub(crate) const DEFAULT_WINDOW_EXECUTOR_SATURATED: Duration = Duration::from_secs(10);

/// Window of `cpu_saturated`.
pub(crate) const DEFAULT_WINDOW_CPU_SATURATED: Duration = Duration::from_secs(30);

/// Window of `io_bound`.
pub(crate) const DEFAULT_WINDOW_IO_BOUND: Duration = Duration::from_secs(30);

/// Window of `memory_growing`.
pub(crate) const DEFAULT_WINDOW_MEMORY_GROWING: Duration = Duration::from_secs(120);

/// Window of `memory_near_limit`.
pub(crate) const DEFAULT_WINDOW_MEMORY_NEAR_LIMIT: Duration = Duration::from_secs(10);

/// Window of `allocator_fragmentation`.
pub(crate) const DEFAULT_WINDOW_ALLOCATOR_FRAGMENTATION: Duration = Duration::from_secs(120);

/// Window of `fds_near_limit` and `threads_near_limit`.
pub(crate) const DEFAULT_WINDOW_NEAR_LIMIT: Duration = Duration::from_secs(10);

/// Window of `fds_climbing` and `threads_climbing`.
pub(crate) const DEFAULT_WINDOW_CLIMBING: Duration = Duration::from_secs(120);

/// Hysteresis window of `requests_stuck` (its condition already takes
/// [`DEFAULT_STUCK_REQUEST_MIN`] to hold).
pub(crate) const DEFAULT_WINDOW_REQUESTS_STUCK: Duration = Duration::from_secs(10);

/// A request in flight is stuck after this long at least …
pub(crate) const DEFAULT_STUCK_REQUEST_MIN: Duration = Duration::from_secs(30);

/// … and after this many times its route's p99 latency.
pub(crate) const DEFAULT_STUCK_REQUEST_P99_FACTOR: f64 = 10.0;

/// Window of `resource_saturated`.
pub(crate) const DEFAULT_WINDOW_RESOURCE_SATURATED: Duration = Duration::from_secs(30);

/// Window of the budget rules (`route_over_budget`, `cpu_over_budget`,
/// `memory_over_budget`).
pub(crate) const DEFAULT_WINDOW_BUDGET: Duration = Duration::from_secs(60);

/// Executor blocked when the median of the per-second lag p50 over the
/// lookback reaches this, in milliseconds (Clinic Doctor's "event loop
/// delay median ≥ 10 ms").
pub(crate) const DEFAULT_LAG_MEDIAN_MS: f64 = 10.0;

/// Executor blocked when a second of the lookback saw a lag this long, in
/// milliseconds (Clinic Doctor's "max ≥ 100 ms").
pub(crate) const DEFAULT_LAG_MAX_MS: f64 = 100.0;

/// A blocked executor is `critical` once a delay this long was seen in
/// its window, in milliseconds.
pub(crate) const DEFAULT_LAG_CRITICAL_MS: f64 = 1000.0;

/// A stall is evidence of `event_loop_blocked` if it ended (or is still
/// going on) at most this long ago.
pub(crate) const DEFAULT_STALL_RECENCY: Duration = Duration::from_secs(60);

/// Executor saturated when the least busy worker is busy at least this
/// share of every second (median over the lookback).
pub(crate) const DEFAULT_WORKER_BUSY_RATIO: f64 = 0.9;

/// Window over which the global queue depth must rise (Theil–Sen slope
/// above 0) for `executor_saturated`.
pub(crate) const DEFAULT_EXECUTOR_TREND_WINDOW: Duration = Duration::from_secs(15);

/// With every worker busy, a lag p99 this high (median over the lookback,
/// milliseconds) means tasks queue: `executor_saturated`.
pub(crate) const DEFAULT_SATURATED_LAG_P99_MS: f64 = 10.0;

/// CPU saturated when the process uses this share of its CPU limit (cgroup
/// quota, else the CPUs it may run on), median over the lookback.
pub(crate) const DEFAULT_CPU_SATURATED_RATIO: f64 = 0.9;

/// CPU quota exhausted when at least this share of CFS periods were
/// throttled (median over the lookback); kube-prometheus'
/// `CPUThrottlingHigh` alert uses the same 25 %.
pub(crate) const DEFAULT_CPU_THROTTLED_RATIO: f64 = 0.25;

/// I/O- or downstream-bound needs CPU below this share of the limit
/// (Clinic Doctor's I/O rule: CPU stays low while requests are slow).
pub(crate) const DEFAULT_IO_CPU_RATIO: f64 = 0.5;

/// I/O-bound needs a responsive executor: lag p99 below this, milliseconds.
pub(crate) const DEFAULT_IO_LAG_P99_MS: f64 = 10.0;

/// A route is slow for `io_bound` when its p99 reaches this (or it is over
/// its latency budget).
pub(crate) const DEFAULT_SLOW_ROUTE_P99: Duration = Duration::from_millis(500);

/// Requests a route needs in its window before its percentiles and error
/// ratio are judged (one slow request is not a p95).
pub(crate) const DEFAULT_MIN_ROUTE_REQUESTS: u64 = 20;

/// Window of the robust memory slope (Theil–Sen over 10-second medians);
/// at least half of it must be in the history before the rule can fire.
pub(crate) const DEFAULT_MEMORY_SLOPE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Memory growing only if the fitted growth over the slope window is at
/// least this many bytes …
pub(crate) const DEFAULT_MEMORY_GROWTH_MIN_BYTES: u64 = 8 << 20;

/// … and at least this share of the level at the start of the window.
pub(crate) const DEFAULT_MEMORY_GROWTH_MIN_RATIO: f64 = 0.05;

/// A growing amount (memory, descriptors, threads) is `critical` when, at
/// its current slope, it reaches its limit within this time.
pub(crate) const DEFAULT_CRITICAL_ETA: Duration = Duration::from_secs(30 * 60);

/// Memory near its limit (cgroup limit, else host memory) from this share.
pub(crate) const DEFAULT_MEMORY_NEAR_LIMIT_RATIO: f64 = 0.9;

/// Memory near its limit is `critical` from this share.
pub(crate) const DEFAULT_MEMORY_CRITICAL_RATIO: f64 = 0.95;

/// An OOM kill in the cgroup keeps `memory_near_limit`'s condition true
/// this long.
pub(crate) const DEFAULT_OOM_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// Allocator fragmentation when jemalloc's resident bytes are at least this
/// multiple of its allocated bytes …
pub(crate) const DEFAULT_FRAGMENTATION_RATIO: f64 = 1.5;

/// … and exceed them by at least this many bytes.
pub(crate) const DEFAULT_FRAGMENTATION_MIN_BYTES: u64 = 64 << 20;

/// Descriptors or threads near their limit from this share of it.
pub(crate) const DEFAULT_LIMIT_WARNING_RATIO: f64 = 0.8;

/// Descriptors or threads near their limit are `critical` from this share.
pub(crate) const DEFAULT_LIMIT_CRITICAL_RATIO: f64 = 0.95;

/// Window of the slopes of open descriptors and threads.
pub(crate) const DEFAULT_COUNT_SLOPE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Descriptors climbing only if the fitted growth over the slope window is
/// at least this many …
pub(crate) const DEFAULT_FD_GROWTH_MIN: f64 = 100.0;

/// Threads climbing only if the fitted growth over the slope window is at
/// least this many …
pub(crate) const DEFAULT_THREAD_GROWTH_MIN: f64 = 50.0;

/// Tasks climbing only if the fitted growth over the slope window is at
/// least this many …
pub(crate) const DEFAULT_TASK_GROWTH_MIN: f64 = 200.0;

/// … and (all three) at least this share of the count at the window's start.
pub(crate) const DEFAULT_COUNT_GROWTH_MIN_RATIO: f64 = 0.1;

/// A user resource is saturated from this utilization (median over the
/// lookback) …
pub(crate) const DEFAULT_RESOURCE_UTILIZATION: f64 = 0.95;

/// … or when its saturation (waiters) is above this in most seconds of
/// the lookback.
pub(crate) const DEFAULT_RESOURCE_SATURATION: f64 = 0.0;

/// Latency budget of every route without one of its own: p95 below this
/// (the seeds' "API p95 < 500 ms").
pub(crate) const DEFAULT_ROUTE_P95_BUDGET: Duration = Duration::from_millis(500);

/// Error budget of every route without one of its own: the share of
/// requests that may fail (status ≥ 500).
pub(crate) const DEFAULT_ROUTE_ERROR_RATIO_BUDGET: f64 = 0.01;

/// CPU budget: the share of the CPU limit the service should stay under
/// (the seeds' "CPU < 70 %").
pub(crate) const DEFAULT_CPU_BUDGET: f64 = 0.7;

/// Memory budget: the share of the memory limit the service should stay
/// under (the seeds' "memory < 80 % of the limit").
pub(crate) const DEFAULT_MEMORY_BUDGET: f64 = 0.8;

/// Most findings one rule reports at once (routes, resources); the worst
/// are kept.
pub(crate) const MAX_FINDINGS_PER_RULE: usize = 10;

/// Most (rule, resource) conditions the doctor tracks at once; new ones
/// wait while the table is full.
pub(crate) const MAX_TRACKED_FINDINGS: usize = 256;

/// Most artifacts one finding lists; the oldest are dropped.
pub(crate) const MAX_ARTIFACTS_PER_FINDING: usize = 8;

/// Crates whose frames are library code: the blocked-executor advice names
/// the leaf-most frame of any other crate as the application's. A frame
/// without `::` (a C symbol) or that is a bare address is library code too.
pub(crate) const DEFAULT_LIBRARY_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "tokio_stream",
    "futures",
    "futures_core",
    "futures_util",
    "futures_executor",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "http_body",
    "http_body_util",
    "axum",
    "axum_core",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "tonic",
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "tracing_futures",
    "stethoscope",
    "parking_lot",
    "parking_lot_core",
    "crossbeam_channel",
    "crossbeam_utils",
    "mio",
    "pin_project_lite",
    "libc",
    "backtrace",
];

/// Whether the doctor captures artifacts (heap snapshots, CPU profiles)
/// when findings open.
pub(crate) const DEFAULT_AUTO_CAPTURE: bool = true;

/// Whether the doctor also takes task dumps (in builds that have them):
/// off, because a dump that meets a worker inside a poll can leave that
/// worker parked for good (tokio 1.54, see `runtime::task_dump`) — a risk
/// an operator takes by asking, not one the agent takes by itself.
pub(crate) const DEFAULT_AUTO_CAPTURE_TASK_DUMPS: bool = false;

/// Length of the CPU profile captured when a CPU finding opens.
pub(crate) const DEFAULT_AUTO_CAPTURE_PROFILE: Duration = Duration::from_secs(10);

/// Sampling rate of that profile: the on-demand default, so that an
/// operator's `/debug/pprof/profile` at the default rate joins the running
/// capture instead of waiting for it (one sampler per process). At 99 Hz
/// sampling costs ~0.2 % of the CPU for the capture's 10 s, at most once
/// per rule every 15 minutes.
pub(crate) const DEFAULT_AUTO_CAPTURE_HZ: u32 = DEFAULT_PROFILE_HZ;

/// After a memory-growth finding opens with a heap snapshot, the second
/// snapshot (the diff's target) is taken this much later.
pub(crate) const DEFAULT_AUTO_CAPTURE_FOLLOW_UP: Duration = Duration::from_secs(5 * 60);

/// Least time between two captures for the same rule.
pub(crate) const DEFAULT_AUTO_CAPTURE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Most captures (of any kind) per hour.
pub(crate) const MAX_AUTO_CAPTURES_PER_HOUR: usize = 8;
