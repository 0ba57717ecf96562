//! The host's tokio runtime, through tokio's stable `RuntimeMetrics`.

use super::readings::{ExecutorReadings, Reading};

/// Reads the runtime's counters; cheap (atomics), callable from any thread.
pub(crate) fn read(handle: Option<&tokio::runtime::Handle>) -> Reading<ExecutorReadings> {
    let Some(handle) = handle else {
        return Err(
            "no tokio runtime: start the agent inside one or pass AgentBuilder::watch_runtime".into(),
        );
    };
    let metrics = handle.metrics();
    let workers = metrics.num_workers();
    #[cfg(target_has_atomic = "64")]
    let (busy, parks) = (
        (0..workers)
            .map(|w| metrics.worker_total_busy_duration(w))
            .collect(),
        (0..workers).map(|w| metrics.worker_park_count(w)).collect(),
    );
    #[cfg(not(target_has_atomic = "64"))]
    let (busy, parks) = (Vec::new(), Vec::new());
    Ok(ExecutorReadings {
        workers,
        alive_tasks: metrics.num_alive_tasks(),
        global_queue_depth: metrics.global_queue_depth(),
        busy,
        parks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_multi_thread_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let readings = read(Some(runtime.handle())).unwrap();
        assert_eq!(readings.workers, 2);
        assert_eq!(readings.busy.len(), 2);
        assert!(read(None).unwrap_err().contains("runtime"));
    }
}
