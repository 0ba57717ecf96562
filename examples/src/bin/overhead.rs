//! Overhead benchmark: the same CPU-bound workload with no agent, with an
//! idle agent, while the agent profiles at 99 Hz, while it profiles at
//! 99 Hz a workload that switches labels every ~16 µs (as a labelled future
//! does every poll), and while it takes a wall-clock profile of every
//! thread at 99 Hz, interleaved over several rounds; then the cost of
//! turning a 30 s profile into reports.
//!
//! With `--tokio 1` every workload thread runs its loop as a future on a
//! current-thread tokio runtime of its own (a tokio worker), yielding every
//! 16 calls, so each poll is ~16 µs of work; the labelled mode then labels
//! the future (a label switch per poll), and a wall-clock mode limited to
//! the tokio workers (`threads=workers`) is added.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin overhead -- [--rounds 9] [--secs 3] [--report-secs 30] [--threads N] [--tokio 1]
//! ```
//!
//! With `OVERHEAD_SAVE_DIR=DIR` the reports of the long window are written
//! there too (`window.svg`, `window.folded`, …), to look at.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::cpu::{CpuProfiler, ProfileRequest};
use stethoscope::labels::Labels;
use stethoscope::profile::Format;
use stethoscope::symbols::{release_debug_info, symbolizer_stats};
use stethoscope::Agent;
use stethoscope_examples::bench::median;
use stethoscope_examples::workload::{process_cpu_time, thread_cpu_time, walk_call_tree};

/// Leaf iterations per call-tree walk (~1 µs per call).
const WORK: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoAgent,
    IdleAgent,
    Profiling99Hz,
    Labelled99Hz,
    Wall99Hz,
    WallWorkers99Hz,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoAgent => "no agent",
            Mode::IdleAgent => "agent idle",
            Mode::Profiling99Hz => "agent profiling at 99 Hz",
            Mode::Labelled99Hz => "labelled, profiling 99 Hz",
            Mode::Wall99Hz => "wall-clock 99 Hz, all thr.",
            Mode::WallWorkers99Hz => "wall-clock 99 Hz, workers",
        }
    }

    /// The profile request this mode makes, if any.
    fn query(self) -> Option<&'static str> {
        match self {
            Mode::NoAgent | Mode::IdleAgent => None,
            Mode::Profiling99Hz => Some("hz=99"),
            Mode::Labelled99Hz => Some("hz=99&format=text&by=route"),
            Mode::Wall99Hz => Some("hz=99&mode=wall"),
            Mode::WallWorkers99Hz => Some("hz=99&mode=wall&threads=workers"),
        }
    }
}

struct Options {
    rounds: usize,
    secs: u64,
    report_secs: u64,
    threads: usize,
    /// Run the workload as futures on tokio workers.
    tokio: bool,
}

fn parse_options() -> Options {
    let mut options = Options {
        rounds: 9,
        secs: 3,
        report_secs: 30,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        tokio: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < args.len() {
        let value = args[i + 1].parse::<u64>().unwrap_or_else(|_| {
            eprintln!("{} needs a number", args[i]);
            std::process::exit(2)
        });
        match args[i].as_str() {
            "--rounds" => options.rounds = value.max(1) as usize,
            "--secs" => options.secs = value.max(1),
            "--report-secs" => options.report_secs = value.max(1),
            "--threads" => options.threads = value.max(1) as usize,
            "--tokio" => options.tokio = value != 0,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    options
}

/// One timed run of the workload.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Calls per second of wall time.
    rate: f64,
    /// Calls per second of the workers' own CPU time (signal handlers run
    /// on the interrupted worker, so their cost lowers this).
    per_cpu_second: f64,
    /// CPU time of every other thread (the agent's), relative to the
    /// workers' CPU time.
    other_cpu_share: f64,
    /// Time spent in the SIGPROF handler (measured by the sampler),
    /// relative to the workers' CPU time.
    handler_share: f64,
}

/// How the workload's threads run their loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Shape {
    /// Labels switched every 16 calls (~16 µs).
    labelled: bool,
    /// As a future on a current-thread tokio runtime (a tokio worker)
    /// yielding every 16 calls, instead of a plain loop.
    tokio: bool,
}

/// Sixteen call-tree walks.
fn sixteen_calls(seed: &mut u64, sink: &mut u64) {
    for _ in 0..16 {
        *seed = seed.wrapping_add(1);
        *sink ^= walk_call_tree(*seed, WORK);
    }
}

/// One workload thread's loop until `stop`; returns the calls made.
fn workload_loop(t: usize, stop: &AtomicBool, shape: Shape) -> u64 {
    let mut n = 0u64;
    let mut sink = 0u64;
    let mut seed = t as u64 * 0x9e37_79b9;
    let labels = if shape.labelled {
        Labels::new([("route", format!("/bench/{t}"))])
    } else {
        Labels::none()
    };
    if shape.tokio {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // Every poll of the future (16 calls, then a yield) switches to
        // its labels and back; the first poll also makes the agent see
        // this thread as a tokio worker.
        runtime.block_on(labels.instrument(async {
            while !stop.load(Ordering::Relaxed) {
                sixteen_calls(&mut seed, &mut sink);
                n += 16;
                tokio::task::yield_now().await;
            }
        }));
    } else {
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..16 {
                let _poll = shape.labelled.then(|| labels.enter());
                sixteen_calls(&mut seed, &mut sink);
            }
            n += 256;
        }
    }
    std::hint::black_box(sink);
    n
}

