//! USE rows from two samples: utilization and rates over the window
//! between them, current values and cumulative error counts from the
//! newer one. Pure functions of the readings, so tests feed them directly.

use std::collections::BTreeMap;

use super::readings::Readings;
use super::ResourceUsage;

/// The window between two samples, seconds; `None` if there is no usable
/// older sample.
fn window(base: Option<&Readings>, now: &Readings) -> Option<f64> {
    let base = base?;
    let secs = now.at.saturating_duration_since(base.at).as_secs_f64();
    (secs > 0.0).then_some(secs)
}

const NO_WINDOW: &str = "needs two samples at least 200 ms apart; retry in a moment";

fn delta(base: f64, now: f64) -> f64 {
    (now - base).max(0.0)
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// Collects `what: where` notes for the `source` field.
#[derive(Default)]
struct Sources(Vec<String>);

impl Sources {
    fn add(&mut self, what: &str, text: impl AsRef<str>) {
        self.0.push(format!("{what}: {}", text.as_ref()));
    }

    fn finish(self) -> String {
        self.0.join("; ")
    }
}

fn row(name: &str, unit: &str) -> ResourceUsage {
    ResourceUsage {
        name: name.to_owned(),
        utilization: None,
        saturation: None,
        errors: None,
        limit: None,
        used: None,
        unit: unit.to_owned(),
        source: String::new(),
        details: BTreeMap::new(),
    }
}

pub(crate) fn cpu(base: Option<&Readings>, now: &Readings) -> ResourceUsage {
    let mut r = row("cpu", "cores");
    let mut src = Sources::default();
    let secs = window(base, now);
    match (&now.cpu_cgroup, &now.slow.cpus_allowed) {
        (Ok(cg), allowed) if cg.quota_cores.is_some() => {
            let quota = cg.quota_cores.unwrap_or_default();
            let limit = allowed.as_ref().map_or(quota, |a| quota.min(*a));
            r.limit = Some(limit);
            src.add(
                "limit",
                format!("CFS quota of {} ({quota} cores)", cg.source),
            );
        }
        (cg, Ok(allowed)) => {
            r.limit = Some(*allowed);
            let why = match cg {
                Ok(cg) => format!("no CFS quota in {}", cg.source),
                Err(reason) => reason.clone(),
            };
            src.add(
                "limit",
                format!("CPUs allowed by affinity, /proc/self/status ({why})"),
            );
        }
        (_, Err(reason)) => src.add("limit", reason),
    }
    match (&now.process, base.map(|b| &b.process), secs) {
        (Ok(p), Some(Ok(b)), Some(secs)) => {
            let used = delta(b.cpu_seconds, p.cpu_seconds) / secs;
            r.used = Some(used);
            r.utilization = r.limit.and_then(|l| ratio(used, l));
            let clock = if p.emulated_stat {
                "the process's CPU clock (/proc/self/stat is an emulator's)"
            } else {
                "/proc/self/stat utime+stime"
            };
            src.add("used", format!("{clock} over {secs:.2} s"));
        }
        (Err(reason), _, _) => src.add("used", reason),
        _ => src.add("used", NO_WINDOW),
    }
    if let Some((before, slow, secs)) = now.slow_window() {
        if let (Ok(now_delay), Ok(base_delay)) =
            (&slow.run_delay_seconds, &before.run_delay_seconds)
        {
            r.details.insert(
                "run_queue_delay_ratio".into(),
                delta(*base_delay, *now_delay) / secs,
            );
        }
    }
    if let Ok(p) = &now.process {
        r.details.insert("cpu_seconds_total".into(), p.cpu_seconds);
    }
    if let Ok(delay) = now.slow.run_delay_seconds {
        r.details
            .insert("run_queue_delay_seconds_total".into(), delay);
    }
    if let Ok(psi) = &now.slow.psi_cpu {
        r.details
            .insert("psi_some_avg10_ratio".into(), psi.some_avg10 / 100.0);
    }
    // Saturation: throttling when a quota applies (the container's own
    // limit), else time waiting for a CPU from PSI.
    let throttling = match (&now.cpu_cgroup, base.map(|b| &b.cpu_cgroup)) {
        (Ok(cg), Some(Ok(b))) if cg.quota_cores.is_some() => {
            let periods = cg.periods.saturating_sub(b.periods) as f64;
            let throttled = cg.throttled_periods.saturating_sub(b.throttled_periods) as f64;
            Some((ratio(throttled, periods).unwrap_or(0.0), cg.source.clone()))
        }
        _ => None,
    };
    if let Ok(cg) = &now.cpu_cgroup {
        r.details.insert(
            "throttled_periods_total".into(),
            cg.throttled_periods as f64,
        );
        r.details
            .insert("throttled_seconds_total".into(), cg.throttled_seconds);
        r.details.insert("periods_total".into(), cg.periods as f64);
    }
    match (throttling, &now.slow.psi_cpu) {
        (Some((share, source)), _) => {
            r.saturation = Some(share);
            src.add(
                "saturation",
                format!("share of CFS periods throttled, {source} cpu.stat"),
            );
        }
        (None, Ok(psi)) => {
            r.saturation = Some(psi.some_avg10 / 100.0);
            src.add("saturation", format!("{} some avg10", psi.source));
        }
        (None, Err(reason)) => src.add("saturation", reason),
    }
    src.add("errors", "CPUs report no errors to processes");
    r.source = src.finish();
    r
}

pub(crate) fn memory(now: &Readings) -> ResourceUsage {
    let mut r = row("memory", "bytes");
    let mut src = Sources::default();
    let cgroup_limit = now
        .slow
        .memory_cgroup
        .as_ref()
        .ok()
        .and_then(|cg| cg.limit_bytes.map(|limit| (cg, limit)));
    if let Some((cg, limit)) = cgroup_limit {
        r.used = Some(cg.working_set_bytes as f64);
        r.limit = Some(limit as f64);
        src.add(
            "used",
            format!("working set (usage - inactive file) of {}", cg.source),
        );
        src.add("limit", format!("memory limit of {}", cg.source));
    } else {
        match &now.process {
            Ok(p) => {
                r.used = Some(p.resident_bytes as f64);
                src.add(
                    "used",
                    if p.emulated_stat {
                        "resident set size, /proc/self/status VmRSS"
                    } else {
                        "resident set size, /proc/self/stat"
                    },
                );
            }
            Err(reason) => src.add("used", reason),
        }
        match &now.host_memory_bytes {
            Ok(total) => {
                r.limit = Some(*total as f64);
                let why = match &now.slow.memory_cgroup {
                    Ok(cg) => format!("no limit in {}", cg.source),
                    Err(reason) => reason.clone(),
                };
                src.add("limit", format!("host MemTotal, /proc/meminfo ({why})"));
            }
            Err(reason) => src.add("limit", reason),
        }
    }
    if let (Some(used), Some(limit)) = (r.used, r.limit) {
        r.utilization = ratio(used, limit);
    }
    if let Ok(p) = &now.process {
        r.details
            .insert("resident_bytes".into(), p.resident_bytes as f64);
        r.details
            .insert("virtual_bytes".into(), p.virtual_bytes as f64);
    }
    match &now.slow.psi_memory {
        Ok(psi) => {
            r.saturation = Some(psi.some_avg10 / 100.0);
            src.add("saturation", format!("{} some avg10", psi.source));
        }
        Err(reason) => src.add("saturation", reason),
    }
    match &now.slow.memory_cgroup {
        Ok(cg) => {
            r.details
                .insert("cgroup_usage_bytes".into(), cg.usage_bytes as f64);
            r.details.insert(
                "cgroup_working_set_bytes".into(),
                cg.working_set_bytes as f64,
            );
            if let Some(hits) = cg.limit_hits {
                r.details.insert("limit_hits_total".into(), hits as f64);
            }
            if let Some(high) = cg.high_events {
                r.details.insert("high_events_total".into(), high as f64);
            }
            match cg.oom_kills {
                Some(kills) => {
                    r.errors = Some(kills);
                    src.add("errors", format!("OOM kills in {}", cg.source));
                }
                None => src.add("errors", format!("no OOM kill counter in {}", cg.source)),
            }
        }
        Err(reason) => src.add("errors", reason),
    }
    r.source = src.finish();
    r
}

pub(crate) fn file_descriptors(now: &Readings) -> ResourceUsage {
    let mut r = row("file_descriptors", "fds");
    let mut src = Sources::default();
    match &now.slow.open_fds {
        Ok(open) => {
            r.used = Some(*open as f64);
            src.add("used", "/proc/self/fd");
        }
        Err(reason) => src.add("used", reason),
    }
    match &now.slow.max_fds {
        Ok(Some(max)) => {
            r.limit = Some(*max as f64);
            src.add("limit", "soft RLIMIT_NOFILE, /proc/self/limits");
        }
        Ok(None) => src.add("limit", "RLIMIT_NOFILE is unlimited"),
        Err(reason) => src.add("limit", reason),
    }
    if let (Some(used), Some(limit)) = (r.used, r.limit) {
        r.utilization = ratio(used, limit);
    }
    src.add(
        "saturation",
        "none: there is no queue, open() fails with EMFILE at the limit",
    );
    src.add(
        "errors",
        "EMFILE failures are returned to callers, not counted",
    );
    r.source = src.finish();
    r
}

pub(crate) fn threads(now: &Readings) -> ResourceUsage {
    let mut r = row("threads", "threads");
    let mut src = Sources::default();
    if let Ok(p) = &now.process {
        r.details.insert("process_threads".into(), p.threads as f64);
    }
    let pids_limit = now
        .slow
        .pids_cgroup
        .as_ref()
        .ok()
        .and_then(|cg| cg.limit.map(|limit| (cg, limit)));
    if let Some((cg, limit)) = pids_limit {
        r.used = Some(cg.current as f64);
        r.limit = Some(limit as f64);
        src.add("used", format!("tasks in {}", cg.source));
        src.add("limit", format!("pids.max of {}", cg.source));
    } else {
        match &now.process {
            Ok(p) => {
                r.used = Some(p.threads as f64);
                src.add(
                    "used",
                    if p.emulated_stat {
                        "/proc/self/status Threads"
                    } else {
                        "/proc/self/stat num_threads"
                    },
                );
            }
            Err(reason) => src.add("used", reason),
        }
        match &now.threads_max {
            Ok(max) => {
                r.limit = Some(*max as f64);
                src.add(
                    "limit",
                    "/proc/sys/kernel/threads-max (no pids cgroup limit)",
                );
            }
            Err(reason) => src.add("limit", reason),
        }
    }
    if let (Some(used), Some(limit)) = (r.used, r.limit) {
        r.utilization = ratio(used, limit);
    }
    src.add("saturation", "none: thread creation fails at the limit");
    match &now.slow.pids_cgroup {
        Ok(cg) => match cg.refused {
            Some(refused) => {
                r.errors = Some(refused);
                src.add(
                    "errors",
                    format!("forks refused by pids.max, {}", cg.source),
                );
            }
            None => src.add("errors", format!("no pids.events in {}", cg.source)),
        },
        Err(reason) => src.add("errors", reason),
    }
    r.source = src.finish();
    r
}

pub(crate) fn network(now: &Readings) -> ResourceUsage {
    let mut r = row("network", "bytes/s");
    let mut src = Sources::default();
    let window = now.slow_window();
    let secs = window.map(|(_, _, secs)| secs);
    match (
        &now.slow.net,
        window.map(|(before, _, _)| &before.net),
        secs,
    ) {
        (Ok(n), Some(Ok(b)), Some(secs)) => {
            let bytes = delta(b.rx_bytes as f64, n.rx_bytes as f64)
                + delta(b.tx_bytes as f64, n.tx_bytes as f64);
            r.used = Some(bytes / secs);
            src.add("used", "bytes/s received + sent by non-loopback interfaces of the network namespace, /proc/net/dev");
            let out = n.tcp_out_segs.saturating_sub(b.tcp_out_segs) as f64;
            let retrans = n.tcp_retrans_segs.saturating_sub(b.tcp_retrans_segs) as f64;
            r.saturation = Some(ratio(retrans, out).unwrap_or(0.0));
            src.add(
                "saturation",
                "share of TCP segments retransmitted, /proc/net/snmp",
            );
        }
        (Err(reason), _, _) => {
            src.add("used", reason);
            src.add("saturation", reason);
        }
        _ => {
            src.add("used", NO_WINDOW);
            src.add("saturation", NO_WINDOW);
        }
    }
    src.add(
        "utilization",
        "link capacity is not visible from inside the process",
    );
    if let Ok(n) = &now.slow.net {
        let listen_drops = n.listen_drops.unwrap_or(0);
        r.errors = Some(n.interface_errors + n.interface_drops + listen_drops);
        src.add(
            "errors",
            "interface errors + drops (/proc/net/dev) + TCP listen drops (/proc/net/netstat), since boot of the namespace",
        );
        r.details.insert(
            "tcp_retransmitted_segments_total".into(),
            n.tcp_retrans_segs as f64,
        );
        r.details
            .insert("tcp_out_segments_total".into(), n.tcp_out_segs as f64);
        if let Some(v) = n.listen_overflows {
            r.details.insert("listen_overflows_total".into(), v as f64);
        }
        if let Some(v) = n.listen_drops {
            r.details.insert("listen_drops_total".into(), v as f64);
        }
        r.details
            .insert("interface_errors_total".into(), n.interface_errors as f64);
        r.details
            .insert("interface_drops_total".into(), n.interface_drops as f64);
    }
    r.source = src.finish();
    r
}

pub(crate) fn disk(now: &Readings) -> ResourceUsage {
    let mut r = row("disk", "bytes/s");
    let mut src = Sources::default();
    let window = now.slow_window();
    let secs = window.map(|(_, _, secs)| secs);
    match (&now.slow, window.map(|(before, _, _)| before), secs) {
        (p, Some(b), Some(secs)) => match (&p.io_bytes, &b.io_bytes) {
            (Ok((read, written)), Ok((base_read, base_written))) => {
                let bytes = delta(*base_read as f64, *read as f64)
                    + delta(*base_written as f64, *written as f64);
                r.used = Some(bytes / secs);
                src.add(
                    "used",
                    "bytes/s this process read + wrote to storage, /proc/self/io",
                );
            }
            (Err(reason), _) | (_, Err(reason)) => src.add("used", reason),
        },
        _ => src.add("used", NO_WINDOW),
    }
    match (
        &now.slow.disk,
        window.map(|(before, _, _)| &before.disk),
        secs,
    ) {
        (Ok(d), Some(Ok(b)), Some(secs)) => {
            let busiest = d
                .busy_ms
                .iter()
                .filter_map(|(name, ms)| {
                    let before = b.busy_ms.iter().find(|(n, _)| n == name)?.1;
                    Some((name, ms.saturating_sub(before) as f64 / 1e3 / secs))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match busiest {
                Some((name, busy)) => {
                    r.utilization = Some(busy.min(1.0));
                    src.add(
                        "utilization",
                        format!(
                            "busy time of the busiest disk ({name}, host-wide), /proc/diskstats"
                        ),
                    );
                }
                None => src.add("utilization", "no block devices in /proc/diskstats"),
            }
        }
        (Err(reason), _, _) => src.add("utilization", reason),
        _ => src.add("utilization", NO_WINDOW),
    }
    match &now.slow.psi_io {
        Ok(psi) => {
            r.saturation = Some(psi.some_avg10 / 100.0);
            src.add("saturation", format!("{} some avg10", psi.source));
        }
        Err(reason) => src.add("saturation", reason),
    }
    src.add("errors", "the kernel does not count I/O errors per process");
    r.source = src.finish();
    r
}

pub(crate) fn executor(base: Option<&Readings>, now: &Readings) -> ResourceUsage {
    let mut r = row("executor", "workers");
    let mut src = Sources::default();
    match &now.executor {
        Ok(e) => {
            r.limit = Some(e.workers as f64);
            src.add(
                "limit",
                "tokio worker threads (RuntimeMetrics::num_workers)",
            );
            r.details.insert("alive_tasks".into(), e.alive_tasks as f64);
            r.details
                .insert("global_queue_depth".into(), e.global_queue_depth as f64);
            r.details
                .insert("parks_total".into(), e.parks.iter().sum::<u64>() as f64);
            let secs = window(base, now);
            match (base.map(|b| &b.executor), secs) {
                (Some(Ok(b)), Some(secs)) if b.busy.len() == e.busy.len() => {
                    let busy: f64 = e
                        .busy
                        .iter()
                        .zip(&b.busy)
                        .map(|(n, b)| n.saturating_sub(*b).as_secs_f64())
                        .sum();
                    r.used = Some(busy / secs);
                    r.utilization = ratio(busy / secs, e.workers as f64);
                    src.add(
                        "used",
                        "workers busy on average (worker_total_busy_duration)",
                    );
                }
                _ => src.add("used", NO_WINDOW),
            }
            r.saturation = Some(e.global_queue_depth as f64);
            src.add(
                "saturation",
                "tasks waiting in the runtime's global queue (RuntimeMetrics::global_queue_depth)",
            );
        }
        Err(reason) => {
            src.add("used", reason);
            src.add("saturation", reason);
        }
    }
    src.add("errors", "an executor has no error counter");
    r.source = src.finish();
    r
}

/// The allocator as a resource: how much of the memory jemalloc keeps
/// resident holds live allocations. Allocations do not queue and failures
/// abort the process, so saturation and errors have no source here (OOM
/// kills are the `memory` row's errors).
pub(crate) fn heap(stats: Result<crate::heap::HeapStats, crate::Error>) -> ResourceUsage {
    let mut r = row("heap", "bytes");
    let mut src = Sources::default();
    match stats {
        Ok(stats) => {
            let allocated = stats.allocated_bytes as f64;
            let resident = stats.resident_bytes as f64;
            r.used = Some(allocated);
            r.limit = Some(resident);
            r.utilization = ratio(allocated, resident);
            src.add("used", "jemalloc stats.allocated");
            src.add(
                "limit",
                "jemalloc stats.resident (the allocator's resident pages)",
            );
            for (key, value) in [
                ("allocated_bytes", stats.allocated_bytes),
                ("active_bytes", stats.active_bytes),
                ("resident_bytes", stats.resident_bytes),
                ("mapped_bytes", stats.mapped_bytes),
                ("retained_bytes", stats.retained_bytes),
                ("metadata_bytes", stats.metadata_bytes),
            ] {
                r.details.insert(key.to_owned(), value as f64);
            }
            r.details
                .insert("fragmentation_ratio".to_owned(), stats.fragmentation());
        }
        Err(error) => {
            let reason = error.to_string();
            src.add("used", &reason);
            src.add("utilization", &reason);
        }
    }
    src.add("saturation", "allocations do not queue");
    src.add(
        "errors",
        "allocation failures abort the process; see the memory row's OOM kills",
    );
    r.source = src.finish();
    r
}

pub(crate) fn unavailable(name: &str, reason: &str) -> ResourceUsage {
    let mut r = row(name, "");
    r.source = reason.to_owned();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::readings::*;
    use std::time::{Duration, Instant};

    fn process(cpu: f64, rss: u64) -> ProcessReadings {
        ProcessReadings {
            cpu_seconds: cpu,
            resident_bytes: rss,
            virtual_bytes: rss * 4,
            threads: 10,
            start_time_seconds: Ok(1.0),
            emulated_stat: false,
        }
    }

    fn readings(at: Instant, cpu: f64, periods: u64, throttled: u64) -> Readings {
        let mut r = Readings::unavailable("not in this test");
        r.at = at;
        r.process = Ok(process(cpu, 100 << 20));
        let mut slow = SlowReadings::unavailable("not in this test");
        slow.at = at;
        slow.cpus_allowed = Ok(4.0);
        slow.max_fds = Ok(Some(200));
        slow.open_fds = Ok(50);
        slow.run_delay_seconds = Ok(cpu / 10.0);
        slow.io_bytes = Ok((0, 0));
        r.cpu_cgroup = Ok(CpuCgroup {
            quota_cores: Some(2.0),
            periods,
            throttled_periods: throttled,
            throttled_seconds: 0.0,
            source: "cgroup v2 /sys/fs/cgroup".into(),
        });
        slow.memory_cgroup = Ok(MemoryCgroup {
            usage_bytes: 300 << 20,
            working_set_bytes: 256 << 20,
            limit_bytes: Some(1 << 30),
            oom_kills: Some(3),
            limit_hits: Some(1),
            high_events: None,
            source: "cgroup v2 /sys/fs/cgroup".into(),
        });
        r.slow = std::sync::Arc::new(slow);
        r
    }

    #[test]
    fn cpu_uses_the_quota_and_throttling_over_the_window() {
        let t0 = Instant::now();
        let base = readings(t0, 10.0, 100, 10);
        let now = readings(t0 + Duration::from_secs(2), 13.0, 120, 15);
        let row = cpu(Some(&base), &now);
        assert_eq!(row.limit, Some(2.0));
        assert!((row.used.unwrap() - 1.5).abs() < 1e-9);
        assert!((row.utilization.unwrap() - 0.75).abs() < 1e-9);
        assert!((row.saturation.unwrap() - 0.25).abs() < 1e-9);
        assert!(row.errors.is_none() && row.source.contains("errors:"));
        let first = cpu(None, &now);
        assert!(first.utilization.is_none());
        assert!(first.source.contains("200 ms"));
    }

    #[test]
    fn memory_against_the_cgroup_limit_with_oom_kills() {
        let now = readings(Instant::now(), 0.0, 0, 0);
        let row = memory(&now);
        assert_eq!(row.used, Some((256u64 << 20) as f64));
        assert_eq!(row.utilization, Some(0.25));
        assert_eq!(row.errors, Some(3));
        assert!(row.saturation.is_none(), "PSI unavailable here");
        assert!(row.source.contains("not in this test"));
    }

    #[test]
    fn unreadable_sources_are_null_with_a_reason() {
        let now = Readings::unavailable("no /proc here");
        for row in [
            cpu(None, &now),
            memory(&now),
            file_descriptors(&now),
            threads(&now),
            network(&now),
            disk(&now),
            executor(None, &now),
        ] {
            assert!(row.utilization.is_none() && row.used.is_none(), "{row:?}");
            assert!(row.source.contains("no /proc here"), "{row:?}");
        }
        let fds = file_descriptors(&readings(Instant::now(), 0.0, 0, 0));
        assert_eq!(fds.utilization, Some(0.25));
    }
}
