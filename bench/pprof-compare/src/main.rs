//! stethoscope side by side with pprof-rs 0.15 (framehop unwinder), in one
//! process, interleaved: never both at once, since both own SIGPROF and
//! `ITIMER_PROF`.
//!
//! ```text
//! cargo run --release --manifest-path bench/pprof-compare/Cargo.toml -- \
//!     [--rounds 7] [--secs 3] [--burn-secs 2] [--report-secs 30] [--report-hz 99] \
//!     [--cold-secs 10] [--cold-runs 2] [--threads N]
//! ```
//!
//! `--rounds 0`, `--report-secs 0` and `--cold-runs 0` skip a part.
//!
//! Each round, at 99 and at 999 Hz (the order alternates by round), runs
//! 1. the call-tree workload for `--secs` under no profiler, stethoscope,
//!    pprof-rs with the README's blocklist and pprof-rs without one, in
//!    rotating order: throughput relative to no profiler;
//! 2. the 3:1 `burn` split for `--burn-secs` of CPU per thread under each
//!    profiler: total CPU time the profile reports against `/proc/self/stat`
//!    over the same window, the split it attributes, samples it kept.
//!
//! Then, in this process, one `--report-secs` window per profiler: time
//! from the end of the window to an SVG and to a pprof profile; and in fresh
//! child processes (`--cold NAME`, `--cold-runs` each, alternating), the
//! RSS after the first symbolized report, so that neither profiler's
//! symbol caches are paid by the other.

mod profilers;
mod reports;
mod workload;

use std::collections::HashMap;
use std::time::Duration;

use profilers::{profile_during, Captured, Clocks, Measured, Profiler};
use reports::{Cold, Memory, Reports};
use workload::{Burned, Throughput};

const RATES: [u32; 2] = [99, 999];

/// Prints `message` and exits: a benchmark has nobody to return an error to.
pub fn fail(message: &str) -> ! {
    eprintln!("pprof-compare: {message}");
    std::process::exit(1)
}

#[derive(Debug)]
struct Options {
    rounds: usize,
    secs: u64,
    burn_secs: u64,
    report_secs: u64,
    report_hz: u32,
    cold_secs: u64,
    cold_runs: usize,
    threads: usize,
    cold: Option<Profiler>,
}

fn parse_options() -> Options {
    let mut options = Options {
        rounds: 7,
        secs: 3,
        burn_secs: 2,
        report_secs: 30,
        report_hz: 99,
        cold_secs: 10,
        cold_runs: 2,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        cold: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            include_str!("main.rs")
                .lines()
                .take(11)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::process::exit(0);
    }
    let mut pairs = args.chunks(2);
    for pair in &mut pairs {
        let [name, value] = pair else {
            fail(&format!("{} needs a value", pair[0]));
        };
        let number = || -> u64 {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| fail(&format!("{name} needs a number, not {value:?}")))
        };
        match name.as_str() {
            "--rounds" => options.rounds = number() as usize,
            "--secs" => options.secs = number().max(1),
            "--burn-secs" => options.burn_secs = number().max(1),
            "--report-secs" => options.report_secs = number(),
            "--report-hz" => options.report_hz = number().clamp(1, 1000) as u32,
            "--cold-secs" => options.cold_secs = number().max(1),
            "--cold-runs" => options.cold_runs = number() as usize,
            "--threads" => options.threads = number().max(1) as usize,
            "--cold" => {
                options.cold = Some(
                    Profiler::from_key(value)
                        .filter(|p| *p != Profiler::None)
                        .unwrap_or_else(|| fail(&format!("unknown profiler {value:?}"))),
                )
            }
            other => fail(&format!("unknown option {other}")),
        }
    }
    options
}

/// One burn window, analysed.
struct Truth {
    captured: Captured,
    cpu: Clocks,
    burned: Burned,
    in_window: bool,
}

