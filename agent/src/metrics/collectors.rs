//! The collectors of the capabilities this crate has: process and USE
//! readings, the tokio runtime, RED, and the CPU sampler's own counters.
//! Names follow DESIGN §5.2: the Go client's `process_*` names, everything
//! else under `stethoscope_`.

use super::encode::{Desc, MetricWriter};
use super::Collect;
use crate::cpu::CpuProfiler;

/// Exports [`CpuProfiler::status`].
#[derive(Debug)]
pub(crate) struct SamplerCollector(pub(crate) CpuProfiler);

impl Collect for SamplerCollector {
    fn collect(&self, out: &mut MetricWriter) {
        let status = self.0.status();
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_sessions",
            None,
            "CPU sampler sessions started (a session spans overlapping profile requests).",
        ))
        .count(&[], status.sessions_started);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_samples",
            None,
            "Stack samples the CPU sampler recorded.",
        ))
        .count(&[], status.samples_recorded);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_dropped_samples",
            None,
            "Stack samples lost because the ring was full or every unwinder was busy.",
        ))
        .count(&[], status.samples_dropped);
        out.family(Desc::counter(
            "stethoscope_cpu_profiler_handler_seconds",
            Some("seconds"),
            "Time spent inside the SIGPROF handler: the sampler's direct cost to the threads it interrupts.",
        ))
        .value(&[], status.handler_time.as_secs_f64());
        out.family(Desc::gauge(
            "stethoscope_cpu_profiler_active_requests",
            None,
            "Profile requests waiting for the sampler now.",
        ))
        .count(&[], status.subscribers as u64);
        out.family(Desc::gauge(
            "stethoscope_cpu_profiler_memory_bytes",
            Some("bytes"),
            "Memory held by the running sampler session (0 when idle).",
        ))
        .count(&[], status.footprint_bytes as u64);
        if let Some(ring) = self.0.continuous_status() {
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_memory_bytes",
                Some("bytes"),
                "Memory held by the continuous profiler's ring of segments (and its pins), estimated.",
            ))
            .count(&[], ring.memory_bytes as u64);
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_history_seconds",
                Some("seconds"),
                "History the continuous profiler's ring holds.",
            ))
            .value(&[], ring.history_ms as f64 / 1000.0);
            out.family(Desc::gauge(
                "stethoscope_continuous_profile_hz",
                None,
                "The continuous profiler's sampling rate.",
            ))
            .count(&[], u64::from(ring.hz));
        }
    }
}

/// Exports jemalloc's statistics and whether heap profiling samples, when
/// jemalloc is the global allocator (nothing otherwise).
#[derive(Debug)]
pub(crate) struct HeapCollector(pub(crate) crate::heap::HeapProfiler);

impl Collect for HeapCollector {
    fn collect(&self, out: &mut MetricWriter) {
        let Ok(stats) = self.0.stats() else {
            return;
        };
        for (name, help, value) in [
            (
                "stethoscope_jemalloc_allocated_bytes",
                "Bytes in live allocations (jemalloc stats.allocated).",
                stats.allocated_bytes,
            ),
            (
                "stethoscope_jemalloc_active_bytes",
                "Bytes in active pages, allocations rounded to size classes (stats.active).",
                stats.active_bytes,
            ),
            (
                "stethoscope_jemalloc_resident_bytes",
                "Bytes in physically resident pages mapped by jemalloc (stats.resident).",
                stats.resident_bytes,
            ),
            (
                "stethoscope_jemalloc_mapped_bytes",
                "Bytes in extents mapped by jemalloc (stats.mapped).",
                stats.mapped_bytes,
            ),
            (
                "stethoscope_jemalloc_retained_bytes",
                "Bytes retained as virtual memory for reuse (stats.retained).",
                stats.retained_bytes,
            ),
            (
                "stethoscope_jemalloc_metadata_bytes",
                "Bytes of jemalloc's own metadata (stats.metadata).",
                stats.metadata_bytes,
            ),
        ] {
            out.family(Desc::gauge(name, Some("bytes"), help))
                .count(&[], value);
        }
        if let Ok(state) = self.0.state() {
            out.family(Desc::gauge(
                "stethoscope_heap_profiling_active",
                None,
                "1 while jemalloc samples allocations for heap profiles (prof.active), else 0.",
            ))
            .count(&[], u64::from(state.active));
            out.family(Desc::gauge(
                "stethoscope_heap_profiling_sample_interval_bytes",
                Some("bytes"),
                "Average bytes allocated between two heap-profile samples.",
            ))
            .count(&[], state.sample_interval_bytes);
        }
        out.family(Desc::gauge(
            "stethoscope_heap_snapshots",
            None,
            "Heap snapshots the agent keeps.",
        ))
        .count(&[], self.0.snapshots().len() as u64);
    }
}

