//! The doctor's thresholds, windows and budgets.

use std::time::Duration;

use super::budget::Budgets;
use super::rules::Rule;
use crate::config::*;

/// The window of every rule: how long its condition must hold before its
/// finding opens, and stay clear before it closes.
///
/// ```
/// use std::time::Duration;
/// use stethoscope::doctor::{Rule, RuleWindows};
///
/// let windows = RuleWindows::default().with(Rule::MemoryGrowing, Duration::from_secs(30));
/// assert_eq!(windows.get(Rule::MemoryGrowing), Duration::from_secs(30));
/// assert_eq!(windows.get(Rule::EventLoopBlocked), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleWindows([Duration; Rule::ALL.len()]);

impl Default for RuleWindows {
    fn default() -> Self {
        RuleWindows(Rule::ALL.map(Rule::default_window))
    }
}

impl RuleWindows {
    /// The same window for every rule (tests shorten them all).
    pub fn all(window: Duration) -> Self {
        RuleWindows([window; Rule::ALL.len()])
    }

    /// A rule's window.
    pub fn get(&self, rule: Rule) -> Duration {
        self.0[rule as usize]
    }

    /// Sets a rule's window.
    pub fn set(&mut self, rule: Rule, window: Duration) {
        self.0[rule as usize] = window;
    }

    /// [`set`](RuleWindows::set), by value.
    #[must_use]
    pub fn with(mut self, rule: Rule, window: Duration) -> Self {
        self.set(rule, window);
        self
    }
}

