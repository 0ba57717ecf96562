//! Process, container, pressure, network, executor and USE-table families
//! for `/metrics`; process metrics use the Go client's `process_*` names.

use super::{Readings, ResourceMonitor};
use crate::metrics::{Collect, Desc, MetricWriter};


impl Collect for ResourceMonitor {
    fn collect(&self, out: &mut MetricWriter) {
        // The agent's thread samples every second: a scrape reuses that
        // sample (at most ~1 s old) instead of re-reading /proc.
        let max_age = crate::resources::DEFAULT_USE_SAMPLE_INTERVAL
            + crate::resources::DEFAULT_USE_SAMPLE_INTERVAL / 2;
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
