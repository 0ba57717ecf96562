//! Helpers shared by the benchmark binaries.

/// The value after `--name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN when empty. Sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Interleaved A/B rounds with `threads` threads measuring at once:
/// each round runs `measure(false)` (without) and then `measure(true)`
/// (with) on every thread, and keeps the mean over the threads. Returns
/// (without, with), one value per round.
pub fn interleaved_on_threads(
    rounds: usize,
    threads: usize,
    measure: impl Fn(bool) -> f64 + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for enabled in [false, true] {
            let results: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| measure(enabled))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(f64::NAN))
                    .collect()
            });
            let mean = results.iter().sum::<f64>() / results.len().max(1) as f64;
            if enabled {
                with.push(mean);
            } else {
                without.push(mean);
            }
        }
    }
    (without, with)
}

/// Nanoseconds on CPU of this process's threads named `name`, from the
/// scheduler's exact accounting (`/proc/self/task/*/schedstat`); the kernel
/// keeps the first 15 bytes of a thread's name, and so does the match.
pub fn thread_cpu_ns(name: &str) -> u64 {
    let name = &name[..name.len().min(15)];
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