/// Runs the call-tree workload on `threads` threads for `secs`; with
/// `shape.labelled`, every 16 calls (~16 µs) run under their thread's own
/// `route` label, entered and left like a labelled future's poll.
fn run_workload(threads: usize, secs: u64, shape: Shape) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let worker_cpu_ns = Arc::new(AtomicU64::new(0));
    let process_before = process_cpu_time();
    let handler_before = CpuProfiler::global().status().handler_time;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, calls, cpu) = (
                Arc::clone(&stop),
                Arc::clone(&calls),
                Arc::clone(&worker_cpu_ns),
            );
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || {
                    let cpu_before = thread_cpu_time();
                    let n = workload_loop(t, &stop, shape);
                    calls.fetch_add(n, Ordering::Relaxed);
                    let spent = thread_cpu_time().saturating_sub(cpu_before);
                    cpu.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
                })
                .expect("spawn worker")
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let process = process_cpu_time()
        .saturating_sub(process_before)
        .as_secs_f64();
    let workers = worker_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let calls = calls.load(Ordering::Relaxed) as f64;
    let handler = CpuProfiler::global()
        .status()
        .handler_time
        .saturating_sub(handler_before)
        .as_secs_f64();
    Run {
        rate: calls / wall,
        per_cpu_second: calls / workers.max(1e-9),
        other_cpu_share: (process - workers).max(0.0) / workers.max(1e-9),
        handler_share: handler / workers.max(1e-9),
    }
}

/// A raw HTTP GET, reading the whole response; returns (status line,
/// response length, response text).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, usize, String)> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    Ok((status, bytes.len(), text))
}

fn measure(mode: Mode, options: &Options) -> Run {
    let labelled = mode == Mode::Labelled99Hz;
    let shape = Shape {
        labelled,
        tokio: options.tokio,
    };
    let Some(query) = mode.query() else {
        let agent = (mode == Mode::IdleAgent).then(start_agent);
        let rate = run_workload(options.threads, options.secs, shape);
        drop(agent);
        return rate;
    };
    let agent = start_agent();
    let addr = agent.local_addr();
    let path = format!("/debug/pprof/profile?seconds={}&{query}", options.secs);
    let request = std::thread::spawn(move || http_get(addr, &path));
    let profiler = CpuProfiler::global();
    while profiler.status().subscribers == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = run_workload(options.threads, options.secs, shape);
    match request.join() {
        // The labelled workload's routes must show up in the profile.
        Ok(Ok((status, _, text))) if status.contains(" 200 ") => {
            if labelled && !text.contains("/bench/0") {
                eprintln!("the labelled profile has no /bench/0 route:\n{text}");
            }
        }
        other => eprintln!("profile request failed: {other:?}"),
    }
    drop(agent);
    rate
}

