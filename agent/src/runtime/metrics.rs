//! Executor lag, stalls, worker busy ratios and task monitors for
//! `/metrics`.

use super::RuntimeHealth;
use crate::metrics::{Collect, Desc, MetricWriter};

/// Reads one value of a task monitor's report.
type TaskValue = fn(&super::TaskMonitorReport) -> f64;

impl Collect for RuntimeHealth {
    fn collect(&self, out: &mut MetricWriter) {
        if let Some((counts, sum)) = self.lag_buckets() {
            out.family(Desc::histogram(
                "stethoscope_executor_lag_seconds",
                Some("seconds"),
                "Executor lag: delay of the agent's probe task before its first poll, and the time each worker stayed inside one poll when that exceeded the resolution.",
            ))
            .histogram(&[], &super::LAG_BUCKETS, &counts, sum);
        }
        if let Ok(report) = self.report() {
            out.family(Desc::counter(
                "stethoscope_tokio_stalls",
                None,
                "Times a worker of the host's tokio runtime stayed inside one poll longer than the stall threshold.",
            ))
            .count(&[], report.stalls_total);
            out.family(Desc::counter(
                "stethoscope_tokio_stall_seconds",
                Some("seconds"),
                "Time workers of the host's tokio runtime spent in finished stalls.",
            ))
            .value(&[], report.stalled_total.as_secs_f64());
            let mut ratio = out.family(Desc::gauge(
                "stethoscope_tokio_worker_busy_ratio",
                Some("ratio"),
                "Share of the last second each worker was busy, 0..1 (not divided by the number of workers).",
            ));
            for w in &report.per_worker {
                if let Some(r) = w.busy_ratio {
                    ratio.value(&[("worker", &w.worker.to_string())], r);
                }
            }
        }
        let monitors = self.task_monitors();
        let families: [(Desc, TaskValue); 7] = [
            (
                Desc::counter(
                    "stethoscope_tokio_task_instrumented",
                    None,
                    "Tasks instrumented with the named task monitor.",
                ),
                |t| t.instrumented as f64,
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_dropped",
                    None,
                    "Instrumented tasks dropped (completed or cancelled).",
                ),
                |t| t.dropped as f64,
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_polls",
                    None,
                    "Polls of the named monitor's tasks.",
                ),
                |t| t.polls as f64,
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_slow_polls",
                    None,
                    "Polls slower than the monitor's slow-poll threshold.",
                ),
                |t| t.slow_polls as f64,
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_poll_seconds",
                    Some("seconds"),
                    "Time the named monitor's tasks spent being polled.",
                ),
                |t| t.total_poll.as_secs_f64(),
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_scheduled_seconds",
                    Some("seconds"),
                    "Time the named monitor's tasks waited to be polled after being woken.",
                ),
                |t| t.total_scheduled.as_secs_f64(),
            ),
            (
                Desc::counter(
                    "stethoscope_tokio_task_idle_seconds",
                    Some("seconds"),
                    "Time the named monitor's tasks were idle, waiting to be woken.",
                ),
                |t| t.total_idle.as_secs_f64(),
            ),
        ];
        for (desc, value) in families {
            let mut family = out.family(desc);
            for t in &monitors {
                family.value(&[("monitor", &t.name)], value(t));
            }
        }
    }
}
