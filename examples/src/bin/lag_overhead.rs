//! Cost of the executor-lag probe and stuck-worker watchdog: the CPU time
//! the whole process burns while a two-worker tokio runtime sits idle —
//! the worst case, where every probe wakes a parked worker — with an agent
//! that watches the runtime and with one that does not (same HTTP thread,
//! same USE sampling), interleaved over rounds in alternating order. The
//! difference of the medians is the watchdog's cost.
//!
//! With `--busy 1`, one task keeps one worker busy (0.5 ms of CPU, then
//! a yield, in a loop) while the other worker stays parked: the watchdog
//! then looks every 25 ms and the probe still wakes the parked worker
//! every 100 ms. With `--busy 2` two such tasks keep both workers busy:
//! the watchdog looks and probes every resolution.
//!
//! The watchdog thread's own CPU time is also read exactly from the
//! scheduler (`/proc/self/task/*/schedstat`), and compared with a bare
//! thread that only wakes up as often: on a VM, wake-ups dominate.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin lag_overhead -- [--rounds 9] [--secs 5] [--resolution-ms 10] [--busy 0|1|2]
//! ```

use std::time::{Duration, Instant};

use stethoscope::Agent;
use stethoscope_examples::bench::arg;
use stethoscope_examples::workload::process_cpu_time;

/// Nanoseconds on CPU of this process's threads named `name`, from the
/// scheduler's exact accounting (`/proc/self/task/*/schedstat`).
fn thread_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU milliseconds per second of a thread that does nothing but wake up
/// every `every` (a condition-variable timed wait, like the watchdog's):
/// this machine's price of a wake-up, the floor under any watchdog.
fn bare_thread(every: Duration, secs: u64) -> f64 {
    const NAME: &str = "bare-sleeper";
    let thread = std::thread::Builder::new()
        .name(NAME.into())
        .spawn(move || {
            let lock = std::sync::Mutex::new(());
            let wake = std::sync::Condvar::new();
            let started = Instant::now();
            let cpu = thread_cpu_ns(NAME);
            let mut next = started;
            while started.elapsed() < Duration::from_secs(secs) {
                next += every;
                let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(left) = next.checked_duration_since(Instant::now()) {
                    guard = wake
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            thread_cpu_ns(NAME).saturating_sub(cpu) as f64 / 1e6 / started.elapsed().as_secs_f64()
        })
        .expect("spawn");
    thread.join().unwrap_or(f64::NAN)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU milliseconds the process burns per second over `secs`, with an
/// agent that watches `runtime` (or not), and those of the watchdog thread
/// alone.
fn round(
    runtime: &tokio::runtime::Runtime,
    watch: bool,
    secs: u64,
    resolution: Duration,
    busy: usize,
) -> (f64, f64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..busy {
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
    let watchdog = thread_cpu_ns("stethoscope-lag");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let used = process_cpu_time() - cpu;
    let watchdog = thread_cpu_ns("stethoscope-lag").saturating_sub(watchdog);
    let elapsed = started.elapsed().as_secs_f64();
    let per_second = used.as_secs_f64() * 1e3 / elapsed;
    let watchdog_per_second = watchdog as f64 / 1e6 / elapsed;
    if watch {
        let lag = agent.executor().lag().expect("lag");
        assert!(lag.ten_seconds.count > 0, "the probe ran");
    }
    runtime.block_on(agent.shutdown());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (per_second, watchdog_per_second)
}

fn main() {
    let rounds = arg("--rounds", 9).max(1);
    let secs = arg("--secs", 5).max(1) as u64;
    let resolution = Duration::from_millis(arg("--resolution-ms", 10).clamp(1, 1000) as u64);
    let busy = arg("--busy", 0).min(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Warm-up: fault in code, start the runtime's threads.
    round(&runtime, true, 1, resolution, busy);
    round(&runtime, false, 1, resolution, busy);

    let (mut off, mut on, mut diffs, mut threads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let ((a, _), (b, thread)) = if r % 2 == 0 {
            let a = round(&runtime, false, secs, resolution, busy);
            (a, round(&runtime, true, secs, resolution, busy))
        } else {
            let b = round(&runtime, true, secs, resolution, busy);
            (round(&runtime, false, secs, resolution, busy), b)
        };
        threads.push(thread);
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
        ["idle", "one worker busy,", "both workers busy,"][busy],
        resolution.as_millis()
    );
    println!("  agent without the watchdog: {a:.3} ms of CPU per second (median)");
    println!("  agent watching the runtime: {b:.3} ms of CPU per second (median)");
    println!(
        "  watchdog + probe:           {d:.3} ms/s = {:.3} % of one core (median of per-round differences)",
        d / 10.0
    );
    let thread = median(&mut threads);
    println!(
        "  watchdog thread alone:      {thread:.3} ms/s = {:.3} % of one core (median; exact, from schedstat)",
        thread / 10.0
    );
    let looks = [50, 25, 10][busy];
    let bare = bare_thread(Duration::from_millis(looks), secs);
    println!(
        "  bare thread waking every {looks} ms (the watchdog's look interval here): {bare:.3} ms/s = {:.3} % of one core",
        bare / 10.0
    );
}
