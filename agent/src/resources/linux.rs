//! Linux readers: `/proc` files parsed with the `procfs` crate's parsers
//! (read through kept-open [`ProcFiles`]), cgroups and the cgroup's
//! pressure files by hand, `/proc/net/netstat` by hand (procfs does not
//! parse it). What cannot change while the process runs (boot time, the
//! host's memory, `threads-max`) is read once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use procfs::process::{Io, LimitValue, Limits, Stat, Status};
use procfs::{Current, FromRead};

use super::cgroup::{self, Cgroups};
use super::files::{reason, ProcFiles, SLOW_REFRESH};
use super::readings::{
    DiskReadings, NetReadings, Pressure, ProcessReadings, Reading, Readings, SlowReadings,
};
use crate::resources::{MIN_USE_WINDOW, USE_SLOW_SAMPLE_INTERVAL};

/// Threads whose `schedstat` is summed at most; beyond it the run delay is
/// reported unavailable rather than making every scrape slow.
const MAX_TASKS_READ: usize = 1024;

/// What one process's samples share: open files, and values read once.
#[derive(Debug)]
pub(crate) struct LinuxReader {
    files: ProcFiles,
    boot_time_secs: Reading<u64>,
    host_memory_bytes: Reading<u64>,
    threads_max: Reading<u64>,
    /// Whole disks (entries of `/sys/block`), refreshed every
    /// [`SLOW_REFRESH`].
    disks: (Instant, Vec<String>),
    /// The latest slow readings, and the ones before them.
    slow: Option<Arc<SlowReadings>>,
    slow_before: Option<Arc<SlowReadings>>,
}

impl LinuxReader {
    pub(crate) fn new() -> Self {
        LinuxReader {
            files: ProcFiles::default(),
            boot_time_secs: procfs::boot_time_secs()
                .map_err(|e| format!("cannot read the boot time from /proc/stat: {e}")),
            host_memory_bytes: procfs::Meminfo::current()
                .map(|m| m.mem_total)
                .map_err(|e| format!("cannot read /proc/meminfo: {e}")),
            threads_max: procfs::sys::kernel::threads_max()
                .map(u64::from)
                .map_err(|e| format!("cannot read /proc/sys/kernel/threads-max: {e}")),
            disks: (Instant::now(), whole_disks()),
            slow: None,
            slow_before: None,
        }
    }

    fn read_file(&mut self, path: &str) -> Reading<String> {
        self.files
            .read(Path::new(path))
            .map_err(|e| format!("cannot read {path}: {}", reason(&e)))
    }

    /// Reads one sample. `cgroups` was discovered once at start. The slow
    /// values are read when `full` is asked for or when their last read is
    /// [`USE_SLOW_SAMPLE_INTERVAL`] old; `fresh` reads every file now, even
    /// those whose content is cached for up to that long.
    pub(crate) fn read(&mut self, cgroups: &Reading<Cgroups>, full: bool, fresh: bool) -> Readings {
        self.files.set_fresh(fresh);
        let readings = self.read_all(cgroups, full || fresh);
        self.files.set_fresh(false);
        readings
    }

    fn read_all(&mut self, cgroups: &Reading<Cgroups>, full: bool) -> Readings {
        let at = Instant::now();
        let process = self.read_process();
        let files = &mut self.files;
        let cpu_cgroup = match cgroups {
            Ok(c) => c
                .cpu
                .as_ref()
                .ok_or_else(|| "no cpu cgroup controller is mounted".to_owned())
                .and_then(|dir| cgroup::read_cpu(dir, files)),
            Err(reason) => Err(reason.clone()),
        };
        let stale = self
            .slow
            .as_ref()
            .is_none_or(|slow| at.saturating_duration_since(slow.at) >= USE_SLOW_SAMPLE_INTERVAL);
        if full || stale {
            let slow = Arc::new(self.read_slow(cgroups));
            if let Some(last) = self.slow.take() {
                if slow.at.saturating_duration_since(last.at) >= MIN_USE_WINDOW {
                    self.slow_before = Some(last);
                } else {
                    // Too close to the last one for a rate: keep its
                    // predecessor as the base.
                    self.slow_before = self.slow_before.take().or(Some(last));
                }
            }
            self.slow = Some(slow);
        }
        let slow = match &self.slow {
            Some(slow) => Arc::clone(slow),
            None => Arc::new(self.read_slow(cgroups)),
        };
        Readings {
            at,
            process,
            cpu_cgroup,
            host_memory_bytes: self.host_memory_bytes.clone(),
            threads_max: self.threads_max.clone(),
            executor: Err(String::new()),
            slow,
            slow_before: self.slow_before.clone(),
        }
    }

