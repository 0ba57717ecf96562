//! Linux readers: `/proc` through the `procfs` crate, cgroups and the
//! cgroup's pressure files by hand, `/proc/net/netstat` by hand (procfs
//! does not parse it).

use std::path::Path;
use std::time::Instant;

use procfs::process::{LimitValue, Process};
use procfs::{Current, FromRead};

use super::cgroup::{self, Cgroups};
use super::readings::{DiskReadings, NetReadings, Pressure, ProcessReadings, Reading, Readings};

/// Threads whose `schedstat` is summed at most; beyond it the run delay is
/// reported unavailable rather than making every scrape slow.
const MAX_TASKS_READ: usize = 1024;

/// Reads one sample. `cgroups` was discovered once at start.
pub(crate) fn read(cgroups: &Reading<Cgroups>) -> Readings {
    let at = Instant::now();
    let myself = Process::myself().map_err(|e| format!("cannot open /proc/self: {e}"));
    let process = myself.as_ref().map_err(Clone::clone).and_then(read_process);
    let cpus_allowed = myself
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| {
            p.status()
                .map_err(|e| format!("cannot read /proc/self/status: {e}"))
        })
        .and_then(|status| {
            status
                .cpus_allowed_list
                .map(|ranges| {
                    ranges
                        .iter()
                        .map(|(lo, hi)| f64::from(hi.saturating_sub(*lo) + 1))
                        .sum()
                })
                .ok_or_else(|| "Cpus_allowed_list missing from /proc/self/status".to_owned())
        });
    let (cpu_cgroup, memory_cgroup, pids_cgroup) = match cgroups {
        Ok(c) => (
            c.cpu
                .as_ref()
                .ok_or_else(|| "no cpu cgroup controller is mounted".to_owned())
                .and_then(cgroup::read_cpu),
            c.memory
                .as_ref()
                .ok_or_else(|| "no memory cgroup controller is mounted".to_owned())
                .and_then(cgroup::read_memory),
            c.pids
                .as_ref()
                .ok_or_else(|| "no pids cgroup controller is mounted".to_owned())
                .and_then(cgroup::read_pids),
        ),
        Err(reason) => (
            Err(reason.clone()),
            Err(reason.clone()),
            Err(reason.clone()),
        ),
    };
    let unified = cgroups.as_ref().ok().and_then(|c| c.unified.as_ref());
    let pressure = |name: &str| {
        read_pressure(
            unified.map(|u| (u.dir.as_path(), u.dir == u.mount_point)),
            name,
        )
    };
    Readings {
        at,
        process,
        cpu_cgroup,
        memory_cgroup,
        pids_cgroup,
        psi_cpu: pressure("cpu"),
        psi_memory: pressure("memory"),
        psi_io: pressure("io"),
        cpus_allowed,
        host_memory_bytes: procfs::Meminfo::current()
            .map(|m| m.mem_total)
            .map_err(|e| format!("cannot read /proc/meminfo: {e}")),
        threads_max: procfs::sys::kernel::threads_max()
            .map(u64::from)
            .map_err(|e| format!("cannot read /proc/sys/kernel/threads-max: {e}")),
        net: read_net(),
        disk: read_disk(),
        executor: Err(String::new()),
    }
}

fn read_process(process: &Process) -> Reading<ProcessReadings> {
    let stat = process
        .stat()
        .map_err(|e| format!("cannot read /proc/self/stat: {e}"))?;
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let start_time_seconds = procfs::boot_time_secs()
        .map(|boot| boot as f64 + stat.starttime as f64 / ticks)
        .map_err(|e| format!("cannot read the boot time from /proc/stat: {e}"));
    let open_fds = process
        .fd_count()
        .map(|n| n as u64)
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"));
    let max_fds = process
        .limits()
        .map(|l| match l.max_open_files.soft_limit {
            LimitValue::Unlimited => None,
            LimitValue::Value(v) => Some(v),
        })
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"));
    let io_bytes = process
        .io()
        .map(|io| (io.read_bytes, io.write_bytes))
        .map_err(|e| format!("cannot read /proc/self/io: {e}"));
    Ok(ProcessReadings {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
        virtual_bytes: stat.vsize,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        start_time_seconds,
        open_fds,
        max_fds,
        run_delay_seconds: read_run_delay(),
        io_bytes,
    })
}

/// Sum of run-queue delay over this process's threads. `/proc/self/schedstat`
/// covers only the main thread, so every task is read.
fn read_run_delay() -> Reading<f64> {
    let dir = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("cannot list /proc/self/task: {e}"))?;
    let mut total_ns: u64 = 0;
    for (count, entry) in dir.flatten().enumerate() {
        if count >= MAX_TASKS_READ {
            return Err(format!(
                "more than {MAX_TASKS_READ} threads: run-queue delay not summed"
            ));
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        if let Some(delay) = text
            .split_whitespace()
            .nth(1)
            .and_then(|d| d.parse::<u64>().ok())
        {
            total_ns = total_ns.saturating_add(delay);
        }
    }
    Ok(total_ns as f64 / 1e9)
}

/// The cgroup's own pressure file when the unified hierarchy has one,
/// else the host-wide `/proc/pressure/<name>`.
/// `unified` is the cgroup's v2 directory and whether it is the root
/// cgroup (whose pressure is the whole host's).
fn read_pressure(unified: Option<(&Path, bool)>, name: &str) -> Reading<Pressure> {
    if let Some((dir, is_root)) = unified {
        let path = dir.join(format!("{name}.pressure"));
        let scope = if is_root {
            "root cgroup: host-wide"
        } else {
            "the process's cgroup"
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(p) = parse_pressure(&text, format!("PSI {} ({scope})", path.display())) {
                return Ok(p);
            }
        }
    }
    let path = format!("/proc/pressure/{name}");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!("PSI unavailable ({path}: {e}); the kernel needs CONFIG_PSI=y and psi=1")
    })?;
    parse_pressure(&text, format!("PSI {path} (host-wide)"))
        .ok_or_else(|| format!("unexpected content in {path}"))
}

