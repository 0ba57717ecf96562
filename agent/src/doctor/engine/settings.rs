//! The doctor's thresholds, windows and budgets.

use std::time::Duration;

use super::budget::Budgets;
use super::rules::Rule;
use crate::Error;
use super::defaults::*;

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

/// Everything the rules compare against. Each field's doc gives its
/// default; docs/doctor.md explains them.
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
    /// How far back "now" reaches (default 5 s).
    pub lookback: Duration,
    /// Hysteresis window of each rule (defaults in docs/doctor.md).
    pub windows: RuleWindows,
    /// Blocked: median of per-second lag p50 (default 10.0).
    pub lag_median_ms: f64,
    /// Blocked: a second's lag max (default 100.0).
    pub lag_max_ms: f64,
    /// Blocked is critical from this delay (default 1000.0).
    pub lag_critical_ms: f64,
    /// How recent a stall must be to count (default 60 s).
    pub stall_recency: Duration,
    /// Saturated: least busy worker's share (default 0.9).
    pub worker_busy_ratio: f64,
    /// Saturated: queue trend window (default 15 s).
    pub executor_trend_window: Duration,
    /// Saturated: lag p99 (default 10.0).
    pub saturated_lag_p99_ms: f64,
    /// CPU saturated: share of the limit (default 0.9).
    pub cpu_saturated_ratio: f64,
    /// CPU quota exhausted: throttled share (default 0.25).
    pub cpu_throttled_ratio: f64,
    /// I/O-bound: CPU below this share (default 0.5).
    pub io_cpu_ratio: f64,
    /// I/O-bound: lag p99 below this (default 10.0).
    pub io_lag_p99_ms: f64,
    /// I/O-bound: a route's p99 at least this (default 500 ms).
    pub slow_route_p99: Duration,
    /// Requests a route needs to be judged (default 20).
    pub min_route_requests: u64,
    /// Memory slope window (default 10 min).
    pub memory_slope_window: Duration,
    /// Least memory growth, bytes (default 8 MiB).
    pub memory_growth_min_bytes: f64,
    /// Least relative memory growth (default 0.05).
    pub memory_growth_min_ratio: f64,
    /// Growth is critical when the limit is this close (default 30 min).
    pub critical_eta: Duration,
    /// Memory near limit (default 0.9).
    pub memory_near_limit_ratio: f64,
    /// Memory near limit is critical (default 0.95).
    pub memory_critical_ratio: f64,
    /// How long an OOM kill counts (default 5 min).
    pub oom_lookback: Duration,
    /// Fragmentation: resident / allocated (default 1.5).
    pub fragmentation_ratio: f64,
    /// Fragmentation: resident − allocated, bytes (default 64 MiB).
    pub fragmentation_min_bytes: f64,
    /// Descriptors/threads near limit (default 0.8).
    pub limit_warning_ratio: f64,
    /// Descriptors/threads critical (default 0.95).
    pub limit_critical_ratio: f64,
    /// Descriptor/thread slope window (default 10 min).
    pub count_slope_window: Duration,
    /// Least descriptor growth (default 100.0).
    pub fd_growth_min: f64,
    /// Least thread growth (default 50.0).
    pub thread_growth_min: f64,
    /// Least task growth (default 200.0).
    pub task_growth_min: f64,
    /// Least relative descriptor/thread/task growth (default 0.1).
    pub count_growth_min_ratio: f64,
    /// A request in flight is stuck after this long at least (default 30 s) …
    pub stuck_request_min: Duration,
    /// … and after this many times its route's p99 (default 10.0).
    pub stuck_request_p99_factor: f64,
    /// User resource utilization (default 0.95).
    pub resource_utilization: f64,
    /// User resource waiters (default 0.0).
    pub resource_saturation: f64,
    /// Crates whose frames are library code (default: the runtime, web
    /// framework and std crates docs/doctor.md lists).
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
            task_growth_min: DEFAULT_TASK_GROWTH_MIN,
            stuck_request_min: DEFAULT_STUCK_REQUEST_MIN,
            stuck_request_p99_factor: DEFAULT_STUCK_REQUEST_P99_FACTOR,
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
            history_rows: DEFAULT_HISTORY_ROWS,
        }
    }
}

/// Parses the history length of [`ENV_HISTORY`](crate::config::ENV_HISTORY) (`15m`, `900s`, `1h`) into
/// rows, one a second.
///
/// # Errors
///
/// [`Error::InvalidEnv`] unless it is a duration of whole seconds within
/// [`HISTORY_ROWS_RANGE`].
pub(crate) fn parse_history_length(text: &str) -> Result<usize, Error> {
    let invalid = || Error::InvalidEnv {
        var: crate::config::ENV_HISTORY,
        value: text.chars().take(100).collect(),
        expected: "a duration from 1m to 1h, e.g. 15m",
    };
    let length = crate::units::parse_duration(text.trim()).ok_or_else(invalid)?;
    let rows = usize::try_from(length.as_secs()).map_err(|_| invalid())?;
    if length.subsec_nanos() != 0 || !(HISTORY_ROWS_RANGE.0..=HISTORY_ROWS_RANGE.1).contains(&rows)
    {
        return Err(invalid());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_length_is_a_duration_in_range() {
        assert_eq!(parse_history_length("15m").unwrap(), 900);
        assert_eq!(parse_history_length(" 1h ").unwrap(), 3600);
        assert_eq!(parse_history_length("60s").unwrap(), 60);
        for bad in ["", "59s", "2h", "15", "1.5s", "-15m", "lots"] {
            assert!(parse_history_length(bad).is_err(), "{bad}");
        }
    }
}