#[cfg(feature = "red")]
impl Collect for crate::red::RedMetrics {
    fn collect(&self, out: &mut MetricWriter) {
        let mut family = out.family(Desc::histogram(
            "http_server_request_duration_seconds",
            Some("seconds"),
            "Duration of HTTP server requests until the response head, by method, route template and status.",
        ));
        self.for_each_series(|method, route, status, counts, sum| {
            family.histogram(
                &[("method", method), ("route", route), ("status", status)],
                crate::red::BUCKET_BOUNDS,
                counts,
                sum,
            );
        });
    }
}

#[cfg(feature = "doctor")]
impl Collect for crate::doctor::Doctor {
    fn collect(&self, out: &mut MetricWriter) {
        let report = self.diagnose();
        let mut family = out.family(Desc::gauge(
            "stethoscope_doctor_status",
            None,
            "The doctor's verdict: 0 healthy, 1 warning, 2 critical (/debug/doctor).",
        ));
        family.value(&[], f64::from(self.status_level()));
        let mut family = out.family(Desc::gauge(
            "stethoscope_doctor_finding",
            None,
            "1 for each open finding of the doctor, by rule, severity and resource.",
        ));
        for finding in &report.findings {
            family.value(
                &[
                    ("rule", finding.rule.id()),
                    ("severity", finding.severity.as_str()),
                    ("resource", finding.resource.as_str()),
                ],
                1.0,
            );
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_doctor_transitions",
            None,
            "Findings the doctor opened and closed since start, by rule.",
        ));
        for (rule, opened, closed) in self.transitions() {
            family.count(&[("rule", rule.id()), ("change", "opened")], opened);
            family.count(&[("rule", rule.id()), ("change", "closed")], closed);
        }
    }
}

#[cfg(feature = "spans")]
impl Collect for crate::spans::SpanTimings {
    fn collect(&self, out: &mut MetricWriter) {
        let series = self.series();
        let mut family = out.family(Desc::histogram(
            "stethoscope_span_duration_seconds",
            Some("seconds"),
            "Time from creation to close of tracing spans, by target and span name.",
        ));
        for s in &series {
            family.histogram(
                &[("target", s.target), ("name", s.name)],
                &crate::spans::SPAN_DURATION_BUCKETS,
                &s.buckets,
                s.sum_seconds,
            );
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_span_busy_seconds",
            Some("seconds"),
            "Time tracing spans were entered (polled, for async code), by target and span name.",
        ));
        for s in &series {
            family.value(&[("target", s.target), ("name", s.name)], s.busy_seconds);
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_span_errors",
            None,
            "Tracing spans that recorded an error field or had an ERROR event inside them, by target and span name.",
        ));
        for s in &series {
            family.count(&[("target", s.target), ("name", s.name)], s.errors);
        }
    }
}

/// Reads one value of a task monitor's report.
#[cfg(feature = "runtime")]
type TaskValue = fn(&crate::runtime::TaskMonitorReport) -> f64;

