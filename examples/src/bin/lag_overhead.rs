//! Cost of the executor-lag probe and stuck-worker watchdog: the CPU time
//! the whole process burns while a two-worker tokio runtime sits idle —
//! the worst case, where every probe wakes a parked worker — with an agent
//! that watches the runtime and with one that does not (same HTTP thread,
//! same USE sampling), interleaved over rounds in alternating order. The
//! difference of the medians is the watchdog's cost.
//!
//! With `--busy 1`, one task keeps one worker busy (0.5 ms of CPU, then
//! a yield, in a loop) while the other worker stays parked: the watchdog
//! then looks every resolution and the probe still wakes the parked
//! worker now and then.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin lag_overhead -- [--rounds 9] [--secs 5] [--resolution-ms 10] [--busy 0|1]
//! ```

use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::bench::arg;
use stethoscope_examples::workload::process_cpu_time;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU milliseconds the process burns per second over `secs`, with an
/// agent that watches `runtime` (or not).
fn round(
    runtime: &tokio::runtime::Runtime,
    watch: bool,
    secs: u64,
    resolution: Duration,
    busy: bool,
) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if busy {
        let stop = std::sync::Arc::clone(&stop);
        runtime.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                stethoscope_examples::workload::spin(Duration::from_micros(500));
                tokio::task::yield_now().await;
            }
        });
    }
    let mut builder = Agent::builder()
        .listen("127.0.0.1:0")
        .lag_resolution(resolution)
        .stall_threshold(Duration::from_millis(100).max(2 * resolution));
    if watch {
        builder = builder.runtime(runtime.handle().clone());
    }
    let agent = builder.start().expect("agent starts");
    // Let start-up work (first USE sample, thread creation) pass.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = process_cpu_time();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let used = process_cpu_time() - cpu;
    let per_second = used.as_secs_f64() * 1e3 / started.elapsed().as_secs_f64();
    if watch {
        let lag = agent.executor().lag().expect("lag");
        assert!(lag.ten_seconds.count > 0, "the probe ran");
    }
    runtime.block_on(agent.shutdown());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    per_second
}

fn main() {
    let rounds = arg("--rounds", 9).max(1);
    let secs = arg("--secs", 5).max(1) as u64;
    let resolution = Duration::from_millis(arg("--resolution-ms", 10).clamp(1, 1000) as u64);
    let busy = arg("--busy", 0) != 0;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Warm-up: fault in code, start the runtime's threads.
    round(&runtime, true, 1, resolution, busy);
    round(&runtime, false, 1, resolution, busy);

    let (mut off, mut on, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            let a = round(&runtime, false, secs, resolution, busy);
            (a, round(&runtime, true, secs, resolution, busy))
        } else {
            let b = round(&runtime, true, secs, resolution, busy);
            (round(&runtime, false, secs, resolution, busy), b)
        };
        println!(
            "round {r}: without watchdog {a:.3} ms CPU/s, with {b:.3} ms CPU/s, difference {:.3} ms/s",
            b - a
        );
        off.push(a);
        on.push(b);
        diffs.push(b - a);
    }
    let (a, b, d) = (median(&mut off), median(&mut on), median(&mut diffs));
    println!(
        "{} two-worker runtime, {rounds} rounds x {secs} s, resolution {} ms",
        if busy { "one worker busy," } else { "idle" },
        resolution.as_millis()
    );
    println!("  agent without the watchdog: {a:.3} ms of CPU per second (median)");
    println!("  agent watching the runtime: {b:.3} ms of CPU per second (median)");
    println!(
        "  watchdog + probe:           {d:.3} ms/s = {:.3} % of one core (median of per-round differences)",
        d / 10.0
    );
}