/// Everything the rules compare against. Each field starts at the
/// `DEFAULT_*` constant of [`crate::config`] its doc names; docs/doctor.md
/// explains them.
///
/// ```
/// use std::time::Duration;
/// use stethoscope::doctor::DoctorConfig;
///
/// let mut config = DoctorConfig::default();
/// config.lag_median_ms = 20.0;
/// assert_eq!(config.lag_max_ms, 100.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DoctorConfig {
    /// How far back "now" reaches ([`DEFAULT_DOCTOR_LOOKBACK`]).
    pub lookback: Duration,
    /// Hysteresis window of each rule (`DEFAULT_WINDOW_*`).
    pub windows: RuleWindows,
    /// Blocked: median of per-second lag p50 ([`DEFAULT_LAG_MEDIAN_MS`]).
    pub lag_median_ms: f64,
    /// Blocked: a second's lag max ([`DEFAULT_LAG_MAX_MS`]).
    pub lag_max_ms: f64,
    /// Blocked is critical from this delay ([`DEFAULT_LAG_CRITICAL_MS`]).
    pub lag_critical_ms: f64,
    /// How recent a stall must be to count ([`DEFAULT_STALL_RECENCY`]).
    pub stall_recency: Duration,
    /// Saturated: least busy worker's share ([`DEFAULT_WORKER_BUSY_RATIO`]).
    pub worker_busy_ratio: f64,
    /// Saturated: queue trend window ([`DEFAULT_EXECUTOR_TREND_WINDOW`]).
    pub executor_trend_window: Duration,
    /// Saturated: lag p99 ([`DEFAULT_SATURATED_LAG_P99_MS`]).
    pub saturated_lag_p99_ms: f64,
    /// CPU saturated: share of the limit ([`DEFAULT_CPU_SATURATED_RATIO`]).
    pub cpu_saturated_ratio: f64,
    /// CPU quota exhausted: throttled share ([`DEFAULT_CPU_THROTTLED_RATIO`]).
    pub cpu_throttled_ratio: f64,
    /// I/O-bound: CPU below this share ([`DEFAULT_IO_CPU_RATIO`]).
    pub io_cpu_ratio: f64,
    /// I/O-bound: lag p99 below this ([`DEFAULT_IO_LAG_P99_MS`]).
    pub io_lag_p99_ms: f64,
    /// I/O-bound: a route's p99 at least this ([`DEFAULT_SLOW_ROUTE_P99`]).
    pub slow_route_p99: Duration,
    /// Requests a route needs to be judged ([`DEFAULT_MIN_ROUTE_REQUESTS`]).
    pub min_route_requests: u64,
    /// Memory slope window ([`DEFAULT_MEMORY_SLOPE_WINDOW`]).
    pub memory_slope_window: Duration,
    /// Least memory growth, bytes ([`DEFAULT_MEMORY_GROWTH_MIN_BYTES`]).
    pub memory_growth_min_bytes: f64,
    /// Least relative memory growth ([`DEFAULT_MEMORY_GROWTH_MIN_RATIO`]).
    pub memory_growth_min_ratio: f64,
    /// Growth is critical when the limit is this close ([`DEFAULT_CRITICAL_ETA`]).
    pub critical_eta: Duration,
    /// Memory near limit ([`DEFAULT_MEMORY_NEAR_LIMIT_RATIO`]).
    pub memory_near_limit_ratio: f64,
    /// Memory near limit is critical ([`DEFAULT_MEMORY_CRITICAL_RATIO`]).
    pub memory_critical_ratio: f64,
    /// How long an OOM kill counts ([`DEFAULT_OOM_LOOKBACK`]).
    pub oom_lookback: Duration,
    /// Fragmentation: resident / allocated ([`DEFAULT_FRAGMENTATION_RATIO`]).
    pub fragmentation_ratio: f64,
    /// Fragmentation: resident − allocated, bytes ([`DEFAULT_FRAGMENTATION_MIN_BYTES`]).
    pub fragmentation_min_bytes: f64,
    /// Descriptors/threads near limit ([`DEFAULT_LIMIT_WARNING_RATIO`]).
    pub limit_warning_ratio: f64,
    /// Descriptors/threads critical ([`DEFAULT_LIMIT_CRITICAL_RATIO`]).
    pub limit_critical_ratio: f64,
    /// Descriptor/thread slope window ([`DEFAULT_COUNT_SLOPE_WINDOW`]).
    pub count_slope_window: Duration,
    /// Least descriptor growth ([`DEFAULT_FD_GROWTH_MIN`]).
    pub fd_growth_min: f64,
    /// Least thread growth ([`DEFAULT_THREAD_GROWTH_MIN`]).
    pub thread_growth_min: f64,
    /// Least relative descriptor/thread growth ([`DEFAULT_COUNT_GROWTH_MIN_RATIO`]).
    pub count_growth_min_ratio: f64,
    /// User resource utilization ([`DEFAULT_RESOURCE_UTILIZATION`]).
    pub resource_utilization: f64,
    /// User resource waiters ([`DEFAULT_RESOURCE_SATURATION`]).
    pub resource_saturation: f64,
    /// Crates whose frames are library code ([`DEFAULT_LIBRARY_CRATES`]).
    pub library_crates: Vec<String>,
    /// Route, CPU and memory budgets (the seeds' by default, see
    /// [`Budgets::default`]).
    pub budgets: Budgets,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            lookback: DEFAULT_DOCTOR_LOOKBACK,
            windows: RuleWindows::default(),
            lag_median_ms: DEFAULT_LAG_MEDIAN_MS,
            lag_max_ms: DEFAULT_LAG_MAX_MS,
            lag_critical_ms: DEFAULT_LAG_CRITICAL_MS,
            stall_recency: DEFAULT_STALL_RECENCY,
            worker_busy_ratio: DEFAULT_WORKER_BUSY_RATIO,
            executor_trend_window: DEFAULT_EXECUTOR_TREND_WINDOW,
            saturated_lag_p99_ms: DEFAULT_SATURATED_LAG_P99_MS,
            cpu_saturated_ratio: DEFAULT_CPU_SATURATED_RATIO,
            cpu_throttled_ratio: DEFAULT_CPU_THROTTLED_RATIO,
            io_cpu_ratio: DEFAULT_IO_CPU_RATIO,
            io_lag_p99_ms: DEFAULT_IO_LAG_P99_MS,
            slow_route_p99: DEFAULT_SLOW_ROUTE_P99,
            min_route_requests: DEFAULT_MIN_ROUTE_REQUESTS,
            memory_slope_window: DEFAULT_MEMORY_SLOPE_WINDOW,
            memory_growth_min_bytes: DEFAULT_MEMORY_GROWTH_MIN_BYTES as f64,
            memory_growth_min_ratio: DEFAULT_MEMORY_GROWTH_MIN_RATIO,
            critical_eta: DEFAULT_CRITICAL_ETA,
            memory_near_limit_ratio: DEFAULT_MEMORY_NEAR_LIMIT_RATIO,
            memory_critical_ratio: DEFAULT_MEMORY_CRITICAL_RATIO,
            oom_lookback: DEFAULT_OOM_LOOKBACK,
            fragmentation_ratio: DEFAULT_FRAGMENTATION_RATIO,
            fragmentation_min_bytes: DEFAULT_FRAGMENTATION_MIN_BYTES as f64,
            limit_warning_ratio: DEFAULT_LIMIT_WARNING_RATIO,
            limit_critical_ratio: DEFAULT_LIMIT_CRITICAL_RATIO,
            count_slope_window: DEFAULT_COUNT_SLOPE_WINDOW,
            fd_growth_min: DEFAULT_FD_GROWTH_MIN,
            thread_growth_min: DEFAULT_THREAD_GROWTH_MIN,
            count_growth_min_ratio: DEFAULT_COUNT_GROWTH_MIN_RATIO,
            resource_utilization: DEFAULT_RESOURCE_UTILIZATION,
            resource_saturation: DEFAULT_RESOURCE_SATURATION,
            library_crates: DEFAULT_LIBRARY_CRATES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            budgets: Budgets::default(),
        }
    }
}

/// How the agent's doctor is set up: rule thresholds and windows, budgets,
/// history length and the auto-capture policy.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DoctorSettings {
    /// Thresholds, windows and budgets of the rules.
    pub config: DoctorConfig,
    /// What to capture when a finding opens.
    pub capture: super::CapturePolicy,
    /// Rows of history kept (one a second).
    pub history_rows: usize,
}

impl Default for DoctorSettings {
    fn default() -> Self {
        DoctorSettings {
            config: DoctorConfig::default(),
            capture: super::CapturePolicy::default(),
            history_rows: crate::config::DEFAULT_HISTORY_ROWS,
        }
    }
}