fn start_agent() -> Agent {
    Agent::builder()
        .listen("127.0.0.1:0")
        .start()
        .unwrap_or_else(|e| {
            eprintln!("cannot start the agent: {e}");
            std::process::exit(1)
        })
}

fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

fn report_generation(options: &Options, rss: &RssLog) {
    println!(
        "\n## Report generation: {} s profile at 99 Hz of the call-tree workload on {} threads",
        options.report_secs, options.threads
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let threads = options.threads;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = run_workload(threads, 1, Shape::default());
            }
        })
    };
    served_reports_memory(options, rss);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let request = ProfileRequest::new(Duration::from_secs(options.report_secs)).hz(99);
    let raw = match runtime.block_on(CpuProfiler::global().profile(request)) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("profile failed: {e}");
            return;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    println!(
        "window {:.1} s: {} samples, {} distinct stacks, {} dropped",
        raw.duration().as_secs_f64(),
        raw.sample_count(),
        raw.stacks().len(),
        raw.dropped_samples()
    );
    // What the HTTP handler does after the window: symbolize, then encode.
    for format in [
        Format::Svg,
        Format::Pprof,
        Format::Text,
        Format::Folded,
        Format::Json,
    ] {
        let started = Instant::now();
        let profile = raw.to_profile();
        let symbolized = started.elapsed();
        let rendered = profile.render(format).unwrap_or_default();
        let total = started.elapsed();
        let bytes = rendered.len();
        if let Some(dir) = std::env::var_os("OVERHEAD_SAVE_DIR") {
            let path = std::path::Path::new(&dir).join(format!("window.{}", format.name()));
            if let Err(e) = std::fs::write(&path, &rendered) {
                eprintln!("{}: {e}", path.display());
            }
        }
        println!(
            "{:>7}: {:>7.1} ms after the window ({:.1} ms symbolization lookups, {:.1} ms encoding), {} bytes",
            format.name(),
            total.as_secs_f64() * 1e3,
            symbolized.as_secs_f64() * 1e3,
            (total - symbolized).as_secs_f64() * 1e3,
            bytes
        );
    }
    flame_graph_both_ways(&raw.to_profile());
    let stats = symbolizer_stats();
    println!(
        "symbolizer: {} addresses cached, {:.1} KiB in the address cache and DWARF unit index, {:.0} ms spent resolving (mostly during the window)",
        stats.cached_addresses,
        stats.cache_bytes as f64 / 1024.0,
        stats.resolve_time.as_secs_f64() * 1e3,
    );
    let before_release = rss_bytes();
    release_debug_info();
    let after_release = rss_bytes();
    // Diagnostic only (the agent never does this): how much of what is left
    // is freed memory glibc's allocator keeps for reuse.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
    println!(
        "process RSS: {:.1} MiB at start; {:.1} MiB after the first profile (debug info of this {:.0} MiB binary loaded); \
         {:.1} MiB after the reports; {:.1} MiB once the debug info is released (automatic after {} s idle); \
         {:.1} MiB after malloc_trim (freed memory glibc had kept)",
        mib(rss.at_start),
        mib(rss.after_first_profile),
        mib(std::env::current_exe().and_then(std::fs::metadata).map_or(0, |m| m.len())),
        mib(before_release),
        mib(after_release),
        stethoscope::symbols::DEBUG_INFO_IDLE_RELEASE.as_secs(),
        mib(rss_bytes()),
    );
}

