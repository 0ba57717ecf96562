//! The profilers under comparison, each run around a piece of work in a
//! window of its own (never two at once: both own SIGPROF and
//! `ITIMER_PROF`), and what their profiles say about it.

use std::time::{Duration, Instant, SystemTime};

use stethoscope::cpu::{CpuProfile, CpuProfiler, ProfileRequest};

/// The blocklist pprof-rs's README recommends: samples whose interrupted
/// instruction lies in a library whose path contains one of these are
/// dropped in the signal handler.
pub const README_BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// Who samples the process during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profiler {
    /// Nobody: the baseline.
    None,
    /// stethoscope's sampler through `CpuProfiler::global().profile(..)`.
    Stethoscope,
    /// pprof-rs 0.15 (framehop unwinder) with the README's blocklist.
    PprofRs,
    /// pprof-rs 0.15 (framehop unwinder) as `ProfilerGuardBuilder::default()`
    /// leaves it: no blocklist.
    PprofRsNoBlocklist,
}

impl Profiler {
    /// Every mode of a throughput run, the baseline first.
    pub const ALL: [Profiler; 4] = [
        Profiler::None,
        Profiler::Stethoscope,
        Profiler::PprofRs,
        Profiler::PprofRsNoBlocklist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profiler::None => "no profiler",
            Profiler::Stethoscope => "stethoscope",
            Profiler::PprofRs => "pprof-rs (README blocklist)",
            Profiler::PprofRsNoBlocklist => "pprof-rs (no blocklist)",
        }
    }

    /// The name `--cold` takes.
    pub fn key(self) -> &'static str {
        match self {
            Profiler::None => "none",
            Profiler::Stethoscope => "stethoscope",
            Profiler::PprofRs => "pprof-rs",
            Profiler::PprofRsNoBlocklist => "pprof-rs-no-blocklist",
        }
    }

    pub fn from_key(key: &str) -> Option<Profiler> {
        Profiler::ALL.into_iter().find(|p| p.key() == key)
    }
}

/// Process CPU time read two ways.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// utime + stime from `/proc/self/stat` (clock-tick resolution).
    pub proc_stat: Duration,
    /// `CLOCK_PROCESS_CPUTIME_ID` (nanosecond resolution).
    pub process: Duration,
}

impl Clocks {
    pub fn now() -> Clocks {
        Clocks {
            proc_stat: proc_stat_cpu()
                .unwrap_or_else(|| crate::fail("cannot read utime/stime from /proc/self/stat")),
            process: stethoscope_examples::workload::process_cpu_time(),
        }
    }

    fn since(self, earlier: Clocks) -> Clocks {
        Clocks {
            proc_stat: self.proc_stat.saturating_sub(earlier.proc_stat),
            process: self.process.saturating_sub(earlier.process),
        }
    }
}

fn proc_stat_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start with field 3 (state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / ticks,
    ))
}

/// Samples of the `burn-N` threads by the function they were in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Split {
    /// Samples with `burn_hot` on the stack.
    pub hot: u64,
    /// Samples with `burn_cold` (and not `burn_hot`) on the stack.
    pub cold: u64,
    /// Samples of burn threads with neither (`burn` itself, or a stack the
    /// unwinder could not follow).
    pub other: u64,
}

impl Split {
    fn add<S: AsRef<str>>(&mut self, thread: &str, functions: impl Iterator<Item = S>, n: u64) {
        if !thread.starts_with("burn-") {
            return;
        }
        let (mut hot, mut cold) = (false, false);
        for function in functions {
            let function = function.as_ref();
            hot |= function.contains("burn_hot");
            cold |= function.contains("burn_cold");
        }
        match (hot, cold) {
            (true, _) => self.hot += n,
            (false, true) => self.cold += n,
            _ => self.other += n,
        }
    }

    /// `burn_hot`'s share of the samples attributed to either function.
    pub fn hot_share(&self) -> f64 {
        self.hot as f64 / (self.hot + self.cold).max(1) as f64
    }