/// Parses a PSI file (`some avg10=… total=…` / `full …`) with procfs.
pub(crate) fn parse_pressure(text: &str, source: String) -> Option<Pressure> {
    let parsed = procfs::CpuPressure::from_read(text.as_bytes()).ok();
    match parsed {
        Some(p) => Some(Pressure {
            some_avg10: f64::from(p.some.avg10),
            some_total_seconds: p.some.total as f64 / 1e6,
            full_total_seconds: Some(p.full.total as f64 / 1e6),
            source,
        }),
        None => {
            // Kernels before 5.13 have no `full` line for CPU.
            let line = text.lines().find(|l| l.starts_with("some "))?;
            let record = procfs::CpuPressure::from_read(
                format!("{line}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").as_bytes(),
            )
            .ok()?;
            Some(Pressure {
                some_avg10: f64::from(record.some.avg10),
                some_total_seconds: record.some.total as f64 / 1e6,
                full_total_seconds: None,
                source,
            })
        }
    }
}

fn read_net() -> Reading<NetReadings> {
    let snmp = procfs::net::snmp().map_err(|e| format!("cannot read /proc/net/snmp: {e}"))?;
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let devices =
        procfs::net::dev_status().map_err(|e| format!("cannot read /proc/net/dev: {e}"))?;
    let mut net = NetReadings {
        tcp_out_segs: snmp.tcp_out_segs,
        tcp_retrans_segs: snmp.tcp_retrans_segs,
        listen_overflows: netstat_value(&netstat, "TcpExt", "ListenOverflows"),
        listen_drops: netstat_value(&netstat, "TcpExt", "ListenDrops"),
        interface_errors: 0,
        interface_drops: 0,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    for (name, dev) in devices.iter() {
        if name == "lo" {
            continue;
        }
        net.interface_errors += dev.recv_errs + dev.sent_errs;
        net.interface_drops += dev.recv_drop + dev.sent_drop;
        net.rx_bytes += dev.recv_bytes;
        net.tx_bytes += dev.sent_bytes;
    }
    Ok(net)
}

/// A value of `/proc/net/netstat`, whose sections are pairs of lines: a
/// header `TcpExt: Name1 Name2 …` and the values `TcpExt: 1 2 …`.
pub(crate) fn netstat_value(text: &str, section: &str, field: &str) -> Option<u64> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let index = names.split_whitespace().position(|n| n == field);
        if let Some(index) = index {
            return values.split_whitespace().nth(index)?.parse().ok();
        }
    }
    None
}

fn read_disk() -> Reading<DiskReadings> {
    let stats = procfs::diskstats().map_err(|e| format!("cannot read /proc/diskstats: {e}"))?;
    // Whole disks only (the entries of /sys/block): partitions would
    // double-count their disk's time.
    let disks: Vec<std::ffi::OsString> = std::fs::read_dir("/sys/block")
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let busy_ms = stats
        .into_iter()
        .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
        .filter(|d| disks.iter().any(|n| n.as_os_str() == d.name.as_str()))
        .map(|d| (d.name, d.time_in_progress))
        .collect();
    Ok(DiskReadings { busy_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs_are_matched_by_name() {
        let text = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 0 0 17 19
IpExt: InNoRoutes ListenOverflows
IpExt: 5 99
";
        assert_eq!(netstat_value(text, "TcpExt", "ListenOverflows"), Some(17));
        assert_eq!(netstat_value(text, "TcpExt", "ListenDrops"), Some(19));
        assert_eq!(netstat_value(text, "IpExt", "ListenOverflows"), Some(99));
        assert_eq!(netstat_value(text, "TcpExt", "Missing"), None);
        assert_eq!(netstat_value("TcpExt: A\n", "TcpExt", "A"), None);
    }

    #[test]
    fn pressure_files_of_old_and_new_kernels_parse() {
        let new = "some avg10=12.50 avg60=8.00 avg300=2.10 total=123456789\nfull avg10=1.00 avg60=0.50 avg300=0.10 total=2345678\n";
        let p = parse_pressure(new, "x".into()).unwrap();
        assert!((p.some_avg10 - 12.5).abs() < 1e-6);
        assert!((p.some_total_seconds - 123.456789).abs() < 1e-6);
        assert_eq!(p.full_total_seconds, Some(2.345678));
        let old = "some avg10=0.50 avg60=0.10 avg300=0.00 total=42\n";
        let p = parse_pressure(old, "x".into()).unwrap();
        assert_eq!(p.full_total_seconds, None);
        assert!(parse_pressure("garbage", "x".into()).is_none());
    }

    #[test]
    fn live_readings_of_this_process() {
        let cgroups = cgroup::discover_live();
        let r = read(&cgroups);
        let process = r.process.unwrap();
        assert!(process.resident_bytes > 1 << 20);
        assert!(process.threads >= 1);
        assert!(process.open_fds.unwrap() >= 3);
        assert!(r.cpus_allowed.unwrap() >= 1.0);
        assert!(r.host_memory_bytes.unwrap() > 1 << 28);
        assert!(r.net.is_ok());
    }
}
