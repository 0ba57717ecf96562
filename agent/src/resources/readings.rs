//! Raw readings of one sample: cumulative counters and current values,
//! each with the reason it could not be read. USE rows are derived from
//! two of these (see `table.rs`); `/metrics` exports them directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use super::cgroup::{CpuCgroup, MemoryCgroup, PidsCgroup};

/// A value, or why it is unavailable on this host.
pub(crate) type Reading<T> = Result<T, String>;

/// Everything one sample reads. The periodic sampler reads the values in
/// this struct every second and those of [`SlowReadings`] every few
/// seconds; an on-demand report reads both.
#[derive(Debug, Clone)]
pub(crate) struct Readings {
    pub(crate) at: Instant,
    pub(crate) process: Reading<ProcessReadings>,
    pub(crate) cpu_cgroup: Reading<CpuCgroup>,
    /// `MemTotal` of the host, bytes.
    pub(crate) host_memory_bytes: Reading<u64>,
    /// `/proc/sys/kernel/threads-max`.
    pub(crate) threads_max: Reading<u64>,
    pub(crate) executor: Reading<ExecutorReadings>,
    /// The values read every few seconds, as of their last read.
    pub(crate) slow: Arc<SlowReadings>,
    /// The slow values read before `slow` (at least `MIN_USE_WINDOW`
    /// earlier), for their rates.
    pub(crate) slow_before: Option<Arc<SlowReadings>>,
}

/// Values that change slowly or whose rates need no one-second
/// resolution: read every few seconds by the periodic sampler.
#[derive(Debug, Clone)]
pub(crate) struct SlowReadings {
    pub(crate) at: Instant,
    /// Pressure stall information; its `avg10` is itself a ten-second
    /// average.
    pub(crate) psi_cpu: Reading<Pressure>,
    pub(crate) psi_memory: Reading<Pressure>,
    pub(crate) psi_io: Reading<Pressure>,
    pub(crate) memory_cgroup: Reading<MemoryCgroup>,
    pub(crate) pids_cgroup: Reading<PidsCgroup>,
    /// CPUs this process may run on (affinity), as a number of cores.
    pub(crate) cpus_allowed: Reading<f64>,
    pub(crate) net: Reading<NetReadings>,
    pub(crate) disk: Reading<DiskReadings>,
    /// Descriptors open (listing `/proc/self/fd` is the costliest read of
    /// a sample when its code is cold, hence here).
    pub(crate) open_fds: Reading<u64>,
    /// Soft `RLIMIT_NOFILE`; `None` if unlimited.
    pub(crate) max_fds: Reading<Option<u64>>,
    /// Time this process's threads spent runnable but waiting for a CPU
    /// (sum of `/proc/self/task/*/schedstat` run delays), seconds.
    pub(crate) run_delay_seconds: Reading<f64>,
    /// Bytes read from and written to storage (`/proc/self/io`).
    pub(crate) io_bytes: Reading<(u64, u64)>,
}

impl SlowReadings {
    /// Slow readings where nothing could be read, for `reason`.
    #[cfg(any(test, not(target_os = "linux")))]
    pub(crate) fn unavailable(reason: &str) -> Self {
        fn r<T>(reason: &str) -> Reading<T> {
            Err(reason.to_owned())
        }
        SlowReadings {
            at: Instant::now(),
            psi_cpu: r(reason),
            psi_memory: r(reason),
            psi_io: r(reason),
            memory_cgroup: r(reason),
            pids_cgroup: r(reason),
            cpus_allowed: r(reason),
            net: r(reason),
            disk: r(reason),
            open_fds: r(reason),
            max_fds: r(reason),
            run_delay_seconds: r(reason),
            io_bytes: r(reason),
        }
    }
}

impl Readings {
    /// A sample where nothing could be read, for `reason`.
    #[cfg(any(test, not(target_os = "linux")))]
    pub(crate) fn unavailable(reason: &str) -> Self {
        fn r<T>(reason: &str) -> Reading<T> {
            Err(reason.to_owned())
        }
        Readings {
            at: Instant::now(),
            process: r(reason),
            cpu_cgroup: r(reason),
            host_memory_bytes: r(reason),
            threads_max: r(reason),
            executor: r(reason),
            slow: Arc::new(SlowReadings::unavailable(reason)),
            slow_before: None,
        }
    }

    /// The two latest slow readings and the seconds between them, for
    /// rates of slow values.
    pub(crate) fn slow_window(&self) -> Option<(&SlowReadings, &SlowReadings, f64)> {
        let before = self.slow_before.as_deref()?;
        let secs = self
            .slow
            .at
            .saturating_duration_since(before.at)
            .as_secs_f64();
        (secs > 0.0).then_some((before, &self.slow, secs))
    }
}

/// This process, from `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessReadings {
    /// User + system CPU time, seconds.
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) threads: u64,
    /// Start time since the Unix epoch, seconds.
    pub(crate) start_time_seconds: Reading<f64>,
    /// `/proc/self/stat` was an emulator's (qemu-user writes zeros there):
    /// CPU time came from the process's CPU clock, memory and threads from
    /// `/proc/self/status`.
    pub(crate) emulated_stat: bool,
}

/// One PSI resource: `some` is the share of time at least one task waited.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pressure {
    /// `some avg10`, a percentage 0..100.
    pub(crate) some_avg10: f64,
    /// `some total`, seconds.
    pub(crate) some_total_seconds: f64,
    /// `full total`, seconds (absent for system-wide CPU on old kernels).
    pub(crate) full_total_seconds: Option<f64>,
    /// Which file, and whether it is the cgroup's or the host's.
    pub(crate) source: String,
}

/// The process's network namespace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetReadings {
    pub(crate) tcp_out_segs: u64,
    pub(crate) tcp_retrans_segs: u64,
    /// `TcpExt: ListenOverflows` (accept queue full).
    pub(crate) listen_overflows: Option<u64>,
    /// `TcpExt: ListenDrops`.
    pub(crate) listen_drops: Option<u64>,
    /// Receive + transmit errors of every interface but loopback.
    pub(crate) interface_errors: u64,
    /// Receive + transmit drops of every interface but loopback.
    pub(crate) interface_drops: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
}

/// Block devices (host-wide) and this process's I/O.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiskReadings {
    /// Milliseconds each whole disk spent doing I/O (`/proc/diskstats`
    /// field 13), by device name.
    pub(crate) busy_ms: Vec<(String, u64)>,
}

/// The host's tokio runtime (stable `RuntimeMetrics`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutorReadings {
    pub(crate) workers: usize,
    pub(crate) alive_tasks: usize,
    pub(crate) global_queue_depth: usize,
    /// Total busy time per worker.
    pub(crate) busy: Vec<Duration>,
    /// Times each worker parked.
    pub(crate) parks: Vec<u64>,
}
