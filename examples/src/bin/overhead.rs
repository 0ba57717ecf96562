//! Overhead benchmark: the same CPU-bound workload with no agent, with an
//! idle agent, and while the agent profiles at 99 Hz, interleaved over
//! several rounds; then the cost of turning a 30 s profile into reports.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin overhead -- [--rounds 9] [--secs 3] [--report-secs 30] [--threads N]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope::cpu::{CpuProfiler, ProfileRequest};
use stethoscope::profile::{release_debug_info, symbolizer_stats, Format};
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
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoAgent => "no agent",
            Mode::IdleAgent => "agent idle",
            Mode::Profiling99Hz => "agent profiling at 99 Hz",
        }
    }
}

struct Options {
    rounds: usize,
    secs: u64,
    report_secs: u64,
    threads: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        rounds: 9,
        secs: 3,
        report_secs: 30,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
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

/// Runs the call-tree workload on `threads` threads for `secs`.
fn run_workload(threads: usize, secs: u64) -> Run {
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
                    let mut n = 0u64;
                    let mut sink = 0u64;
                    let mut seed = t as u64 * 0x9e37_79b9;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            seed = seed.wrapping_add(1);
                            sink ^= walk_call_tree(seed, WORK);
                        }
                        n += 256;
                    }
                    std::hint::black_box(sink);
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

/// A raw HTTP GET, reading the whole response; returns (status line, body length).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, usize)> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let status = text.lines().next().unwrap_or("").to_owned();
    Ok((status, bytes.len()))
}

fn measure(mode: Mode, options: &Options) -> Run {
    match mode {
        Mode::NoAgent => run_workload(options.threads, options.secs),
        Mode::IdleAgent => {
            let agent = start_agent();
            let rate = run_workload(options.threads, options.secs);
            drop(agent);
            rate
        }
        Mode::Profiling99Hz => {
            let agent = start_agent();
            let addr = agent.local_addr();
            let path = format!("/debug/pprof/profile?seconds={}&hz=99", options.secs);
            let request = std::thread::spawn(move || http_get(addr, &path));
            let profiler = CpuProfiler::global();
            while profiler.status().subscribers == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let rate = run_workload(options.threads, options.secs);
            match request.join() {
                Ok(Ok((status, _))) if status.contains(" 200 ") => {}
                other => eprintln!("profile request failed: {other:?}"),
            }
            drop(agent);
            rate
        }
    }
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
                let _ = run_workload(threads, 1);
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
        let bytes = profile.render(format).map_or(0, |b| b.len());
        let total = started.elapsed();
        println!(
            "{:>7}: {:>7.1} ms after the window ({:.1} ms symbolization lookups, {:.1} ms encoding), {} bytes",
            format.name(),
            total.as_secs_f64() * 1e3,
            symbolized.as_secs_f64() * 1e3,
            (total - symbolized).as_secs_f64() * 1e3,
            bytes
        );
    }
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
        stethoscope::profile::DEBUG_INFO_IDLE_RELEASE.as_secs(),
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
                let _ = run_workload(threads, 1);
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
        if let Ok((format, Ok((status, bytes)))) = request.join() {
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
        let names = stethoscope::profile::function_names(&[
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
    let _ = run_workload(options.threads, 1);
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let warm = std::thread::spawn(|| run_workload(1, 2));
        let _ = runtime
            .block_on(CpuProfiler::global().profile(ProfileRequest::new(Duration::from_secs(1))));
        let _ = warm.join();
    }
    rss.after_first_profile = rss_bytes();

    let modes = [Mode::NoAgent, Mode::IdleAgent, Mode::Profiling99Hz];
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
    // Rounds run the three modes back to back, so a per-round ratio cancels
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
         CPU time. handler: time inside the SIGPROF handler as measured by the sampler \
         ({:.1} µs per sample over {} samples), relative to the workers' CPU. agent thr: CPU of all \
         other threads (control, HTTP, symbolizer) relative to the workers'. measured = handler + agent thr.",
        status.handler_time.as_secs_f64() * 1e6 / status.samples_recorded.max(1) as f64,
        status.samples_recorded
    );
    report_generation(&options, &rss);
}