fn main() {
    let at_start = Memory::now();
    let options = parse_options();
    if let Some(profiler) = options.cold {
        let window = Duration::from_secs(options.cold_secs);
        reports::cold_child(
            profiler,
            options.report_hz,
            window,
            options.threads,
            at_start,
        );
        return;
    }
    println!(
        "# stethoscope vs pprof-rs 0.15 (framehop unwinder): {} rounds × {{99, 999}} Hz, \
         call tree for {} s, burn for {} CPU-s per thread, {} threads; load average at start: {}",
        options.rounds,
        options.secs,
        options.burn_secs,
        options.threads,
        load_average()
    );
    warm_up(&options);

    let (throughput, truth) = run_rounds(&options);
    print_throughput(&options, &throughput);
    print_truth(&options, &truth);

    let compared = [Profiler::Stethoscope, Profiler::PprofRs];
    if options.report_secs > 0 {
        let window = Duration::from_secs(options.report_secs);
        let generated: Vec<(Profiler, Reports)> = compared
            .into_iter()
            .map(|profiler| {
                let out = reports::reports(profiler, options.report_hz, window, options.threads);
                (profiler, out.unwrap_or_else(|e| fail(&e)))
            })
            .collect();
        print_reports(&options, &generated);
    }
    if options.cold_runs > 0 {
        let window = Duration::from_secs(options.cold_secs);
        let mut cold: Vec<(Profiler, Cold)> = Vec::new();
        for run in 0..options.cold_runs {
            // Alternate which goes first.
            for k in 0..compared.len() {
                let profiler = compared[(k + run) % compared.len()];
                let result =
                    reports::run_cold(profiler, options.report_hz, window, options.threads);
                cold.push((profiler, result.unwrap_or_else(|e| fail(&e))));
            }
        }
        print_cold(&options, &cold);
    }
    println!("\nload average at the end: {}", load_average());
}

type Runs<T> = HashMap<(Profiler, u32), Vec<T>>;

/// The interleaved rounds: throughput runs and burn windows at each rate.
fn run_rounds(options: &Options) -> (Runs<(Throughput, Clocks)>, Runs<Truth>) {
    let mut throughput: Runs<(Throughput, Clocks)> = HashMap::new();
    let mut truth: Runs<Truth> = HashMap::new();
    let profiled = &Profiler::ALL[1..];
    for round in 0..options.rounds {
        let rates = if round % 2 == 0 {
            RATES
        } else {
            [RATES[1], RATES[0]]
        };
        for hz in rates {
            let mut line = format!("round {} at {hz} Hz:", round + 1);
            for k in 0..Profiler::ALL.len() {
                let profiler = Profiler::ALL[(k + round) % Profiler::ALL.len()];
                let run = measure(profiler, hz, options.secs + 1, false, || {
                    workload::call_tree(options.threads, Duration::from_secs(options.secs))
                });
                line += &format!(" {} {:.0}/s", profiler.key(), run.work.rate);
                throughput
                    .entry((profiler, hz))
                    .or_default()
                    .push((run.work, run.cpu));
            }
            for k in 0..profiled.len() {
                let profiler = profiled[(k + round) % profiled.len()];
                // On a busy machine the burn takes longer than its CPU
                // budget in wall time: leave stethoscope's window room.
                let run = measure(profiler, hz, 2 * options.burn_secs + 1, true, || {
                    workload::burn_split(options.threads, Duration::from_secs(options.burn_secs))
                });
                let Some(captured) = run.captured else {
                    fail("an analysed run returned no profile")
                };
                if !run.in_window {
                    eprintln!(
                        "round {}: the burn outlasted {}'s window; its truth numbers are left out",
                        round + 1,
                        profiler.name()
                    );
                }
                line += &format!(
                    " | {} {:.0}% hot",
                    profiler.key(),
                    captured.split.hot_share() * 100.0
                );
                truth.entry((profiler, hz)).or_default().push(Truth {
                    captured,
                    cpu: run.cpu,
                    burned: run.work,
                    in_window: run.in_window,
                });
            }
            println!("{line}");
        }
    }
    (throughput, truth)
}

fn measure<T>(
    profiler: Profiler,
    hz: u32,
    window_secs: u64,
    analyze: bool,
    work: impl FnOnce() -> T,
) -> Measured<T> {
    profile_during(
        profiler,
        hz,
        Duration::from_secs(window_secs),
        analyze,
        work,
    )
    .unwrap_or_else(|e| fail(&format!("{} at {hz} Hz: {e}", profiler.name())))
}

