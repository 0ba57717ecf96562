//! The two workloads of a run: the call tree (throughput) and the 3:1 burn
//! (CPU-time truth and attribution), each on `threads` named threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stethoscope_examples::workload::{burn, thread_cpu_time, walk_call_tree};

/// Leaf iterations per call-tree walk (~1 µs per call), as in `overhead`.
pub const WORK: u32 = 200;

/// What one call-tree run achieved.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Calls per second of wall time.
    pub rate: f64,
    /// Calls per second of the workers' own CPU time: a signal handler runs
    /// on the thread it interrupts, so its cost lowers this too, and it is
    /// immune to CPU stolen by other processes.
    pub per_cpu_second: f64,
    /// CPU time of the workers.
    pub worker_cpu: Duration,
}

/// Walks the call tree on `threads` threads for `wall` of wall time.
pub fn call_tree(threads: usize, wall: Duration) -> Throughput {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let cpu_ns = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, calls, cpu_ns) =
                (Arc::clone(&stop), Arc::clone(&calls), Arc::clone(&cpu_ns));
            spawn(format!("tree-{t}"), move || {
                let cpu_before = thread_cpu_time();
                let (mut n, mut sink) = (0u64, 0u64);
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
                cpu_ns.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(wall);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let calls = calls.load(Ordering::Relaxed) as f64;
    let worker_cpu = Duration::from_nanos(cpu_ns.load(Ordering::Relaxed));
    Throughput {
        rate: calls / wall,
        per_cpu_second: calls / worker_cpu.as_secs_f64().max(1e-9),
        worker_cpu,
    }
}

/// Runs the call tree on `threads` threads until the returned flag is set.
pub fn background_call_tree(threads: usize) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = spawn("tree-load".into(), move || {
        while !flag.load(Ordering::Relaxed) {
            let _ = call_tree(threads, Duration::from_millis(500));
        }
    });
    (stop, handle)
}

/// What one burn run consumed.
#[derive(Debug, Clone, Copy)]
pub struct Burned {
    /// CPU time of the burn threads, measured by each thread itself.
    pub cpu: Duration,
}

/// Burns `cpu` of thread CPU time on each of `threads` threads named
/// `burn-N`: 3/4 in `burn_hot`, 1/4 in `burn_cold`.
pub fn burn_split(threads: usize, cpu: Duration) -> Burned {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            spawn(format!("burn-{t}"), move || {
                let before = thread_cpu_time();
                std::hint::black_box(burn(cpu));
                thread_cpu_time().saturating_sub(before)
            })
        })
        .collect();
    let cpu = workers
        .into_iter()
        .map(|w| w.join().unwrap_or_default())
        .sum();
    Burned { cpu }
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .unwrap_or_else(|e| crate::fail(&format!("cannot spawn a workload thread: {e}")))
}
