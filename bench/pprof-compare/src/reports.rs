//! After the window: the time each profiler takes to turn a long window
//! into an SVG flame graph and into a pprof profile, and the memory the
//! first symbolized report leaves behind in a fresh process.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pprof::protos::Message;
use stethoscope::profile::{symbolizer_stats, Format};
use stethoscope_examples::workload::thread_cpu_time;

use crate::profilers::{finish_stethoscope, start_pprof, start_stethoscope, Profiler};
use crate::workload::background_call_tree;

/// Resident memory, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS, in bytes.
    pub rss: u64,
    /// RssAnon (heap and other anonymous pages), in bytes.
    pub anon: u64,
}

impl Memory {
    pub fn now() -> Memory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Memory {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
        }
    }
}

/// Wall time and the calling thread's CPU time of a piece of work (the
/// CPU time holds on a machine where other processes compete).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub wall: Duration,
    pub cpu: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    fn stop(self) -> Spent {
        Spent {
            wall: self.wall.elapsed(),
            cpu: thread_cpu_time().saturating_sub(self.cpu),
        }
    }
}

/// One long window and the reports made from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reports {
    /// Samples in the window.
    pub samples: u64,
    /// Distinct stacks the profiler kept.
    pub stacks: usize,
    /// From the end of the window to the SVG flame graph in memory.
    pub svg: Spent,
    pub svg_bytes: usize,
    /// From the end of the window to the encoded pprof profile (stethoscope:
    /// gzipped; pprof-rs: not compressed, as `Report::pprof` returns it).
    pub pprof: Spent,
    pub pprof_bytes: usize,
    /// pprof-rs only: gzipping its encoded profile, which stethoscope's
    /// time includes.
    pub gzip: Option<(Spent, usize)>,
    /// stethoscope only: symbol lookups its symbolizer did while the window
    /// was open (the work pprof-rs does after the window).
    pub symbolized_in_window: Option<Duration>,
    /// Memory when the window closed, before any report.
    pub after_window: Memory,
    /// Memory once both reports are made and dropped.
    pub after_reports: Memory,
}

/// Profiles the call-tree workload on `threads` threads for `window` at
/// `hz`, then renders an SVG and a pprof profile, each from the raw window
/// (each pays for symbolization, as a fresh request does).
pub fn reports(
    profiler: Profiler,
    hz: u32,
    window: Duration,
    threads: usize,
) -> Result<Reports, String> {
    let (stop, load) = background_call_tree(threads);
    let stop_load = move || {
        stop.store(true, Ordering::Relaxed);
        let _ = load.join();
    };
    match profiler {
        Profiler::None => {
            stop_load();
            Ok(Reports::default())
        }
        Profiler::Stethoscope => {
            let resolve_before = symbolizer_stats().resolve_time;
            let raw = start_stethoscope(hz, window).and_then(finish_stethoscope);
            stop_load();
            let raw = raw?;
            let mut out = Reports {
                samples: raw.sample_count(),
                stacks: raw.stacks().len(),
                symbolized_in_window: Some(
                    symbolizer_stats()
                        .resolve_time
                        .saturating_sub(resolve_before),
                ),
                after_window: Memory::now(),
                ..Reports::default()
            };
            let render = |format| -> Result<(Spent, usize), String> {
                let started = Stopwatch::start();
                let bytes = raw
                    .to_profile()
                    .render(format)
                    .map_err(|e| format!("stethoscope render: {e}"))?;
                Ok((started.stop(), bytes.len()))
            };
            (out.svg, out.svg_bytes) = render(Format::Svg)?;
            (out.pprof, out.pprof_bytes) = render(Format::Pprof)?;
            out.after_reports = Memory::now();
            Ok(out)
        }
        Profiler::PprofRs | Profiler::PprofRsNoBlocklist => {
            let guard = start_pprof(hz, profiler == Profiler::PprofRs);
            if guard.is_ok() {
                std::thread::sleep(window);
            }
            stop_load();
            let guard = guard?;
            let mut out = Reports {
                after_window: Memory::now(),
                ..Reports::default()
            };
            let build = || {
                guard
                    .report()
                    .build()
                    .map_err(|e| format!("pprof-rs report: {e}"))
            };
            {
                let started = Stopwatch::start();
                let report = build()?;
                let mut svg = Vec::new();
                report
                    .flamegraph(&mut svg)
                    .map_err(|e| format!("pprof-rs flamegraph: {e}"))?;
                out.svg = started.stop();
                out.svg_bytes = svg.len();
                out.samples = report.data.values().map(|&c| c.max(0) as u64).sum();
                out.stacks = report.data.len();
            }
            {
                let started = Stopwatch::start();
                let report = build()?;
                let encoded = report
                    .pprof()
                    .map_err(|e| format!("pprof-rs pprof: {e}"))?
                    .encode_to_vec();
                out.pprof = started.stop();
                out.pprof_bytes = encoded.len();
                let started = Stopwatch::start();
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&encoded)
                    .and_then(|()| gz.finish())
                    .map(|bytes| out.gzip = Some((started.stop(), bytes.len())))
                    .map_err(|e| format!("gzip: {e}"))?;
            }
            drop(guard);
            out.after_reports = Memory::now();
            Ok(out)
        }
    }
}

/// `--cold`: one window and its first reports in this fresh process, for
/// the parent to parse.
pub fn cold_child(profiler: Profiler, hz: u32, window: Duration, threads: usize, at_start: Memory) {
    let out = reports(profiler, hz, window, threads).unwrap_or_else(|e| crate::fail(&e));
    println!(
        "COLD rss_start={} anon_start={} rss_window={} anon_window={} rss_reports={} anon_reports={} \
         svg_ns={} pprof_ns={} samples={} stacks={}",
        at_start.rss,
        at_start.anon,
        out.after_window.rss,
        out.after_window.anon,
        out.after_reports.rss,
        out.after_reports.anon,
        out.svg.wall.as_nanos(),
        out.pprof.wall.as_nanos() + out.gzip.map_or(0, |(d, _)| d.wall.as_nanos()),
        out.samples,
        out.stacks,
    );
}

/// What a `--cold` child reported.
#[derive(Debug, Clone, Copy)]
pub struct Cold {
    pub start: Memory,
    pub window: Memory,
    pub reports: Memory,
    /// First SVG after the window.
    pub svg: Duration,
    /// First pprof after the window, gzipped (pprof-rs: plus our gzip).
    pub pprof: Duration,
    pub samples: u64,
}

/// Runs this binary with `--cold` for `profiler` and parses its line.
pub fn run_cold(
    profiler: Profiler,
    hz: u32,
    window: Duration,
    threads: usize,
) -> Result<Cold, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let output = std::process::Command::new(exe)
        .args([
            "--cold",
            profiler.key(),
            "--cold-secs",
            &window.as_secs().to_string(),
            "--report-hz",
            &hz.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the --cold child: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the --cold {} child failed: {}",
            profiler.key(),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("COLD "))
        .ok_or("the --cold child printed no COLD line")?;
    let values: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |key: &str| values.get(key).copied().unwrap_or(0);
    let memory = |suffix: &str| Memory {
        rss: get(&format!("rss_{suffix}")),
        anon: get(&format!("anon_{suffix}")),
    };
    Ok(Cold {
        start: memory("start"),
        window: memory("window"),
        reports: memory("reports"),
        svg: Duration::from_nanos(get("svg_ns")),
        pprof: Duration::from_nanos(get("pprof_ns")),
        samples: get("samples"),
    })
}