    fn read_slow(&mut self, cgroups: &Reading<Cgroups>) -> SlowReadings {
        let at = Instant::now();
        // Descriptors first, while no file but the kept ones is open.
        let open_fds = count_fds();
        let cpus_allowed = self
            .files
            .read_slow(Path::new("/proc/self/status"))
            .map_err(|e| format!("cannot read /proc/self/status: {}", reason(&e)))
            .and_then(|text| {
                Status::from_read(text.as_bytes())
                    .map_err(|e| format!("cannot parse /proc/self/status: {e}"))
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
        let files = &mut self.files;
        let (memory_cgroup, pids_cgroup) = match cgroups {
            Ok(c) => (
                c.memory
                    .as_ref()
                    .ok_or_else(|| "no memory cgroup controller is mounted".to_owned())
                    .and_then(|dir| cgroup::read_memory(dir, files)),
                c.pids
                    .as_ref()
                    .ok_or_else(|| "no pids cgroup controller is mounted".to_owned())
                    .and_then(|dir| cgroup::read_pids(dir, files)),
            ),
            Err(reason) => (Err(reason.clone()), Err(reason.clone())),
        };
        let unified = cgroups.as_ref().ok().and_then(|c| c.unified.as_ref());
        let mut pressure = |name: &str| {
            read_pressure(
                files,
                unified.map(|u| (u.dir.as_path(), u.dir == u.mount_point)),
                name,
            )
        };
        let (psi_cpu, psi_memory, psi_io) = (pressure("cpu"), pressure("memory"), pressure("io"));
        let max_fds = self
            .files
            .read_slow(Path::new("/proc/self/limits"))
            .map_err(|e| format!("cannot read /proc/self/limits: {}", reason(&e)))
            .and_then(|text| {
                Limits::from_read(text.as_bytes())
                    .map_err(|e| format!("cannot parse /proc/self/limits: {e}"))
            })
            .map(|l| match l.max_open_files.soft_limit {
                LimitValue::Unlimited => None,
                LimitValue::Value(v) => Some(v),
            });
        let io_bytes = self.read_file("/proc/self/io").and_then(|text| {
            Io::from_read(text.as_bytes())
                .map(|io| (io.read_bytes, io.write_bytes))
                .map_err(|e| format!("cannot parse /proc/self/io: {e}"))
        });
        SlowReadings {
            at,
            psi_cpu,
            psi_memory,
            psi_io,
            memory_cgroup,
            pids_cgroup,
            cpus_allowed,
            net: self.read_net(),
            disk: self.read_disk(),
            open_fds,
            max_fds,
            run_delay_seconds: self.read_run_delay(),
            io_bytes,
        }
    }

    fn read_process(&mut self) -> Reading<ProcessReadings> {
        let stat = self.read_file("/proc/self/stat").and_then(|text| {
            Stat::from_read(text.as_bytes())
                .map_err(|e| format!("cannot parse /proc/self/stat: {e}"))
        })?;
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let start_time_seconds = self
            .boot_time_secs
            .clone()
            .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        if stat.num_threads <= 0 {
            // A live process has at least one thread: this `stat` is not
            // the kernel's. qemu-user writes the file itself, with zeros
            // for CPU, memory and threads; take them from where it does
            // not interfere.
            return self.read_process_emulated(start_time_seconds);
        }
        Ok(ProcessReadings {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
            virtual_bytes: stat.vsize,
            threads: u64::try_from(stat.num_threads).unwrap_or(0),
            start_time_seconds,
            emulated_stat: false,
        })
    }

    /// The process's readings where `/proc/self/stat` is an emulator's:
    /// CPU time from the process's CPU clock (the kernel's same
    /// accounting), memory and threads from `/proc/self/status` (the
    /// kernel's view of the emulator's process, which is this process).
    fn read_process_emulated(
        &mut self,
        start_time_seconds: Reading<f64>,
    ) -> Reading<ProcessReadings> {
        let status = self.read_file("/proc/self/status").and_then(|text| {
            Status::from_read(text.as_bytes())
                .map_err(|e| format!("cannot parse /proc/self/status: {e}"))
        })?;
        let kib = |value: Option<u64>, name: &str| {
            value
                .map(|v| v.saturating_mul(1024))
                .ok_or_else(|| format!("{name} missing from /proc/self/status"))
        };
        Ok(ProcessReadings {
            cpu_seconds: process_cpu_seconds()?,
            resident_bytes: kib(status.vmrss, "VmRSS")?,
            virtual_bytes: kib(status.vmsize, "VmSize")?,
            threads: status.threads,
            start_time_seconds,
            emulated_stat: true,
        })
    }

    /// Sum of run-queue delay over this process's threads.
    /// `/proc/self/schedstat` covers only the main thread, so every task is
    /// read. These files are opened for each read and not kept: threads come
    /// and go, and a varying number of kept descriptors would make the
    /// process's descriptor count move with them.
    fn read_run_delay(&mut self) -> Reading<f64> {
        let dir = std::fs::read_dir("/proc/self/task")
            .map_err(|e| format!("cannot list /proc/self/task: {e}"))?;
        let mut total_ns: u64 = 0;
        let mut buffer = [0u8; 128];
        for (count, entry) in dir.flatten().enumerate() {
            if count >= MAX_TASKS_READ {
                return Err(format!(
                    "more than {MAX_TASKS_READ} threads: run-queue delay not summed"
                ));
            }
            let Ok(file) = File::open(entry.path().join("schedstat")) else {
                continue; // the thread exited meanwhile
            };
            let Ok(read) = read_at_start(&file, &mut buffer) else {
                continue;
            };
            if let Some(delay) = std::str::from_utf8(&buffer[..read])
                .ok()
                .and_then(|text| text.split_whitespace().nth(1))
                .and_then(|d| d.parse::<u64>().ok())
            {
                total_ns = total_ns.saturating_add(delay);
            }
        }
        Ok(total_ns as f64 / 1e9)
    }

    fn read_net(&mut self) -> Reading<NetReadings> {
        // Only the TCP segment counters of /proc/net/snmp are used: read
        // them by name rather than parse every section.
        let snmp = self.read_file("/proc/net/snmp")?;
        let tcp = |field| {
            netstat_value(&snmp, "Tcp", field)
                .ok_or_else(|| format!("no Tcp {field} in /proc/net/snmp"))
        };
        let (tcp_out_segs, tcp_retrans_segs) = (tcp("OutSegs")?, tcp("RetransSegs")?);
        // Listen drops are error counts, not rates, and /proc/net/netstat
        // is the largest file of a sample: it is read every few seconds.
        let netstat = self
            .files
            .read_slow(Path::new("/proc/net/netstat"))
            .unwrap_or_default();
        let devices = self.read_file("/proc/net/dev").and_then(|text| {
            procfs::net::InterfaceDeviceStatus::from_read(text.as_bytes())
                .map_err(|e| format!("cannot parse /proc/net/dev: {e}"))
        })?;
        let mut net = NetReadings {
            tcp_out_segs,
            tcp_retrans_segs,
            listen_overflows: netstat_value(&netstat, "TcpExt", "ListenOverflows"),
            listen_drops: netstat_value(&netstat, "TcpExt", "ListenDrops"),
            interface_errors: 0,
            interface_drops: 0,
            rx_bytes: 0,
            tx_bytes: 0,
        };
        for (name, dev) in devices.0.iter() {
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

    fn read_disk(&mut self) -> Reading<DiskReadings> {
        let stats = self.read_file("/proc/diskstats").and_then(|text| {
            procfs::DiskStats::from_read(text.as_bytes())
                .map_err(|e| format!("cannot parse /proc/diskstats: {e}"))
        })?;
        if self.disks.0.elapsed() >= SLOW_REFRESH {
            self.disks = (Instant::now(), whole_disks());
        }
        let disks = &self.disks.1;
        // Whole disks only (the entries of /sys/block): partitions would
        // double-count their disk's time.
        let busy_ms = stats
            .0
            .into_iter()
            .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
            .filter(|d| disks.contains(&d.name))
            .map(|d| (d.name, d.time_in_progress))
            .collect();
        Ok(DiskReadings { busy_ms })
    }
}

/// Entries of `/sys/block`: the whole disks.
fn whole_disks() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Descriptors open in this process.
fn count_fds() -> Reading<u64> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            // The listing's own descriptor is not the process's.
            (dir.count() as u64).saturating_sub(1)
        })
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"))
}

/// Reads the start of a small file into `buffer`; returns the bytes read.
fn read_at_start(file: &File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    file.read_at(buffer, 0)
}

/// The cgroup's own pressure file when the unified hierarchy has one,
/// else the host-wide `/proc/pressure/<name>`.
/// `unified` is the cgroup's v2 directory and whether it is the root
/// cgroup (whose pressure is the whole host's).
fn read_pressure(
    files: &mut ProcFiles,
    unified: Option<(&Path, bool)>,
    name: &str,
) -> Reading<Pressure> {
    if let Some((dir, is_root)) = unified {
        let path = dir.join(format!("{name}.pressure"));
        let scope = if is_root {
            "root cgroup: host-wide"
        } else {
            "the process's cgroup"
        };
        if let Ok(text) = files.read(&path) {
            if let Some(p) = parse_pressure(&text, format!("PSI {} ({scope})", path.display())) {
                return Ok(p);
            }
        }
    }
    let path = PathBuf::from(format!("/proc/pressure/{name}"));
    let text = files.read(&path).map_err(|e| {
        format!(
            "PSI unavailable ({}: {}); the kernel needs CONFIG_PSI=y and psi=1",
            path.display(),
            reason(&e)
        )
    })?;
    parse_pressure(&text, format!("PSI {} (host-wide)", path.display()))
        .ok_or_else(|| format!("unexpected content in {}", path.display()))
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

/// A value of `/proc/net/netstat` or `/proc/net/snmp`, whose sections are
/// pairs of lines: a header `TcpExt: Name1 Name2 …` and the values
/// `TcpExt: 1 2 …`.
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

/// CPU time of all threads of this process (`CLOCK_PROCESS_CPUTIME_ID`),
/// in seconds.
fn process_cpu_seconds() -> Reading<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes into the timespec we own.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if read != 0 {
        return Err(format!(
            "cannot read the process's CPU clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
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
        let mut reader = LinuxReader::new();
        let _first = reader.read(&cgroups, true, false);
        // The second read goes through the kept files.
        let r = reader.read(&cgroups, true, false);
        assert!(r.slow_before.is_some() || r.slow.at.elapsed() < MIN_USE_WINDOW);
        let process = r.process.unwrap();
        // Also under qemu-user, whose /proc/self/stat reads 0 for these.
        assert!(process.resident_bytes > 1 << 20);
        assert!(process.virtual_bytes >= process.resident_bytes);
        assert!(process.threads >= 1);
        assert!(process.cpu_seconds > 0.0, "{process:?}");
        assert!(*r.slow.open_fds.as_ref().unwrap() >= 3);
        assert!(r.slow.cpus_allowed.as_ref().unwrap() >= &1.0);
        assert!(r.host_memory_bytes.unwrap() > 1 << 28);
        assert!(r.slow.net.is_ok());
        // A periodic read reuses fresh slow readings.
        let periodic = reader.read(&cgroups, false, false);
        assert!(Arc::ptr_eq(&periodic.slow, &r.slow));
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const PROC: &[&str] = &[
            "some avg10=",
            "full avg10=",
            " avg60=",
            " avg300=",
            " total=",
            "\n",
            "TcpExt:",
            "Tcp:",
            " OutSegs",
            " RetransSegs",
            " ListenDrops",
            " ",
            "-1",
            "1.5",
        ];

        proptest! {
            #[test]
            fn proc_files_never_panic(text in input_of(PROC)) {
                bounded("pressure", &text, || { let _ = parse_pressure(&text, String::new()); });
                bounded("netstat", &text, || {
                    let _ = netstat_value(&text, "TcpExt", "ListenDrops");
                    let _ = netstat_value(&text, "Tcp", "OutSegs");
                });
            }
        }
    }
}
