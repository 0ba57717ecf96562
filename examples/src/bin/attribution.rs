//! Per-thread truth of CPU attribution: threads with different CPU
//! patterns run while the sampler profiles at `--hz`; each thread's share
//! of the profile (its samples' weight × the profile's CPU time) is put
//! next to its own CPU clock over the window (the scheduler's exact
//! accounting, `/proc/self/task/*/schedstat`).
//!
//! Threads: `steady-*` burn without pause; `bursty-*` burn 1 ms of CPU and
//! sleep 2 ms; `tiny-*` burn 0.1 ms and sleep 0.9 ms; `syscalls` reads a
//! small file and allocates in a loop (in and out of the kernel all the
//! time, like the agent's own symbolizer or a service doing I/O). With `--contend N`,
//! N processes outside this one spin (`sh -c 'while :; do :; done'`) so the
//! threads share the cores with someone else, as on a busy host.
//!
//! `--idle N` adds N sleeping threads: each gets a CPU timer too, and the
//! control thread (`stethoscope-cpu`) looks for new threads every 100 ms;
//! its CPU per second of profile is printed.
//!
//! ```text
//! cargo run --release -p stethoscope-examples --bin attribution -- [--hz 999] [--secs 10] [--rounds 3] [--contend 1] [--idle 0]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stethoscope::cpu::{CpuProfiler, ProfileRequest};
use stethoscope_examples::bench::{arg, thread_cpu_ns};
use stethoscope_examples::workload::{burn, thread_cpu_time};

/// The thread patterns: name prefix, CPU burned per step, sleep per step
/// (zero: no sleep), and how many threads.
const PATTERNS: [(&str, Duration, Duration, usize); 3] = [
    ("steady", Duration::from_millis(20), Duration::ZERO, 2),
    (
        "bursty",
        Duration::from_millis(1),
        Duration::from_millis(2),
        2,
    ),
    (
        "tiny",
        Duration::from_micros(100),
        Duration::from_micros(900),
        2,
    ),
];

fn spin_for(cpu: Duration) {
    let start = thread_cpu_time();
    while thread_cpu_time() - start < cpu {
        std::hint::black_box(burn(Duration::from_micros(50)));
    }
}

fn main() {
    let hz = arg("--hz", 999) as u32;
    let secs = arg("--secs", 10) as u64;
    let rounds = arg("--rounds", 3).max(1);
    let contend = arg("--contend", 0);
    let idle = arg("--idle", 0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut spinners: Vec<std::process::Child> = (0..contend)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("spawn a spinning shell")
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sleepers: Vec<_> = (0..idle)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    let mut names = vec!["syscalls".to_owned()];
    let mut threads = Vec::new();
    {
        let stop = Arc::clone(&stop);
        threads.push(
            std::thread::Builder::new()
                .name("syscalls".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
                        let copies: Vec<String> = (0..16).map(|_| text.clone()).collect();
                        std::hint::black_box(copies);
                    }
                })
                .expect("spawn"),
        );
    }
    for (prefix, work, pause, count) in PATTERNS {
        for i in 0..count {
            let name = format!("{prefix}-{i}");
            names.push(name.clone());
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            spin_for(work);
                            if !pause.is_zero() {
                                std::thread::sleep(pause);
                            }
                        }
                    })
                    .expect("spawn"),
            );
        }
    }
    println!("{hz} Hz, {secs} s windows, {contend} spinning processes beside");
    println!(
        "{:<10} {:>10} {:>12} {:>8} {:>9}",
        "thread", "cpu (s)", "profile (s)", "ratio", "samples"
    );
    for round in 0..rounds {
        let before: Vec<u64> = names.iter().map(|n| thread_cpu_ns(n)).collect();
        let handler_before = CpuProfiler::global().status().handler_time;
        // The control thread lives only while the sampler runs: read its
        // clock from inside the window.
        let control = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let before = thread_cpu_ns("stethoscope-cpu");
            std::thread::sleep(Duration::from_secs(secs.saturating_sub(1)));
            let after = thread_cpu_ns("stethoscope-cpu");
            after.saturating_sub(before) as f64 / 1e6 / secs.saturating_sub(1).max(1) as f64
        });
        let profile = runtime
            .block_on(
                CpuProfiler::global()
                    .profile(ProfileRequest::new(Duration::from_secs(secs)).hz(hz)),
            )
            .expect("profile");
        let after: Vec<u64> = names.iter().map(|n| thread_cpu_ns(n)).collect();
        let handler = CpuProfiler::global().status().handler_time - handler_before;
        let control = control.join().unwrap_or(0.0);
        let total_weight: u64 = profile.stacks().iter().map(|s| s.weight).sum();
        let cpu = profile.cpu_time().as_secs_f64();
        println!(
            "round {round}: process CPU {cpu:.2} s, {} samples, {} dropped, {:.1} us in the handler \
             per sample, control thread {:.2} ms per second",
            profile.sample_count(),
            profile.dropped_samples(),
            handler.as_secs_f64() * 1e6 / profile.sample_count().max(1) as f64,
            control
        );
        let mut sum_truth = 0.0;
        let mut sum_profile = 0.0;
        for (i, name) in names.iter().enumerate() {
            let truth = (after[i] - before[i]) as f64 / 1e9;
            let (weight, samples) = profile
                .stacks()
                .iter()
                .filter(|s| &*s.thread == name.as_str())
                .fold((0u64, 0u64), |(w, n), s| (w + s.weight, n + s.samples));
            let attributed = cpu * weight as f64 / total_weight.max(1) as f64;
            sum_truth += truth;
            sum_profile += attributed;
            println!(
                "{name:<10} {truth:>10.3} {attributed:>12.3} {:>8.3} {samples:>9}",
                attributed / truth.max(1e-9)
            );
        }
        println!(
            "{:<10} {sum_truth:>10.3} {sum_profile:>12.3} {:>8.3}",
            "all",
            sum_profile / sum_truth.max(1e-9)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads.into_iter().chain(sleepers) {
        let _ = thread.join();
    }
    for spinner in &mut spinners {
        let _ = spinner.kill();
        let _ = spinner.wait();
    }
}