    /// Share of the burn threads' samples attributed to neither.
    pub fn other_share(&self) -> f64 {
        self.other as f64 / (self.hot + self.cold + self.other).max(1) as f64
    }
}

/// What a profile says about its window.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// Samples in the profile.
    pub samples: u64,
    /// Total CPU time the profile reports (the sum of its `cpu/nanoseconds`
    /// values).
    pub reported_cpu: Duration,
    /// Samples the profiler says it lost (stethoscope only: pprof-rs keeps
    /// no count).
    pub dropped: Option<u64>,
    /// The burn threads' samples by function.
    pub split: Split,
    /// Samples whose interrupted instruction is in a library the README
    /// blocklist names (stethoscope only: pprof-rs with the blocklist never
    /// sees them).
    pub leaf_in_blocklist: Option<u64>,
}

/// One piece of work run under a profiler.
#[derive(Debug)]
pub struct Measured<T> {
    /// What the work returned.
    pub work: T,
    /// Process CPU time from just before the work to the end of the window.
    pub cpu: Clocks,
    /// The profile's view, when asked for.
    pub captured: Option<Captured>,
    /// Whether the work ended inside the window (false: the window closed
    /// first and the comparison with the clocks is void).
    pub in_window: bool,
}

/// Runs `work` under `profiler` at `hz`. stethoscope's window is requested
/// up front and lasts `window` (it must outlast the work: `in_window` says
/// whether it did); pprof-rs's guard lives exactly as long as the work.
/// With `analyze`, the profile is symbolized and inspected after the window.
pub fn profile_during<T>(
    profiler: Profiler,
    hz: u32,
    window: Duration,
    analyze: bool,
    work: impl FnOnce() -> T,
) -> Result<Measured<T>, String> {
    match profiler {
        Profiler::None => {
            let before = Clocks::now();
            let work = work();
            Ok(Measured {
                work,
                cpu: Clocks::now().since(before),
                captured: None,
                in_window: true,
            })
        }
        Profiler::Stethoscope => stethoscope_during(hz, window, analyze, work),
        Profiler::PprofRs => pprof_during(hz, true, analyze, work),
        Profiler::PprofRsNoBlocklist => pprof_during(hz, false, analyze, work),
    }
}