/// Caches, the CPU governor, and each profiler's one-time costs (debug
/// info, unwind tables) before anything is measured.
fn warm_up(options: &Options) {
    let _ = workload::call_tree(options.threads, Duration::from_secs(1));
    for profiler in &Profiler::ALL[1..] {
        let _ = measure(*profiler, 99, 2, true, || {
            workload::burn_split(options.threads, Duration::from_millis(500))
        });
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Median and range.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

fn with_range((median, low, high): (f64, f64, f64), scale: f64, digits: usize) -> String {
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        median * scale,
        low * scale,
        high * scale
    )
}

fn print_throughput(options: &Options, runs: &HashMap<(Profiler, u32), Vec<(Throughput, Clocks)>>) {
    println!(
        "\n## Throughput of the call tree ({} threads, {} s per run): medians of the per-round ratios to no profiler (range)\n",
        options.threads, options.secs
    );
    println!("| profiler | Hz | calls/s | ratio to no profiler | per-CPU-second ratio | CPU of other threads, % of the workers' |");
    println!("|---|---|---|---|---|---|");
    for hz in RATES {
        let Some(base) = runs.get(&(Profiler::None, hz)) else {
            continue;
        };
        for profiler in Profiler::ALL {
            let Some(these) = runs.get(&(profiler, hz)) else {
                continue;
            };
            let ratio = |f: fn(&Throughput) -> f64| {
                spread(
                    these
                        .iter()
                        .zip(base)
                        .map(|((t, _), (b, _))| f(t) / f(b))
                        .collect(),
                )
            };
            // Threads other than the workers: the profiler's own (stethoscope's
            // control thread and symbolizer; pprof-rs has none) and this
            // benchmark's idle main thread.
            let others = spread(
                these
                    .iter()
                    .map(|(t, cpu)| {
                        let workers = t.worker_cpu.as_secs_f64();
                        (cpu.process.as_secs_f64() - workers).max(0.0) / workers.max(1e-9)
                    })
                    .collect(),
            );
            println!(
                "| {} | {hz} | {:.0} | {} | {} | {} |",
                profiler.name(),
                spread(these.iter().map(|(t, _)| t.rate).collect()).0,
                with_range(ratio(|t| t.rate), 1.0, 4),
                with_range(ratio(|t| t.per_cpu_second), 1.0, 4),
                with_range(others, 100.0, 3),
            );
        }
    }
}

fn print_truth(options: &Options, runs: &Runs<Truth>) {
    println!(
        "\n## CPU-time truth and attribution: the 3:1 burn split, {} CPU-s per thread on {} threads; medians over rounds (range)\n",
        options.burn_secs, options.threads
    );
    println!(
        "| profiler | Hz | samples per CPU-s | reported CPU / `/proc` utime+stime | reported / CLOCK_PROCESS_CPUTIME_ID | `burn_hot` share (truth 75 %): median (range), pooled | burn samples in neither | samples dropped |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for hz in RATES {
        let stethoscope = runs.get(&(Profiler::Stethoscope, hz));
        for profiler in &Profiler::ALL[1..] {
            let Some(these) = runs.get(&(*profiler, hz)) else {
                continue;
            };
            let valid: Vec<&Truth> = these.iter().filter(|t| t.in_window).collect();
            let of = |f: &dyn Fn(&Truth) -> f64| spread(valid.iter().map(|t| f(t)).collect());
            let per_cpu_s = of(&|t| t.captured.samples as f64 / t.cpu.process.as_secs_f64());
            let vs_proc =
                of(&|t| t.captured.reported_cpu.as_secs_f64() / t.cpu.proc_stat.as_secs_f64());
            let vs_clock =
                of(&|t| t.captured.reported_cpu.as_secs_f64() / t.cpu.process.as_secs_f64());
            let hot = of(&|t| t.captured.split.hot_share());
            let (pooled_hot, pooled_cold) = valid.iter().fold((0, 0), |(h, c), t| {
                (h + t.captured.split.hot, c + t.captured.split.cold)
            });
            let pooled = pooled_hot as f64 * 100.0 / (pooled_hot + pooled_cold).max(1) as f64;
            let other = of(&|t| t.captured.split.other_share());
            let dropped = match dropped_samples(these, stethoscope) {
                Dropped::Counted { dropped, taken } => format!(
                    "{dropped} of {} ({:.2} %), counted",
                    dropped + taken,
                    dropped as f64 * 100.0 / (dropped + taken).max(1) as f64
                ),
                Dropped::Estimated(share) => {
                    format!(
                        "{} % (vs. stethoscope's deliveries)",
                        with_range(share, 100.0, 1)
                    )
                }
            };
            println!(
                "| {} | {hz} | {:.0} | {} | {} | {} %, {pooled:.1} % | {} % | {dropped} |",
                profiler.name(),
                per_cpu_s.0,
                with_range(vs_proc, 1.0, 3),
                with_range(vs_clock, 1.0, 3),
                with_range(hot, 100.0, 1),
                with_range(other, 100.0, 1),
            );
        }
        if let Some(runs) = stethoscope {
            let (leaf, all) = runs.iter().fold((0, 0), |(leaf, all), t| {
                (
                    leaf + t.captured.leaf_in_blocklist.unwrap_or(0),
                    all + t.captured.samples,
                )
            });
            let burned: f64 = runs.iter().map(|t| t.burned.cpu.as_secs_f64()).sum();
            let process: f64 = runs.iter().map(|t| t.cpu.process.as_secs_f64()).sum();
            println!(
                "| | | *{hz} Hz: {:.1} % of stethoscope's samples interrupted code in a library the README blocklist names; the burn threads were {:.1} % of the process's CPU* | | | | | |",
                leaf as f64 * 100.0 / all.max(1) as f64,
                burned * 100.0 / process.max(1e-9)
            );
        }
    }
}

enum Dropped {
    /// stethoscope's own counter, summed over rounds.
    Counted { dropped: u64, taken: u64 },
    /// pprof-rs keeps no count: one minus its samples per CPU-second over
    /// the signals stethoscope saw per CPU-second in the same round and Hz.
    Estimated((f64, f64, f64)),
}

fn dropped_samples(these: &[Truth], stethoscope: Option<&Vec<Truth>>) -> Dropped {
    if let Some(Some(_)) = these.first().map(|t| t.captured.dropped) {
        let (dropped, taken) = these.iter().fold((0, 0), |(d, s), t| {
            (d + t.captured.dropped.unwrap_or(0), s + t.captured.samples)
        });
        return Dropped::Counted { dropped, taken };
    }
    let rate = |t: &Truth, delivered: u64| delivered as f64 / t.cpu.process.as_secs_f64();
    let shares = these
        .iter()
        .zip(stethoscope.into_iter().flatten())
        .filter(|(t, s)| t.in_window && s.in_window)
        .map(|(t, s)| {
            let delivered = s.captured.samples + s.captured.dropped.unwrap_or(0);
            1.0 - rate(t, t.captured.samples) / rate(s, delivered)
        })
        .collect();
    Dropped::Estimated(spread(shares))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_reports(options: &Options, generated: &[(Profiler, Reports)]) {
    println!(
        "\n## Reports after a {} s window at {} Hz of the call tree on {} threads (this process, symbol caches warm); wall time (CPU time of the rendering thread)\n",
        options.report_secs, options.report_hz, options.threads
    );
    println!("| profiler | samples | distinct stacks | to SVG | SVG size | to pprof | pprof size | notes |");
    println!("|---|---|---|---|---|---|---|---|");
    let spent = |s: reports::Spent| format!("{:.1} ms ({:.1} ms)", ms(s.wall), ms(s.cpu));
    for (profiler, r) in generated {
        let notes = match (r.symbolized_in_window, r.gzip) {
            (Some(lookups), _) => format!(
                "gzipped pprof; {:.0} ms of symbol lookups done while the window was open",
                ms(lookups)
            ),
            (None, Some((gzip, bytes))) => format!(
                "pprof not compressed; gzip adds {} ({bytes} bytes)",
                spent(gzip)
            ),
            (None, None) => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {:.1} MB | {} | {:.0} KB | {notes} |",
            profiler.name(),
            r.samples,
            r.stacks,
            spent(r.svg),
            r.svg_bytes as f64 / 1e6,
            spent(r.pprof),
            r.pprof_bytes as f64 / 1e3,
        );
    }
}

fn print_cold(options: &Options, cold: &[(Profiler, Cold)]) {
    println!(
        "\n## A fresh process each (`--cold NAME`): a {} s window at {} Hz of the call tree, then its first SVG and pprof\n",
        options.cold_secs, options.report_hz
    );
    println!("| profiler | samples | RSS at start | after the window | after the first reports | of which anonymous | first SVG | first pprof (gzipped) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (profiler, c) in cold {
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | **{:.1} MiB** | {:.1} MiB | {:.0} ms | {:.0} ms |",
            profiler.name(),
            c.samples,
            mib(c.start.rss),
            mib(c.window.rss),
            mib(c.reports.rss),
            mib(c.reports.anon),
            ms(c.svg),
            ms(c.pprof),
        );
    }
}