/// What serving one profile window in all five formats leaves behind: five
/// concurrent requests of the same window (they share the sampler) through
/// the agent's HTTP server, each read completely, as an operator (or a
/// dashboard) would fetch them.
fn served_reports_memory(options: &Options, rss: &RssLog) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let threads = options.threads;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = run_workload(threads, 1, Shape::default());
            }
        })
    };
    let agent = start_agent();
    let addr = agent.local_addr();
    let before = rss_bytes();
    let requests: Vec<_> = ["svg", "pprof", "text", "folded", "json"]
        .into_iter()
        .map(|format| {
            let path = format!(
                "/debug/pprof/profile?seconds={}&hz=99&format={format}",
                options.report_secs
            );
            std::thread::spawn(move || (format, http_get(addr, &path)))
        })
        .collect();
    let mut peak = before;
    while !requests.iter().all(|r| r.is_finished()) {
        peak = peak.max(rss_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
    for request in requests {
        if let Ok((format, Ok((status, bytes, _)))) = request.join() {
            println!("served {format}: {status}, {bytes} bytes");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    // The trim after each large response runs on the agent's blocking pool.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes();
    let index = symbolizer_stats().cache_bytes;
    drop(agent);
    // What the symbolizer loaded for these stacks stays until it has been
    // idle for a minute; then only what the reports left behind remains.
    release_debug_info();
    let released = rss_bytes();
    println!(
        "served the {} s window in five formats over HTTP: RSS {:.1} MiB after the first profile, \
         {:.1} MiB before the requests, {:.1} MiB at the peak, {:.1} MiB after ({:+.1} MiB over the \
         post-first-profile baseline, with {:.1} MiB of symbolizer cache and index); \
         {:.1} MiB once the symbolizer has released its debug info ({:+.1} MiB)",
        options.report_secs,
        mib(rss.after_first_profile),
        mib(before),
        mib(peak),
        mib(after),
        mib(after) - mib(rss.after_first_profile),
        index as f64 / (1024.0 * 1024.0),
        mib(released),
        mib(released) - mib(rss.after_first_profile),
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

struct RssLog {
    at_start: u64,
    after_first_profile: u64,
}

fn main() {
    let options = parse_options();
    let mut rss = RssLog {
        at_start: rss_bytes(),
        after_first_profile: 0,
    };
    println!(
        "# stethoscope overhead: {} rounds × {} s, {} worker threads, call-tree workload ({} leaf iterations/call)",
        options.rounds, options.secs, options.threads, WORK
    );
    // The symbolizer's cold start on its own: resolve the call-tree
    // workload's functions before anything else has touched debug info.
    {
        let (anon, file) = (status_bytes("RssAnon:"), status_bytes("RssFile:"));
        let started = Instant::now();
        let names = stethoscope::symbols::function_names(&[
            walk_call_tree as *const () as usize as u64,
            run_workload as *const () as usize as u64,
            main as *const () as usize as u64,
        ]);
        println!(
            "symbolizer cold start: {:.1} ms, RSS +{:.1} MiB (anonymous +{:.1}, file-backed +{:.1}) to name {} functions",
            started.elapsed().as_secs_f64() * 1e3,
            mib(status_bytes("RssAnon:") + status_bytes("RssFile:") - anon - file),
            mib(status_bytes("RssAnon:").saturating_sub(anon)),
            mib(status_bytes("RssFile:").saturating_sub(file)),
            names.len()
        );
    }
    // Warm up caches and the CPU frequency governor, and load symbols once
    // so that the first profiling round does not pay the one-time DWARF load.
    let _ = run_workload(options.threads, 1, Shape::default());
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let warm = std::thread::spawn(|| run_workload(1, 2, Shape::default()));
        let _ = runtime
            .block_on(CpuProfiler::global().profile(ProfileRequest::new(Duration::from_secs(1))));
        let _ = warm.join();
    }
    rss.after_first_profile = rss_bytes();

    let mut modes = vec![
        Mode::NoAgent,
        Mode::IdleAgent,
        Mode::Profiling99Hz,
        Mode::Labelled99Hz,
        Mode::Wall99Hz,
    ];
    if options.tokio {
        // Only tokio workers are seen as workers.
        modes.push(Mode::WallWorkers99Hz);
    }
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
    for round in 0..options.rounds {
        for k in 0..modes.len() {
            let index = (k + round) % modes.len();
            let run = measure(modes[index], &options);
            results[index].push(run);
        }
        println!(
            "round {}: {}",
            round + 1,
            modes
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{} {:.0}/s", m.name(), results[i][round].rate))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Rounds run the modes back to back, so a per-round ratio cancels
    // slow drift of the machine; the median of those ratios is the result.
    println!(
        "\n## Throughput: median over {} rounds of the per-round ratio to 'no agent'",
        options.rounds
    );
    println!(
        "{:<26} {:>12} {:>8} {:>19} {:>9}   {:>13} {:>10} {:>10} {:>9}",
        "mode",
        "calls/s",
        "ratio",
        "ratio range",
        "overhead",
        "per-CPU ratio",
        "handler",
        "agent thr",
        "measured"
    );
    for (i, mode) in modes.iter().enumerate() {
        let ratio_of = |f: fn(&Run) -> f64| -> Vec<f64> {
            (0..options.rounds)
                .map(|r| f(&results[i][r]) / f(&results[0][r]))
                .collect()
        };
        let column = |f: fn(&Run) -> f64| -> Vec<f64> { results[i].iter().map(f).collect() };
        let mut ratios = ratio_of(|r| r.rate);
        let mut per_cpu = ratio_of(|r| r.per_cpu_second);
        let mut rates = column(|r| r.rate);
        let mut shares = column(|r| r.other_cpu_share);
        let mut handler = column(|r| r.handler_share);
        let mut base_shares: Vec<f64> = results[0].iter().map(|r| r.other_cpu_share).collect();
        let ratio = median(&mut ratios);
        let per_cpu = median(&mut per_cpu);
        // Agent threads' CPU beyond what the bare process spends elsewhere.
        let agent_share = (median(&mut shares) - median(&mut base_shares)).max(0.0);
        let handler_share = median(&mut handler);
        println!(
            "{:<26} {:>12.0} {:>8.4} {:>8.4}..{:<10.4} {:>+8.2}%   {:>13.4} {:>9.3}% {:>9.3}% {:>8.3}%",
            mode.name(),
            median(&mut rates),
            ratio,
            ratios[0],
            ratios[ratios.len() - 1],
            (1.0 - ratio) * 100.0,
            per_cpu,
            handler_share * 100.0,
            agent_share * 100.0,
            (handler_share + agent_share) * 100.0,
        );
    }
    let status = CpuProfiler::global().status();
    println!(
        "\nratio/overhead: calls per wall second vs 'no agent' in the same round (this machine's \
         run-to-run noise is the ratio range). per-CPU ratio: calls per second of the workers' own \
         CPU time. handler: time inside the sampler's signal handler as measured by the sampler \
         ({:.1} µs per sample over {} samples, all modes), relative to the workers' CPU; in wall-clock \
         mode it runs on every sampled thread, so its share on the agent's own threads is also in \
         agent thr. agent thr: CPU of all other threads (control, HTTP, symbolizer, wall-clock \
         timer) relative to the workers'. measured = handler + agent thr.",
        status.handler_time.as_secs_f64() * 1e6 / status.samples_recorded.max(1) as f64,
        status.samples_recorded
    );
    report_generation(&options, &rss);
}

/// The window's flame graph drawn as before the change that merges frames
/// narrower than a pixel (every folded line to inferno, which sorts them)
/// and as now, interleaved, medians of 5: the A/B of docs/overhead.md.
fn flame_graph_both_ways(profile: &stethoscope::profile::Profile) {
    let (mut before, mut now) = (Vec::new(), Vec::new());
    let (mut before_bytes, mut now_bytes) = (0, 0);
    for _ in 0..5 {
        let started = Instant::now();
        let folded = profile.render(Format::Folded).unwrap_or_default();
        let mut options = inferno::flamegraph::Options::default();
        options.title = profile.title.clone();
        options.name_type = "Function:".to_owned();
        options.hash = true;
        let mut svg = Vec::new();
        let text = String::from_utf8_lossy(&folded);
        if let Err(e) = inferno::flamegraph::from_lines(&mut options, text.lines(), &mut svg) {
            eprintln!("inferno: {e}");
        }
        before.push(started.elapsed().as_secs_f64() * 1e3);
        before_bytes = svg.len();
        let started = Instant::now();
        let svg = profile.render(Format::Svg).unwrap_or_default();
        now.push(started.elapsed().as_secs_f64() * 1e3);
        now_bytes = svg.len();
    }
    let (before, now) = (median(&mut before), median(&mut now));
    println!(
        "flame graph of the window, median of 5 interleaved: every folded line to inferno {before:.1} ms, \
         {before_bytes} bytes; drawable frames only {now:.1} ms, {now_bytes} bytes (x{:.2} time, x{:.2} size)",
        now / before,
        now_bytes as f64 / before_bytes.max(1) as f64
    );
}
