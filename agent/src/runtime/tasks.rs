//! Named task monitors: `agent.task_monitor("name")` hands the service a
//! `tokio_metrics::TaskMonitor` to instrument its own tasks with; the agent
//! reads each one's cumulative metrics for `/debug/runtime` and `/metrics`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_metrics::TaskMonitor;

/// Most named monitors an agent keeps; a name beyond it gets a monitor
/// that works but is not reported (and a warning in the log).
pub const MAX_TASK_MONITORS: usize = 256;

/// The cumulative metrics of one named task monitor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct TaskMonitorReport {
    /// The name given to `task_monitor`.
    pub name: String,
    /// Tasks instrumented.
    pub instrumented: u64,
    /// Instrumented tasks dropped (finished or cancelled).
    pub dropped: u64,
    /// Tasks polled at least once.
    pub first_polls: u64,
    /// Mean time from instrumentation to first poll.
    #[serde(rename = "mean_first_poll_delay_ms", serialize_with = "crate::report::ms")]
    pub mean_first_poll_delay: Duration,
    /// Polls.
    pub polls: u64,
    /// Mean poll duration.
    #[serde(rename = "mean_poll_ms", serialize_with = "crate::report::ms")]
    pub mean_poll: Duration,
    /// Polls slower than the slow-poll threshold.
    pub slow_polls: u64,
    /// Share of polls slower than the monitor's slow-poll threshold
    /// (default 50 µs), 0..1.
    pub slow_poll_ratio: f64,
    /// The slow-poll threshold.
    #[serde(rename = "slow_poll_threshold_ms", serialize_with = "crate::report::ms")]
    pub slow_poll_threshold: Duration,
    /// Times tasks were woken and waited to be polled.
    pub scheduled: u64,
    /// Mean time a woken task waited to be polled.
    #[serde(rename = "mean_scheduled_ms", serialize_with = "crate::report::ms")]
    pub mean_scheduled: Duration,
    /// Times tasks went idle (waiting to be woken).
    pub idled: u64,
    /// Mean idle time.
    #[serde(rename = "mean_idle_ms", serialize_with = "crate::report::ms")]
    pub mean_idle: Duration,
    /// Total time in polls.
    #[serde(rename = "total_poll_ms", serialize_with = "crate::report::ms")]
    pub total_poll: Duration,
    /// Total time woken but not yet polled.
    #[serde(rename = "total_scheduled_ms", serialize_with = "crate::report::ms")]
    pub total_scheduled: Duration,
    /// Total time idle.
    #[serde(rename = "total_idle_ms", serialize_with = "crate::report::ms")]
    pub total_idle: Duration,
}

impl TaskMonitorReport {
    fn read(name: &str, monitor: &TaskMonitor) -> Self {
        let m = monitor.cumulative();
        TaskMonitorReport {
            name: name.to_owned(),
            instrumented: m.instrumented_count,
            dropped: m.dropped_count,
            first_polls: m.first_poll_count,
            mean_first_poll_delay: m.mean_first_poll_delay(),
            polls: m.total_poll_count,
            mean_poll: m.mean_poll_duration(),
            slow_polls: m.total_slow_poll_count,
            slow_poll_ratio: if m.total_poll_count == 0 {
                0.0
            } else {
                m.slow_poll_ratio()
            },
            slow_poll_threshold: monitor.slow_poll_threshold(),
            scheduled: m.total_scheduled_count,
            mean_scheduled: m.mean_scheduled_duration(),
            idled: m.total_idled_count,
            mean_idle: m.mean_idle_duration(),
            total_poll: m.total_poll_duration,
            total_scheduled: m.total_scheduled_duration,
            total_idle: m.total_idle_duration,
        }
    }
}

/// The monitors handed out, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskMonitors {
    monitors: Arc<Mutex<Vec<(String, TaskMonitor)>>>,
    /// Whether a name beyond [`MAX_TASK_MONITORS`] was asked for.
    over_cap: Arc<std::sync::atomic::AtomicBool>,
}

impl TaskMonitors {
    /// The monitor called `name`, created on first use.
    pub(crate) fn get(&self, name: &str) -> TaskMonitor {
        let mut monitors = self.monitors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, monitor)) = monitors.iter().find(|(n, _)| n == name) {
            return monitor.clone();
        }
        let monitor = TaskMonitor::new();
        if monitors.len() < MAX_TASK_MONITORS {
            monitors.push((name.to_owned(), monitor.clone()));
        } else if !self
            .over_cap
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // Once: a service naming monitors per request must not log per request.
            tracing::warn!(
                name,
                max = MAX_TASK_MONITORS,
                "too many task monitors; this one and later new names are not reported"
            );
        }
        monitor
    }

    /// Every monitor's cumulative metrics, in creation order.
    pub(crate) fn reports(&self) -> Vec<TaskMonitorReport> {
        let monitors = self
            .monitors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        monitors
            .iter()
            .map(|(name, monitor)| TaskMonitorReport::read(name, monitor))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_returns_the_same_monitor_and_reports_its_tasks() {
        let monitors = TaskMonitors::default();
        let a = monitors.get("checkout");
        let again = monitors.get("checkout");
        for _ in 0..3 {
            again
                .instrument(async {
                    tokio::task::yield_now().await;
                })
                .await;
        }
        drop(a);
        let reports = monitors.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].name, "checkout");
        assert_eq!(reports[0].instrumented, 3);
        assert!(reports[0].polls >= 6, "{:?}", reports[0]);
    }
}
