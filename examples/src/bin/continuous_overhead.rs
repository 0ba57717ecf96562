//! Cost of continuous profiling: throughput of a CPU-bound workload with
//! the flight recorder at `--hz` (19 by default) against without it,
//! interleaved over rounds in alternating order; the exact CPU it costs
//! (SIGPROF handler time and the sampler thread, from the scheduler); then
//! the ring's memory after `--fill-secs` of a workload with thousands of
//! distinct stacks (and that memory extrapolated to the 15-minute ring), and
//! the time a 5-minute look-back takes to become an SVG and a pprof.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin continuous_overhead -- [--rounds 9] [--secs 4] [--threads 2] [--hz 19] [--fill-secs 320]
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stethoscope::cpu::{ContinuousSettings, CpuProfiler};
use stethoscope::profile::Format;
use stethoscope_examples::bench::{arg, median, thread_cpu_ns};
use stethoscope_examples::workload::walk_call_tree;

/// Call-tree walks per second on `threads` threads for `secs`: a workload
/// whose stacks are many and distinct (a random path down a call tree).
fn walks_per_second(threads: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, walks) = (Arc::clone(&stop), Arc::clone(&walks));
            s.spawn(move || {
                let mut seed = t as u64 * 1_000_003;
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed.wrapping_add(1);
                    std::hint::black_box(walk_call_tree(seed, 200));
                    done += 1;
                }
                walks.fetch_add(done, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    walks.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rounds = arg("--rounds", 9).max(1);
    let secs = arg("--secs", 4).max(1) as f64;
    let threads = arg("--threads", 2).max(1);
    let hz = arg("--hz", 19).clamp(1, 1000) as u32;
    let fill = arg("--fill-secs", 320) as u64;
    let cpu = CpuProfiler::global();

    // Warm-up: code faulted in, the sampler's first start paid.
    cpu.start_continuous(ContinuousSettings::new(hz))
        .expect("continuous profiling starts");
    walks_per_second(threads, 1.0);
    cpu.stop_continuous();
    walks_per_second(threads, 1.0);

    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut handler_ns, mut thread_ns, mut measured_s) = (0u128, 0u64, 0.0);
    for round in 0..rounds {
        let mut pair = [0.0f64; 2];
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for enabled in order {
            if enabled {
                cpu.start_continuous(ContinuousSettings::new(hz))
                    .expect("continuous profiling starts");
                std::thread::sleep(Duration::from_millis(300));
            }
            let handler = cpu.status().handler_time;
            let sampler = thread_cpu_ns("stethoscope-cpu");
            let started = Instant::now();
            let rate = walks_per_second(threads, secs);
            if enabled {
                handler_ns += (cpu.status().handler_time - handler).as_nanos();
                thread_ns += thread_cpu_ns("stethoscope-cpu").saturating_sub(sampler);
                measured_s += started.elapsed().as_secs_f64();
                cpu.stop_continuous();
                std::thread::sleep(Duration::from_millis(300));
            }
            pair[usize::from(enabled)] = rate;
        }
        off.push(pair[0]);
        on.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
    }
    let ratio = median(&mut ratios);
    println!("continuous profiling at {hz} Hz, {threads} busy threads, {rounds} rounds of {secs} s (interleaved)");
    println!(
        "  throughput:   ×{ratio:.4} with the ring (median of per-round ratios; cost {:+.2} %), {:.0} vs {:.0} walks/s",
        (1.0 - ratio) * 100.0,
        median(&mut on),
        median(&mut off)
    );
    println!(
        "  exact cost:   SIGPROF handler {:.3} ms/s + sampler thread {:.3} ms/s = {:.3} % of one core",
        handler_ns as f64 / 1e6 / measured_s,
        thread_ns as f64 / 1e6 / measured_s,
        (handler_ns as f64 + thread_ns as f64) / 1e7 / measured_s
    );

    if fill == 0 {
        return;
    }
    // The ring's memory and a look-back's cost, on the default ring.
    cpu.start_continuous(ContinuousSettings::new(hz))
        .expect("continuous profiling starts");
    eprintln!("filling the ring for {fill} s…");
    walks_per_second(threads, fill as f64);
    let status = cpu.continuous_status().expect("the ring is on");
    let per_segment = status.memory_bytes as f64 / status.segments.max(1) as f64;
    let full = ContinuousSettings::new(hz).segments();
    println!(
        "  ring after {fill} s: {} segments, {} distinct stacks, {:.2} MiB ({:.0} KiB a segment; {:.1} MiB for the {full} segments of 15 minutes at this rate of new stacks)",
        status.segments,
        status.stacks,
        status.memory_bytes as f64 / 1048576.0,
        per_segment / 1024.0,
        per_segment * full as f64 / 1048576.0
    );
    for attempt in ["first (symbols loaded)", "again"] {
        let now = SystemTime::now();
        let started = Instant::now();
        let (profile, coverage) = cpu
            .look_back(now - Duration::from_secs(300), now)
            .expect("look-back");
        let merged = started.elapsed();
        let symbolized = profile.to_profile();
        let symbolized_at = started.elapsed();
        let svg = symbolized.render(Format::Svg).expect("svg");
        let svg_at = started.elapsed();
        let pprof = symbolized.render(Format::Pprof).expect("pprof");
        let pprof_at = started.elapsed();
        println!(
            "  look-back of 5 min, {attempt}: {} segments, {} stacks; merge {:.1} ms, symbolize {:.1} ms, SVG at {:.1} ms ({} KiB), pprof at {:.1} ms (+{:.1} ms, {} KiB)",
            coverage.segments,
            profile.stacks().len(),
            merged.as_secs_f64() * 1e3,
            (symbolized_at - merged).as_secs_f64() * 1e3,
            svg_at.as_secs_f64() * 1e3,
            svg.len() / 1024,
            pprof_at.as_secs_f64() * 1e3,
            (pprof_at - svg_at).as_secs_f64() * 1e3,
            pprof.len() / 1024
        );
    }
    cpu.stop_continuous();
}