/// Requests a stethoscope profile on a thread of its own and returns once
/// its window is open.
pub fn start_stethoscope(
    hz: u32,
    window: Duration,
) -> Result<std::thread::JoinHandle<Result<CpuProfile, String>>, String> {
    let request = std::thread::Builder::new()
        .name("request".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            runtime
                .block_on(CpuProfiler::global().profile(ProfileRequest::new(window).hz(hz)))
                .map_err(|e| format!("stethoscope: {e}"))
        })
        .map_err(|e| format!("cannot spawn the request thread: {e}"))?;
    // The sampler reports its footprint once it runs; the window opens on
    // the control thread's next pass, right after.
    let deadline = Instant::now() + Duration::from_secs(5);
    while CpuProfiler::global().status().footprint_bytes == 0 && !request.is_finished() {
        if Instant::now() > deadline {
            return Err("stethoscope's sampler did not start within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5));
    Ok(request)
}

/// Waits for a stethoscope window and for its sampler to stop (SIGPROF
/// ignored, timer disarmed), so that pprof-rs can take over.
pub fn finish_stethoscope(
    request: std::thread::JoinHandle<Result<CpuProfile, String>>,
) -> Result<CpuProfile, String> {
    let raw = request
        .join()
        .map_err(|_| "the request thread panicked".to_string())??;
    let deadline = Instant::now() + Duration::from_secs(5);
    while CpuProfiler::global().status().running_hz.is_some() {
        if Instant::now() > deadline {
            return Err("stethoscope's sampler did not stop within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(raw)
}

fn stethoscope_during<T>(
    hz: u32,
    window: Duration,
    analyze: bool,
    work: impl FnOnce() -> T,
) -> Result<Measured<T>, String> {
    let request = start_stethoscope(hz, window)?;
    let before = Clocks::now();
    let work = work();
    let done = SystemTime::now();
    let raw = finish_stethoscope(request)?;
    let cpu = Clocks::now().since(before);
    Ok(Measured {
        work,
        cpu,
        captured: analyze.then(|| analyze_stethoscope(&raw)),
        in_window: done <= raw.started_at() + raw.duration(),
    })
}

fn analyze_stethoscope(raw: &CpuProfile) -> Captured {
    let profile = raw.to_profile();
    let mut split = Split::default();
    let mut leaf_in_blocklist = 0;
    for sample in &profile.samples {
        let n = sample.values.first().copied().unwrap_or(0).max(0) as u64;
        let thread = sample.thread.as_deref().unwrap_or("");
        split.add(
            thread,
            profile
                .frames_root_first(sample)
                .map(|f| f.function.clone()),
            n,
        );
        let leaf_file = sample
            .locations
            .first()
            .and_then(|&l| profile.locations.get(l))
            .and_then(|l| l.mapping)
            .and_then(|m| profile.mappings.get(m))
            .map_or("", |m| m.file.as_str());
        if README_BLOCKLIST.iter().any(|lib| leaf_file.contains(lib)) {
            leaf_in_blocklist += n;
        }
    }
    // Values: samples/count, cpu/nanoseconds.
    let cpu_ns = profile.total(1).max(0) as u64;
    Captured {
        samples: raw.sample_count(),
        reported_cpu: Duration::from_nanos(cpu_ns),
        dropped: Some(raw.dropped_samples()),
        split,
        leaf_in_blocklist: Some(leaf_in_blocklist),
    }
}

/// Starts pprof-rs at `hz`, with or without the README blocklist.
pub fn start_pprof(hz: u32, blocklist: bool) -> Result<pprof::ProfilerGuard<'static>, String> {
    let frequency = i32::try_from(hz).map_err(|_| "hz out of range".to_string())?;
    let builder = pprof::ProfilerGuardBuilder::default().frequency(frequency);
    let builder = if blocklist {
        builder.blocklist(&README_BLOCKLIST)
    } else {
        builder
    };
    builder.build().map_err(|e| format!("pprof-rs: {e}"))
}

fn pprof_during<T>(
    hz: u32,
    blocklist: bool,
    analyze: bool,
    work: impl FnOnce() -> T,
) -> Result<Measured<T>, String> {
    let guard = start_pprof(hz, blocklist)?;
    let before = Clocks::now();
    let work = work();
    let cpu = Clocks::now().since(before);
    let captured = if analyze {
        let report = guard
            .report()
            .build()
            .map_err(|e| format!("pprof-rs report: {e}"))?;
        Some(analyze_pprof(&report)?)
    } else {
        None
    };
    drop(guard);
    Ok(Measured {
        work,
        cpu,
        captured,
        // The guard lives until the work is done.
        in_window: true,
    })
}

fn analyze_pprof(report: &pprof::Report) -> Result<Captured, String> {
    let mut split = Split::default();
    let mut samples = 0;
    for (frames, &count) in &report.data {
        let n = count.max(0) as u64;
        samples += n;
        split.add(
            &frames.thread_name,
            frames.frames.iter().flatten().map(|symbol| symbol.name()),
            n,
        );
    }
    // What its pprof output says: each sample weighs count × 10⁹ / hz ns.
    let proto = report.pprof().map_err(|e| format!("pprof-rs pprof: {e}"))?;
    let cpu_ns: i64 = proto
        .sample
        .iter()
        .filter_map(|s| s.value.get(1))
        .sum::<i64>();
    Ok(Captured {
        samples,
        reported_cpu: Duration::from_nanos(cpu_ns.max(0) as u64),
        dropped: None,
        split,
        leaf_in_blocklist: None,
    })
}