#[cfg(feature = "runtime")]
impl Collect for crate::runtime::RuntimeMonitor {
    fn collect(&self, out: &mut MetricWriter) {
        if let Some((counts, sum)) = self.lag_buckets() {
            out.family(Desc::histogram(
                "stethoscope_executor_lag_seconds",
                Some("seconds"),
                "Executor lag: delay of the agent's probe task before its first poll, and the time each worker stayed inside one poll when that exceeded the resolution.",
            ))
            .histogram(&[], &crate::runtime::LAG_BUCKETS, &counts, sum);
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

#[cfg(feature = "resources")]
mod system {
    use super::*;
    use crate::resources::{Readings, ResourceMonitor};

    impl Collect for ResourceMonitor {
        fn collect(&self, out: &mut MetricWriter) {
            // The agent's thread samples every second: a scrape reuses that
            // sample (at most ~1 s old) instead of re-reading /proc.
            let max_age = crate::config::DEFAULT_USE_SAMPLE_INTERVAL
                + crate::config::DEFAULT_USE_SAMPLE_INTERVAL / 2;
            let (base, now) = self.recent(max_age);
            process(out, &now);
            container(out, &now);
            pressure(out, &now);
            network(out, &now);
            executor(out, &now);
            use_table(out, self, base.as_deref(), &now);
        }
    }

    fn process(out: &mut MetricWriter, now: &Readings) {
        let Ok(p) = &now.process else { return };
        out.family(Desc::counter(
            "process_cpu_seconds",
            Some("seconds"),
            "Total user and system CPU time spent in seconds.",
        ))
        .value(&[], p.cpu_seconds);
        out.family(Desc::gauge(
            "process_resident_memory_bytes",
            Some("bytes"),
            "Resident memory size in bytes.",
        ))
        .count(&[], p.resident_bytes);
        out.family(Desc::gauge(
            "process_virtual_memory_bytes",
            Some("bytes"),
            "Virtual memory size in bytes.",
        ))
        .count(&[], p.virtual_bytes);
        if let Ok(open) = now.slow.open_fds {
            out.family(Desc::gauge(
                "process_open_fds",
                None,
                "Number of open file descriptors.",
            ))
            .count(&[], open);
        }
        if let Ok(Some(max)) = now.slow.max_fds {
            out.family(Desc::gauge(
                "process_max_fds",
                None,
                "Maximum number of open file descriptors.",
            ))
            .count(&[], max);
        }
        out.family(Desc::gauge(
            "process_threads",
            None,
            "Number of OS threads in the process.",
        ))
        .count(&[], p.threads);
        if let Ok(start) = p.start_time_seconds {
            out.family(Desc::gauge(
                "process_start_time_seconds",
                Some("seconds"),
                "Start time of the process since unix epoch in seconds.",
            ))
            .value(&[], start);
        }
        if let Ok(delay) = now.slow.run_delay_seconds {
            out.family(Desc::counter(
                "stethoscope_process_run_queue_delay_seconds",
                Some("seconds"),
                "Time the process's threads were runnable but waiting for a CPU (schedstat run delay).",
            ))
            .value(&[], delay);
        }
        if let Ok((read, written)) = now.slow.io_bytes {
            out.family(Desc::counter(
                "stethoscope_process_io_read_bytes",
                Some("bytes"),
                "Bytes the process read from storage (/proc/self/io read_bytes).",
            ))
            .count(&[], read);
            out.family(Desc::counter(
                "stethoscope_process_io_written_bytes",
                Some("bytes"),
                "Bytes the process wrote to storage (/proc/self/io write_bytes).",
            ))
            .count(&[], written);
        }
    }

    fn container(out: &mut MetricWriter, now: &Readings) {
        if let Ok(cg) = &now.cpu_cgroup {
            if let Some(cores) = cg.quota_cores {
                out.family(Desc::gauge(
                    "stethoscope_container_cpu_limit_cores",
                    None,
                    "CPU quota of the process's cgroup in cores (quota / period); absent without a quota.",
                ))
                .value(&[], cores);
            }
            out.family(Desc::counter(
                "stethoscope_container_cpu_periods",
                None,
                "CFS enforcement periods elapsed in the process's cgroup.",
            ))
            .count(&[], cg.periods);
            out.family(Desc::counter(
                "stethoscope_container_cpu_throttled_periods",
                None,
                "CFS periods in which the process's cgroup was throttled.",
            ))
            .count(&[], cg.throttled_periods);
            out.family(Desc::counter(
                "stethoscope_container_cpu_throttled_seconds",
                Some("seconds"),
                "Time the process's cgroup was throttled.",
            ))
            .value(&[], cg.throttled_seconds);
        }
        if let Ok(cg) = &now.slow.memory_cgroup {
            if let Some(limit) = cg.limit_bytes {
                out.family(Desc::gauge(
                    "stethoscope_container_memory_limit_bytes",
                    Some("bytes"),
                    "Memory limit of the process's cgroup (tightest on its path); absent if unlimited.",
                ))
                .count(&[], limit);
            }
            out.family(Desc::gauge(
                "stethoscope_container_memory_usage_bytes",
                Some("bytes"),
                "Memory charged to the process's cgroup, page cache included.",
            ))
            .count(&[], cg.usage_bytes);
            out.family(Desc::gauge(
                "stethoscope_container_memory_working_set_bytes",
                Some("bytes"),
                "Cgroup memory usage minus inactive file cache (what kubelet compares to the limit).",
            ))
            .count(&[], cg.working_set_bytes);
            if let Some(kills) = cg.oom_kills {
                out.family(Desc::counter(
                    "stethoscope_container_memory_oom_kills",
                    None,
                    "Processes the OOM killer killed in the process's cgroup.",
                ))
                .count(&[], kills);
            }
            if let Some(hits) = cg.limit_hits {
                out.family(Desc::counter(
                    "stethoscope_container_memory_limit_hits",
                    None,
                    "Times the cgroup's memory usage hit its limit (v2 memory.events max, v1 failcnt).",
                ))
                .count(&[], hits);
            }
        }
        if let Ok(cg) = &now.slow.pids_cgroup {
            out.family(Desc::gauge(
                "stethoscope_container_tasks",
                None,
                "Tasks (threads of every process) in the process's pids cgroup.",
            ))
            .count(&[], cg.current);
            if let Some(limit) = cg.limit {
                out.family(Desc::gauge(
                    "stethoscope_container_tasks_limit",
                    None,
                    "pids.max of the process's cgroup; absent if unlimited.",
                ))
                .count(&[], limit);
            }
        }
    }

    fn pressure(out: &mut MetricWriter, now: &Readings) {
        let all = [
            (
                &now.slow.psi_cpu,
                "stethoscope_pressure_cpu_waiting_seconds",
                "stethoscope_pressure_cpu_stalled_seconds",
                "Time at least one task waited for a CPU (PSI cpu some total; the cgroup's own on cgroup v2).",
                "Time all non-idle tasks waited for a CPU (PSI cpu full total).",
            ),
            (
                &now.slow.psi_memory,
                "stethoscope_pressure_memory_waiting_seconds",
                "stethoscope_pressure_memory_stalled_seconds",
                "Time at least one task stalled on memory (PSI memory some total).",
                "Time all non-idle tasks stalled on memory (PSI memory full total).",
            ),
            (
                &now.slow.psi_io,
                "stethoscope_pressure_io_waiting_seconds",
                "stethoscope_pressure_io_stalled_seconds",
                "Time at least one task stalled on I/O (PSI io some total).",
                "Time all non-idle tasks stalled on I/O (PSI io full total).",
            ),
        ];
        for (reading, some_name, full_name, some_help, full_help) in all {
            let Ok(p) = reading else { continue };
            out.family(Desc::counter(some_name, Some("seconds"), some_help))
                .value(&[], p.some_total_seconds);
            if let Some(full) = p.full_total_seconds {
                out.family(Desc::counter(full_name, Some("seconds"), full_help))
                    .value(&[], full);
            }
        }
    }

    fn network(out: &mut MetricWriter, now: &Readings) {
        let Ok(n) = &now.slow.net else { return };
        out.family(Desc::counter(
            "stethoscope_network_tcp_retransmitted_segments",
            None,
            "TCP segments retransmitted in the process's network namespace (/proc/net/snmp RetransSegs).",
        ))
        .count(&[], n.tcp_retrans_segs);
        out.family(Desc::counter(
            "stethoscope_network_tcp_sent_segments",
            None,
            "TCP segments sent in the process's network namespace (/proc/net/snmp OutSegs).",
        ))
        .count(&[], n.tcp_out_segs);
        if let Some(v) = n.listen_overflows {
            out.family(Desc::counter(
                "stethoscope_network_listen_overflows",
                None,
                "Connections dropped because a listen queue was full (TcpExt ListenOverflows).",
            ))
            .count(&[], v);
        }
        if let Some(v) = n.listen_drops {
            out.family(Desc::counter(
                "stethoscope_network_listen_drops",
                None,
                "Connection requests dropped by listening sockets (TcpExt ListenDrops).",
            ))
            .count(&[], v);
        }
        out.family(Desc::counter(
            "stethoscope_network_interface_errors",
            None,
            "Receive and transmit errors of non-loopback interfaces (/proc/net/dev).",
        ))
        .count(&[], n.interface_errors);
        out.family(Desc::counter(
            "stethoscope_network_interface_drops",
            None,
            "Receive and transmit drops of non-loopback interfaces (/proc/net/dev).",
        ))
        .count(&[], n.interface_drops);
    }

    fn executor(out: &mut MetricWriter, now: &Readings) {
        let Ok(e) = &now.executor else { return };
        out.family(Desc::gauge(
            "stethoscope_tokio_workers",
            None,
            "Worker threads of the host's tokio runtime.",
        ))
        .count(&[], e.workers as u64);
        out.family(Desc::gauge(
            "stethoscope_tokio_alive_tasks",
            None,
            "Tasks alive in the host's tokio runtime.",
        ))
        .count(&[], e.alive_tasks as u64);
        out.family(Desc::gauge(
            "stethoscope_tokio_global_queue_depth",
            None,
            "Tasks waiting in the host runtime's global (injection) queue.",
        ))
        .count(&[], e.global_queue_depth as u64);
        let mut busy = out.family(Desc::counter(
            "stethoscope_tokio_worker_busy_seconds",
            Some("seconds"),
            "Time each worker of the host's tokio runtime spent busy.",
        ));
        let mut label = String::new();
        for (worker, time) in e.busy.iter().enumerate() {
            label.clear();
            label.push_str(&worker.to_string());
            busy.value(&[("worker", &label)], time.as_secs_f64());
        }
        let mut parks = out.family(Desc::counter(
            "stethoscope_tokio_worker_parks",
            None,
            "Times each worker of the host's tokio runtime parked (ran out of work).",
        ));
        for (worker, count) in e.parks.iter().enumerate() {
            parks.count(&[("worker", &worker.to_string())], *count);
        }
    }

    fn use_table(
        out: &mut MetricWriter,
        monitor: &ResourceMonitor,
        base: Option<&Readings>,
        now: &Readings,
    ) {
        let report = monitor.table(base, now);
        let rows = &report.resources;
        let mut family = out.family(Desc::gauge(
            "stethoscope_use_utilization_ratio",
            Some("ratio"),
            "USE utilization per resource (used / limit), as in /debug/use.",
        ));
        for r in rows {
            if let Some(v) = r.utilization {
                family.value(&[("resource", &r.name)], v);
            }
        }
        let mut family = out.family(Desc::gauge(
            "stethoscope_use_saturation",
            None,
            "USE saturation per resource, as in /debug/use (a 0..1 share of time, or a queue length for executor and user resources).",
        ));
        for r in rows {
            if let Some(v) = r.saturation {
                family.value(&[("resource", &r.name)], v);
            }
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_use_errors",
            None,
            "USE error events per resource, as in /debug/use.",
        ));
        for r in rows {
            if let Some(v) = r.errors {
                family.count(&[("resource", &r.name)], v);
            }
        }
        let mut family = out.family(Desc::gauge(
            "stethoscope_use_used",
            None,
            "USE amount in use per resource, in the row's unit (label unit).",
        ));
        for r in rows {
            if let Some(v) = r.used {
                family.value(&[("resource", &r.name), ("unit", &r.unit)], v);
            }
        }
        let mut family = out.family(Desc::gauge(
            "stethoscope_use_limit",
            None,
            "USE capacity per resource, in the row's unit (label unit).",
        ));
        for r in rows {
            if let Some(v) = r.limit {
                family.value(&[("resource", &r.name), ("unit", &r.unit)], v);
            }
        }
    }
}

#[cfg(all(test, feature = "spans"))]
mod tests {
    use super::*;
    use crate::metrics::ExpositionFormat;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn span_families_are_written_per_target_and_name() {
        let _serial = crate::spans::tracing_test_lock();
        let timings = crate::spans::SpanTimings::new();
        let subscriber = tracing_subscriber::registry().with(timings.layer());
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::info_span!("db_query").entered());
            drop(tracing::info_span!("db_query", error = "timeout").entered());
        });
        for format in [ExpositionFormat::Prometheus, ExpositionFormat::OpenMetrics] {
            let mut out = MetricWriter::new(format);
            timings.collect(&mut out);
            let text = out.finish();
            let labels = format!("target=\"{}\",name=\"db_query\"", module_path!());
            assert!(
                text.contains(&format!(
                    "stethoscope_span_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2\n"
                )),
                "{text}"
            );
            assert!(text.contains(&format!(
                "stethoscope_span_duration_seconds_count{{{labels}}} 2\n"
            )));
            assert!(text.contains(&format!("stethoscope_span_busy_seconds_total{{{labels}}} ")));
            assert!(text.contains(&format!("stethoscope_span_errors_total{{{labels}}} 1\n")));
        }
    }
}
